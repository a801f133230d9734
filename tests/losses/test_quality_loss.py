"""QualityRegularisedDiceLoss on hand-computed cases.

Two samples of 1x2x2 voxels (probabilities, ``sigmoid=False``)::

    p1 = [[1, 0], [0.5, 0]]   t1 = [[1, 0], [1, 0]]   input mask m1 = [[1, 1], [0, 0]]   predicted q̂1 = 0.7
    p2 = [[0, 0], [0, 0]]     t2 = [[0, 0], [0, 0]]   input mask m2 = [[0, 0], [0, 0]]   predicted q̂2 = 0.4

Batch soft Dice (smooth 1): Σp·t = 1 + 0.5 = 1.5, Σp + Σt = 1.5 + 2 = 3.5, Dice = (3 + 1) / (3.5 + 1) = 8/9, so the
Dice term is 1/9. Quality targets: q*1 = 2·1 / (2 + 2) = 0.5 (m1 and t1 share one voxel), q*2 = 1 (both empty), so
the squared errors are 0.2² = 0.04 and 0.6² = 0.36. With λ = 0.5 the per-sample losses are 1/9 + 0.02 and
1/9 + 0.18: mean 1/9 + 0.1 = 0.21111, sum 0.42222. Per-sample Dice (``batch=False``): sample 1 again 1/9, sample 2
(1 + 0) / (0 + 1) = 1, i.e. loss 0: mean (1/9 + 0.02 + 0.18) / 2 = 0.155556.
"""

from __future__ import annotations

import pytest
import torch

from losses import QualityRegularisedDiceLoss, hard_dice

P = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
T = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
M = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
Q = torch.tensor([[0.7], [0.4]])


def test_hard_dice_hand_computed() -> None:
    assert torch.allclose(hard_dice(M, T), torch.tensor([0.5, 1.0]))
    # soft masks are thresholded at 0.5: 0.6 -> 1, 0.4 -> 0
    assert torch.allclose(hard_dice(torch.tensor([[0.6, 0.4]]), torch.tensor([[1.0, 1.0]])), torch.tensor([2 / 3]))


@pytest.mark.parametrize(
    "reduction, batch, expected",
    [
        ("mean", True, 1 / 9 + 0.1),
        ("sum", True, 2 / 9 + 0.2),
        ("mean", False, (1 / 9 + 0.02 + 0.18) / 2),
        ("sum", False, 1 / 9 + 0.02 + 0.18),
    ],
)
def test_hand_computed(reduction: str, batch: bool, expected: float) -> None:
    loss = QualityRegularisedDiceLoss(quality_weight=0.5, sigmoid=False, smooth=1.0, batch=batch, reduction=reduction)
    assert float(loss(P, T, quality=Q, input_mask=M)) == pytest.approx(expected, abs=1e-6)


def test_none_reduction_shape_and_terms() -> None:
    loss = QualityRegularisedDiceLoss(quality_weight=0.5, sigmoid=False, reduction="none")
    out = loss(P, T, quality=Q.reshape(-1), input_mask=M)
    assert out.shape == (2, 1, 1, 1)
    assert torch.allclose(out.reshape(-1), torch.tensor([1 / 9 + 0.02, 1 / 9 + 0.18]), atol=1e-6)
    terms = loss.terms(P, T, Q, M)
    assert torch.allclose(terms["quality_target"], torch.tensor([0.5, 1.0]))
    assert torch.allclose(terms["quality_error"], torch.tensor([0.04, 0.36]), atol=1e-6)
    assert torch.allclose(terms["dice_loss"], torch.full((2,), 1 / 9), atol=1e-6)


def test_lambda_zero_is_plain_soft_dice() -> None:
    loss = QualityRegularisedDiceLoss(quality_weight=0.0, sigmoid=False)
    assert float(loss(P, T, quality=Q, input_mask=M)) == pytest.approx(1 / 9, abs=1e-6)


def test_sigmoid_of_zero_logits() -> None:
    """Logits 0 → p = 0.5 everywhere: Σp·t = 0.5·2 = 1, Σp + Σt = 4 + 2, Dice = 3/7, loss 4/7 (+ λ·0)."""
    loss = QualityRegularisedDiceLoss(quality_weight=1.0, sigmoid=True)
    quality = torch.tensor([0.5, 1.0])  # exactly q*: no quality error
    assert float(loss(torch.zeros_like(P), T, quality=quality, input_mask=M)) == pytest.approx(4 / 7, abs=1e-6)


def test_gradients_reach_logits_and_quality_only() -> None:
    logits = torch.zeros_like(P, requires_grad=True)
    quality = torch.tensor([0.7, 0.4], requires_grad=True)
    mask = M.clone().requires_grad_(True)
    QualityRegularisedDiceLoss(quality_weight=0.5)(logits, T, quality=quality, input_mask=mask).backward()
    assert logits.grad.abs().sum() > 0
    # d/dq of 0.5 * mean((q - q*)^2) = (q - q*) / 2
    assert torch.allclose(quality.grad, torch.tensor([0.1, -0.3]), atol=1e-6)
    assert mask.grad is None


def test_ill_opts_and_shapes() -> None:
    with pytest.raises(ValueError, match="quality_weight must be a finite non-negative number, got -1"):
        QualityRegularisedDiceLoss(quality_weight=-1)
    with pytest.raises(ValueError, match="not a valid LossReduction"):
        QualityRegularisedDiceLoss(reduction="max")
    loss = QualityRegularisedDiceLoss()
    with pytest.raises(ValueError, match=r"target must have the shape of input \(2, 1, 2, 2\), got \(2, 1, 2, 3\)"):
        loss(P, torch.zeros(2, 1, 2, 3), quality=Q, input_mask=M)
    with pytest.raises(ValueError, match=r"one value per sample \(2\), got shape \(3,\)"):
        loss(P, T, quality=torch.zeros(3), input_mask=M)
    with pytest.raises(ValueError, match=r"B1HW or B1HWD, got \(2, 2, 2, 2\)"):
        loss(torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2), quality=Q, input_mask=torch.zeros(2, 2, 2, 2))
