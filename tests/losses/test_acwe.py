"""Tests of losses.ACWELoss against hand-computed values and an independent plain-loop numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losses import ACWELoss


def reference_acwe(f: np.ndarray, g: np.ndarray, nu: float, pool_batch: bool, denominator: str) -> np.ndarray:
    """Plain-loop numpy version of the code form; returns the per-image values (pooled shares if pool_batch)."""
    batch = f.shape[0]
    u = [[min(max(float(x), 0.0), 1.0) for x in f[b].ravel()] for b in range(batch)]
    img = [[float(x) for x in g[b].ravel()] for b in range(batch)]

    def centroid(groups: list[int], inside: bool) -> float:
        num, den = 0.0, 0.0
        for b in groups:
            for w, x in zip(u[b], img[b]):
                w = w if inside else 1.0 - w
                num += w * x
                den += (1.0 if w != 0.0 else 0.0) if denominator == "count" else w
        return num / den if den > 0 else 0.0

    out = np.zeros(batch)
    for b in range(batch):
        groups = list(range(batch)) if pool_batch else [b]
        c1, c2 = centroid(groups, True), centroid(groups, False)
        total = 0.0
        for w, x in zip(u[b], img[b]):
            total += w * (x - c1) ** 2 + (1.0 - w) * (x - c2) ** 2 + nu * w
        out[b] = abs(total)
    return out


def random_case(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw output in [-0.5, 1.5] (about half of it clipped) and an image in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    output = torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 - 0.5
    image = torch.rand(shape, generator=gen, dtype=torch.float64)
    return output, image


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------------------


def hand_case_3x3() -> tuple[torch.Tensor, torch.Tensor]:
    """1x1x3x3, output with values below 0 and above 1.

    output = [[2, 1, -1], [1, 0.5, 0], [0, -3, 0]]  ->  u = [[1, 1, 0], [1, 0.5, 0], [0, 0, 0]]
    image  = [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    count form: count(u) = 4, Σ u g = 3.5 -> c1 = 7/8; count(1-u) = 6, Σ (1-u) g = 0.5 -> c2 = 1/12.
      inside  = 3·(1/8)² + 0.5·(1/8)² = 7/128
      outside = 0.5·(11/12)² + 5·(1/12)² = 131/288
      area    = Σ u = 3.5
      L = 7/128 + 131/288 + 3.5 ν = 587/1152 + 3.5 ν
    sum form: c1 = 3.5/3.5 = 1, c2 = 0.5/5.5 = 1/11.
      inside = 0, outside = 0.5·(10/11)² + 5·(1/11)² = 5/11, L = 5/11 + 3.5 ν
    """
    output = torch.tensor([[2.0, 1.0, -1.0], [1.0, 0.5, 0.0], [0.0, -3.0, 0.0]], dtype=torch.float64)
    image = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    return output.reshape(1, 1, 3, 3), image.reshape(1, 1, 3, 3)


@pytest.mark.parametrize("nu", [0.004, 5e-4, 0.0])
def test_hand_values_count_form(nu: float) -> None:
    output, image = hand_case_3x3()
    expected = 587.0 / 1152.0 + 3.5 * nu
    for reduction in ("mean", "sum"):
        value = ACWELoss(nu=nu, reduction=reduction)(output, image)
        np.testing.assert_allclose(value.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(reference_acwe(output.numpy(), image.numpy(), nu, False, "count"), [expected])


@pytest.mark.parametrize("nu", [0.004, 5e-4])
def test_hand_values_sum_denominator(nu: float) -> None:
    output, image = hand_case_3x3()
    value = ACWELoss(nu=nu, denominator="sum")(output, image)
    np.testing.assert_allclose(value.item(), 5.0 / 11.0 + 3.5 * nu, rtol=1e-12)


def test_default_nu_is_paper_value() -> None:
    assert ACWELoss().nu == 0.004
    output, image = hand_case_3x3()
    # the area term is linear in nu: L(nu) - L(0) = nu * Σ u = 3.5 nu
    diff = ACWELoss()(output, image) - ACWELoss(nu=0.0)(output, image)
    np.testing.assert_allclose(diff.item(), 0.004 * 3.5, rtol=1e-10)


def pooling_case() -> tuple[torch.Tensor, torch.Tensor]:
    """2x1x4x4 binary outputs where pooling the centroids matters.

    Image 0: g = 1 on the left two columns, 0 elsewhere; u = 1 on the left two columns.
    Image 1: g = 0.5 everywhere; u = 1 on the top row.
    Per image: image 0 has c1 = 1, c2 = 0 -> L_0 = 8 ν; image 1 has c1 = c2 = 0.5 -> L_1 = 4 ν.
    Pooled: count(u) = 12, Σ u g = 8 + 2 = 10 -> c1 = 5/6; count(1-u) = 20, Σ (1-u) g = 6 -> c2 = 3/10.
      share 0 = 8·(1/6)² + 8·(3/10)² + 8 ν = 2/9 + 0.72 + 8 ν
      share 1 = 4·(1/3)² + 12·(1/5)² + 4 ν = 4/9 + 0.48 + 4 ν
      pooled  = 2/3 + 1.2 + 12 ν
    """
    output = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    image = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    output[0, 0, :, :2] = 1.0
    image[0, 0, :, :2] = 1.0
    output[1, 0, 0, :] = 1.0
    image[1] = 0.5
    return output, image


def test_pool_batch_hand_values() -> None:
    output, image = pooling_case()
    nu = 0.004
    per_image = ACWELoss(nu=nu, pool_batch=False, reduction="none")(output, image)
    pooled = ACWELoss(nu=nu, pool_batch=True, reduction="none")(output, image)
    assert per_image.shape == pooled.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(per_image.flatten().numpy(), [8 * nu, 4 * nu], rtol=1e-12)
    np.testing.assert_allclose(pooled.flatten().numpy(), [2 / 9 + 0.72 + 8 * nu, 4 / 9 + 0.48 + 4 * nu], rtol=1e-12)

    # pool_batch=True, "sum" is the authors' code on the whole batch
    np.testing.assert_allclose(
        ACWELoss(nu=nu, pool_batch=True, reduction="sum")(output, image).item(), 2 / 3 + 1.2 + 12 * nu, rtol=1e-12
    )
    np.testing.assert_allclose(
        ACWELoss(nu=nu, pool_batch=True, reduction="mean")(output, image).item(), (2 / 3 + 1.2 + 12 * nu) / 2
    )
    np.testing.assert_allclose(ACWELoss(nu=nu, reduction="sum")(output, image).item(), 12 * nu, rtol=1e-12)
    np.testing.assert_allclose(ACWELoss(nu=nu, reduction="mean")(output, image).item(), 6 * nu, rtol=1e-12)
    for pool in (False, True):
        ref = reference_acwe(output.numpy(), image.numpy(), nu, pool, "count")
        got = ACWELoss(nu=nu, pool_batch=pool, reduction="none")(output, image).flatten().numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_binary_output_matches_printed_eq2() -> None:
    """For a binary u, the code form equals paper eq. (2) with the hard partition f > 0 (region means)."""
    gen = torch.Generator().manual_seed(3)
    output = (torch.rand(1, 1, 6, 5, generator=gen) > 0.5).double()
    image = torch.rand(1, 1, 6, 5, generator=gen, dtype=torch.float64)
    inside = output > 0
    g_in, g_out = image[inside], image[~inside]
    eq2 = 0.004 * float(inside.sum()) + ((g_in - g_in.mean()) ** 2).sum() + ((g_out - g_out.mean()) ** 2).sum()
    for denominator in ("count", "sum"):
        value = ACWELoss(denominator=denominator)(output, image)
        np.testing.assert_allclose(value.item(), eq2.item(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference on random inputs, batch behaviour, reductions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1, 5, 4), (2, 1, 3, 4, 2)])
@pytest.mark.parametrize("pool_batch", [False, True])
@pytest.mark.parametrize("denominator", ["count", "sum"])
def test_matches_loop_reference(shape: tuple[int, ...], pool_batch: bool, denominator: str) -> None:
    output, image = random_case(shape, seed=len(shape) + 7 * pool_batch)
    nu = 0.004
    ref = reference_acwe(output.numpy(), image.numpy(), nu, pool_batch, denominator)
    loss = ACWELoss(nu=nu, pool_batch=pool_batch, denominator=denominator, reduction="none")
    none = loss(output, image)
    assert none.shape == (shape[0],) + (1,) * (len(shape) - 1)
    np.testing.assert_allclose(none.flatten().numpy(), ref, rtol=1e-10)
    total = ACWELoss(nu=nu, pool_batch=pool_batch, denominator=denominator, reduction="sum")(output, image)
    mean = ACWELoss(nu=nu, pool_batch=pool_batch, denominator=denominator, reduction="mean")(output, image)
    np.testing.assert_allclose(total.item(), ref.sum(), rtol=1e-10)
    np.testing.assert_allclose(mean.item(), ref.sum() / shape[0], rtol=1e-10)


def test_pool_batch_false_is_batch_independent() -> None:
    output, image = random_case((2, 1, 4, 4), seed=11)
    other_output, other_image = random_case((2, 1, 4, 4), seed=12)
    output2 = torch.cat([output[:1], other_output[1:]])
    image2 = torch.cat([image[:1], other_image[1:]])
    per_a = ACWELoss(reduction="none")(output, image)[0]
    per_b = ACWELoss(reduction="none")(output2, image2)[0]
    np.testing.assert_allclose(per_a.item(), per_b.item(), rtol=1e-14)
    alone = ACWELoss(reduction="sum")(output[:1], image[:1])
    np.testing.assert_allclose(per_a.item(), alone.item(), rtol=1e-14)
    pooled_a = ACWELoss(pool_batch=True, reduction="none")(output, image)[0]
    pooled_b = ACWELoss(pool_batch=True, reduction="none")(output2, image2)[0]
    assert abs(pooled_a.item() - pooled_b.item()) > 1e-6


def test_clip_behaviour() -> None:
    output, image = random_case((2, 1, 5, 5), seed=5)
    assert bool((output < 0).any()) and bool((output > 1).any())
    for denominator in ("count", "sum"):
        loss = ACWELoss(denominator=denominator)
        np.testing.assert_allclose(loss(output, image).item(), loss(output.clamp(0, 1), image).item(), rtol=1e-14)
    output = output.clone().requires_grad_(True)
    ACWELoss()(output, image).backward()
    outside = (output.detach() < 0) | (output.detach() > 1)
    assert bool(torch.all(output.grad[outside] == 0))
    assert bool(torch.any(output.grad[~outside] != 0))


@pytest.mark.parametrize("denominator", ["count", "sum"])
@pytest.mark.parametrize("fill", [-0.3, 0.0, 1.0, 1.7])
def test_empty_region_is_finite(denominator: str, fill: float) -> None:
    """All u = 0 (or all u = 1): the empty region's centroid is 0, the value is Σ (g − mean g)² (+ area)."""
    image = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    output = torch.full_like(image, fill, requires_grad=True)
    value = ACWELoss(denominator=denominator, reduction="none")(output, image)
    value.sum().backward()
    assert bool(torch.all(torch.isfinite(value))) and bool(torch.all(torch.isfinite(output.grad)))
    flat = image.flatten(start_dim=1)
    variance_sum = ((flat - flat.mean(dim=1, keepdim=True)) ** 2).sum(dim=1)
    area = 0.0 if fill <= 0 else 16 * 0.004
    np.testing.assert_allclose(value.detach().flatten().numpy(), (variance_sum + area).numpy(), rtol=1e-12)


def test_half_precision_computed_in_float32() -> None:
    output, image = random_case((1, 1, 4, 4), seed=9)
    value = ACWELoss()(output.half(), image.half())
    assert value.dtype == torch.float32
    np.testing.assert_allclose(value.item(), ACWELoss()(output.half().double(), image.half().double()).item(), 1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 4, 3), (1, 1, 3, 2, 2)])
@pytest.mark.parametrize("pool_batch", [False, True])
@pytest.mark.parametrize("denominator", ["count", "sum"])
def test_gradcheck(shape: tuple[int, ...], pool_batch: bool, denominator: str) -> None:
    """float64 gradcheck with u strictly inside (0, 1), away from the clip points.

    For the count form the count is a detached integer; it is locally constant for such inputs (no u crosses 0 or
    1 under the finite-difference step), so the numerical gradient equals the numerator-only analytic gradient.
    """
    gen = torch.Generator().manual_seed(21)
    output = (0.1 + 0.8 * torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    image = torch.rand(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        loss = ACWELoss(nu=0.004, pool_batch=pool_batch, reduction=reduction, denominator=denominator)
        assert torch.autograd.gradcheck(lambda o, g: loss(o, g), (output, image), eps=1e-6, atol=1e-7)


def test_count_form_gradient_flows_through_numerators_only() -> None:
    """d/du of the count form with c1, c2 recomputed from a detached count, checked against a closed form."""
    output, image = hand_case_3x3()
    output = output.clamp(0.1, 0.9).requires_grad_(True)  # all u strictly inside (0, 1): both counts are 9
    ACWELoss(nu=0.0, reduction="sum")(output, image).backward()
    u, g = output.detach().flatten(), image.flatten()
    c1, c2 = (u * g).sum() / 9, ((1 - u) * g).sum() / 9
    d_c1 = -2 * (u * (g - c1)).sum()  # ∂L/∂c1
    d_c2 = -2 * ((1 - u) * (g - c2)).sum()  # ∂L/∂c2
    expected = (g - c1) ** 2 - (g - c2) ** 2 + d_c1 * g / 9 - d_c2 * g / 9
    np.testing.assert_allclose(output.grad.flatten().numpy(), expected.numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_shape_errors() -> None:
    loss = ACWELoss()
    good = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"B1HW or B1HWD.*\(2, 4, 4\)"):
        loss(torch.rand(2, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"exactly one channel.*\(2, 2, 4, 4\)"):
        loss(torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 1, 4, 5\).*\(2, 1, 4, 4\)"):
        loss(good, torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match="floating-point"):
        loss(torch.ones(2, 1, 4, 4, dtype=torch.int64), good)
    with pytest.raises(ValueError, match="image must be a floating-point"):
        loss(good, torch.ones(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        loss(torch.rand(0, 1, 4, 4), torch.rand(0, 1, 4, 4))
    with pytest.raises(ValueError, match="torch.Tensor"):
        loss(good.numpy(), good)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="reduction"):
        ACWELoss(reduction="average")
    with pytest.raises(ValueError, match="denominator.*'mean'"):
        ACWELoss(denominator="mean")
    with pytest.raises(ValueError, match="nu"):
        ACWELoss(nu=-0.1)
    with pytest.raises(ValueError, match="nu"):
        ACWELoss(nu=float("nan"))
