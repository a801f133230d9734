"""Refined inference: a bundle's base prediction followed by ``k`` refinement steps, for the batch runner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.refine.data import RefineCase
from pipeline.refine.iteration import iterate_refinement, stack_slices

__all__ = ["RefinePredictor", "SelectiveRefinePredictor", "load_refinement"]


def load_refinement(network: torch.nn.Module, ckpt_path: str | Path, iterations: int | None, early_stop: bool | None,
                    device: str | torch.device = "cpu") -> tuple[int, bool]:
    """Load a refinement checkpoint into ``network``; return ``(k, early_stop)``.

    ``early_stop`` None takes the checkpoint's recommendation (``"early_stop"``: True where the early stop did at
    least as well as the fixed ``k`` on the validation cases; True for checkpoints without it); ``iterations`` None
    takes the ``k`` chosen on validation for that mode (``"k_early_stop"`` or ``"k"``).

    Raises:
        FileNotFoundError: the checkpoint is missing (names the command that trains it).
        RuntimeError: ``iterations`` is None and the checkpoint holds no chosen ``k``.
    """
    from pipeline.io.files import load_weights

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"refinement checkpoint {ckpt_path} not found: train it with the bundle's "
                                "refine config (or python -m pipeline.experiments.refine_table <bundle>)")
    load_weights(network, ckpt_path, device)
    if iterations is not None and early_stop is not None:
        return int(iterations), bool(early_stop)
    return _chosen_k(ckpt_path, iterations, early_stop)


def _chosen_k(ckpt_path: Path, iterations: int | None, early_stop: bool | None) -> tuple[int, bool]:
    """``(k, early_stop)`` of a refinement checkpoint, each taken from it where the caller gave None."""
    state = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    state = state if isinstance(state, Mapping) else {}
    if early_stop is None:
        early_stop = bool(state.get("early_stop", True))
    if iterations is not None:
        return int(iterations), early_stop
    key = "k_early_stop" if early_stop else "k"
    if key not in state:
        raise RuntimeError(f"refinement checkpoint {ckpt_path} holds no chosen k ({key}); pass iterations explicitly")
    return int(state[key]), early_stop


class RefinePredictor:
    """Wrap a bundle's :class:`pipeline.inference.predictors.SlicePredictor`: base mask, ``k`` refinement steps,
    quality.

    ``predictor(volume, entry) -> (mask, quality)``: the base predictor's intensity transform and network give the
    base mask (label ``> 0`` of its post-processing), the refinement network refines it ``iterations`` times (with
    the early stop if asked) and the mask is returned in the volume's own voxel order, with the predicted per-case
    quality of the returned mask. :func:`pipeline.inference.batch.run_batch` writes that quality in the ``quality``
    column.

    Args:
        base: the bundle's slice predictor (its ``load`` loads the base checkpoint).
        network: the :class:`networks.QualityUNet`.
        ckpt_path: the refinement checkpoint (``model.pt`` written by
            :class:`pipeline.refine.evaluation.RefineEvaluation`).
        num_slices: adjacent slices per image channel.
        iterations: refinement steps; None takes the ``k`` chosen on validation stored in the checkpoint.
        early_stop: stop early when the predicted quality stops rising; None follows the checkpoint's
            recommendation (the early stop only where it did at least as well on the validation cases).
        min_delta: smallest quality rise that counts.
        batch_size: slices per forward pass.
        divisor: pad slices to a multiple of this.
        device: where the network runs.
    """

    def __init__(self, base: Any, network: torch.nn.Module, ckpt_path: str | Path, num_slices: int,
                 iterations: int | None = None, early_stop: bool | None = None, min_delta: float = 0.0,
                 batch_size: int = 32, divisor: int = 8, device: str | torch.device = "cpu") -> None:
        self.base, self.network, self.ckpt_path = base, network, Path(ckpt_path)
        self.num_slices, self.iterations = int(num_slices), iterations
        self.early_stop = None if early_stop is None else bool(early_stop)
        self.min_delta, self.batch_size, self.divisor = float(min_delta), int(batch_size), int(divisor)
        self.device = torch.device(device)

    def load(self) -> None:
        """Load the base checkpoint and the refinement checkpoint (and its ``k`` when ``iterations`` is None)."""
        self.base.load()
        self.iterations, self.early_stop = load_refinement(self.network, self.ckpt_path, self.iterations,
                                                           self.early_stop, self.device)

    def __call__(self, volume: Any, entry: Mapping[str, Any] | None = None) -> tuple[np.ndarray, float]:
        """``(mask in the volume's own voxel order, predicted quality)``."""
        if self.iterations is None or self.early_stop is None:
            self.load()
        base = self.base
        volumes = list(volume) if isinstance(volume, (list, tuple)) else [volume]
        first = volumes[0]
        image = torch.stack([torch.as_tensor(np.ascontiguousarray(v.to_ras()), dtype=torch.float32) for v in volumes])
        image = base.intensity(image, f"case '{(entry or {}).get('case', getattr(first, 'case', 'case'))}'")
        image = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).to(torch.float32)
        base.network.eval()
        self.network.eval()
        with torch.no_grad():
            output = base.inferer(image[None].to(base.device), base.network)
        base_mask = (base.postprocess(output[0]).cpu() > 0)
        trace = iterate_refinement(self.network, stack_slices(image, self.num_slices).to(self.device),
                                   RefineCase.as_slices(base_mask), int(self.iterations), early_stop=self.early_stop,
                                   min_delta=self.min_delta, batch_size=self.batch_size, divisor=self.divisor)
        mask = trace.mask[:, 0].permute(1, 2, 0).numpy().astype(np.uint8)
        return np.ascontiguousarray(first.from_ras(mask)), float(trace.quality)


class SelectiveRefinePredictor:
    """Refinement on top of the lung (selective) predictor: each clicked slice's VM-Net mask, refined ``k`` times.

    ``predictor(volume, entry) -> (mask, quality)``: :class:`pipeline.inference.predictors.SelectivePredictor` segments
    every axial slice holding clicks; each slice's mask is refined from the slice's network input ``(f, G)`` and the
    returned quality is the mean of the refined slices' predicted qualities, weighted by each refined mask's area (most
    volumes have clicks on one slice only, where it is that slice's quality).

    Args:
        base: the bundle's :class:`pipeline.inference.predictors.SelectivePredictor`.
        network: the :class:`networks.QualityUNet` (2 input channels: ``f`` and the guidance map).
        ckpt_path: the refinement checkpoint.
        iterations: refinement steps; None takes the ``k`` chosen on validation stored in the checkpoint.
        early_stop: stop early when the predicted quality stops rising; None follows the checkpoint's
            recommendation (the early stop only where it did at least as well on the validation cases).
        min_delta: smallest quality rise that counts.
        divisor: pad slices to a multiple of this.
        device: where the network runs.
    """

    needs_markers = True

    def __init__(self, base: Any, network: torch.nn.Module, ckpt_path: str | Path, iterations: int | None = None,
                 early_stop: bool | None = None, min_delta: float = 0.0, divisor: int = 8,
                 device: str | torch.device = "cpu") -> None:
        self.base, self.network, self.ckpt_path = base, network, Path(ckpt_path)
        self.iterations, self.early_stop, self.min_delta = iterations, early_stop, float(min_delta)
        self.divisor, self.device = int(divisor), torch.device(device)
        self._loaded = False

    def load(self) -> None:
        """Load the VM-Net and the refinement checkpoint (and its ``k`` when ``iterations`` is None)."""
        self.base.load()
        self.iterations, self.early_stop = load_refinement(self.network, self.ckpt_path, self.iterations,
                                                           self.early_stop, self.device)
        self.network.eval()
        self._loaded = True

    def __call__(self, volume: Any, entry: Mapping[str, Any] | None = None) -> tuple[np.ndarray, float]:
        """``(mask in the volume's own voxel order, predicted quality)``."""
        from pipeline.inference.predictors import SelectivePredictor
        from pipeline.selective.samples import loader_samples

        if not self._loaded:
            self.load()
        base_predict = self.base._predict
        scores: list[tuple[float, float]] = []

        def _refined(sample: Mapping[str, Any]) -> np.ndarray:
            x = loader_samples([sample], self.base.guidance)[0]["input"][None].to(self.device)
            mask = torch.as_tensor(np.asarray(base_predict(sample), dtype=bool))[None, None]
            trace = iterate_refinement(self.network, x, mask, int(self.iterations), early_stop=self.early_stop,
                                       min_delta=self.min_delta, batch_size=1, divisor=self.divisor)
            result = trace.mask[0, 0].numpy()
            scores.append((float(trace.quality), float(max(result.sum(), 1))))
            return result

        wrapped = SelectivePredictor(None, None, self.base.guidance, self.base.slicer, self.base.divisible,
                                     self.base.device, self.base.markers_space, sample_predict=_refined)
        mask = wrapped(volume, entry)
        if not scores:
            return mask, float("nan")
        q, w = np.asarray(scores).T
        return mask, float(np.sum(q * w) / np.sum(w))
