"""numba kernels of :func:`transforms.eikonal.sweep_travel_time_numpy`: one sweep of a 2D or 3D grid along axis 0.

Module-level functions, so that numba serves them from its disk cache in every process after the first (functions
that close over other jitted functions get a new cache key in each process and are compiled again). Imported lazily by
:func:`transforms.eikonal._numba_kernels`: importing this module imports numba.

The plane update runs on the calling thread: ``PARALLEL`` is False, so the ``prange`` over the rows of a plane is a
plain loop; the inner loop over the last axis is vectorised.
"""

from __future__ import annotations

import numba
import numpy as np

#: "Not reached yet". Defined here, not imported: numba's disk cache keys on this file, so a value changed elsewhere
#: would not recompile the cached kernels. :data:`transforms.eikonal._BIG` holds the same value for the torch path.
BIG = np.float32(1e20)
PARALLEL = False


@numba.njit(inline="always", fastmath=True, cache=True)
def segment(u0, u1, invf, f, hx, hs, limit, hd):
    g = min(max((u0 - u1) * invf / hs, np.float32(-2.0)), np.float32(2.0))
    g2 = g * g
    root = np.sqrt(max(np.float32(1.0) - g2, np.float32(0.0)))
    return u0 + f * hx * root if (g > 0) & (g2 <= limit) else u1 + f * hd


@numba.njit(inline="always", fastmath=True, cache=True)
def triangle(u0, d1, d2, invf, f, hx, hy, hz, corner):
    g1 = min(max(d1 * invf / hy, np.float32(-2.0)), np.float32(2.0))
    g2 = min(max(d2 * invf / hz, np.float32(-2.0)), np.float32(2.0))
    q = np.float32(1.0) - g1 * g1 - g2 * g2
    root = np.sqrt(max(q, np.float32(1e-12)))
    r = hx / root
    t = g1 * r / hy
    s = g2 * r / hz
    if corner:
        inside = (q > 0) & (s >= 0) & (s <= t) & (t <= 1)
    else:
        inside = (q > 0) & (t > 0) & (s > 0) & (t + s <= 1)
    return u0 + f * hx * root if inside else BIG


@numba.njit(inline="always", fastmath=True, cache=True)
def quadrant(u0, ua, ub, uab, invf, f, hx, hy, hz):
    """The three triangles of one quadrant: (centre, a, b), (centre, a, ab), (centre, b, ab)."""
    best = triangle(u0, u0 - ua, u0 - ub, invf, f, hx, hy, hz, False)
    best = min(best, triangle(u0, u0 - ua, ua - uab, invf, f, hx, hy, hz, True))
    return min(best, triangle(u0, u0 - ub, ub - uab, invf, f, hx, hz, hy, True))


@numba.njit(fastmath=True, cache=True)
def sweep2(u, f, invf, hx, hy, forward):
    """Sweep the padded ``(n0 + 2, n1 + 2)`` array ``u`` along axis 0; returns the largest decrease."""
    n0, n1 = f.shape
    lim = hy * hy / (hx * hx + hy * hy)
    hd = np.float32(np.sqrt(hx * hx + hy * hy))
    change = np.float32(0.0)
    for step in range(1, n0):
        i = step + 1 if forward else n0 - step
        p = i - 1 if forward else i + 1
        row = np.empty(n1, dtype=np.float32)
        prev_row, cur_row, fr, ir = u[p], u[i], f[i - 1], invf[i - 1]
        for j in range(n1):
            fx, ix = fr[j], ir[j]
            u0 = prev_row[j + 1]
            best = min(cur_row[j + 1], u0 + fx * hx)
            best = min(best, segment(u0, prev_row[j], ix, fx, hx, hy, lim, hd))
            row[j] = min(best, segment(u0, prev_row[j + 2], ix, fx, hx, hy, lim, hd))
        for j in range(n1):
            old = cur_row[j + 1]
            if old < BIG:
                change = max(change, old - row[j])
            cur_row[j + 1] = row[j]
    return change


@numba.njit(parallel=PARALLEL, fastmath=True, cache=True)
def sweep3(u, f, invf, hx, hy, hz, forward):
    """Sweep the padded ``(n0 + 2, n1 + 2, n2 + 2)`` array ``u`` along axis 0; returns the largest decrease."""
    n0, n1, n2 = f.shape
    lim_y = hy * hy / (hx * hx + hy * hy)
    lim_z = hz * hz / (hx * hx + hz * hz)
    hyz = np.float32(np.sqrt(hy * hy + hz * hz))
    lim_d = hyz * hyz / (hx * hx + hyz * hyz)
    hd_y = np.float32(np.sqrt(hx * hx + hy * hy))
    hd_z = np.float32(np.sqrt(hx * hx + hz * hz))
    hd_d = np.float32(np.sqrt(hx * hx + hyz * hyz))
    lim_oy = hz * hz / (hd_y * hd_y + hz * hz)
    lim_oz = hy * hy / (hd_z * hd_z + hy * hy)
    changes = np.zeros(n1 + 2, dtype=np.float32)
    for step in range(1, n0):
        i = step + 1 if forward else n0 - step
        p = i - 1 if forward else i + 1
        for j in numba.prange(1, n1 + 1):
            row = np.empty(n2, dtype=np.float32)
            prev_row, cur_row = u[p, j], u[i, j]
            lo, hi = u[p, j - 1], u[p, j + 1]
            fr, ir = f[i - 1, j - 1], invf[i - 1, j - 1]
            for k in range(n2):
                fx, ix = fr[k], ir[k]
                u0 = prev_row[k + 1]
                um, up_ = lo[k + 1], hi[k + 1]
                vm, vp = prev_row[k], prev_row[k + 2]
                mm, mp, pm, pp = lo[k], lo[k + 2], hi[k], hi[k + 2]
                best = min(cur_row[k + 1], u0 + fx * hx)
                best = min(best, segment(u0, um, ix, fx, hx, hy, lim_y, hd_y))
                best = min(best, segment(u0, up_, ix, fx, hx, hy, lim_y, hd_y))
                best = min(best, segment(u0, vm, ix, fx, hx, hz, lim_z, hd_z))
                best = min(best, segment(u0, vp, ix, fx, hx, hz, lim_z, hd_z))
                best = min(best, segment(u0, mm, ix, fx, hx, hyz, lim_d, hd_d))
                best = min(best, segment(u0, mp, ix, fx, hx, hyz, lim_d, hd_d))
                best = min(best, segment(u0, pm, ix, fx, hx, hyz, lim_d, hd_d))
                best = min(best, segment(u0, pp, ix, fx, hx, hyz, lim_d, hd_d))
                # outer edges of the 3x3 square: from an axis neighbour towards a diagonal one
                best = min(best, segment(um, mm, ix, fx, hd_y, hz, lim_oy, hd_d))
                best = min(best, segment(um, mp, ix, fx, hd_y, hz, lim_oy, hd_d))
                best = min(best, segment(up_, pm, ix, fx, hd_y, hz, lim_oy, hd_d))
                best = min(best, segment(up_, pp, ix, fx, hd_y, hz, lim_oy, hd_d))
                best = min(best, segment(vm, mm, ix, fx, hd_z, hy, lim_oz, hd_d))
                best = min(best, segment(vm, pm, ix, fx, hd_z, hy, lim_oz, hd_d))
                best = min(best, segment(vp, mp, ix, fx, hd_z, hy, lim_oz, hd_d))
                best = min(best, segment(vp, pp, ix, fx, hd_z, hy, lim_oz, hd_d))
                best = min(best, quadrant(u0, um, vm, mm, ix, fx, hx, hy, hz))
                best = min(best, quadrant(u0, um, vp, mp, ix, fx, hx, hy, hz))
                best = min(best, quadrant(u0, up_, vm, pm, ix, fx, hx, hy, hz))
                best = min(best, quadrant(u0, up_, vp, pp, ix, fx, hx, hy, hz))
                row[k] = best
            row_change = changes[j]
            for k in range(n2):
                old = cur_row[k + 1]
                if old < BIG:
                    row_change = max(row_change, old - row[k])
                cur_row[k + 1] = row[k]
            changes[j] = row_change
    return changes.max()
