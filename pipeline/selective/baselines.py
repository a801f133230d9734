"""Per-image variational baselines of model (4) of Burrows, Chen & Torella (2021): TV and Euler's elastica.

References:

    Burrows, L., Chen, K., Torella, F. (2021) Using Deep Image Prior to Assist Variational Selective Segmentation
    Deep Learning Algorithms (model (4); the "TV-model" and "Elastica-model" baselines of Tables 1 and 2).

    Zhu, W., Tai, X.-C., Chan, T. (2013) Image Segmentation Using Euler's Elastica as the Regularization. Journal of
    Scientific Computing 57(2), 414-438 (the augmented Lagrangian method of :func:`elastica_segment`).

    Goldstein, T., Bresson, X., Osher, S. (2010) Geometric Applications of the Split Bregman Method: Segmentation and
    Surface Reconstruction. Journal of Scientific Computing 45, 272-293 (ADMM for the convex TV segmentation model).

    Rockafellar, R. T. (1976) Monotone Operators and the Proximal Point Algorithm. SIAM Journal on Control and
    Optimization 14(5), 877-898 (the proximal outer iteration that makes the energy monotone).

Both baselines solve, for one image, ::

    u* = argmin_{u in [0, 1]}  E(u) + R(u),    E(u) = lam * sum(Phi * u) + theta * sum(D_G * u),

with the segmentation ``{u* > 0.5}``. ``Phi`` (the fitting term, negative inside the object) and ``D_G`` (the
normalised geodesic distance from the user's markers, in ``[0, 1]``) are computed elsewhere and passed in as 2D
arrays; the sums run over pixels, as in the authors' code. The regularisers are

* TV: ``R(u) = mu * sum(g * |grad u|)`` (:func:`tv_segment`, convex);
* elastica: ``R(u) = sum(g * (alpha + beta * kappa**2) * |grad u|)``, ``kappa = div(grad u / |grad u|)``
  (:func:`elastica_segment`, non-convex),

where ``g`` is an optional edge-weight map (default 1). Gradients are forward differences with a zero difference
at the last row/column (Neumann boundary), the divergence is minus their adjoint, and ``|.|`` is the isotropic
(Euclidean) norm, the same discretisation as :func:`losses.weighted_tv`.

Monotone energy. Plain ADMM does not decrease the energy monotonically: it oscillates around the minimiser (on a
noisy 32x32 disc the energy of ``clip(u, 0, 1)`` went up in 20 to 45 of 300 sweeps for penalties 0.3 to 3). Both
solvers therefore run as an inexact proximal-point method: the current iterate ``u_k`` is the centre of a proximal
term ``||u - u_k||^2 / (2 tau)`` added to the splitting's ``u``-subproblem (it only shifts the diagonal of the
DCT-solved linear system), each ADMM (resp. ALM) sweep yields the proposal ``v = clip(u, 0, 1)``, and the proposal
becomes the next iterate only if it passes the sufficient-decrease test ::

    F(v) + ||v - u_k||^2 / (2 tau) <= F(u_k),        F = E + R,

after which the next sweep is pulled towards the new centre. For the convex TV model this is Rockafellar's
proximal-point method with a descent-type inexactness criterion: the warm-started ADMM sweeps converge to
``prox_{tau F}(u_k)``, which passes the test whenever ``u_k`` is not optimal, and on noisy test images two thirds or
more of the sweeps are accepted. For the non-convex elastica model the ALM works on Zhu-Tai-Chan's relaxed energy, which
is close to but not the discrete energy reported here, so more proposals fail; after ``patience`` consecutive failures
``tau`` is halved (a stronger pull towards ``u_k``) and the ALM's auxiliary variables are re-synchronised with ``u_k``;
each accepted proposal doubles ``tau`` again, up to its initial value: the step control of a trust region. The run ends
when the splitting settles (relative change of its ``u`` below ``tol`` on an accepted sweep: ``converged=True``), at
``max_iter``, or when failed proposals have driven ``tau`` down to ``2**-10`` of its initial value (no further descent
found: ``converged=False``). Every iterate has a lower energy than the one before it and the solver continues from it;
failed proposals are never returned.

:func:`tv_segment` (TV-ADMM)::

    min_{u in [0,1]} lam*sum(Phi u) + theta*sum(D_G u) + mu*sum(g |grad u|)

Splitting ``w = grad u`` and ``z = u`` (a box-constrained copy that carries the linear term), scaled duals
``b`` and ``d``, one penalty ``rho`` for both constraints, proximal centre ``u_k`` and step ``tau``. One sweep:

1. ``u``: ``(1/tau + rho + rho grad^T grad) u = u_k/tau + rho grad^T (w - b) + rho (z - d)``, solved exactly
   by a DCT-II (Neumann) diagonalisation;
2. ``w``: ``shrink(grad u + b, mu g / rho)``, isotropic soft thresholding;
3. ``z``: ``clip(u + d - c / rho, 0, 1)`` with ``c = lam Phi + theta D_G``;
4. ``b += grad u - w``, ``d += u - z``.

This is ADMM for the strongly convex proximal subproblem ``min F(u) + ||u - u_k||^2 / (2 tau)``; the proposal
``clip(u, 0, 1)`` becomes ``u_{k+1}`` when it passes the sufficient-decrease test of the module docstring, so
``result.energy`` is non-increasing. The dual variables are carried over from one proximal subproblem to the
next (warm start), so most sweeps are accepted on noisy images and a sweep costs the same as a plain ADMM sweep.

Defaults: ``lam = 2`` and ``theta = 30`` are the authors' code values. ``mu = 1`` (METHODS gives no value) makes
the boundary cost per pixel of length equal to the data gain of one pixel with ``|lam Phi + theta D_G| = 1``: a
region survives when its radius exceeds about ``2 mu / |c|`` pixels, which removes isolated noisy pixels but
not organs or lesions a few pixels across. ``rho = 2``: the shrinkage threshold ``mu / rho = 0.5`` is half the
gradient of a sharp 0/1 edge and the ``z``-step moves ``u`` by ``c / rho``, about half a unit where
``|lam Phi| ~ 1``; on the test images ``rho`` from 1 to 8 gave the same energy to 1e-3 relative, with the
number of sweeps growing with ``rho``. ``tau = 10`` (``1/tau = rho/20``) is a weak proximal pull (1 to 100
behave alike); ``tau`` is halved after 5 consecutive rejected proposals. ``tol = 1e-4`` and ``max_iter = 500``:
on 128x128 test images the run stops after 30 to 210 sweeps (0.01 to 0.03 s on two CPU cores).

:func:`elastica_segment` (elastica ALM).

Minimises ``F(u) = lam*sum(Phi u) + theta*sum(D_G u) + sum(g (alpha + beta kappa^2) |grad u|)`` over
``u in [0, 1]``, ``kappa`` as in :func:`elastica_energy`. The ALM (see :class:`_ElasticaALM`) splits
``v = u``, ``p = grad u``, a relaxed unit normal ``m`` (``|m| <= 1``, ``|p| = m.p``), ``n = m`` and
``q = div n``; every subproblem is closed form (clipping, isotropic shrinkage, pointwise division, projection
onto the unit ball) or one DCT-II solve (``u``, and ``n`` through the Woodbury identity
``(I + grad grad^T)^{-1} = I - grad (I + grad^T grad)^{-1} grad^T``). A DCT replaces the FFT of the paper
so that the boundary condition is Neumann rather than periodic.

Monotone energy: the ``u``-subproblem carries the proximal term ``||u - u_k||^2 / (2 tau)``; the proposal
``clip(u, 0, 1)`` is accepted when it passes the sufficient-decrease test, and after ``patience`` consecutive
rejections ``tau`` is halved and the auxiliary variables are re-synchronised with ``u_k`` (module docstring).
The problem is non-convex: the result depends on ``init`` and is a point from which the ALM finds no further
descent, not a certified global minimiser.

Defaults: ``lam = 2``, ``theta = 30`` as in the authors' code; ``alpha = 1`` puts the length term on the scale of
:func:`tv_segment`'s ``mu = 1``. ``beta = 10`` (pixel units) makes an arc of radius ``r`` cost ``1 + 10/r^2`` times
its length: 10 % extra at ``r = 10`` (organs and lesions are barely affected) but a factor 2 or more for ``r <= 3``
(spurs and noise specks are strongly penalised); METHODS gives no value for ``alpha`` or ``beta``. ``eps = 1e-2``
and ``sigma = 1`` define the discrete curvature (:func:`elastica_energy`). ``rho = 10`` (``r1 = 1``,
``r2 = r3 = r4 = r5 = 10``): on the test images penalties from 3 to 10 reached energies within about 1 % of each
other (except on the noisiest image, where 7 and 10 did best), 2 accepted fewer steps, and 20 let the iterates drift
to ``u = 0`` on the noisiest image. ``tau = 10`` and ``patience = 5`` as for TV. ``tol = 1e-4``, ``max_iter = 800``:
128x128 test images take 65 to 480 sweeps (0.04 to 0.22 s on two CPU cores). Most runs end because no further
descent is found (``converged=False``): on a noisy 32x32 test image L-BFGS-B started from that point lowered the
energy by another 5 %, but started from the initial guess it had not reached the ALM's energy after 3000
iterations (two minutes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.fft import dctn, idctn
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

__all__ = ["BaselineResult", "elastica_energy", "elastica_segment", "selective_energy", "tv_energy", "tv_segment"]

_TAU_HALVINGS = 10  # give up once failed proposals have driven tau down to 2**-10 of its initial value


def kernels() -> dict[str, Callable]:
    """The fused numba kernels of :mod:`pipeline.selective._kernels` by name (numba is imported on first use)."""
    from pipeline.selective._kernels import KERNELS

    return KERNELS


@dataclass
class BaselineResult:
    """Output of :func:`tv_segment` and :func:`elastica_segment`.

    Attributes:
        u: the final iterate, a float64 array in ``[0, 1]`` with the shape of the input.
        mask: the segmentation ``u > 0.5`` (bool).
        energy: total energy ``E(u_k) + R(u_k)`` of every iterate of the returned sequence, ``energy[0]`` being that
            of the initial guess and ``energy[-1]`` that of ``u``; non-increasing.
        iterations: number of ADMM (TV) or ALM (elastica) sweeps performed; ``len(energy) - 1`` of them produced an
            accepted iterate.
        converged: True if the relative change of the splitting's ``u`` fell below ``tol`` on an accepted sweep;
            False if ``max_iter`` was reached or no further descent was found.
    """

    u: np.ndarray
    mask: np.ndarray
    energy: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------


def _as_image(value: np.ndarray, name: str, shape: tuple[int, ...] | None = None, ref: str = "") -> np.ndarray:
    """Return ``value`` as a finite 2D float64 array, optionally of exactly ``shape`` (that of ``ref``).

    Raises:
        ValueError: not convertible to a real array, not 2D, an empty axis, a shape other than ``shape``, or a NaN or
            infinite entry.
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real-valued 2D array, got {type(value).__name__}.") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D array (H, W), got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} has an empty axis, shape {arr.shape}.")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have the same shape as {ref}, got {name} shape {arr.shape} and {ref} {shape}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); all entries must be finite.")
    return arr


def _nonnegative_weight(value: np.ndarray | None, name: str, shape: tuple[int, ...], ref: str) -> np.ndarray | None:
    """Validate an optional per-pixel weight map: finite, non-negative, of exactly ``shape``."""
    if value is None:
        return None
    arr = _as_image(value, name, shape, ref)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative, got minimum {arr.min():.6g}.")
    return arr


def _scalar(value: float, name: str, positive: bool = False) -> float:
    """Return ``value`` as a finite float that is non-negative (or strictly positive)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}.") from None
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number, got {value!r}.")
    return out


def _max_iter(value: int) -> int:
    """Validate the iteration cap: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {value!r}.")
    return int(value)


def _problem(fitting: np.ndarray, distance: np.ndarray, edge: np.ndarray | None, init: np.ndarray | None, lam: float,
             theta: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate the inputs of a solver; return the linear coefficient ``c``, the edge map and the initial guess."""
    phi = _as_image(fitting, "fitting")
    dist = _as_image(distance, "distance", phi.shape, "fitting")
    g = _nonnegative_weight(edge, "edge", phi.shape, "fitting")
    c = _scalar(lam, "lam") * phi + _scalar(theta, "theta") * dist
    if init is None:
        u0 = (c < 0).astype(np.float64)  # the minimiser of E alone over [0, 1]
    else:
        u0 = np.clip(_as_image(init, "init", phi.shape, "fitting"), 0.0, 1.0)
    contiguous = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731 - the kernels' layout
    return contiguous(c), None if g is None else contiguous(g), contiguous(u0)


# ---------------------------------------------------------------------------------------------------------------
# Discrete operators
# ---------------------------------------------------------------------------------------------------------------


def _grad(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences along H and W, zero in the last row (resp. column): the Neumann boundary."""
    gx = np.zeros_like(u)
    gy = np.zeros_like(u)
    gx[:-1] = u[1:] - u[:-1]
    gy[:, :-1] = u[:, 1:] - u[:, :-1]
    return gx, gy


def _div(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Discrete divergence, ``-grad^T``: backward differences; the last row of ``px``/column of ``py`` is ignored."""
    d = np.zeros_like(px)
    d[:-1] += px[:-1]
    d[1:] -= px[:-1]
    d[:, :-1] += py[:, :-1]
    d[:, 1:] -= py[:, :-1]
    return d


def _laplacian_eigenvalues(shape: tuple[int, ...]) -> np.ndarray:
    """Eigenvalues of ``grad^T grad`` (minus the Neumann Laplacian) in the orthonormal DCT-II basis."""
    h, w = shape
    ex = 2.0 - 2.0 * np.cos(np.pi * np.arange(h) / h)
    ey = 2.0 - 2.0 * np.cos(np.pi * np.arange(w) / w)
    return ex[:, None] + ey[None, :]


class _ShiftedSolver:
    """Solution of ``(a I + b grad^T grad) x = rhs`` (``a > 0``) by one DCT-II and its inverse.

    The solve runs in float32 (its transforms take half the time of float64 ones): it is exact up to float32
    rounding, a relative error of about 1e-7 (the system's condition number is below 10 for the solvers' penalties),
    far below the solvers' stopping tolerances. The proposals, the sufficient-decrease test and the reported energies
    stay float64. The denominator ``a + b * eigenvalues`` is kept for the last ``(a, b)``.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.eigenvalues = _laplacian_eigenvalues(shape)
        self.key: tuple[float, float] | None = None
        self.inverse = np.empty(shape, dtype=np.float32)

    def __call__(self, rhs: np.ndarray, a: float, b: float) -> np.ndarray:
        """The float32 solution for ``rhs``, a new array (``rhs`` is left as it is)."""
        if self.key != (a, b):
            self.inverse = (1.0 / (a + b * self.eigenvalues)).astype(np.float32)
            self.key = (a, b)
        spectrum = dctn(np.asarray(rhs, dtype=np.float32), type=2, norm="ortho")
        spectrum *= self.inverse
        return idctn(spectrum, type=2, norm="ortho", overwrite_x=True)


def _normal(u: np.ndarray, eps: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``grad u_s / sqrt(|grad u_s|^2 + eps^2)`` with ``u_s`` the Gaussian-smoothed ``u`` (``sigma`` pixels)."""
    us = gaussian_filter(u, sigma, mode="nearest") if sigma > 0 else u
    sx, sy = _grad(us)
    norm = np.sqrt(sx * sx + sy * sy + eps * eps)
    return sx / norm, sy / norm


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1D kernel of ``scipy.ndimage.gaussian_filter(sigma, truncate=4)``; ``[1.0]`` for ``sigma = 0``."""
    if sigma <= 0:
        return np.ones(1)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / sigma**2 * x**2)
    return weights / weights.sum()


def _curvature(u: np.ndarray, eps: float, sigma: float) -> np.ndarray:
    """``kappa = div(grad u_s / sqrt(|grad u_s|^2 + eps^2))``, see :func:`_normal`."""
    return _div(*_normal(u, eps, sigma))


# ---------------------------------------------------------------------------------------------------------------
# Energies
# ---------------------------------------------------------------------------------------------------------------


def selective_energy(
    u: np.ndarray, fitting: np.ndarray, distance: np.ndarray, lam: float = 2.0, theta: float = 30.0
) -> float:
    """Data term of model (4): ``E(u) = lam * sum(Phi * u) + theta * sum(D_G * u)``.

    Args:
        u: segmentation function, shape ``(H, W)``.
        fitting: fitting term ``Phi``, same shape.
        distance: geodesic distance ``D_G``, same shape.
        lam: weight of the fitting term (2 in the authors' code).
        theta: weight of the distance term (30 in the authors' code).

    Returns:
        The energy as a Python float.

    Raises:
        ValueError: arrays that are not 2D, differ in shape or hold NaN/inf; a negative or non-finite weight.
    """
    phi = _as_image(fitting, "fitting")
    uu = _as_image(u, "u", phi.shape, "fitting")
    dist = _as_image(distance, "distance", phi.shape, "fitting")
    return float(_scalar(lam, "lam") * np.sum(phi * uu) + _scalar(theta, "theta") * np.sum(dist * uu))


def tv_energy(u: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Weighted isotropic total variation ``sum(weight * |grad u|)``.

    Forward differences with a zero difference in the last row/column (Neumann boundary), no smoothing.

    Args:
        u: image, shape ``(H, W)``.
        weight: optional non-negative per-pixel weight (e.g. the edge map ``g``), same shape; default 1.

    Returns:
        The total variation as a Python float.

    Raises:
        ValueError: ``u`` not 2D or not finite; ``weight`` of another shape, not finite or negative.

    Example:
        >>> tv_energy(np.array([[0.0, 0.0], [0.0, 1.0]]))
        2.0
    """
    uu = _as_image(u, "u")
    g = _nonnegative_weight(weight, "weight", uu.shape, "u")
    return _tv(uu, g)


def _tv(u: np.ndarray, g: np.ndarray | None) -> float:
    """Unchecked :func:`tv_energy`."""
    gx, gy = _grad(u)
    magnitude = np.sqrt(gx * gx + gy * gy)
    return float(np.sum(magnitude if g is None else g * magnitude))


def elastica_energy(u: np.ndarray, alpha: float = 1.0, beta: float = 10.0, eps: float = 1e-2,
                    weight: np.ndarray | None = None, sigma: float = 1.0) -> float:
    """Discrete Euler's elastica ``sum(weight * (alpha + beta * kappa**2) * |grad u|)``.

    ``|grad u|`` is the isotropic forward-difference gradient magnitude of :func:`tv_energy`, and the curvature is
    ``kappa = div(grad u_s / sqrt(|grad u_s|^2 + eps^2))`` (forward differences inside, backward differences for the
    divergence: the staggered scheme of Zhu-Tai-Chan), where ``u_s`` is ``u`` smoothed by a Gaussian of standard
    deviation ``sigma`` pixels (``sigma=0``: no smoothing). The smoothing is what gives a near-binary ``u`` a
    meaningful curvature: without it the normal jumps from 0 to 1 across a sharp edge, so that even a straight
    binary edge gets ``|kappa| ~ 1`` per pixel; with ``sigma = 1`` a straight edge has ``kappa ~ 0`` and a disc of
    radius ``r`` has ``kappa ~ 1/r``, the behaviour that Zhu-Tai-Chan's relaxation (free normals off the edge) aims
    at.

    Args:
        u: image, shape ``(H, W)``.
        alpha: length weight (``beta=0`` gives ``alpha`` times :func:`tv_energy`).
        beta: curvature weight, in pixel units (``beta / r**2`` is the relative extra cost of an arc of radius
            ``r`` pixels).
        eps: regularisation of ``|grad u_s|`` in the normal, > 0.
        weight: optional non-negative per-pixel weight (the edge map ``g``), same shape; default 1.
        sigma: standard deviation (pixels) of the Gaussian applied before the normal is taken, >= 0.

    Returns:
        The energy as a Python float.

    Raises:
        ValueError: ``u`` not 2D or not finite; a bad weight map; ``alpha``, ``beta``, ``sigma`` negative or ``eps``
            not positive.
    """
    uu = _as_image(u, "u")
    g = _nonnegative_weight(weight, "weight", uu.shape, "u")
    return _elastica(
        uu, _scalar(alpha, "alpha"), _scalar(beta, "beta"), _scalar(eps, "eps", True), g, _scalar(sigma, "sigma")
    )


def _elastica(u: np.ndarray, alpha: float, beta: float, eps: float, g: np.ndarray | None, sigma: float) -> float:
    """Unchecked :func:`elastica_energy`."""
    gx, gy = _grad(u)
    density = np.sqrt(gx * gx + gy * gy)
    if beta > 0:
        density = density * (alpha + beta * _curvature(u, eps, sigma) ** 2)
    else:
        density = alpha * density
    return float(np.sum(density if g is None else g * density))


# ---------------------------------------------------------------------------------------------------------------
# The monotone proximal driver shared by both solvers
# ---------------------------------------------------------------------------------------------------------------


def _proximal_descent(energy: Callable[[np.ndarray], float], sweep: Callable[[np.ndarray, float], np.ndarray],
                      resync: Callable[[np.ndarray], None], u0: np.ndarray, tau: float, patience: int, max_iter: int,
                      tol: float, progress: bool, desc: str) -> BaselineResult:
    """Inexact proximal-point loop with a sufficient-decrease test (see the module docstring).

    Args:
        energy: the total energy ``F``.
        sweep: ``sweep(centre, tau)`` runs one splitting sweep with the proximal term ``||u - centre||^2 / (2 tau)``
            and returns the splitting's (unclipped) ``u``.
        resync: ``resync(centre)`` re-synchronises the splitting's auxiliary variables with ``centre``; called when
            ``tau`` is halved.
        u0: initial guess in ``[0, 1]``.
        tau: initial (and largest) proximal step.
        patience: consecutive rejected proposals before ``tau`` is halved.
        max_iter: cap on the number of sweeps.
        tol: relative change of the splitting's ``u`` between sweeps below which an accepted sweep ends the run.
        progress: show a tqdm bar.
        desc: label of the bar.
    """
    fused = kernels()
    centre = np.ascontiguousarray(u0, dtype=np.float64)
    current = energy(centre)
    energies = [current]
    step, rejected, converged, previous, sweeps = tau, 0, False, None, 0
    with tqdm(total=max_iter, desc=desc, disable=not progress, leave=False) as bar:
        for sweeps in range(1, max_iter + 1):
            inner = sweep(centre, step)
            proposal = np.empty_like(centre)
            distance2 = fused["proposal"](inner, centre, proposal)
            proposed = energy(proposal)
            accepted = proposed + distance2 / (2.0 * step) <= current
            if accepted:
                centre, current = proposal, proposed
                energies.append(current)
                rejected, step = 0, min(2.0 * step, tau)
            else:
                rejected += 1
                if rejected >= patience:
                    step, rejected = step / 2.0, 0
                    if step <= tau / 2.0**_TAU_HALVINGS:
                        break
                    resync(centre)
            if previous is not None and accepted:
                if fused["relative_change"](inner, previous) < tol:
                    converged = True
                    break
            previous = inner.copy()
            bar.update(1)
            bar.set_postfix(energy=f"{current:.6g}", refresh=False)
    return BaselineResult(u=centre, mask=centre > 0.5, energy=energies, iterations=sweeps, converged=converged)


# ---------------------------------------------------------------------------------------------------------------
# TV model
# ---------------------------------------------------------------------------------------------------------------


def tv_segment(fitting: np.ndarray, distance: np.ndarray, lam: float = 2.0, theta: float = 30.0, mu: float = 1.0,
               edge: np.ndarray | None = None, rho: float = 2.0, tau: float = 10.0, max_iter: int = 500,
               tol: float = 1e-4, init: np.ndarray | None = None, progress: bool = False) -> BaselineResult:
    """TV baseline of model (4): ``min_{u in [0,1]} lam*sum(Phi u) + theta*sum(D_G u) + mu*sum(g |grad u|)``, by ADMM.

    The algorithm and the choice of the defaults: module docstring, section "tv_segment".

    Args:
        fitting: fitting term ``Phi``, shape ``(H, W)``, negative inside the object.
        distance: geodesic distance ``D_G``, same shape, normally in ``[0, 1]``.
        lam: weight of the fitting term, >= 0.
        theta: weight of the distance term, >= 0.
        mu: weight of the TV regulariser, >= 0.
        edge: optional edge weights ``g >= 0`` (e.g. ``1 / (1 + iota |grad f|^2)``), same shape; default 1.
        rho: ADMM penalty, > 0.
        tau: initial proximal step, > 0.
        max_iter: maximum number of ADMM sweeps, >= 1.
        tol: stop when the relative change of the ADMM's ``u`` between sweeps is below ``tol``, >= 0.
        init: optional initial guess (clipped to ``[0, 1]``); default ``1[lam Phi + theta D_G < 0]``, the
            minimiser of the data term alone.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`BaselineResult`; ``result.mask`` is the segmentation ``u > 0.5``.

    Raises:
        ValueError: arrays that are not 2D, differ in shape or hold NaN/inf; a negative edge weight; a bad
            parameter value.
    """
    c, g, u0 = _problem(fitting, distance, edge, init, lam, theta)
    mu = _scalar(mu, "mu")
    rho = _scalar(rho, "rho", positive=True)
    tau = _scalar(tau, "tau", positive=True)
    tol = _scalar(tol, "tol")
    max_iter = _max_iter(max_iter)
    fused = kernels()
    weight = np.ones_like(c) if g is None else np.ascontiguousarray(g, dtype=np.float64)
    threshold = np.ascontiguousarray(mu * weight / rho)
    solve = _ShiftedSolver(c.shape)
    wx, wy = (np.ascontiguousarray(a) for a in _grad(u0))
    bx, by = np.zeros_like(u0), np.zeros_like(u0)
    z, d = u0.copy(), np.zeros_like(u0)
    rhs = np.empty(u0.shape, dtype=np.float32)  # the right-hand side of the float32 solve

    def energy(u: np.ndarray) -> float:
        return float(fused["linear_tv_energy"](u, c, weight, mu))

    def sweep(centre: np.ndarray, step: float) -> np.ndarray:
        fused["shifted_rhs"](centre, 1.0 / step, rho, wx, wy, bx, by, -1.0, z, d, -rho, rhs)
        u = solve(rhs, 1.0 / step + rho, rho)
        fused["tv_update"](u, c, threshold, rho, wx, wy, bx, by, z, d)
        return u

    return _proximal_descent(energy, sweep, lambda centre: None, u0, tau, 5, max_iter, tol, progress, "TV-ADMM")


# ---------------------------------------------------------------------------------------------------------------
# Elastica model
# ---------------------------------------------------------------------------------------------------------------


class _ElasticaALM:
    """State and one sweep of Zhu-Tai-Chan's augmented Lagrangian method, with a proximal term on ``u``.

    Variables: ``u`` (free), ``v = u`` (box-constrained, carries ``c``), ``p = grad u``, ``m`` (``|m| <= 1``,
    ``|p| = m.p`` makes ``m`` the unit normal where ``p != 0``), ``n = m`` and ``q = div n`` (the curvature).
    Multipliers ``l1`` (scalar, for ``|p| - m.p >= 0``), ``l2`` (for ``p - grad u``), ``l3`` (``v - u``), ``l4``
    (``q - div n``), ``l5`` (``n - m``), penalties ``r1 = rho/10`` and ``r2 = ... = r5 = rho``.

    The splitting's variables and multipliers are float32, as its solves: a sweep is bound by memory traffic over a
    dozen image-sized arrays, which float32 halves. The proximal centre, the proposals and the energies of the
    sufficient-decrease test are float64, so the returned iterates keep the monotone float64 energy. On the 256x256
    bench image this changes neither the number of accepted sweeps nor the mask of an all-float64 run; the energies
    agree to 2e-6 relative.
    """

    def __init__(self, c: np.ndarray, g: np.ndarray | None, alpha: float, beta: float, eps: float, sigma: float,
                 rho: float, u0: np.ndarray) :
        self.alpha, self.beta, self.eps, self.sigma = alpha, beta, eps, sigma
        self.g = np.ones_like(c) if g is None else g  # float64, for the energy
        f32 = np.float32
        self.c, self.g32 = c.astype(f32), self.g.astype(f32)
        self.r1, self.r = 0.1 * rho, rho
        self.kernels = kernels()
        self.solve, self.solve_n = _ShiftedSolver(c.shape), _ShiftedSolver(c.shape)
        zeros = [np.zeros(c.shape, dtype=f32) for _ in range(7)]
        self.l1, self.l2x, self.l2y, self.l3, self.l4, self.l5x, self.l5y = zeros
        self.sx, self.sy = np.zeros(c.shape, dtype=f32), np.zeros(c.shape, dtype=f32)
        self.rhs = np.zeros(c.shape, dtype=f32)  # the right-hand side of the float32 solves
        self.resync(u0)

    def resync(self, centre: np.ndarray) -> None:
        """Set the primal auxiliaries consistent with ``centre`` (multipliers are kept).

        ``m = n`` is the normal of the discrete curvature of :func:`elastica_energy` (smoothed by ``sigma``), not
        ``p/|p|``: on a near-binary ``u`` the latter jumps from 0 to 1 across an edge and would start the ALM with
        ``|q| ~ 1`` on every straight edge.
        """
        f32 = np.float32
        self.u, self.v = centre.astype(f32), centre.astype(f32)
        self.px, self.py = (np.ascontiguousarray(a, dtype=f32) for a in _grad(centre))
        mx, my = _normal(centre, self.eps, self.sigma)
        self.mx, self.my = np.ascontiguousarray(mx, dtype=f32), np.ascontiguousarray(my, dtype=f32)
        self.nx, self.ny = self.mx.copy(), self.my.copy()
        self.q = np.ascontiguousarray(_div(mx, my), dtype=f32)

    def sweep(self, centre: np.ndarray, step: float) -> np.ndarray:
        """One Gauss-Seidel pass over the subproblems (all closed form or one DCT solve), then the multipliers.

        ``u``: ``(1/step + r + r grad^T grad) u = centre/step + r grad^T (p + l2/r) + r (v + l3/r)`` by a DCT;
        ``v``: ``min c.v + r/2 |v - u + l3/r|^2`` over ``[0, 1]``; ``p``: shrinkage of
        ``g(alpha + beta q^2)|p| + (r1 + l1)(|p| - m.p) + r/2 |p - grad u + l2/r|^2``; ``q``: pointwise
        ``min g beta |p| q^2 + r/2 (q - div n + l4/r)^2``; ``n``: ``(I + grad grad^T) n = b - grad a`` through
        Woodbury with one DCT; ``m``: projection of ``n + l5/r + (r1 + l1) p / r`` onto the unit ball; then the
        multipliers. The per-pixel steps run fused in :mod:`pipeline.selective._kernels`.
        """
        k, r, r1 = self.kernels, self.r, self.r1
        k["shifted_rhs"](centre, 1.0 / step, r, self.px, self.py, self.l2x, self.l2y, 1.0 / r, self.v, self.l3, 1.0,
                         self.rhs)
        self.u = self.solve(self.rhs, 1.0 / step + r, r)
        k["elastica_pq"](self.u, self.c, self.g32, self.alpha, self.beta, r, r1, self.l1, self.l2x, self.l2y, self.l3,
                         self.l4, self.mx, self.my, self.nx, self.ny, self.v, self.q, self.px, self.py)
        k["elastica_n_rhs"](self.q, self.l4, r, self.mx, self.my, self.l5x, self.l5y, self.sx, self.sy, self.rhs)
        t = self.solve_n(self.rhs, 1.0, 1.0)
        k["elastica_finish"](t, self.sx, self.sy, r, r1, self.u, self.v, self.q, self.px, self.py, self.nx, self.ny,
                             self.mx, self.my, self.l1, self.l2x, self.l2y, self.l3, self.l4, self.l5x, self.l5y)
        return self.u


def elastica_segment(fitting: np.ndarray, distance: np.ndarray, lam: float = 2.0, theta: float = 30.0,
                     alpha: float = 1.0, beta: float = 10.0, edge: np.ndarray | None = None, eps: float = 1e-2,
                     sigma: float = 1.0, rho: float = 10.0, tau: float = 10.0, patience: int = 5,
                     max_iter: int = 800, tol: float = 1e-4, init: np.ndarray | None = None,
                     progress: bool = False) -> BaselineResult:
    """Elastica baseline of model (4) by Zhu-Tai-Chan's augmented Lagrangian method (ALM).

    The algorithm and the choice of the defaults: module docstring, section "elastica_segment".

    Args:
        fitting, distance, lam, theta: as :func:`tv_segment`.
        alpha: length weight, >= 0.
        beta: curvature weight, >= 0.
        edge: optional edge weights ``g >= 0``, same shape; default 1.
        eps: regularisation of the normal in the discrete curvature, > 0.
        sigma: Gaussian smoothing (pixels) before the normal is taken in the discrete curvature, >= 0.
        rho: ALM penalty scale, > 0.
        tau: initial proximal step, > 0.
        patience: consecutive rejected proposals before ``tau`` is halved, >= 1.
        max_iter: maximum number of ALM sweeps, >= 1.
        tol: stop when the relative change of the ALM's ``u`` between sweeps is below ``tol`` on an accepted
            sweep, >= 0.
        init, progress: as :func:`tv_segment`.

    Returns and raises as :func:`tv_segment`.
    """
    c, g, u0 = _problem(fitting, distance, edge, init, lam, theta)
    alpha, beta = _scalar(alpha, "alpha"), _scalar(beta, "beta")
    eps, sigma = _scalar(eps, "eps", positive=True), _scalar(sigma, "sigma")
    rho, tau, tol = _scalar(rho, "rho", positive=True), _scalar(tau, "tau", positive=True), _scalar(tol, "tol")
    max_iter = _max_iter(max_iter)
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}.")
    alm = _ElasticaALM(c, g, alpha, beta, eps, sigma, rho, u0)
    weights = _gaussian_weights(sigma)
    work = [np.empty_like(c) for _ in range(4)]

    def energy(u: np.ndarray) -> float:
        return float(alm.kernels["linear_elastica_energy"](u, c, alm.g, weights, alpha, beta, eps, *work))

    return _proximal_descent(
        energy, alm.sweep, alm.resync, u0, tau, int(patience), max_iter, tol, progress, "Elastica-ALM"
    )
