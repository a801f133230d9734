"""Fused per-pixel kernels of the TV-ADMM and elastica-ALM sweeps (:mod:`pipeline.baselines`), compiled with numba.

Each kernel does in one pass over the image what the NumPy form of the sweep does with a dozen temporaries: the
same forward differences (zero in the last row / column), the same divergence (minus their adjoint) and the same
formulas, in float64. Energies are summed row by row and then over rows, so that their rounding stays close to
NumPy's pairwise sums. Kernels are compiled on first use and cached on disk by numba.
"""

from __future__ import annotations

from collections.abc import Callable

_KERNELS: dict[str, Callable] = {}
TINY = 1e-12


def kernels() -> dict[str, Callable]:
    """Compile (once per process) and return the kernels by name."""
    if _KERNELS:
        return _KERNELS
    import numba
    import numpy as np

    @numba.njit(inline="always", cache=True, fastmath=True)
    def div_at(px, py, i, j, h, w):
        d = 0.0
        if i < h - 1:
            d += px[i, j]
        if i > 0:
            d -= px[i - 1, j]
        if j < w - 1:
            d += py[i, j]
        if j > 0:
            d -= py[i, j - 1]
        return d

    @numba.njit(inline="always", cache=True, fastmath=True)
    def grad_at(u, i, j, h, w):
        """Forward differences of ``u`` at ``(i, j)``, zero in the last row / column (``baselines._grad``)."""
        gx = u[i + 1, j] - u[i, j] if i < h - 1 else 0.0
        gy = u[i, j + 1] - u[i, j] if j < w - 1 else 0.0
        return gx, gy

    @numba.njit(cache=True, fastmath=True)
    def tv_rhs(centre, inv_step, rho, wx, wy, bx, by, z, d, out):
        """``out = centre/step - rho div(w - b) + rho (z - d)``."""
        h, w = centre.shape
        for i in range(h):
            for j in range(w):
                dv = 0.0
                if i < h - 1:
                    dv += wx[i, j] - bx[i, j]
                if i > 0:
                    dv -= wx[i - 1, j] - bx[i - 1, j]
                if j < w - 1:
                    dv += wy[i, j] - by[i, j]
                if j > 0:
                    dv -= wy[i, j - 1] - by[i, j - 1]
                out[i, j] = centre[i, j] * inv_step - rho * dv + rho * (z[i, j] - d[i, j])

    @numba.njit(cache=True, fastmath=True)
    def tv_update(u, c, threshold, rho, wx, wy, bx, by, z, d):
        """Steps 2-4 of the TV sweep in place: ``w`` shrinkage, ``z`` clipping, ``b`` and ``d`` updates."""
        h, w = u.shape
        for i in range(h):
            for j in range(w):
                uij = u[i, j]
                gx, gy = grad_at(u, i, j, h, w)
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

    @numba.njit(cache=True, fastmath=True)
    def linear_tv_energy(u, c, g, mu):
        """``sum(c u) + mu sum(g |grad u|)``."""
        h, w = u.shape
        linear = 0.0
        tv = 0.0
        for i in range(h):
            row_l = 0.0
            row_t = 0.0
            for j in range(w):
                uij = u[i, j]
                gx, gy = grad_at(u, i, j, h, w)
                row_l += c[i, j] * uij
                row_t += g[i, j] * np.sqrt(gx * gx + gy * gy)
            linear += row_l
            tv += row_t
        return linear + mu * tv

    @numba.njit(cache=True, fastmath=True)
    def proposal(inner, centre, out):
        """``out = clip(inner, 0, 1)``; returns ``sum((out - centre)^2)``."""
        h, w = inner.shape
        total = 0.0
        for i in range(h):
            row = 0.0
            for j in range(w):
                v = min(max(inner[i, j], 0.0), 1.0)
                out[i, j] = v
                row += (v - centre[i, j]) ** 2
            total += row
        return total

    @numba.njit(cache=True, fastmath=True)
    def relative_change(a, b):
        """``||a - b|| / max(||b||, TINY)``."""
        h, w = a.shape
        num = 0.0
        den = 0.0
        for i in range(h):
            for j in range(w):
                num += (a[i, j] - b[i, j]) ** 2
                den += b[i, j] ** 2
        return np.sqrt(num) / max(np.sqrt(den), TINY)

    @numba.njit(cache=True, fastmath=True)
    def elastica_rhs(centre, inv_step, r, px, py, l2x, l2y, v, l3, out):
        """``out = centre/step - r div(p + l2/r) + r v + l3``."""
        h, w = centre.shape
        inv_r = 1.0 / r
        for i in range(h):
            for j in range(w):
                dv = 0.0
                if i < h - 1:
                    dv += px[i, j] + l2x[i, j] * inv_r
                if i > 0:
                    dv -= px[i - 1, j] + l2x[i - 1, j] * inv_r
                if j < w - 1:
                    dv += py[i, j] + l2y[i, j] * inv_r
                if j > 0:
                    dv -= py[i, j - 1] + l2y[i, j - 1] * inv_r
                out[i, j] = centre[i, j] * inv_step - r * dv + r * v[i, j] + l3[i, j]

    @numba.njit(cache=True, fastmath=True)
    def elastica_pq(u, c, g, alpha, beta, r, r1, l1, l2x, l2y, l3, l4, mx, my, nx, ny, v, q, px, py, gx, gy, pn):
        """The ``v``, ``p`` and ``q`` subproblems of the ALM sweep, in place (``gx``, ``gy``, ``pn``: outputs)."""
        h, w = u.shape
        for i in range(h):
            for j in range(w):
                uij = u[i, j]
                v[i, j] = min(max(uij - (l3[i, j] + c[i, j]) / r, 0.0), 1.0)
                ax, ay = grad_at(u, i, j, h, w)
                gx[i, j] = ax
                gy[i, j] = ay
                lagged = r1 + l1[i, j]
                threshold = (g[i, j] * (alpha + beta * q[i, j] ** 2) + lagged) / r
                vx = ax - l2x[i, j] / r + lagged * mx[i, j] / r
                vy = ay - l2y[i, j] / r + lagged * my[i, j] / r
                norm = np.sqrt(vx * vx + vy * vy)
                scale = max(1.0 - threshold / max(norm, TINY), 0.0)
                px[i, j] = scale * vx
                py[i, j] = scale * vy
                pn[i, j] = np.sqrt(px[i, j] ** 2 + py[i, j] ** 2)
        for i in range(h):
            for j in range(w):
                q[i, j] = (r * div_at(nx, ny, i, j, h, w) - l4[i, j]) / (r + 2.0 * beta * g[i, j] * pn[i, j])

    @numba.njit(cache=True, fastmath=True)
    def elastica_n_rhs(q, l4, r, mx, my, l5x, l5y, sx, sy, out):
        """``s = m - l5/r - grad(q + l4/r)`` into ``sx``, ``sy``; ``out = -div s``."""
        h, w = q.shape
        inv_r = 1.0 / r
        for i in range(h):
            for j in range(w):
                a = q[i, j] + l4[i, j] * inv_r
                ax = q[i + 1, j] + l4[i + 1, j] * inv_r - a if i < h - 1 else 0.0
                ay = q[i, j + 1] + l4[i, j + 1] * inv_r - a if j < w - 1 else 0.0
                sx[i, j] = mx[i, j] - l5x[i, j] * inv_r - ax
                sy[i, j] = my[i, j] - l5y[i, j] * inv_r - ay
        for i in range(h):
            for j in range(w):
                out[i, j] = -div_at(sx, sy, i, j, h, w)

    @numba.njit(cache=True, fastmath=True)
    def elastica_finish(t, sx, sy, r, r1, u, v, q, px, py, gx, gy, pn, nx, ny, mx, my, l1, l2x, l2y, l3, l4, l5x,
                        l5y):
        """``n = s - grad t``, the ``m`` projection and the multiplier updates, in place."""
        h, w = t.shape
        for i in range(h):
            for j in range(w):
                tx, ty = grad_at(t, i, j, h, w)
                nx[i, j] = sx[i, j] - tx
                ny[i, j] = sy[i, j] - ty
        for i in range(h):
            for j in range(w):
                lagged = r1 + l1[i, j]
                ax = nx[i, j] + l5x[i, j] / r + lagged * px[i, j] / r
                ay = ny[i, j] + l5y[i, j] / r + lagged * py[i, j] / r
                scale = max(1.0, np.sqrt(ax * ax + ay * ay))
                mxi = ax / scale if i < h - 1 else 0.0
                myi = ay / scale if j < w - 1 else 0.0
                mx[i, j] = mxi
                my[i, j] = myi
                l1[i, j] = l1[i, j] + r1 * (pn[i, j] - mxi * px[i, j] - myi * py[i, j])
                l2x[i, j] = l2x[i, j] + r * (px[i, j] - gx[i, j])
                l2y[i, j] = l2y[i, j] + r * (py[i, j] - gy[i, j])
                l3[i, j] = l3[i, j] + r * (v[i, j] - u[i, j])
                l4[i, j] = l4[i, j] + r * (q[i, j] - div_at(nx, ny, i, j, h, w))
                l5x[i, j] = l5x[i, j] + r * (nx[i, j] - mxi)
                l5y[i, j] = l5y[i, j] + r * (ny[i, j] - myi)

    @numba.njit(cache=True, fastmath=True)
    def linear_elastica_energy(u, c, g, weights, alpha, beta, eps, tmp, us, nx, ny):
        """``sum(c u) + sum(g (alpha + beta kappa^2) |grad u|)``, ``kappa`` from the Gaussian-smoothed ``u``.

        ``weights``: the 1D Gaussian (length 1: no smoothing), applied along rows then columns with edge values
        repeated (``mode="nearest"``); ``tmp``, ``us``, ``nx``, ``ny``: work arrays of ``u``'s shape.
        """
        h, w = u.shape
        radius = (weights.shape[0] - 1) // 2
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for k in range(-radius, radius + 1):
                    acc += weights[k + radius] * u[min(max(i + k, 0), h - 1), j]
                tmp[i, j] = acc
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for k in range(-radius, radius + 1):
                    acc += weights[k + radius] * tmp[i, min(max(j + k, 0), w - 1)]
                us[i, j] = acc
        eps2 = eps * eps
        for i in range(h):
            for j in range(w):
                sx, sy = grad_at(us, i, j, h, w)
                norm = np.sqrt(sx * sx + sy * sy + eps2)
                nx[i, j] = sx / norm
                ny[i, j] = sy / norm
        linear = 0.0
        reg = 0.0
        for i in range(h):
            row_l = 0.0
            row_r = 0.0
            for j in range(w):
                uij = u[i, j]
                gx, gy = grad_at(u, i, j, h, w)
                kappa = div_at(nx, ny, i, j, h, w)
                row_l += c[i, j] * uij
                row_r += g[i, j] * np.sqrt(gx * gx + gy * gy) * (alpha + beta * kappa * kappa)
            linear += row_l
            reg += row_r
        return linear + reg

    _KERNELS.update(linear_elastica_energy=linear_elastica_energy, tv_rhs=tv_rhs, tv_update=tv_update,
                    linear_tv_energy=linear_tv_energy, proposal=proposal, relative_change=relative_change,
                    elastica_rhs=elastica_rhs, elastica_pq=elastica_pq, elastica_n_rhs=elastica_n_rhs,
                    elastica_finish=elastica_finish)
    return _KERNELS
