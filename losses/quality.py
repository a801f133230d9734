"""Quality-regularised Dice loss of the iterative refinement network.

Reference:
    J. Rebelo, K. Fernandes and J. S. Cardoso, "Quality-based Regularization for Iterative Deep Image
    Segmentation": ``L = (1 − Dice(p, y)) + λ·MSE(q̂, q*)``, where ``p`` is the refined mask, ``q̂`` the quality
    the network predicts for its *input* mask ``m`` and ``q* = Dice(m, y)`` that mask's true quality.

Choices the paper leaves open (``METHODS.md`` §4, A-Q-1, A-Q-2): soft Dice with smoothing 1 over the batch flattened
into one set of voxels (Keras style), ``q*`` the hard Dice of the input mask thresholded at 0.5 (a pair of empty
masks has Dice 1, A-ALL-3), λ = 1 by default.
"""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .checks import reduce

__all__ = ["QualityRegularisedDiceLoss", "hard_dice"]


def hard_dice(mask: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample Dice of ``mask > threshold`` against ``target > threshold``; 1 where both are empty.

    Args:
        mask: ``(B, ...)`` mask (binary or soft).
        target: ``(B, ...)`` ground truth, same shape.
        threshold: foreground threshold of both.

    Returns:
        ``(B,)`` float tensor in ``[0, 1]`` (no gradient).
    """
    if mask.shape != target.shape:
        raise ValueError(f"mask and target must have the same shape, got {tuple(mask.shape)} and "
                         f"{tuple(target.shape)}")
    a = (mask.detach() > threshold).reshape(mask.shape[0], -1).float()
    b = (target.detach() > threshold).reshape(target.shape[0], -1).float()
    inter = (a * b).sum(dim=1)
    total = a.sum(dim=1) + b.sum(dim=1)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))


class QualityRegularisedDiceLoss(_Loss):
    """``(1 − soft Dice(p, y)) + λ · (q̂ − q*)²`` with ``q* = Dice(input mask > 0.5, y > 0.5)``.

    Shapes: ``input`` (mask logits or probabilities) and ``target`` ``B1H[WD]``; ``input_mask`` (the mask the
    network was given) the same shape; ``quality`` (the network's predicted quality of ``input_mask``) ``(B,)`` or
    ``(B, 1)``.

    The soft Dice uses ``smooth`` in numerator and denominator. With ``batch=True`` (default, the Keras-style Dice the
    paper's code base uses) it is one value over all voxels of the batch, so ``reduction="none"`` repeats that value
    for every sample; with ``batch=False`` it is computed per sample. ``reduction="none"`` returns the per-sample loss
    with shape ``(B, 1, 1[, 1...])``; ``"mean"`` and ``"sum"`` are the mean and the sum of those values.

    Args:
        quality_weight: λ ≥ 0 (0 trains the refinement without the quality regulariser).
        sigmoid: apply a sigmoid to ``input`` (logits in); False means ``input`` already holds probabilities.
        smooth: additive smoothing of the soft Dice.
        batch: one soft Dice over the whole batch (True) or one per sample (False).
        quality_threshold: threshold of ``input_mask`` and ``target`` for ``q*``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example::

        loss = QualityRegularisedDiceLoss(quality_weight=1.0)
        value = loss(logits, label, quality=q_hat, input_mask=mask)
    """

    def __init__(self, quality_weight: float = 1.0, sigmoid: bool = True, smooth: float = 1.0, batch: bool = True,
                 quality_threshold: float = 0.5, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        for name, value in (("quality_weight", quality_weight), ("smooth", smooth)):
            if not float(value) >= 0.0 or float(value) == float("inf"):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        self.quality_weight = float(quality_weight)
        self.sigmoid = bool(sigmoid)
        self.smooth = float(smooth)
        self.batch = bool(batch)
        self.quality_threshold = float(quality_threshold)

    def _check(self, input: torch.Tensor, target: torch.Tensor, quality: torch.Tensor,
               input_mask: torch.Tensor) -> torch.Tensor:
        if input.ndim not in (4, 5) or input.shape[1] != 1:
            raise ValueError(f"input must have shape B1HW or B1HWD, got {tuple(input.shape)}")
        for name, other in (("target", target), ("input_mask", input_mask)):
            if other.shape != input.shape:
                raise ValueError(f"{name} must have the shape of input {tuple(input.shape)}, got {tuple(other.shape)}")
        quality = quality.reshape(-1)
        if quality.shape[0] != input.shape[0]:
            raise ValueError(f"quality must hold one value per sample ({input.shape[0]}), got shape "
                             f"{tuple(quality.shape)}")
        return quality

    def terms(self, input: torch.Tensor, target: torch.Tensor, quality: torch.Tensor,
              input_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample pieces: ``dice_loss`` (1 − soft Dice), ``quality_target`` (q*), ``quality_error`` ((q̂ − q*)²).

        All ``(B,)``; with ``batch=True`` ``dice_loss`` repeats the batch value.
        """
        quality = self._check(input, target, quality, input_mask)
        p = torch.sigmoid(input) if self.sigmoid else input
        t = target.to(p.dtype)
        dims = list(range(1, p.ndim))
        if self.batch:
            inter, total = (p * t).sum(), p.sum() + t.sum()
            dice_loss = (1.0 - (2.0 * inter + self.smooth) / (total + self.smooth)).expand(p.shape[0])
        else:
            inter, total = (p * t).sum(dim=dims), p.sum(dim=dims) + t.sum(dim=dims)
            dice_loss = 1.0 - (2.0 * inter + self.smooth) / (total + self.smooth)
        q_star = hard_dice(input_mask, target, self.quality_threshold).to(quality.dtype)
        return {"dice_loss": dice_loss, "quality_target": q_star, "quality_error": (quality - q_star).square()}

    def forward(self, input: torch.Tensor, target: torch.Tensor, quality: torch.Tensor,
                input_mask: torch.Tensor) -> torch.Tensor:
        """Loss of refined-mask ``input`` against ``target`` plus λ times the quality error of ``input_mask``."""
        parts = self.terms(input, target, quality, input_mask)
        per_sample = parts["dice_loss"] + self.quality_weight * parts["quality_error"]
        return reduce(per_sample, self.reduction, input.ndim - 1)
