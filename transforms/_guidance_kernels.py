"""numba kernels of :func:`transforms.guidance._gradient_sumsq`: ``|∇z|²`` with ``np.gradient``'s differences.

Module-level functions, so that numba serves them from its disk cache in every process after the first (functions
that close over other jitted functions get a new cache key in each process and are compiled again). Imported lazily:
importing this module imports numba.
"""

from __future__ import annotations

import numba


@numba.njit(inline="always", cache=True)
def diff(a, b, c, i, n, h):  # a = z[i - 1], b = z[i], c = z[i + 1] along one axis of size n
    if i == 0:
        return (c - b) / h
    if i == n - 1:
        return (b - a) / h
    return (c - a) / (2.0 * h)


@numba.njit(parallel=False, cache=True)
def sumsq2(z, h0, h1, out):
    n0, n1 = z.shape
    for i in range(n0):
        ip, im = min(i + 1, n0 - 1), max(i - 1, 0)
        for j in range(n1):
            jp, jm = min(j + 1, n1 - 1), max(j - 1, 0)
            g0 = diff(z[im, j], z[i, j], z[ip, j], i, n0, h0)
            g1 = diff(z[i, jm], z[i, j], z[i, jp], j, n1, h1)
            out[i, j] = g0 * g0 + g1 * g1


@numba.njit(parallel=False, cache=True)
def sumsq3(z, h0, h1, h2, out):
    n0, n1, n2 = z.shape
    for i in range(n0):
        ip, im = min(i + 1, n0 - 1), max(i - 1, 0)
        for j in range(n1):
            jp, jm = min(j + 1, n1 - 1), max(j - 1, 0)
            for k in range(n2):
                kp, km = min(k + 1, n2 - 1), max(k - 1, 0)
                g0 = diff(z[im, j, k], z[i, j, k], z[ip, j, k], i, n0, h0)
                g1 = diff(z[i, jm, k], z[i, j, k], z[i, jp, k], j, n1, h1)
                g2 = diff(z[i, j, km], z[i, j, k], z[i, j, kp], k, n2, h2)
                out[i, j, k] = g0 * g0 + g1 * g1 + g2 * g2
