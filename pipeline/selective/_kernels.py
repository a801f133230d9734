"""Fused per-pixel kernels of the TV-ADMM and elastica-ALM sweeps (:mod:`pipeline.selective.baselines`), compiled with
numba.

Each kernel does in one pass over the image what the NumPy form of the sweep does with a dozen temporaries: the
same forward differences (zero in the last row / column), the same divergence (minus their adjoint) and the same
formulas, in float64.

Layout of every pass: rows run in parallel (``numba.prange``, numba's threads); within a row the first and last
pixels are handled apart from the interior, so that the interior loop has no boundary branches and is vectorised.
The per-pixel formulas live in small inlined functions that take the four boundary flags (a neighbour above, below,
left, right) as arguments; the interior call passes constants. Energies and other sums are summed row by row into an
array and then over the rows in order, so they do not depend on the number of threads. Kernels are compiled on first
use and cached on disk by numba: they are module-level functions, because numba's cache does not serve functions
that close over other jitted functions (their key changes from one process to the next). Import this module lazily
(:func:`pipeline.selective.baselines.kernels`): importing it imports numba.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

TINY = 1e-12

inline = numba.njit(inline="always", cache=True, fastmath=True)  # per-pixel formulas, inlined into the passes
rows = numba.njit(parallel=True, cache=True, fastmath=True)  # passes over the image, rows in parallel


@inline
def div_at(px, py, i, j, top, bottom, left, right):
    """``div(p)`` at ``(i, j)`` (``baselines._div``): backward differences, the last row / column of ``p`` unused."""
    d = 0.0
    if bottom:
        d += px[i, j]
    if top:
        d -= px[i - 1, j]
    if right:
        d += py[i, j]
    if left:
        d -= py[i, j - 1]
    return d


@inline
def grad_at(u, i, j, bottom, right):
    """Forward differences of ``u`` at ``(i, j)``, zero in the last row / column (``baselines._grad``)."""
    gx = u[i + 1, j] - u[i, j] if bottom else 0.0
    gy = u[i, j + 1] - u[i, j] if right else 0.0
    return gx, gy


@inline
def ordered_sums(a, b):
    """The sums of two per-row arrays, added in row order (independent of the number of threads)."""
    sa = 0.0
    sb = 0.0
    for i in range(a.shape[0]):
        sa += a[i]
        sb += b[i]
    return sa, sb


# --- the right-hand side of the u-solves ---------------------------------------------------------------------------


@inline
def rhs_at(i, j, top, bottom, left, right, centre, inv_step, r, ax, ay, bx, by, scale, x, y, weight, out):
    dv = 0.0
    if bottom:
        dv += ax[i, j] + scale * bx[i, j]
    if top:
        dv -= ax[i - 1, j] + scale * bx[i - 1, j]
    if right:
        dv += ay[i, j] + scale * by[i, j]
    if left:
        dv -= ay[i, j - 1] + scale * by[i, j - 1]
    out[i, j] = centre[i, j] * inv_step - r * dv + r * x[i, j] + weight * y[i, j]


@rows
def shifted_rhs(centre, inv_step, r, ax, ay, bx, by, scale, x, y, weight, out):
    """``out = centre/step - r div(a + scale b) + r x + weight y``: the right-hand side of both ``u``-solves.

    TV: ``a = w``, ``b`` its dual, ``scale = -1``, ``x = z``, ``y = d``, ``weight = -rho``; elastica: ``a = p``,
    ``b = l2``, ``scale = 1/r``, ``x = v``, ``y = l3``, ``weight = 1``.
    """
    h, w = centre.shape
    for i in numba.prange(h):
        top, bottom = i > 0, i < h - 1
        rhs_at(i, 0, top, bottom, False, w > 1, centre, inv_step, r, ax, ay, bx, by, scale, x, y, weight, out)
        for j in range(1, w - 1):
            rhs_at(i, j, top, bottom, True, True, centre, inv_step, r, ax, ay, bx, by, scale, x, y, weight, out)
        if w > 1:
            rhs_at(i, w - 1, top, bottom, True, False, centre, inv_step, r, ax, ay, bx, by, scale, x, y, weight, out)


# --- TV-ADMM -------------------------------------------------------------------------------------------------


@inline
def tv_update_at(i, j, bottom, right, u, c, threshold, rho, wx, wy, bx, by, z, d):
    uij = u[i, j]
    gx, gy = grad_at(u, i, j, bottom, right)
    vx = gx + bx[i, j]
    vy = gy + by[i, j]
    norm = np.sqrt(vx * vx + vy * vy)
    scale = max(1.0 - threshold[i, j] / max(norm, TINY), 0.0)
    nwx = scale * vx
    nwy = scale * vy
    zz = min(max(uij + d[i, j] - c[i, j] / rho, 0.0), 1.0)
    bx[i, j] = bx[i, j] + gx - nwx
    by[i, j] = by[i, j] + gy - nwy
    wx[i, j] = nwx
    wy[i, j] = nwy
    d[i, j] = d[i, j] + uij - zz
    z[i, j] = zz


@rows
def tv_update(u, c, threshold, rho, wx, wy, bx, by, z, d):
    """Steps 2-4 of the TV sweep in place: ``w`` shrinkage, ``z`` clipping, ``b`` and ``d`` updates."""
    h, w = u.shape
    for i in numba.prange(h):
        bottom = i < h - 1
        for j in range(w - 1):
            tv_update_at(i, j, bottom, True, u, c, threshold, rho, wx, wy, bx, by, z, d)
        tv_update_at(i, w - 1, bottom, False, u, c, threshold, rho, wx, wy, bx, by, z, d)


@rows
def linear_tv_energy(u, c, g, mu):
    """``sum(c u) + mu sum(g |grad u|)``."""
    h, w = u.shape
    linear = np.zeros(h)
    tv = np.zeros(h)
    for i in numba.prange(h):
        bottom = i < h - 1
        row_l = 0.0
        row_t = 0.0
        for j in range(w - 1):
            gx, gy = grad_at(u, i, j, bottom, True)
            row_l += c[i, j] * u[i, j]
            row_t += g[i, j] * np.sqrt(gx * gx + gy * gy)
        gx, gy = grad_at(u, i, w - 1, bottom, False)
        linear[i] = row_l + c[i, w - 1] * u[i, w - 1]
        tv[i] = row_t + g[i, w - 1] * np.sqrt(gx * gx + gy * gy)
    total_l, total_t = ordered_sums(linear, tv)
    return total_l + mu * total_t


# --- the proximal loop ---------------------------------------------------------------------------------------


@rows
def proposal(inner, centre, out):
    """``out = clip(inner, 0, 1)``; returns ``sum((out - centre)^2)``."""
    h, w = inner.shape
    sums = np.zeros(h)
    for i in numba.prange(h):
        row = 0.0
        for j in range(w):
            v = min(max(inner[i, j], 0.0), 1.0)
            out[i, j] = v
            row += (v - centre[i, j]) ** 2
        sums[i] = row
    total = 0.0
    for i in range(h):
        total += sums[i]
    return total


@rows
def relative_change(a, b):
    """``||a - b|| / max(||b||, TINY)``."""
    h, w = a.shape
    nums = np.zeros(h)
    dens = np.zeros(h)
    for i in numba.prange(h):
        num = 0.0
        den = 0.0
        for j in range(w):
            num += (a[i, j] - b[i, j]) ** 2
            den += b[i, j] ** 2
        nums[i] = num
        dens[i] = den
    num, den = ordered_sums(nums, dens)
    return np.sqrt(num) / max(np.sqrt(den), TINY)


# --- elastica-ALM --------------------------------------------------------------------------------------------


@inline
def elastica_pq_at(i, j, top, bottom, left, right, u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3, l4, mx, my,
                   nx, ny, v, q, px, py):
    uij = u[i, j]
    v[i, j] = min(max(uij - (l3[i, j] + c[i, j]) / r, 0.0), 1.0)
    ax, ay = grad_at(u, i, j, bottom, right)
    lagged = r1 + l1[i, j]
    threshold = (g[i, j] * (alpha + beta * q[i, j] ** 2) + lagged) / r
    vx = ax - l2x[i, j] / r + lagged * mx[i, j] / r
    vy = ay - l2y[i, j] / r + lagged * my[i, j] / r
    norm = np.sqrt(vx * vx + vy * vy)
    scale = max(1.0 - threshold / max(norm, TINY), 0.0)
    pxij = scale * vx
    pyij = scale * vy
    px[i, j] = pxij
    py[i, j] = pyij
    pnij = np.sqrt(pxij * pxij + pyij * pyij)
    # q at this pixel needs only this pixel's |p| (and n, which this kernel does not change): the old q above
    # is read before it is overwritten here
    q[i, j] = (r * div_at(nx, ny, i, j, top, bottom, left, right) - l4[i, j]) / (r + 2.0 * beta * g[i, j] * pnij)


@rows
def elastica_pq(u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3, l4, mx, my, nx, ny, v, q, px, py):
    """The ``v``, ``p`` and ``q`` subproblems of the ALM sweep, in place."""
    h, w = u.shape
    for i in numba.prange(h):
        top, bottom = i > 0, i < h - 1
        elastica_pq_at(i, 0, top, bottom, False, w > 1, u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3, l4, mx,
                       my, nx, ny, v, q, px, py)
        for j in range(1, w - 1):
            elastica_pq_at(i, j, top, bottom, True, True, u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3, l4, mx,
                           my, nx, ny, v, q, px, py)
        if w > 1:
            elastica_pq_at(i, w - 1, top, bottom, True, False, u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3,
                           l4, mx, my, nx, ny, v, q, px, py)


@inline
def elastica_s_at(i, j, bottom, right, q, l4, inv_r, mx, my, l5x, l5y, sx, sy):
    a = q[i, j] + l4[i, j] * inv_r
    ax = q[i + 1, j] + l4[i + 1, j] * inv_r - a if bottom else 0.0
    ay = q[i, j + 1] + l4[i, j + 1] * inv_r - a if right else 0.0
    sx[i, j] = mx[i, j] - l5x[i, j] * inv_r - ax
    sy[i, j] = my[i, j] - l5y[i, j] * inv_r - ay


@rows
def elastica_n_rhs(q, l4, r, mx, my, l5x, l5y, sx, sy, out):
    """``s = m - l5/r - grad(q + l4/r)`` into ``sx``, ``sy``; ``out = -div s``."""
    h, w = q.shape
    inv_r = 1.0 / r
    for i in numba.prange(h):
        bottom = i < h - 1
        for j in range(w - 1):
            elastica_s_at(i, j, bottom, True, q, l4, inv_r, mx, my, l5x, l5y, sx, sy)
        elastica_s_at(i, w - 1, bottom, False, q, l4, inv_r, mx, my, l5x, l5y, sx, sy)
    for i in numba.prange(h):
        top, bottom = i > 0, i < h - 1
        out[i, 0] = -div_at(sx, sy, i, 0, top, bottom, False, w > 1)
        for j in range(1, w - 1):
            out[i, j] = -div_at(sx, sy, i, j, top, bottom, True, True)
        if w > 1:
            out[i, w - 1] = -div_at(sx, sy, i, w - 1, top, bottom, True, False)


@inline
def elastica_n_at(i, j, bottom, right, t, sx, sy, nx, ny):
    tx, ty = grad_at(t, i, j, bottom, right)
    nx[i, j] = sx[i, j] - tx
    ny[i, j] = sy[i, j] - ty


@inline
def elastica_multipliers_at(i, j, top, bottom, left, right, r, inv_r, r1, u, v, q, px, py, nx, ny, mx, my, l1,
                            l2x, l2y, l3, l4, l5x, l5y):
    lagged = r1 + l1[i, j]
    pxij = px[i, j]
    pyij = py[i, j]
    gx, gy = grad_at(u, i, j, bottom, right)  # recomputed: cheaper than storing grad u in elastica_pq
    ax = nx[i, j] + (l5x[i, j] + lagged * pxij) * inv_r
    ay = ny[i, j] + (l5y[i, j] + lagged * pyij) * inv_r
    inv_scale = 1.0 / max(1.0, np.sqrt(ax * ax + ay * ay))
    mxi = ax * inv_scale if bottom else 0.0
    myi = ay * inv_scale if right else 0.0
    mx[i, j] = mxi
    my[i, j] = myi
    l1[i, j] = l1[i, j] + r1 * (np.sqrt(pxij * pxij + pyij * pyij) - mxi * pxij - myi * pyij)
    l2x[i, j] = l2x[i, j] + r * (pxij - gx)
    l2y[i, j] = l2y[i, j] + r * (pyij - gy)
    l3[i, j] = l3[i, j] + r * (v[i, j] - u[i, j])
    l4[i, j] = l4[i, j] + r * (q[i, j] - div_at(nx, ny, i, j, top, bottom, left, right))
    l5x[i, j] = l5x[i, j] + r * (nx[i, j] - mxi)
    l5y[i, j] = l5y[i, j] + r * (ny[i, j] - myi)


@rows
def elastica_finish(t, sx, sy, r, r1, u, v, q, px, py, nx, ny, mx, my, l1, l2x, l2y, l3, l4, l5x, l5y):
    """``n = s - grad t``, the ``m`` projection and the multiplier updates, in place."""
    h, w = t.shape
    inv_r = 1.0 / r
    for i in numba.prange(h):
        bottom = i < h - 1
        for j in range(w - 1):
            elastica_n_at(i, j, bottom, True, t, sx, sy, nx, ny)
        elastica_n_at(i, w - 1, bottom, False, t, sx, sy, nx, ny)
    for i in numba.prange(h):
        top, bottom = i > 0, i < h - 1
        elastica_multipliers_at(i, 0, top, bottom, False, w > 1, r, inv_r, r1, u, v, q, px, py, nx, ny, mx,
                                my, l1, l2x, l2y, l3, l4, l5x, l5y)
        for j in range(1, w - 1):
            elastica_multipliers_at(i, j, top, bottom, True, True, r, inv_r, r1, u, v, q, px, py, nx, ny, mx,
                                    my, l1, l2x, l2y, l3, l4, l5x, l5y)
        if w > 1:
            elastica_multipliers_at(i, w - 1, top, bottom, True, False, r, inv_r, r1, u, v, q, px, py, nx, ny,
                                    mx, my, l1, l2x, l2y, l3, l4, l5x, l5y)


@inline
def reg_at(i, j, top, bottom, left, right, u, g, nx, ny, alpha, beta):
    gx, gy = grad_at(u, i, j, bottom, right)
    kappa = div_at(nx, ny, i, j, top, bottom, left, right)
    return g[i, j] * np.sqrt(gx * gx + gy * gy) * (alpha + beta * kappa * kappa)


@inline
def normal_at(i, j, bottom, right, us, eps2, nx, ny):
    sx, sy = grad_at(us, i, j, bottom, right)
    inv_norm = 1.0 / np.sqrt(sx * sx + sy * sy + eps2)
    nx[i, j] = sx * inv_norm
    ny[i, j] = sy * inv_norm


@rows
def linear_elastica_energy(u, c, g, weights, alpha, beta, eps, tmp, us, nx, ny):
    """``sum(c u) + sum(g (alpha + beta kappa^2) |grad u|)``, ``kappa`` from the Gaussian-smoothed ``u``.

    ``weights``: the 1D Gaussian (length 1: no smoothing), applied along rows then columns with edge values
    repeated (``mode="nearest"``); ``tmp``, ``us``, ``nx``, ``ny``: work arrays of ``u``'s shape.
    """
    h, w = u.shape
    radius = (weights.shape[0] - 1) // 2
    for i in numba.prange(h):  # along axis 0: whole rows, the clamped row index is fixed per tap
        out = tmp[i]
        for j in range(w):
            out[j] = 0.0
        for k in range(-radius, radius + 1):
            wk = weights[k + radius]
            src = u[min(max(i + k, 0), h - 1)]
            for j in range(w):
                out[j] += wk * src[j]
    for i in numba.prange(h):  # along axis 1: shifted rows; the clamped columns only near either end
        row = tmp[i]
        out = us[i]
        for j in range(w):
            out[j] = 0.0
        for k in range(-radius, radius + 1):
            wk = weights[k + radius]
            lo = min(max(-k, 0), w)  # columns j with 0 <= j + k <= w - 1
            hi = max(min(w - k, w), lo)
            for j in range(lo):
                out[j] += wk * row[0]
            shifted = row[lo + k:hi + k]
            inner = out[lo:hi]
            for j in range(hi - lo):
                inner[j] += wk * shifted[j]
            for j in range(hi, w):
                out[j] += wk * row[w - 1]
    eps2 = eps * eps
    for i in numba.prange(h):
        bottom = i < h - 1
        for j in range(w - 1):
            normal_at(i, j, bottom, True, us, eps2, nx, ny)
        normal_at(i, w - 1, bottom, False, us, eps2, nx, ny)
    linear = np.zeros(h)
    reg = np.zeros(h)
    for i in numba.prange(h):
        top, bottom = i > 0, i < h - 1
        row_l = 0.0
        for j in range(w):
            row_l += c[i, j] * u[i, j]
        row_r = reg_at(i, 0, top, bottom, False, w > 1, u, g, nx, ny, alpha, beta)
        for j in range(1, w - 1):
            row_r += reg_at(i, j, top, bottom, True, True, u, g, nx, ny, alpha, beta)
        if w > 1:
            row_r += reg_at(i, w - 1, top, bottom, True, False, u, g, nx, ny, alpha, beta)
        linear[i] = row_l
        reg[i] = row_r
    total_l, total_r = ordered_sums(linear, reg)
    return total_l + total_r


KERNELS: dict[str, Callable] = dict(
    linear_elastica_energy=linear_elastica_energy, shifted_rhs=shifted_rhs, tv_update=tv_update,
    linear_tv_energy=linear_tv_energy, proposal=proposal, relative_change=relative_change,
    elastica_pq=elastica_pq, elastica_n_rhs=elastica_n_rhs,
    elastica_finish=elastica_finish,
)
