"""Tests of losses.ActiveContourLabelLoss and losses.ACWEWithLabelLoss (hand values, NHWC reference, offsets)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from losses import ACWELoss, ACWEWithLabelLoss, ActiveContourLabelLoss

EPS = 1e-8


def reference_nhwc(f: np.ndarray, v: np.ndarray) -> float:
    """The code form written for NHWC arrays, slice for slice: the whole batch, summed."""
    y_pred = np.clip(np.transpose(f, (0, 2, 3, 1)), 0.0, 1.0)  # NCHW -> NHWC
    y_true = np.transpose(v, (0, 2, 3, 1))
    x = y_pred[:, 1:, :, :] - y_pred[:, :-1, :, :]
    y = y_pred[:, :, 1:, :] - y_pred[:, :, :-1, :]
    delta_x = x[:, 1:, :-2, :] ** 2
    delta_y = y[:, :-2, 1:, :] ** 2
    length = np.sum(np.sqrt(np.abs(delta_x + delta_y) + EPS))
    region_in = np.abs(np.sum(y_pred * (y_true - 1) ** 2))
    region_out = np.abs(np.sum((1 - y_pred) * y_true**2))
    return float(length + region_in + region_out)


def reference_loop(f: np.ndarray, v: np.ndarray, length_weight: float = 1.0, region_weight: float = 1.0) -> np.ndarray:
    """Per-image plain loops. 2D: the non-co-located offsets; 3D: co-located forward differences."""
    out = np.zeros(f.shape[0])
    spatial = f.shape[2:]
    for b in range(f.shape[0]):
        u = np.clip(f[b, 0], 0.0, 1.0)
        t = v[b, 0]
        length = 0.0
        if len(spatial) == 2:
            h, w = spatial
            for i in range(h - 2):
                for j in range(w - 2):
                    ddx = u[i + 2, j] - u[i + 1, j]
                    ddy = u[i, j + 2] - u[i, j + 1]
                    length += np.sqrt(ddx**2 + ddy**2 + EPS)
        else:
            for i, j, k in itertools.product(*[range(s - 1) for s in spatial]):
                ddx = u[i + 1, j, k] - u[i, j, k]
                ddy = u[i, j + 1, k] - u[i, j, k]
                ddz = u[i, j, k + 1] - u[i, j, k]
                length += np.sqrt(ddx**2 + ddy**2 + ddz**2 + EPS)
        region = 0.0
        for r in itertools.product(*[range(s) for s in spatial]):
            region += u[r] * (t[r] - 1) ** 2 + (1 - u[r]) * t[r] ** 2
        out[b] = length_weight * length + region_weight * region
    return out


def colocated_length_2d(u: np.ndarray) -> float:
    """What the length would be with co-located differences dx[:-1, :-1], dy[:-1, :-1] (NOT the code form)."""
    dx = u[1:, :] - u[:-1, :]
    dy = u[:, 1:] - u[:, :-1]
    return float(np.sum(np.sqrt(dx[:, :-1] ** 2 + dy[:-1, :] ** 2 + EPS)))


# ---------------------------------------------------------------------------------------------------------------------
# Length offsets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "position, expected_length",
    [
        # 3x3: the only length element combines dx = u[2,0] - u[1,0] with dy = u[0,2] - u[0,1].
        ((0, 0), 1e-4),  # co-located differences would see this pixel; the code form does not
        ((1, 1), 1e-4),
        ((2, 0), np.sqrt(1.0 + EPS)),  # enters through dx only
        ((0, 2), np.sqrt(1.0 + EPS)),  # enters through dy only
        ((1, 0), np.sqrt(1.0 + EPS)),  # dx = 0 - 1
        ((0, 1), np.sqrt(1.0 + EPS)),  # dy = 0 - 1
        ((2, 2), 1e-4),
    ],
)
def test_length_offsets_3x3(position: tuple[int, int], expected_length: float) -> None:
    u = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    u[(0, 0, *position)] = 1.0
    target = u.clone()  # perfect prediction: region term is 0
    loss = ActiveContourLabelLoss(reduction="sum")
    np.testing.assert_allclose(loss(u, target).item(), expected_length, rtol=1e-12)
    terms = loss.terms(u, target)
    assert terms["region"].item() == 0.0
    if position == (0, 0):
        # the co-located discretisation would give sqrt(2) + 3e-4 here; the test above would catch it
        assert abs(colocated_length_2d(u[0, 0].numpy()) - expected_length) > 1.0


def test_length_offsets_non_square_matches_nhwc_code() -> None:
    """H != W: slices translated onto the wrong axes would not even have matching shapes."""
    gen = torch.Generator().manual_seed(4)
    output = torch.rand(2, 1, 4, 6, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    target = (torch.rand(2, 1, 4, 6, generator=gen) > 0.5).double()
    value = ActiveContourLabelLoss(reduction="sum")(output, target)
    np.testing.assert_allclose(value.item(), reference_nhwc(output.numpy(), target.numpy()), rtol=1e-12)
    # the offsets are mirror images of each other: transposing H and W permutes the length elements
    swapped = ActiveContourLabelLoss(reduction="sum")(output.transpose(2, 3), target.transpose(2, 3))
    np.testing.assert_allclose(swapped.item(), value.item(), rtol=1e-12)
    u = output.clamp(0, 1)[0, 0].numpy()
    assert abs(colocated_length_2d(u) - ActiveContourLabelLoss().terms(output[:1], target[:1])["length"].item()) > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Hand values, region term, reductions
# ---------------------------------------------------------------------------------------------------------------------


def test_hand_values_region_and_length() -> None:
    """1x1x3x3, u = 0.25 everywhere (output 0.25), target = 1 on the first column.

    length: one element, dx = dy = 0 -> sqrt(1e-8) = 1e-4
    region_in  = Σ u (v-1)² = 0.25 · 6 = 1.5
    region_out = Σ (1-u) v² = 0.75 · 3 = 2.25
    """
    output = torch.full((1, 1, 3, 3), 0.25, dtype=torch.float64)
    target = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    target[..., 0] = 1.0
    np.testing.assert_allclose(ActiveContourLabelLoss()(output, target).item(), 1e-4 + 3.75, rtol=1e-12)
    np.testing.assert_allclose(
        ActiveContourLabelLoss(length_weight=2.0, region_weight=0.5)(output, target).item(), 2e-4 + 1.875, rtol=1e-12
    )
    # integer and bool targets give the same value
    for t in (target.long(), target.bool()):
        np.testing.assert_allclose(ActiveContourLabelLoss()(output, t).item(), 1e-4 + 3.75, rtol=1e-12)


def test_perfect_prediction_has_only_length_term() -> None:
    gen = torch.Generator().manual_seed(8)
    target = (torch.rand(2, 1, 5, 6, generator=gen) > 0.5).double()
    loss = ActiveContourLabelLoss(reduction="none")
    terms = loss.terms(target, target)
    assert bool(torch.all(terms["region"] == 0))
    expected = reference_loop(target.numpy(), target.numpy(), region_weight=0.0)
    np.testing.assert_allclose(loss(target, target).flatten().numpy(), expected, rtol=1e-12)
    # raw outputs beyond [0, 1] on the right side of the mask clip to the same perfect prediction
    output = target * 3.0 - (1 - target) * 2.0
    np.testing.assert_allclose(loss(output, target).flatten().numpy(), expected, rtol=1e-12)


def test_printed_eq3_region_ignores_false_positives() -> None:
    """Doc test of paper eq. (3) as printed, Σ ((1 − f)² − f²) v = Σ (1 − 2f) v: a false positive does not change
    it, whereas the code form (used here) penalises it."""
    target = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    target[..., 0, :] = 1.0
    clean = target.clone()
    false_positive = target.clone()
    false_positive[..., 2, 2] = 1.0

    def printed_region(f: torch.Tensor) -> float:
        return float(((1 - 2 * f) * target).sum())

    assert printed_region(clean) == printed_region(false_positive)
    loss = ActiveContourLabelLoss()
    region_clean = loss.terms(clean, target)["region"].item()
    region_fp = loss.terms(false_positive, target)["region"].item()
    assert region_clean == 0.0 and region_fp == 1.0


@pytest.mark.parametrize("shape", [(3, 1, 4, 5), (2, 1, 3, 4, 2)])
def test_matches_loop_reference_and_reductions(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(shape))
    output = torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 - 0.5
    target = (torch.rand(shape, generator=gen) > 0.4).double()
    ref = reference_loop(output.numpy(), target.numpy(), length_weight=0.7, region_weight=1.3)
    none = ActiveContourLabelLoss(0.7, 1.3, reduction="none")(output, target)
    assert none.shape == (shape[0],) + (1,) * (len(shape) - 1)
    np.testing.assert_allclose(none.flatten().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(ActiveContourLabelLoss(0.7, 1.3)(output, target).item(), ref.sum(), rtol=1e-12)
    mean = ActiveContourLabelLoss(0.7, 1.3, reduction="mean")(output, target)
    np.testing.assert_allclose(mean.item(), ref.mean(), rtol=1e-12)
    if len(shape) == 4:
        unit = ActiveContourLabelLoss()(output, target)
        np.testing.assert_allclose(unit.item(), reference_nhwc(output.numpy(), target.numpy()), rtol=1e-12)


def test_3d_hand_value() -> None:
    """1x1x2x2x2 with u = 1 at voxel (0, 0, 0) only: one length element with dx = dy = dz = -1."""
    output = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)
    output[0, 0, 0, 0, 0] = 1.0
    target = output.clone()
    np.testing.assert_allclose(ActiveContourLabelLoss()(output, target).item(), np.sqrt(3.0 + EPS), rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 1, 4, 5), (1, 1, 3, 3, 2)])
def test_gradcheck(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(13)
    output = (0.1 + 0.8 * torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    target = (torch.rand(shape, generator=gen) > 0.5).double().requires_grad_(True)
    for reduction in ("sum", "mean", "none"):
        loss = ActiveContourLabelLoss(length_weight=0.5, region_weight=2.0, reduction=reduction)
        assert torch.autograd.gradcheck(lambda o, t: loss(o, t), (output, target), eps=1e-6, atol=1e-7)


def test_clip_zeroes_gradient_outside() -> None:
    output = torch.tensor([[-1.0, 0.5, 2.0], [0.3, -0.2, 0.7], [1.5, 0.4, 0.6]], dtype=torch.float64)
    output = output.reshape(1, 1, 3, 3).requires_grad_(True)
    target = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    ActiveContourLabelLoss()(output, target).backward()
    outside = (output.detach() < 0) | (output.detach() > 1)
    assert bool(torch.all(output.grad[outside] == 0))


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_errors() -> None:
    loss = ActiveContourLabelLoss()
    with pytest.raises(ValueError, match=r"same shape.*\(2, 1, 4, 4\).*\(2, 1, 5, 4\)"):
        loss(torch.rand(2, 1, 5, 4), torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"exactly one channel.*\(1, 2, 4, 4\)"):
        loss(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r">= 3 for 2D.*\(1, 1, 2, 4\)"):
        loss(torch.rand(1, 1, 2, 4), torch.rand(1, 1, 2, 4))
    with pytest.raises(ValueError, match=r">= 2 for 3D"):
        loss(torch.rand(1, 1, 1, 4, 4), torch.rand(1, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="B1HW or B1HWD"):
        loss(torch.rand(1, 1, 4), torch.rand(1, 1, 4))
    with pytest.raises(ValueError, match="floating-point"):
        loss(torch.ones(1, 1, 3, 3, dtype=torch.long), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="reduction"):
        ActiveContourLabelLoss(reduction="avg")
    with pytest.raises(ValueError, match="length_weight"):
        ActiveContourLabelLoss(length_weight=-1.0)
    with pytest.raises(ValueError, match="region_weight"):
        ActiveContourLabelLoss(region_weight=float("inf"))


# ---------------------------------------------------------------------------------------------------------------------
# Mode 4: ACWE + alpha * label on labelled samples
# ---------------------------------------------------------------------------------------------------------------------


def mode4_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(17)
    output = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    image = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    target = (torch.rand(3, 1, 4, 4, generator=gen) > 0.5).double()
    return output, image, target


@pytest.mark.parametrize("pool_batch", [False, True])
def test_mode4_combination(pool_batch: bool) -> None:
    output, image, target = mode4_case()
    labelled = [True, False, True]
    target_placeholder = target.clone()
    target_placeholder[1] = float("nan")  # unlabelled targets are never read
    acwe = ACWELoss(pool_batch=pool_batch, reduction="none")(output, image).flatten()
    label = ActiveContourLabelLoss(reduction="none")(output, target).flatten()
    expected = acwe + 0.4 * label * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    loss = ACWEWithLabelLoss(alpha=0.4, pool_batch=pool_batch, reduction="none")
    none = loss(output, image, target_placeholder, labelled)
    assert none.shape == (3, 1, 1, 1)
    np.testing.assert_allclose(none.flatten().numpy(), expected.numpy(), rtol=1e-12)
    total = ACWEWithLabelLoss(pool_batch=pool_batch, reduction="sum")
    np.testing.assert_allclose(total(output, image, target, labelled).item(), expected.sum().item(), rtol=1e-12)
    np.testing.assert_allclose(total.last_acwe, acwe.sum().item(), rtol=1e-12)
    np.testing.assert_allclose(total.last_label, label[[0, 2]].sum().item(), rtol=1e-12)
    mean = ACWEWithLabelLoss(pool_batch=pool_batch)(output, image, target, torch.tensor(labelled))
    np.testing.assert_allclose(mean.item(), expected.sum().item() / 3, rtol=1e-12)
    np.testing.assert_allclose(loss.last_acwe, acwe.mean().item(), rtol=1e-12)  # "none": batch means
    np.testing.assert_allclose(loss.last_label, label[[0, 2]].sum().item() / 3, rtol=1e-12)


def test_mode4_no_labels_equals_acwe_and_gradients() -> None:
    output, image, target = mode4_case()
    output = output.clone().requires_grad_(True)
    value = ACWEWithLabelLoss()(output, image, target, [0, 0, 0])
    np.testing.assert_allclose(value.item(), ACWELoss()(output, image).item(), rtol=1e-14)
    value.backward()
    assert bool(torch.all(torch.isfinite(output.grad)))

    inner = (0.1 + 0.8 * torch.rand(2, 1, 3, 4, dtype=torch.float64)).requires_grad_(True)
    img = torch.rand(2, 1, 3, 4, dtype=torch.float64)
    tgt = (torch.rand(2, 1, 3, 4) > 0.5).double()
    loss = ACWEWithLabelLoss(reduction="sum")
    assert torch.autograd.gradcheck(lambda o: loss(o, img, tgt, [False, True]), (inner,), eps=1e-6, atol=1e-7)


def test_mode4_errors() -> None:
    output, image, target = mode4_case()
    with pytest.raises(ValueError, match="one flag per sample"):
        ACWEWithLabelLoss()(output, image, target, [True, False])
    with pytest.raises(ValueError, match="booleans"):
        ACWEWithLabelLoss()(output, image, target, [0, 2, 1])
    with pytest.raises(ValueError, match="target must have the same shape"):
        ACWEWithLabelLoss()(output, image, target[:, :, :3], [True, True, True])
    with pytest.raises(ValueError, match="alpha"):
        ACWEWithLabelLoss(alpha=-0.4)
