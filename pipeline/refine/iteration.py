"""Iterative refinement with a quality-predicting network: the loop, the choice of ``k``, early stop, scores.

A :class:`networks.QualityUNet` takes an image slice plus a mask and returns a refined mask and the predicted quality
(Dice) of the mask it was given. :func:`iterate_refinement` feeds the output back as the next mask ``k`` times; with
``early_stop`` a case stops as soon as the predicted quality of the new mask does not rise by more than
``min_delta`` over the previous one, and the previous mask is kept.

The network predicts one quality per slice; a case's quality (:func:`volume_quality`) is their weighted mean with
weights ``|mask_z| + |refined_z|``. Volume Dice is exactly the mean of slice Dices weighted by ``|A_z| + |B_z|``;
the refined mask stands in for the unknown label ``B``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RefinementTrace",
    "choose_k",
    "iterate_refinement",
    "pearson_r",
    "stack_slices",
    "stop_step",
    "volume_quality",
]


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def slice_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice per slice of ``(N, ...)`` boolean arrays (1 where both are empty)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    total = a.sum(1) + b.sum(1)
    inter = np.logical_and(a, b).sum(1)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def volume_quality(slice_quality: np.ndarray, mask: np.ndarray, refined: np.ndarray) -> float:
    """Per-case predicted quality from per-slice predictions.

    ``Σ_z q_z w_z / Σ_z w_z`` with ``w_z = |mask_z| + |refined_z|`` (the refined mask standing in for the label in
    the Dice denominator ``|A_z| + |B_z|``); the plain mean of ``q_z`` when both masks are empty everywhere.

    Args:
        slice_quality: ``(N,)`` predicted quality of each slice's input mask.
        mask: ``(N, ...)`` boolean input mask.
        refined: ``(N, ...)`` boolean refined mask.
    """
    q = np.asarray(slice_quality, dtype=np.float64).reshape(-1)
    w = np.asarray(mask).reshape(len(q), -1).sum(1) + np.asarray(refined).reshape(len(q), -1).sum(1)
    if w.sum() == 0:
        return float(q.mean())
    return float((q * w).sum() / w.sum())


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient; NaN with fewer than 3 points or a constant series."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def stack_slices(image: torch.Tensor, num_slices: int) -> torch.Tensor:
    """``(C, H, W, D)`` volume → ``(D, C·k, H, W)`` adjacent-slice samples (channel-major, edges replicated)."""
    from transforms.slices import adjacent_slice_indices

    c, h, w, d = image.shape
    idx = torch.as_tensor(adjacent_slice_indices(d, num_slices), dtype=torch.long).reshape(-1)
    x = image[..., idx].reshape(c, h, w, d, num_slices)
    return x.permute(3, 0, 4, 1, 2).reshape(d, c * num_slices, h, w).contiguous()


def pad_to_multiple(x: torch.Tensor, divisor: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode=mode) if mode != "constant" else F.pad(x, (0, pw, 0, ph))


def choose_k(dice_per_k: Sequence[float]) -> int:
    """The number of refinement steps with the highest Dice (the smallest such ``k`` on ties)."""
    values = np.asarray(dice_per_k, dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        raise ValueError(f"cannot choose k from {list(dice_per_k)}")
    return int(np.nanargmax(values))


def stop_step(qualities: Sequence[float], k: int, min_delta: float = 0.0) -> int:
    """Steps an early-stopped refinement keeps: the first ``i ≤ k`` whose predicted quality does not exceed step
    ``i − 1``'s by more than ``min_delta`` stops it at ``i − 1``; otherwise ``k``.

    Args:
        qualities: predicted quality of the masks after 0, 1, 2, ... steps (at least ``k + 1`` values).
        k: the most steps.
        min_delta: smallest rise that counts.
    """
    if len(qualities) < k + 1:
        raise ValueError(f"need the qualities of steps 0..{k}, got {len(qualities)} values")
    for i in range(1, k + 1):
        if qualities[i] <= qualities[i - 1] + min_delta:
            return i - 1
    return k


# ----------------------------------------------------------------------------------------------------------------
# Iterating the network
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RefinementTrace:
    """What :func:`iterate_refinement` did for one case.

    Attributes:
        masks: boolean masks ``(N, 1, H, W)`` after 0, 1, ..., ``steps`` refinement steps (0 = the input).
        qualities: predicted per-case quality of each mask in ``masks``.
        slice_qualities: predicted per-slice quality ``(N,)`` of each mask in ``masks``.
        steps: refinement steps kept (the last mask is the result).
        stopped_early: True when the early stop ended the loop before ``iterations``.
        forward_passes: network evaluations made (``steps + 1``, or ``steps + 2`` after an early stop).
    """

    masks: list[torch.Tensor] = field(default_factory=list)
    qualities: list[float] = field(default_factory=list)
    slice_qualities: list[np.ndarray] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    forward_passes: int = 0

    @property
    def mask(self) -> torch.Tensor:
        """The result: the mask after :attr:`steps` steps."""
        return self.masks[self.steps]

    @property
    def quality(self) -> float:
        """Predicted quality of the result."""
        return self.qualities[self.steps]


def refine_forward(network: Callable, x: torch.Tensor, mask: torch.Tensor, batch_size: int,
             divisor: int) -> tuple[torch.Tensor, np.ndarray]:
    """Refined boolean mask ``(N, 1, H, W)`` and per-slice quality ``(N,)`` of ``mask``, in chunks."""
    h, w = x.shape[-2:]
    refined, quality = [], []
    for s in range(0, x.shape[0], batch_size):
        xi = pad_to_multiple(x[s : s + batch_size], divisor, "replicate")
        mi = pad_to_multiple(mask[s : s + batch_size].to(xi.dtype), divisor, "constant")
        logits, q = network(xi, mi)
        refined.append((logits[..., :h, :w] > 0).cpu())
        quality.append(q.detach().reshape(-1).float().cpu())
    return torch.cat(refined), torch.cat(quality).numpy()


@torch.no_grad()
def iterate_refinement(network: Callable, image: torch.Tensor, mask: torch.Tensor, iterations: int,
                       early_stop: bool = False, min_delta: float = 0.0, batch_size: int = 32,
                       divisor: int = 1) -> RefinementTrace:
    """Apply the refinement network ``iterations`` times, feeding each output back as the next mask.

    Each pass ``network(x, m) -> (logits, quality)`` returns the refined mask (``logits > 0``) and the predicted
    quality of its *input* ``m``; so the quality of the mask after step ``i`` comes with step ``i + 1``'s pass and
    ``k`` steps take ``k + 1`` passes (the result's quality is always known). With ``early_stop``, when the predicted
    quality of the mask after step ``i`` is not above step ``i − 1``'s by more than ``min_delta``, the loop stops and
    the mask after step ``i − 1`` is the result (:func:`stop_step` gives the same answer from a full trace).

    Args:
        network: ``network(x, mask) -> (logits, quality)`` (e.g. :class:`networks.QualityUNet` in eval mode).
        image: ``(N, C, H, W)`` network image input (e.g. the slices of one case).
        mask: ``(N, 1, H, W)`` initial (base) mask, boolean or 0/1.
        iterations: the most refinement steps ``k`` (0 only scores the input mask).
        early_stop: stop when the predicted quality stops rising.
        min_delta: smallest quality rise that counts as rising.
        batch_size: slices per forward pass.
        divisor: pad height and width to a multiple of this for the network (cropped back).

    Returns:
        :class:`RefinementTrace`.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if image.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0] \
            or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"expected image (N, C, H, W) and mask (N, 1, H, W), got {tuple(image.shape)} and "
                         f"{tuple(mask.shape)}")
    trace = RefinementTrace()
    current = mask.bool().cpu()
    refined, q = refine_forward(network, image, current, batch_size, divisor)
    trace.forward_passes = 1
    trace.masks.append(current)
    trace.slice_qualities.append(q)
    trace.qualities.append(volume_quality(q, current.numpy(), refined.numpy()))
    for i in range(1, iterations + 1):
        current = refined
        refined, q = refine_forward(network, image, current, batch_size, divisor)
        trace.forward_passes += 1
        quality = volume_quality(q, current.numpy(), refined.numpy())
        if early_stop and quality <= trace.qualities[-1] + min_delta:
            trace.stopped_early = True
            trace.steps = i - 1
            return trace
        trace.masks.append(current)
        trace.slice_qualities.append(q)
        trace.qualities.append(quality)
        trace.steps = i
    return trace
