"""Tests of losses.MumfordShahLoss against hand-computed values and an independent numpy loop implementation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from losses import MumfordShahLoss


def reference_terms(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain-loop numpy version of eqs. (12)-(13): per-(b, n) data term and anisotropic L1 TV (no eps)."""
    b_size, n_size = y.shape[:2]
    c_size = x.shape[1]
    spatial = y.shape[2:]
    data = np.zeros((b_size, n_size))
    tv = np.zeros((b_size, n_size))
    for b in range(b_size):
        for n in range(n_size):
            mass = 0.0
            for r in itertools.product(*[range(s) for s in spatial]):
                mass += y[(b, n, *r)]
            for c in range(c_size):
                num = 0.0
                for r in itertools.product(*[range(s) for s in spatial]):
                    num += x[(b, c, *r)] * y[(b, n, *r)]
                centroid = num / mass
                for r in itertools.product(*[range(s) for s in spatial]):
                    data[b, n] += (x[(b, c, *r)] - centroid) ** 2 * y[(b, n, *r)]
            for axis in range(len(spatial)):
                for r in itertools.product(*[range(s) for s in spatial]):
                    if r[axis] + 1 < spatial[axis]:
                        r_next = list(r)
                        r_next[axis] += 1
                        tv[b, n] += abs(y[(b, n, *r_next)] - y[(b, n, *r)])
    return data, tv


def random_case(shape_y: tuple[int, ...], channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape_y, generator=gen, dtype=torch.float64)
    image = torch.rand((shape_y[0], channels, *shape_y[2:]), generator=gen, dtype=torch.float64)
    return torch.softmax(logits, dim=1), image


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------------------


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """B=2, N=2, 4x4, C=1.

    Sample 0: image = 1 on the left two columns, 0 elsewhere; y_1 = 0.75 on the left two columns, 0.25 elsewhere.
      mass(y_1) = 8*0.75 + 8*0.25 = 8, c_1 = (8*0.75*1)/8 = 0.75; by symmetry c_0 = 0.25.
      data_1 = 8*(1-0.75)^2*0.75 + 8*(0-0.75)^2*0.25 = 0.375 + 1.125 = 1.5; data_0 = 1.5 by symmetry.
      TV: along rows y is constant -> 0; along columns one jump of 0.5 per row -> 4*0.5 = 2 per class.
    Sample 1: image = 2 everywhere; y_1 = 0.5 everywhere (y_0 = 0.5).
      centroids = 2, data = 0, TV = 0.
    """
    y1 = torch.full((2, 4, 4), 0.25, dtype=torch.float64)
    y1[0, :, :2] = 0.75
    y1[1] = 0.5
    y = torch.stack([1 - y1, y1], dim=1)
    image = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    image[0, 0, :, :2] = 1.0
    image[1] = 2.0
    return y, image


@pytest.mark.parametrize("tv_weight", [1e-3, 0.5])
def test_hand_values_single_channel(tv_weight: float) -> None:
    y, image = hand_case()
    # E_{b,n} = data + tv_weight * TV, from the docstring of hand_case
    energy = np.array([[1.5 + tv_weight * 2.0, 1.5 + tv_weight * 2.0], [0.0, 0.0]])
    total = energy.sum()  # 3 + 4 * tv_weight
    np.testing.assert_allclose(total, 3.0 + 4 * tv_weight)

    out_sum = MumfordShahLoss(tv_weight=tv_weight, reduction="sum")(y, image)
    out_mean = MumfordShahLoss(tv_weight=tv_weight, reduction="mean")(y, image)
    out_none = MumfordShahLoss(tv_weight=tv_weight, reduction="none")(y, image)
    assert out_sum.shape == () and out_mean.shape == ()
    assert out_none.shape == (2, 2, 1, 1)
    np.testing.assert_allclose(out_sum.item(), total, rtol=1e-6)
    np.testing.assert_allclose(out_mean.item(), total / (2 * 2 * 1 * 16), rtol=1e-6)
    np.testing.assert_allclose(out_none[..., 0, 0].numpy(), energy / 16, rtol=1e-6, atol=1e-12)


def test_hand_values_two_channels() -> None:
    """Same y as hand_case, a second image channel for sample 0: 4 on the top two rows, 0 elsewhere.

    For y_1 on that channel: Σ x y_1 = 4*(4*0.75 + 4*0.25)... explicitly the top two rows hold 4 pixels at 0.75 and
    4 at 0.25 -> Σ x y_1 = 4*(3 + 1) = 16, c = 16/8 = 2 = mean of the channel (same for class 0).
    data contribution per class = Σ (x-2)^2 y = 4 * Σ y = 4 * 8 = 32.
    Sample 1, second channel = 3 everywhere -> 0. So E_{0,n} = 1.5 + 32 + 2λ, E_{1,n} = 0.
    """
    y, image1 = hand_case()
    second = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    second[0, 0, :2, :] = 4.0
    second[1] = 3.0
    image = torch.cat([image1, second], dim=1)
    lam = 1e-3
    energy = np.array([[33.5 + 2 * lam, 33.5 + 2 * lam], [0.0, 0.0]])
    out_sum = MumfordShahLoss(tv_weight=lam, reduction="sum")(y, image)
    out_mean = MumfordShahLoss(tv_weight=lam, reduction="mean")(y, image)
    out_none = MumfordShahLoss(tv_weight=lam, reduction="none")(y, image)
    np.testing.assert_allclose(out_sum.item(), energy.sum(), rtol=1e-6)
    np.testing.assert_allclose(out_mean.item(), energy.sum() / (2 * 2 * 2 * 16), rtol=1e-6)
    np.testing.assert_allclose(out_none[..., 0, 0].numpy(), energy / (2 * 16), rtol=1e-6, atol=1e-12)
    # and against the loop reference
    data, tv = reference_terms(y.numpy(), image.numpy())
    np.testing.assert_allclose(data + lam * tv, energy, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_2d_against_numpy(channels: int, dtype: torch.dtype) -> None:
    y, image = random_case((2, 2, 4, 4), channels, seed=channels)
    data, tv = reference_terms(y.numpy(), image.numpy())
    lam = 0.1
    energy = data + lam * tv
    p = 16
    rtol = 1e-6 if dtype == torch.float64 else 1e-5
    y, image = y.to(dtype), image.to(dtype)
    np.testing.assert_allclose(MumfordShahLoss(lam, "sum")(y, image).item(), energy.sum(), rtol=rtol)
    np.testing.assert_allclose(MumfordShahLoss(lam, "mean")(y, image).item(), energy.mean() / (channels * p), rtol=rtol)
    none = MumfordShahLoss(lam, "none")(y, image)
    assert none.shape == (2, 2, 1, 1)
    np.testing.assert_allclose(none[..., 0, 0].numpy(), energy / (channels * p), rtol=rtol)


def test_random_3d_against_numpy() -> None:
    y, image = random_case((2, 3, 3, 3, 3), 2, seed=7)
    data, tv = reference_terms(y.numpy(), image.numpy())
    lam = 0.05
    energy = data + lam * tv
    np.testing.assert_allclose(MumfordShahLoss(lam, "sum")(y, image).item(), energy.sum(), rtol=1e-6)
    expected_mean = energy.sum() / (2 * 3 * 2 * 27)  # B * N * C * P
    np.testing.assert_allclose(MumfordShahLoss(lam, "mean")(y, image).item(), expected_mean, rtol=1e-6)
    none = MumfordShahLoss(lam, "none")(y, image)
    assert none.shape == (2, 3, 1, 1, 1)
    np.testing.assert_allclose(none.reshape(2, 3).numpy(), energy / (2 * 27), rtol=1e-6)


def test_3d_tv_uses_all_three_axes() -> None:
    """A single jump along the depth axis only must be counted by the TV term."""
    y1 = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)
    y1[..., 1] = 1.0  # jump of 1 along depth at each of the 4 (h, w) positions
    y = torch.cat([1 - y1, y1], dim=1)
    image = y1.clone()  # piecewise constant, exactly matched -> data term 0
    loss = MumfordShahLoss(tv_weight=1.0, reduction="sum", eps=0.0)
    np.testing.assert_allclose(loss(y, image).item(), 2 * 4.0)  # 4 jumps per class, 2 classes


# ---------------------------------------------------------------------------------------------------------------------
# Reductions, terms, softmax
# ---------------------------------------------------------------------------------------------------------------------


def test_sum_is_eq12_and_mean_is_normalised_sum() -> None:
    y, image = random_case((3, 2, 5, 6), 3, seed=3)
    lam = 1e-3
    # eq. (12) written directly with broadcasting, summed over batch, classes, channels and pixels
    mass = y.sum(dim=(2, 3))  # (B, N)
    cent = torch.einsum("bchw,bnhw->bnc", image, y) / mass[..., None]
    data = ((image[:, None] - cent[..., None, None]) ** 2 * y[:, :, None]).sum()
    tv = (y[:, :, 1:] - y[:, :, :-1]).abs().sum() + (y[:, :, :, 1:] - y[:, :, :, :-1]).abs().sum()
    eq12 = (data + lam * tv).item()
    out_sum = MumfordShahLoss(lam, "sum")(y, image).item()
    out_mean = MumfordShahLoss(lam, "mean")(y, image).item()
    out_none = MumfordShahLoss(lam, "none")(y, image)
    np.testing.assert_allclose(out_sum, eq12, rtol=1e-6)
    np.testing.assert_allclose(out_mean, out_sum / (3 * 2 * 3 * 30), rtol=1e-10)
    np.testing.assert_allclose(out_none.mean().item(), out_mean, rtol=1e-10)
    assert out_none.shape == (3, 2, 1, 1)


@pytest.mark.parametrize("reduction", ["avg", "", None, "Mean"])
def test_invalid_reduction(reduction) -> None:
    with pytest.raises(ValueError, match="reduction"):
        MumfordShahLoss(reduction=reduction)


@pytest.mark.parametrize("kwargs", [{"tv_weight": -1.0}, {"eps": -1e-8}, {"tv_weight": float("nan")}])
def test_invalid_weights(kwargs) -> None:
    with pytest.raises(ValueError):
        MumfordShahLoss(**kwargs)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_terms_add_up(reduction: str) -> None:
    y, image = random_case((2, 2, 4, 5), 2, seed=11)
    loss = MumfordShahLoss(tv_weight=0.3, reduction=reduction)
    terms = loss.terms(y, image)
    assert set(terms) == {"data", "tv"}
    torch.testing.assert_close(terms["data"] + terms["tv"], loss(y, image))
    data, tv = reference_terms(y.numpy(), image.numpy())
    if reduction == "sum":
        np.testing.assert_allclose(terms["data"].item(), data.sum(), rtol=1e-6)
        np.testing.assert_allclose(terms["tv"].item(), 0.3 * tv.sum(), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_softmax_flag_equals_softmax_first(reduction: str) -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 6, 5, generator=gen)
    image = torch.rand(2, 2, 6, 5, generator=gen)
    a = MumfordShahLoss(reduction=reduction, softmax=True)(logits, image)
    b = MumfordShahLoss(reduction=reduction)(torch.softmax(logits, dim=1), image)
    torch.testing.assert_close(a, b)


def test_single_channel_rules() -> None:
    y = torch.ones(1, 1, 4, 4)
    image = torch.rand(1, 1, 4, 4)
    out = MumfordShahLoss(reduction="sum")(y, image)  # allowed without softmax: one region, no complement added
    np.testing.assert_allclose(out.item(), ((image - image.mean()) ** 2).sum().item(), rtol=1e-5)
    with pytest.raises(ValueError, match="softmax=True"):
        MumfordShahLoss(softmax=True)(y, image)


def test_empty_class_is_finite() -> None:
    """A class with no mass (y exactly 0) gives a zero centroid thanks to eps, not NaN."""
    y1 = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    image = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    y = torch.cat([1 - y1, y1], dim=1)
    out = MumfordShahLoss(reduction="sum")(y, image)
    out.backward()
    assert torch.isfinite(out) and torch.all(torch.isfinite(y1.grad))
    np.testing.assert_allclose(out.item(), ((image - image.mean()) ** 2).sum().item(), rtol=1e-6)


def test_half_precision_inputs_computed_in_float32() -> None:
    y, image = random_case((1, 2, 8, 8), 1, seed=2)
    ref = MumfordShahLoss(reduction="sum")(y.half().double(), image.half().double())
    out = MumfordShahLoss(reduction="sum")(y.half(), image.half())
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape_in, shape_img, match",
    [
        ((2, 2, 4, 4), (3, 1, 4, 4), r"\(2, 2, 4, 4\).*\(3, 1, 4, 4\)"),  # batch mismatch
        ((2, 2, 4, 4), (2, 1, 4, 5), r"\(2, 2, 4, 4\).*\(2, 1, 4, 5\)"),  # spatial mismatch
        ((2, 2, 4, 4, 4), (2, 1, 4, 4, 3), r"\(2, 2, 4, 4, 4\).*\(2, 1, 4, 4, 3\)"),
        ((2, 2, 4), (2, 1, 4), r"\(2, 2, 4\)"),  # too few dims
        ((1, 2, 2, 2, 2, 2), (1, 1, 2, 2, 2, 2), r"\(1, 2, 2, 2, 2, 2\)"),  # too many dims
        ((2, 2, 4, 4), (2, 1, 4, 4, 1), r"\(2, 1, 4, 4, 1\)"),  # image ndim differs
        ((2, 2, 4, 4), (2, 0, 4, 4), r"\(2, 0, 4, 4\)"),  # no image channel
    ],
)
def test_shape_errors(shape_in, shape_img, match) -> None:
    with pytest.raises(ValueError, match=match):
        MumfordShahLoss()(torch.rand(shape_in), torch.rand(shape_img))


def test_non_float_errors() -> None:
    with pytest.raises(ValueError, match="input.*int64"):
        MumfordShahLoss()(torch.ones(1, 2, 4, 4, dtype=torch.long), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="image.*uint8"):
        MumfordShahLoss()(torch.rand(1, 2, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Piecewise-constant sanity
# ---------------------------------------------------------------------------------------------------------------------


def two_region_image() -> tuple[torch.Tensor, torch.Tensor]:
    """6x6 image: 0.2 outside, 0.9 on the 3x3 square rows 1..3, cols 2..4; indicator of the square."""
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 1:4, 2:5] = 1.0
    image = 0.2 + 0.7 * mask
    return image, mask


def test_exact_partition_gives_tv_times_perimeter() -> None:
    image, mask = two_region_image()
    y = torch.cat([1 - mask, mask], dim=1)
    lam = 0.01
    loss = MumfordShahLoss(tv_weight=lam, reduction="sum")
    terms = loss.terms(y, image)
    np.testing.assert_allclose(terms["data"].item(), 0.0, atol=1e-12)
    # perimeter of a 3x3 square in the grid: 3 vertical edges * 2 sides + 3 horizontal * 2 = 12 jumps per class
    perimeter = 12
    np.testing.assert_allclose(loss(y, image).item(), lam * perimeter * 2, rtol=1e-6)


def test_wrong_partition_is_worse() -> None:
    image, mask = two_region_image()
    loss = MumfordShahLoss(tv_weight=0.01, reduction="sum")
    right = loss(torch.cat([1 - mask, mask], dim=1), image)
    shifted = torch.roll(mask, shifts=1, dims=-1)
    wrong = loss(torch.cat([1 - shifted, shifted], dim=1), image)
    swapped_soft = 0.5 * torch.ones_like(mask)
    blurred = loss(torch.cat([1 - swapped_soft, swapped_soft], dim=1), image)
    assert wrong > right
    assert blurred > right


# ---------------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction, shape", [("sum", (2, 2, 4, 4)), ("none", (2, 2, 4, 4)), ("mean", (1, 3, 3, 3, 3))]
)
def test_gradcheck(reduction: str, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    image = torch.rand((shape[0], 2, *shape[2:]), generator=gen, dtype=torch.float64, requires_grad=True)
    loss = MumfordShahLoss(tv_weight=0.1, reduction=reduction)

    def fn(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return loss(torch.softmax(z, dim=1), x)

    assert torch.autograd.gradcheck(fn, (logits, image), eps=1e-6, atol=1e-5)


def test_gradcheck_softmax_flag() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    image = torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    loss = MumfordShahLoss(tv_weight=1e-3, softmax=True, reduction="mean")
    assert torch.autograd.gradcheck(lambda z: loss(z, image), (logits,), eps=1e-6, atol=1e-6)
