"""Tests of pipeline.selective.baselines: energies against hand-computed values, monotone solvers, region recovery,
bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.selective.baselines import (
    BaselineResult,
    elastica_energy,
    elastica_segment,
    selective_energy,
    tv_energy,
    tv_segment,
)


def two_region(n: int, shape: str, radius: float, noise: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Image ``f`` (0.8 inside a centred disc/square, 0.2 outside, plus Gaussian noise), ``Phi``, ``D_G`` and truth.

    ``Phi = (f - 0.8)^2 - 0.5 * 1[|f - 0.8| < 0.1]`` (the fitting term with ``c1 = 0.8`` and a box in place of the
    hat function) and ``D_G`` = the Euclidean distance from three seed pixels near the centre, divided by its
    maximum. Unlike a geodesic distance, which stays near 0 across a homogeneous object, this one grows inside the
    object too, so the tests use ``theta = 1`` instead of the authors' 30 (with 30 every object pixel farther than
    1/30 of the image diagonal from a seed would cost more than it gains).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    centre = (n - 1) / 2
    if shape == "disc":
        truth = (yy - centre) ** 2 + (xx - centre) ** 2 <= radius**2
    else:
        truth = (np.abs(yy - centre) <= radius) & (np.abs(xx - centre) <= radius)
    f = np.where(truth, 0.8, 0.2) + noise * rng.standard_normal((n, n))
    phi = (f - 0.8) ** 2 - 0.5 * (np.abs(f - 0.8) < 0.1)
    c = int(round(centre))
    seeds = [(c, c), (c - 2, c), (c, c + 2)]
    dist = np.min([np.hypot(yy - i, xx - j) for i, j in seeds], axis=0)
    return f, phi, dist / dist.max(), truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.sum(a & b)) / float(a.sum() + b.sum())


def assert_monotone(result: BaselineResult) -> None:
    energy = np.asarray(result.energy)
    scale = max(1.0, float(np.abs(energy).max()))
    assert np.all(np.diff(energy) <= 1e-6 * scale), np.diff(energy).max()


# ---------------------------------------------------------------------------------------------------------------
# Energies, hand-computed
# ---------------------------------------------------------------------------------------------------------------

U3 = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.25]])
PHI3 = np.array([[-1.0, 2.0, 0.0], [3.0, -0.5, 1.0], [0.0, 4.0, -2.0]])
DIST3 = np.array([[0.0, 0.5, 1.0], [1.0, 0.2, 0.0], [0.5, 0.0, 1.0]])


@pytest.mark.parametrize(
    "lam, theta, expected",
    [
        # sum(Phi u) = -1 + 2*0.5 - 0.5 - 2*0.25 = -1;  sum(D u) = 0.5*0.5 + 0.2 + 1*0.25 = 0.7
        (2.0, 30.0, 2.0 * -1.0 + 30.0 * 0.7),  # = 19
        (1.0, 0.0, -1.0),
        (0.0, 10.0, 7.0),
    ],
)
def test_selective_energy_hand_values(lam: float, theta: float, expected: float) -> None:
    assert selective_energy(U3, PHI3, DIST3, lam=lam, theta=theta) == pytest.approx(expected, abs=1e-12)


def test_selective_energy_defaults_are_the_authors_weights() -> None:
    assert selective_energy(U3, PHI3, DIST3) == pytest.approx(19.0, abs=1e-12)


# A single bright pixel at the centre of a 3x3 image. Forward differences with a zero last difference:
#   (0,1): d_h = u[1,1] - u[0,1] = 1, d_w = 0 -> 1;  (1,0): d_h = 0, d_w = 1 -> 1;
#   (1,1): d_h = -1, d_w = -1 -> sqrt(2);  every other pixel 0.   TV = 2 + sqrt(2).
SPIKE = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
WEIGHT3 = np.array([[1.0, 2.0, 1.0], [3.0, 0.5, 1.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "u, weight, expected",
    [
        (SPIKE, None, 2.0 + math.sqrt(2.0)),
        (SPIKE, WEIGHT3, 2.0 * 1.0 + 3.0 * 1.0 + 0.5 * math.sqrt(2.0)),
        (np.ones((3, 3)), None, 0.0),
        # rows 0, 0.5, 1: |grad u| = 0.5 on the first two rows, 0 on the last.
        (np.array([[0.0] * 3, [0.5] * 3, [1.0] * 3]), None, 3.0),
    ],
)
def test_tv_energy_hand_values(u: np.ndarray, weight: np.ndarray | None, expected: float) -> None:
    assert tv_energy(u, weight) == pytest.approx(expected, abs=1e-12)


def test_elastica_energy_hand_value() -> None:
    # u = rows 0, 0.5, 1 with sigma = 0 and eps^2 = 0.75: |grad u| = 0.5 on rows 0-1, 0 on row 2; the normal's
    # vertical component is 0.5 / sqrt(0.25 + 0.75) = 0.5 on rows 0-1 and 0 on row 2; its backward-difference
    # divergence is 0.5, 0, -0.5 by row. Energy = alpha * 3 + beta * (3 pixels * 0.5^2 * 0.5) = 3 + 0.375 beta.
    u = np.array([[0.0] * 3, [0.5] * 3, [1.0] * 3])
    assert elastica_energy(u, alpha=1.0, beta=2.0, eps=math.sqrt(0.75), sigma=0.0) == pytest.approx(3.75, abs=1e-12)


def test_elastica_energy_without_curvature_is_weighted_tv() -> None:
    u = np.random.default_rng(3).random((9, 7))
    weight = np.random.default_rng(4).random((9, 7))
    assert elastica_energy(u, alpha=2.5, beta=0.0, weight=weight) == pytest.approx(2.5 * tv_energy(u, weight))


def test_elastica_energy_of_a_straight_binary_edge_has_almost_no_curvature() -> None:
    # The Gaussian-smoothed normal gives a straight sharp edge (almost) zero curvature, unlike the raw one.
    u = np.zeros((16, 16))
    u[:, 8:] = 1.0
    length = tv_energy(u)
    assert length == pytest.approx(16.0)
    assert elastica_energy(u, alpha=1.0, beta=10.0) == pytest.approx(length, rel=1e-3)
    assert elastica_energy(u, alpha=1.0, beta=10.0, sigma=0.0) > 5 * length


# ---------------------------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy() -> tuple[np.ndarray, ...]:
    return two_region(32, "disc", radius=8.0, noise=0.1)


def test_tv_energy_decreases_monotonically(noisy: tuple[np.ndarray, ...]) -> None:
    _, phi, dist, _ = noisy
    result = tv_segment(phi, dist, theta=1.0)
    assert_monotone(result)
    assert result.energy[0] - result.energy[-1] > 100.0  # 69.9 -> -38.5 on this image
    # The sequence is the solver's own iterates: most ADMM sweeps produce an accepted (descending) iterate.
    assert len(result.energy) - 1 >= 0.5 * result.iterations
    assert result.converged


def test_elastica_energy_decreases_monotonically(noisy: tuple[np.ndarray, ...]) -> None:
    _, phi, dist, _ = noisy
    result = elastica_segment(phi, dist, theta=1.0)
    assert_monotone(result)
    assert result.energy[0] - result.energy[-1] > 1000.0  # 1244 -> -26 on this image
    assert len(result.energy) - 1 >= 20


@pytest.mark.parametrize("solver", [tv_segment, elastica_segment])
def test_reported_energy_is_the_energy_of_the_returned_u(solver, noisy: tuple[np.ndarray, ...]) -> None:
    _, phi, dist, _ = noisy
    result = solver(phi, dist, theta=1.0, max_iter=60)
    data = selective_energy(result.u, phi, dist, lam=2.0, theta=1.0)
    reg = tv_energy(result.u) if solver is tv_segment else elastica_energy(result.u, alpha=1.0, beta=10.0)
    assert result.energy[-1] == pytest.approx(data + reg, rel=1e-10)
    assert result.u.dtype == np.float64 and result.u.shape == phi.shape
    assert 0.0 <= result.u.min() and result.u.max() <= 1.0
    assert result.mask.dtype == bool
    np.testing.assert_array_equal(result.mask, result.u > 0.5)
    assert 1 <= result.iterations <= 60


@pytest.mark.parametrize("shape, radius", [("disc", 14.0), ("square", 12.0)])
def test_tv_recovers_a_clean_region(shape: str, radius: float) -> None:
    _, phi, dist, truth = two_region(64, shape, radius=radius, noise=0.0)
    result = tv_segment(phi, dist, theta=1.0)
    assert dice(result.mask, truth) >= 0.98
    assert result.converged


@pytest.mark.parametrize("shape, radius", [("disc", 14.0), ("square", 12.0)])
def test_elastica_recovers_a_clean_region(shape: str, radius: float) -> None:
    _, phi, dist, truth = two_region(64, shape, radius=radius, noise=0.0)
    result = elastica_segment(phi, dist, theta=1.0)
    assert dice(result.mask, truth) >= 0.95
    assert_monotone(result)


def test_tv_recovers_a_noisy_region() -> None:
    _, phi, dist, truth = two_region(64, "disc", radius=14.0, noise=0.05, seed=1)
    assert dice(tv_segment(phi, dist, theta=1.0).mask, truth) >= 0.98


def test_more_mu_gives_less_tv(noisy: tuple[np.ndarray, ...]) -> None:
    # For exact minimisers TV(u*(mu)) is non-increasing in mu: adding the optimality inequalities of mu1 < mu2 gives
    # (mu2 - mu1) (TV(u2) - TV(u1)) <= 0.
    _, phi, dist, _ = noisy
    values = [tv_energy(tv_segment(phi, dist, theta=1.0, mu=mu).u) for mu in (0.1, 0.5, 1.0)]
    assert values[0] > values[1] > values[2]
    assert values[0] > 2.0 * values[2]


def test_tv_without_regulariser_is_the_pointwise_minimiser(noisy: tuple[np.ndarray, ...]) -> None:
    # g = 0 switches the regulariser off; the minimiser of a linear energy over [0, 1] is 1[lam Phi + theta D < 0].
    _, phi, dist, _ = noisy
    result = tv_segment(phi, dist, theta=1.0, edge=np.zeros_like(phi))
    np.testing.assert_array_equal(result.mask, 2.0 * phi + dist < 0)
    assert result.energy[-1] == pytest.approx(float(np.sum(np.minimum(2.0 * phi + dist, 0.0))))


def test_edge_weights_lower_the_boundary_cost(noisy: tuple[np.ndarray, ...]) -> None:
    f, phi, dist, truth = noisy
    gx, gy = np.gradient(f)
    edge = 1.0 / (1.0 + 1000.0 * (gx**2 + gy**2))
    plain = tv_segment(phi, dist, theta=1.0, mu=2.0)
    weighted = tv_segment(phi, dist, theta=1.0, mu=2.0, edge=edge)
    assert weighted.energy[-1] < plain.energy[-1]
    assert_monotone(weighted)


def test_progress_bar_runs(noisy: tuple[np.ndarray, ...]) -> None:
    _, phi, dist, _ = noisy
    assert tv_segment(phi, dist, theta=1.0, max_iter=3, progress=True).iterations == 3


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

GOOD = np.zeros((8, 8))


@pytest.mark.parametrize("solver", [tv_segment, elastica_segment])
@pytest.mark.parametrize(
    "fitting, distance, kwargs, message",
    [
        (GOOD, np.zeros((8, 9)), {}, "same shape"),
        (np.where(np.eye(8) > 0, np.nan, 0.0), GOOD, {}, "NaN"),
        (GOOD, np.full((8, 8), np.inf), {}, "NaN or infinite"),
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), {}, "2D"),
        (np.zeros((0, 8)), np.zeros((0, 8)), {}, "empty"),
        (GOOD, GOOD, {"edge": -np.ones((8, 8))}, "non-negative"),
        (GOOD, GOOD, {"edge": np.ones((4, 4))}, "same shape"),
        (GOOD, GOOD, {"init": np.ones((8, 7))}, "same shape"),
        (GOOD, GOOD, {"lam": -1.0}, "lam"),
        (GOOD, GOOD, {"theta": float("nan")}, "theta"),
        (GOOD, GOOD, {"rho": 0.0}, "rho"),
        (GOOD, GOOD, {"max_iter": 0}, "max_iter"),
        (GOOD, GOOD, {"tol": -1.0}, "tol"),
    ],
)
def test_solvers_reject_bad_input(solver, fitting, distance, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        solver(fitting, distance, **kwargs)


def test_solver_specific_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="mu"):
        tv_segment(GOOD, GOOD, mu=-0.5)
    with pytest.raises(ValueError, match="beta"):
        elastica_segment(GOOD, GOOD, beta=-1.0)
    with pytest.raises(ValueError, match="eps"):
        elastica_segment(GOOD, GOOD, eps=0.0)
    with pytest.raises(ValueError, match="patience"):
        elastica_segment(GOOD, GOOD, patience=0)


def test_energies_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        selective_energy(np.zeros((3, 3)), PHI3, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        selective_energy(np.zeros((4, 3)), PHI3, DIST3)
    with pytest.raises(ValueError, match="NaN"):
        tv_energy(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="same shape"):
        tv_energy(SPIKE, np.ones((2, 2)))
    with pytest.raises(ValueError, match="2D"):
        elastica_energy(np.zeros(5))
    with pytest.raises(ValueError, match="real-valued"):
        tv_energy([["a", "b"]])
