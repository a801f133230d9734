"""Tests of losses.weighted_tv, SelectiveLoss (eq. 3) and DIPSelectiveLoss (eq. 2) against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import losses.selective as selective
from losses import DIPSelectiveLoss, SelectiveLoss, weighted_tv


def reference_tv(u: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """Plain-loop numpy weighted TV of a (B, 1, *spatial) array: forward differences, zero at the last index."""
    out = np.zeros(u.shape[0])
    spatial = u.shape[2:]
    for b in range(u.shape[0]):
        for idx in itertools.product(*(range(n) for n in spatial)):
            squared = 0.0
            for axis, n in enumerate(spatial):
                if idx[axis] + 1 < n:
                    nxt = list(idx)
                    nxt[axis] += 1
                    squared += (float(u[(b, 0, *nxt)]) - float(u[(b, 0, *idx)])) ** 2
            g = 1.0 if weight is None else float(weight[(b, 0, *idx)])
            out[b] += g * math.sqrt(squared + eps)
    return out


def t(rows: list, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (1, 1, *spatial) tensor from nested lists."""
    return torch.tensor(rows, dtype=dtype)[None, None]


# Case A, 1x1x2x2.
#   u = [[0, .3], [.4, 1]]: at (0,0) d_h = .4, d_w = .3 -> .5; at (0,1) d_h = .7, d_w = 0 (boundary) -> .7;
#   at (1,0) d_h = 0 (boundary), d_w = .6 -> .6; at (1,1) both 0 -> 0.   TV = 1.8 (eps = 0).
#   g = [[1, 2], [3, 4]]: .5 + 1.4 + 1.8 + 0 = 3.7.
#   Phi = [[1, -1], [.5, 2]]: sum Phi u = -.3 + .2 + 2 = 1.9;  D = [[0, .2], [.5, 1]]: sum D u = .06 + .2 + 1 = 1.26.
U_A = [[0.0, 0.3], [0.4, 1.0]]
G_A = [[1.0, 2.0], [3.0, 4.0]]
PHI_A = [[1.0, -1.0], [0.5, 2.0]]
D_A = [[0.0, 0.2], [0.5, 1.0]]


def tv_a(eps: float, weighted: bool) -> float:
    g = (1.0, 2.0, 3.0, 4.0) if weighted else (1.0,) * 4
    terms = (0.25, 0.49, 0.36, 0.0)  # squared gradient magnitudes at (0,0), (0,1), (1,0), (1,1)
    return sum(w * math.sqrt(s + eps) for w, s in zip(g, terms))


# ---------------------------------------------------------------------------------------------------------------------
# weighted_tv
# ---------------------------------------------------------------------------------------------------------------------


def test_tv_hand_values_2x2() -> None:
    u = t(U_A)
    np.testing.assert_allclose(weighted_tv(u, eps=0.0).numpy(), [1.8], rtol=1e-14)
    np.testing.assert_allclose(weighted_tv(u, t(G_A), eps=0.0).numpy(), [3.7], rtol=1e-14)
    # eps enters every pixel, including the constant corner: sqrt(.25+e) + sqrt(.49+e) + sqrt(.36+e) + sqrt(e)
    for eps in (1e-8, 1e-2):
        np.testing.assert_allclose(weighted_tv(u, eps=eps).numpy(), [tv_a(eps, False)], rtol=1e-14)
        np.testing.assert_allclose(weighted_tv(u, t(G_A), eps=eps).numpy(), [tv_a(eps, True)], rtol=1e-14)
    assert abs(weighted_tv(u).item() - (1.8 + 1e-4)) < 1e-7  # default eps = 1e-8: the corner adds sqrt(eps)


def test_tv_hand_values_2x3_binary() -> None:
    # u = [[0, 1, 1], [0, 0, 1]]: unit jumps at (0,0) (d_w), (0,1) (d_h) and (1,1) (d_w); other pixels 0 -> TV = 3
    u = t([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(weighted_tv(u, eps=0.0).numpy(), [3.0], rtol=1e-14)
    eps = 1e-4
    np.testing.assert_allclose(weighted_tv(u, eps=eps).numpy(), [3 * math.sqrt(1 + eps) + 3 * math.sqrt(eps)])
    weight = t([[2.0, 3.0, 5.0], [7.0, 11.0, 13.0]])
    np.testing.assert_allclose(weighted_tv(u, weight, eps=0.0).numpy(), [2.0 + 3.0 + 11.0], rtol=1e-14)


def test_tv_hand_values_3d() -> None:
    u = torch.zeros(2, 1, 2, 2, 2, dtype=torch.float64)
    u[0, 0, 0, 0, 0] = 1.0  # one voxel with three unit forward jumps: sqrt(3)
    u[1, 0, 1, 1, 1] = 1.0  # the last voxel: three neighbours with one unit jump each: 3
    np.testing.assert_allclose(weighted_tv(u, eps=0.0).numpy(), [math.sqrt(3.0), 3.0], rtol=1e-14)


@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (2, 1, 3, 4, 5)])
def test_tv_matches_loop_reference(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    weight = torch.rand(shape, generator=gen, dtype=torch.float64)
    for w, eps in ((None, 1e-8), (weight, 1e-8), (weight, 0.0)):
        expected = reference_tv(u.numpy(), None if w is None else w.numpy(), eps)
        np.testing.assert_allclose(weighted_tv(u, w, eps=eps).numpy(), expected, rtol=1e-12)


def test_tv_bad_input() -> None:
    with pytest.raises(ValueError, match=r"u must have shape B1HW or B1HWD.*\(1, 2, 4, 4\)"):
        weighted_tv(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"weight must have the same shape as u.*\(1, 1, 4, 3\)"):
        weighted_tv(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 3))
    with pytest.raises(ValueError, match="eps"):
        weighted_tv(torch.zeros(1, 1, 4, 4), eps=-1.0)
    with pytest.raises(ValueError, match="floating-point"):
        weighted_tv(torch.zeros(1, 1, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------------
# SelectiveLoss, eq. (3)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mu, edge, eps, expected_sum",
    [
        (0.0, None, 1e-8, 2 * 1.9 + 30 * 1.26),  # M2: 3.8 + 37.8 = 41.6
        (0.5, G_A, 0.0, 0.5 * 3.7 + 41.6),  # 43.45
        (0.5, None, 0.0, 0.5 * 1.8 + 41.6),  # 42.5
        (0.5, G_A, 1e-8, 0.5 * tv_a(1e-8, True) + 41.6),
        (2.0, None, 1e-2, 2.0 * tv_a(1e-2, False) + 41.6),
    ],
)
def test_selective_hand_values(mu: float, edge: list | None, eps: float, expected_sum: float) -> None:
    args = (t(U_A), t(PHI_A), t(D_A), None if edge is None else t(edge))
    loss = SelectiveLoss(mu=mu, lam=2.0, theta=30.0, eps=eps)
    np.testing.assert_allclose(loss(*args).item(), expected_sum, rtol=1e-13)
    np.testing.assert_allclose(loss.last_fitting, 3.8, rtol=1e-13)
    np.testing.assert_allclose(loss.last_geodesic, 37.8, rtol=1e-13)
    np.testing.assert_allclose(loss.last_regulariser, expected_sum - 41.6, rtol=1e-12, atol=1e-13)
    mean = SelectiveLoss(mu=mu, lam=2.0, theta=30.0, eps=eps, reduction="mean")
    np.testing.assert_allclose(mean(*args).item(), expected_sum / 4, rtol=1e-13)  # 1 image x 4 pixels
    np.testing.assert_allclose(mean.last_fitting, 3.8 / 4, rtol=1e-13)


def test_selective_default_weights_are_the_authors() -> None:
    loss = SelectiveLoss()
    assert (loss.mu, loss.lam, loss.theta, loss.eps, loss.reduction) == (1.0, 2.0, 30.0, 1e-8, "sum")
    dip = DIPSelectiveLoss()
    assert (dip.lam, dip.theta, dip.reduction) == (2.0, 30.0, "sum")


def test_selective_batch_reductions() -> None:
    # image 2: u = 1, Phi = .25, D = 0, g = 1 -> fitting 2 * .25 * 4 = 2, TV 0 (eps = 0)
    u = torch.cat([t(U_A), torch.ones(1, 1, 2, 2, dtype=torch.float64)])
    phi = torch.cat([t(PHI_A), torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)])
    dist = torch.cat([t(D_A), torch.zeros(1, 1, 2, 2, dtype=torch.float64)])
    edge = torch.cat([t(G_A), torch.ones(1, 1, 2, 2, dtype=torch.float64)])
    expected = [43.45, 2.0]
    loss = SelectiveLoss(mu=0.5, eps=0.0, reduction="sum")
    np.testing.assert_allclose(loss(u, phi, dist, edge).item(), sum(expected), rtol=1e-13)
    loss = SelectiveLoss(mu=0.5, eps=0.0, reduction="mean")
    np.testing.assert_allclose(loss(u, phi, dist, edge).item(), sum(expected) / 8, rtol=1e-13)  # B * pixels = 8
    loss = SelectiveLoss(mu=0.5, eps=0.0, reduction="none")
    value = loss(u, phi, dist, edge)
    assert value.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(value.flatten().numpy(), expected, rtol=1e-13)


def test_selective_3d_hand_value() -> None:
    u = torch.zeros(1, 1, 2, 2, 2, dtype=torch.float64)
    u[0, 0, 1, 1, 1] = 1.0  # TV 3, sum Phi u = 1, sum D u = .5
    phi, dist = torch.ones_like(u), torch.full_like(u, 0.5)
    loss = SelectiveLoss(mu=1.0, lam=2.0, theta=30.0, eps=0.0)
    np.testing.assert_allclose(loss(u, phi, dist).item(), 3.0 + 2.0 + 15.0, rtol=1e-14)


def test_selective_mu_zero_skips_tv(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("weighted_tv must not be called for mu = 0")

    monkeypatch.setattr(selective, "weighted_tv", fail)
    loss = SelectiveLoss(mu=0.0)
    value = loss(t(U_A), t(PHI_A), t(D_A), torch.full((1, 1, 2, 2), float("nan"), dtype=torch.float64))
    np.testing.assert_allclose(value.item(), 41.6, rtol=1e-13)
    assert loss.last_regulariser == 0.0


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_selective_components_add_up(reduction: str) -> None:
    gen = torch.Generator().manual_seed(1)
    u, phi, dist, edge = (torch.rand(3, 1, 6, 5, generator=gen, dtype=torch.float64) for _ in range(4))
    loss = SelectiveLoss(mu=0.7, lam=2.0, theta=30.0, reduction=reduction)
    total = loss(u, phi - 0.5, dist, edge).sum().item()
    parts = loss.last_regulariser + loss.last_fitting + loss.last_geodesic
    assert all(isinstance(p, float) for p in (loss.last_regulariser, loss.last_fitting, loss.last_geodesic))
    np.testing.assert_allclose(parts, total, rtol=1e-13)
    tv = reference_tv(u.numpy(), edge.numpy(), 1e-8).sum()
    scale = 3 * 30 if reduction == "mean" else 1
    np.testing.assert_allclose(loss.last_regulariser, 0.7 * tv / scale, rtol=1e-12)


def test_selective_gradcheck() -> None:
    gen = torch.Generator().manual_seed(2)
    u, phi, dist, edge = (
        torch.rand(2, 1, 4, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(4)
    )
    for reduction in ("sum", "mean"):
        loss = SelectiveLoss(mu=0.8, lam=2.0, theta=30.0, reduction=reduction)
        assert torch.autograd.gradcheck(loss, (u, phi, dist, edge))
        assert torch.autograd.gradcheck(lambda a, b, c: loss(a, b, c), (u, phi, dist))
    u3 = torch.rand(1, 1, 3, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: SelectiveLoss(mu=1.0)(a, torch.ones_like(a), torch.ones_like(a)), (u3,))


def test_selective_gradient_of_linear_terms() -> None:
    u = t(U_A).requires_grad_()
    SelectiveLoss(mu=0.0, lam=2.0, theta=30.0)(u, t(PHI_A), t(D_A)).backward()
    np.testing.assert_allclose(u.grad[0, 0].numpy(), 2.0 * np.array(PHI_A) + 30.0 * np.array(D_A), rtol=1e-14)


def test_selective_bad_input() -> None:
    loss = SelectiveLoss()
    u = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"fitting must have the same shape as u.*\(2, 1, 4, 5\)"):
        loss(u, torch.rand(2, 1, 4, 5), torch.rand_like(u))
    with pytest.raises(ValueError, match=r"distance must have the same shape as u.*\(1, 1, 4, 4\)"):
        loss(u, torch.rand_like(u), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="edge must have the same shape as u"):
        loss(u, torch.rand_like(u), torch.rand_like(u), torch.rand(2, 1, 4))
    with pytest.raises(ValueError, match="u must have shape B1HW or B1HWD"):
        loss(torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="u must have shape B1HW or B1HWD"):
        loss(torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="distance must be a floating-point tensor"):
        loss(u, torch.rand_like(u), torch.ones(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="fitting must be a torch.Tensor"):
        loss(u, np.zeros((2, 1, 4, 4)), torch.rand_like(u))


def test_ill_opts() -> None:
    with pytest.raises(ValueError, match="reduction"):
        SelectiveLoss(reduction="avg")
    with pytest.raises(ValueError, match="mu"):
        SelectiveLoss(mu=-1.0)
    with pytest.raises(ValueError, match="theta"):
        SelectiveLoss(theta=float("inf"))
    with pytest.raises(ValueError, match="lam"):
        DIPSelectiveLoss(lam=-2.0)
    with pytest.raises(ValueError, match="reduction"):
        DIPSelectiveLoss(reduction="max")


def test_dtype_policy() -> None:
    u = torch.rand(1, 1, 4, 4, dtype=torch.float16)
    assert SelectiveLoss()(u, u.clone(), u.clone()).dtype == torch.float32
    assert DIPSelectiveLoss()(u, u.clone(), u.clone(), u.clone()).dtype == torch.float32
    assert SelectiveLoss()(u.double(), u.float(), u.float()).dtype == torch.float64


# ---------------------------------------------------------------------------------------------------------------------
# DIPSelectiveLoss, eq. (2)
# ---------------------------------------------------------------------------------------------------------------------

# u_vm = [[.5, 1], [.2, .8]], u_dip = [[1, .5], [.5, .25]] -> u = [[.5, .5], [.1, .2]]
#   sum Phi u = .5 - .5 + .05 + .4 = .45 -> lam 2: .9;   sum D u = 0 + .1 + .05 + .2 = .35 -> theta 30: 10.5
#   u_dip - u_vm = [[.5, -.5], [.3, -.55]] -> 1/2 (.25 + .25 + .09 + .3025) = .44625;   total 11.84625
U_VM = [[0.5, 1.0], [0.2, 0.8]]
U_DIP = [[1.0, 0.5], [0.5, 0.25]]


def test_dip_hand_values() -> None:
    args = (t(U_VM), t(U_DIP), t(PHI_A), t(D_A))
    loss = DIPSelectiveLoss(lam=2.0, theta=30.0)
    np.testing.assert_allclose(loss(*args).item(), 11.84625, rtol=1e-13)
    np.testing.assert_allclose([loss.last_fitting, loss.last_geodesic, loss.last_coupling], [0.9, 10.5, 0.44625])
    mean = DIPSelectiveLoss(lam=2.0, theta=30.0, reduction="mean")
    np.testing.assert_allclose(mean(*args).item(), 11.84625 / 4, rtol=1e-13)
    np.testing.assert_allclose(mean.last_coupling, 0.44625 / 4, rtol=1e-13)
    np.testing.assert_allclose(DIPSelectiveLoss(lam=1.0, theta=0.0)(*args).item(), 0.45 + 0.44625, rtol=1e-13)


def test_dip_batch_reductions_and_symmetry() -> None:
    # image 2 (1x1x2x2): u_vm = u_dip = 1, Phi = .25, D = .5 -> 2 * 1 + 30 * 2 + 0 = 62
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    u_vm, u_dip = torch.cat([t(U_VM), ones]), torch.cat([t(U_DIP), ones])
    phi, dist = torch.cat([t(PHI_A), 0.25 * ones]), torch.cat([t(D_A), 0.5 * ones])
    np.testing.assert_allclose(DIPSelectiveLoss()(u_vm, u_dip, phi, dist).item(), 11.84625 + 62.0, rtol=1e-13)
    mean = DIPSelectiveLoss(reduction="mean")(u_vm, u_dip, phi, dist)
    np.testing.assert_allclose(mean.item(), (11.84625 + 62.0) / 8, rtol=1e-13)
    none = DIPSelectiveLoss(reduction="none")(u_vm, u_dip, phi, dist)
    assert none.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(none.flatten().numpy(), [11.84625, 62.0], rtol=1e-13)
    # the loss is symmetric in the two networks' outputs
    np.testing.assert_allclose(DIPSelectiveLoss()(u_dip, u_vm, phi, dist).item(), 11.84625 + 62.0, rtol=1e-13)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_dip_components_add_up(reduction: str) -> None:
    gen = torch.Generator().manual_seed(3)
    u_vm, u_dip, phi, dist = (torch.rand(2, 1, 3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(4))
    loss = DIPSelectiveLoss(reduction=reduction)
    total = loss(u_vm, u_dip, phi - 0.5, dist).sum().item()
    np.testing.assert_allclose(loss.last_fitting + loss.last_geodesic + loss.last_coupling, total, rtol=1e-13)
    scale = 2 * 60 if reduction == "mean" else 1
    np.testing.assert_allclose(loss.last_coupling, 0.5 * float(((u_dip - u_vm) ** 2).sum()) / scale, rtol=1e-13)


def test_dip_gradcheck_and_gradients() -> None:
    gen = torch.Generator().manual_seed(4)
    args = tuple(torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(4))
    for reduction in ("sum", "mean"):
        assert torch.autograd.gradcheck(DIPSelectiveLoss(reduction=reduction), args)
    # d/du_vm = (lam Phi + theta D) u_dip + (u_vm - u_dip), and symmetrically for u_dip
    u_vm, u_dip = t(U_VM).requires_grad_(), t(U_DIP).requires_grad_()
    DIPSelectiveLoss(lam=2.0, theta=30.0)(u_vm, u_dip, t(PHI_A), t(D_A)).backward()
    linear = 2.0 * np.array(PHI_A) + 30.0 * np.array(D_A)
    a, b = np.array(U_VM), np.array(U_DIP)
    np.testing.assert_allclose(u_vm.grad[0, 0].numpy(), linear * b + (a - b), rtol=1e-14)
    np.testing.assert_allclose(u_dip.grad[0, 0].numpy(), linear * a + (b - a), rtol=1e-14)


def test_dip_bad_input() -> None:
    loss = DIPSelectiveLoss()
    u = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"u_dip must have the same shape as u_vm.*\(1, 1, 4, 4\)"):
        loss(u, torch.rand(1, 1, 4, 4), torch.rand_like(u), torch.rand_like(u))
    with pytest.raises(ValueError, match="fitting must have the same shape as u_vm"):
        loss(u, torch.rand_like(u), torch.rand(2, 1, 4, 4, 1), torch.rand_like(u))
    with pytest.raises(ValueError, match="distance must have the same shape as u_vm"):
        loss(u, torch.rand_like(u), torch.rand_like(u), torch.rand(2, 1, 8, 2))
    with pytest.raises(ValueError, match="u_vm must have shape B1HW or B1HWD"):
        loss(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
