"""Geodesic distance, fast backend, 2D: milliseconds per 512×512 slice against scikit-fmm on the same slice.

Prints one JSON line: ``value`` = ms of ``GeodesicDistance(backend="fast")`` on the liver slice of a 512×512 CT
phantom (HU window, edge speed with the default ε, β, p), ``baseline`` = ms of the exact backend
(``GeodesicDistance(backend="fmm", order=1)``, scikit-fmm's first-order march, the same discrete equation), the
deviation of the two normalised maps (``max_dev``, ``mean_dev``) and the target (``target_ms`` = 50). ``--quick``:
128×128.
"""

from __future__ import annotations

import numpy as np
from _common import ct_phantom, emit, parser, timed
from geodesic_fast import liver_seeds, windowed


def main() -> None:
    args = parser(__doc__).parse_args()
    size = 128 if args.quick else 512
    volume, labels, _ = ct_phantom((size, size, 8), args.seed)
    seeds3 = liver_seeds(labels, 5, args.seed)
    z = int(np.flatnonzero(seeds3.any(axis=(0, 1)))[0])
    image, seeds = windowed(volume[:, :, z]), seeds3[:, :, z]
    from transforms import GeodesicDistance

    fast, exact = GeodesicDistance(backend="fast"), GeodesicDistance(backend="fmm", order=1)
    repeats = args.repeats or (3 if args.quick else 10)
    t_fast, d_fast = timed(lambda: fast(image, seeds), repeats, warmup=1)
    t_exact, d_exact = timed(lambda: exact(image, seeds), max(1, repeats // 2), warmup=1)
    deviation = np.abs(np.asarray(d_fast) - np.asarray(d_exact))
    emit("geodesic_fast_2d", 1e3 * t_fast, "ms", 1e3 * t_exact, shape=f"{size}x{size}",
         baseline_name="GeodesicDistance(backend='fmm', order=1)", target_ms=50,
         max_dev=float(deviation.max()), mean_dev=float(deviation.mean()))


if __name__ == "__main__":
    main()
