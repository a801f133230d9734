"""Geodesic distance, exact backend: ``GeodesicDistance(backend="fmm")`` against a bare ``skfmm.travel_time`` call.

Prints one JSON line: ``value`` = seconds of the transform (input checks, edge cost, seed initialisation, second-order
fast marching, normalisation) on a 512×512×96 CT phantom, ``baseline`` = seconds of ``skfmm.travel_time(phi, 1/cost,
order=2)`` alone on the same grid with the cost precomputed, so the ratio is the overhead of the wrapper (target
<= 1.1); medians of ``--repeats`` (default 3) interleaved pairs of calls. Also reports the deviation of
scikit-fmm's first-order map from its second-order one (``max_dev_order1``, ``mean_dev_order1``), the spread between
two exact discretisations of the same equation. ``--quick``: 96×96×24.
"""

from __future__ import annotations

import numpy as np
import skfmm
from _common import ct_phantom, emit, parser, timed
from geodesic_fast import liver_seeds, windowed


def main() -> None:
    args = parser(__doc__).parse_args()
    shape = (96, 96, 24) if args.quick else (512, 512, 96)
    volume, labels, _ = ct_phantom(shape, args.seed)
    image, seeds = windowed(volume), liver_seeds(labels, 5, args.seed)
    from transforms import GeodesicDistance

    transform = GeodesicDistance(backend="fmm", order=2)
    cost = transform._cost(image.astype(np.float64), seeds, (1.0, 1.0, 1.0))
    phi = np.where(seeds, -1.0, 1.0)
    speed = 1.0 / cost
    repeats = args.repeats or 3
    bare, ours = [], []
    for _ in range(repeats):  # interleaved: scikit-fmm's own time drifts by tens of percent between calls
        t, _ = timed(lambda: skfmm.travel_time(phi, speed, order=2), 1)
        bare.append(t)
        t, d2 = timed(lambda: transform(image, seeds), 1)
        ours.append(t)
    t_bare, t_ours = float(np.median(bare)), float(np.median(ours))
    d1 = np.asarray(GeodesicDistance(backend="fmm", order=1)(image, seeds))
    deviation = np.abs(d1 - np.asarray(d2))
    emit("geodesic_exact_3d", t_ours, "s", t_bare, shape="x".join(map(str, shape)), repeats=repeats,
         bare_range_s=f"{min(bare):.1f}-{max(bare):.1f}",
         baseline_name="bare skfmm.travel_time(order=2)", max_dev_order1=float(deviation.max()),
         mean_dev_order1=float(deviation.mean()))


if __name__ == "__main__":
    main()
