"""Scores of binary masks: :func:`mask_scores` / :func:`dice_jaccard` on arrays, and per-case precision and recall as
MONAI metrics and ignite metric handlers.

MONAI's ``ConfusionMatrixMetric`` keeps raw confusion counts in its buffer, so per-case values (for the CSVs that
:class:`pipeline.training.handlers.PerCaseMetrics` writes) are not available from it. :class:`OverlapRatioMetric`
keeps one value per case and channel instead, like ``DiceMetric`` does, and :class:`Precision` / :class:`Recall` wrap
it as handlers with the same arguments as ``monai.handlers.MeanDice``.

Definitions (one-hot ``y_pred`` and ``y`` of shape ``(B, C, spatial...)``, per case and channel)::

    precision = TP / (TP + FP) = |pred ∩ gt| / |pred|        NaN when the prediction is empty
    recall    = TP / (TP + FN) = |pred ∩ gt| / |gt|          NaN when the ground truth is empty

NaN values are left out of the mean (MONAI's ``do_metric_reduction`` "not-nan" rule), so a case with an empty
prediction counts in Dice (as 0) but not in precision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["OverlapRatioMetric", "Precision", "Recall", "dice_jaccard", "mask_scores"]

_KINDS = ("precision", "recall")


def mask_scores(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor,
                empty: float = 1.0) -> dict[str, float]:
    """Dice, Jaccard (``|A∩B|/|A∪B|``), precision and recall of a binary mask ``pred`` against ``ref``.

    A score whose denominator is zero (Dice and Jaccard when both masks are empty, precision for an empty ``pred``,
    recall for an empty ``ref``) is ``empty`` (1.0 by default: nothing to find and nothing found is right; pass
    ``float("nan")`` to leave such cases out of a mean).
    """
    a = np.asarray(pred).astype(bool)
    b = np.asarray(ref).astype(bool)
    tp, na, nb = float(np.logical_and(a, b).sum()), float(a.sum()), float(b.sum())
    union = na + nb - tp
    return {"dice": 2.0 * tp / (na + nb) if union else empty, "jaccard": tp / union if union else empty,
            "precision": tp / na if na else empty, "recall": tp / nb if nb else empty}


def dice_jaccard(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Dice and Jaccard of two binary masks (:func:`mask_scores`); both 1.0 when both masks are empty."""
    scores = mask_scores(pred, ref)
    return scores["dice"], scores["jaccard"]


class OverlapRatioMetric(CumulativeIterationMetric):
    """Per-case ``precision`` or ``recall`` of one-hot binary predictions (see the module docstring).

    Args:
        kind: ``"precision"`` or ``"recall"``.
        include_background: keep channel 0. Defaults to True (use with a one-channel ``output_transform``).
        reduction: MONAI metric reduction of the buffer in :meth:`aggregate`. Defaults to ``"mean"``.
    """

    def __init__(self, kind: str, include_background: bool = True,
                 reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.kind = kind
        self.include_background = include_background
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}")
        if y_pred.ndim < 3:
            raise ValueError(f"expected (B, C, spatial...) one-hot tensors, got shape {tuple(y_pred.shape)}")
        if not self.include_background:
            y_pred, y = y_pred[:, 1:], y[:, 1:]
        pred = y_pred.float() > 0.5
        gt = y.float() > 0.5
        dims = tuple(range(2, pred.ndim))
        tp = (pred & gt).sum(dims).double()
        denominator = (pred if self.kind == "precision" else gt).sum(dims).double()
        out = torch.full_like(tp, float("nan"))
        nonzero = denominator > 0
        out[nonzero] = tp[nonzero] / denominator[nonzero]
        return out.float()

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value


class Precision(IgniteMetricHandler):
    """Mean per-case precision (handler twin of :class:`OverlapRatioMetric` with ``kind="precision"``).

    Args:
        include_background, reduction: see :class:`OverlapRatioMetric`.
        output_transform: as for ``monai.handlers.MeanDice`` (e.g. ``pipeline.training.handlers.channel_output(1)``).
        save_details: keep per-case values in ``engine.state.metric_details`` (for per-case CSVs). Defaults to True.
    """

    kind = "precision"

    def __init__(self, include_background: bool = True, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        metric_fn = OverlapRatioMetric(self.kind, include_background=include_background, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class Recall(Precision):
    """Mean per-case recall (sensitivity); arguments as :class:`Precision`."""

    kind = "recall"
