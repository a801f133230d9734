"""numba kernels of :func:`transforms.eikonal.sweep_travel_time_numpy`: one Gauss–Seidel sweep of a 2D or 3D grid.

Module-level functions, so that numba serves them from its disk cache in every process after the first (functions
that close over other jitted functions get a new cache key in each process and are compiled again). Imported lazily by
:func:`transforms.eikonal._numba_kernels`: importing this module imports numba.

A sweep visits every voxel once in one of the ``2**ndim`` orderings (each axis up or down) and lowers it to the
first-order upwind (Godunov) solution from its axis neighbours, using the values already updated in this sweep.
"""

from __future__ import annotations

import numba
import numpy as np

#: "Not reached yet". Defined here, not imported: numba's disk cache keys on this file, so a value changed elsewhere
#: would not recompile the cached kernels. :data:`transforms.eikonal._BIG` holds the same value for the torch path.
BIG = np.float32(1e20)


@numba.njit(inline="always", fastmath=True, cache=True)
def solve2(a, ha, b, hb, f):
    """Smallest ``u`` with ``((u − a)⁺/ha)² + ((u − b)⁺/hb)² = f²`` for ``a <= b`` (``b`` dropped when ``u <= b``)."""
    u = a + f * ha
    if u <= b:
        return u
    wa = np.float32(1.0) / (ha * ha)
    wb = np.float32(1.0) / (hb * hb)
    s = wa + wb
    m = a * wa + b * wb
    disc = m * m - s * (a * a * wa + b * b * wb - f * f)
    if disc < 0:
        return u
    return (m + np.sqrt(disc)) / s


@numba.njit(inline="always", fastmath=True, cache=True)
def solve3(a, ha, b, hb, c, hc, f):
    """The same with three axis neighbours ``a <= b <= c`` (the larger ones dropped while the solution is below them)."""
    u = solve2(a, ha, b, hb, f)
    if u <= c:
        return u
    wa = np.float32(1.0) / (ha * ha)
    wb = np.float32(1.0) / (hb * hb)
    wc = np.float32(1.0) / (hc * hc)
    s = wa + wb + wc
    m = a * wa + b * wb + c * wc
    disc = m * m - s * (a * a * wa + b * b * wb + c * c * wc - f * f)
    if disc < 0:
        return u
    return (m + np.sqrt(disc)) / s


@numba.njit(fastmath=True, cache=True)
def sweep2(u, f, h0, h1, up0, up1):
    """One sweep of the padded ``(n0 + 2, n1 + 2)`` array ``u`` in the ordering ``(up0, up1)``; the largest decrease."""
    n0, n1 = f.shape
    change = np.float32(0.0)
    i0, i1, di = (1, n0 + 1, 1) if up0 else (n0, 0, -1)
    j0, j1, dj = (1, n1 + 1, 1) if up1 else (n1, 0, -1)
    for i in range(i0, i1, di):
        for j in range(j0, j1, dj):
            fx = f[i - 1, j - 1]
            if fx >= BIG:
                continue
            a = min(u[i - 1, j], u[i + 1, j])
            b = min(u[i, j - 1], u[i, j + 1])
            if a >= BIG and b >= BIG:
                continue
            new = solve2(a, h0, b, h1, fx) if a <= b else solve2(b, h1, a, h0, fx)
            old = u[i, j]
            if new < old:
                if old < BIG:
                    change = max(change, old - new)
                u[i, j] = new
    return change


@numba.njit(fastmath=True, cache=True)
def sweep3(u, f, h0, h1, h2, up0, up1, up2):
    """One sweep of the padded ``(n0 + 2, n1 + 2, n2 + 2)`` array ``u`` in the ordering ``(up0, up1, up2)``; the
    largest decrease."""
    n0, n1, n2 = f.shape
    change = np.float32(0.0)
    i0, i1, di = (1, n0 + 1, 1) if up0 else (n0, 0, -1)
    j0, j1, dj = (1, n1 + 1, 1) if up1 else (n1, 0, -1)
    k0, k1, dk = (1, n2 + 1, 1) if up2 else (n2, 0, -1)
    for i in range(i0, i1, di):
        for j in range(j0, j1, dj):
            for k in range(k0, k1, dk):
                fx = f[i - 1, j - 1, k - 1]
                if fx >= BIG:
                    continue
                a = min(u[i - 1, j, k], u[i + 1, j, k])
                b = min(u[i, j - 1, k], u[i, j + 1, k])
                c = min(u[i, j, k - 1], u[i, j, k + 1])
                if a >= BIG and b >= BIG and c >= BIG:
                    continue
                ha, hb, hc = h0, h1, h2
                if b < a:  # sort the three neighbours (and their spacings) by value
                    a, b, ha, hb = b, a, hb, ha
                if c < b:
                    b, c, hb, hc = c, b, hc, hb
                    if b < a:
                        a, b, ha, hb = b, a, hb, ha
                new = solve3(a, ha, b, hb, c, hc, fx)
                old = u[i, j, k]
                if new < old:
                    if old < BIG:
                        change = max(change, old - new)
                    u[i, j, k] = new
    return change
