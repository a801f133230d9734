"""Variational solvers: TV-ADMM and elastica-ALM per 256×256 image against skimage's ``chan_vese``, equal sweeps.

Prints two JSON lines, ``solver_tv`` and ``solver_elastica``: ``value`` = seconds per image of
:func:`pipeline.selective.baselines.tv_segment` (resp. :func:`pipeline.selective.baselines.elastica_segment`) run for
exactly ``iterations`` sweeps (``tol=0``), ``baseline`` = seconds of ``skimage.segmentation.chan_vese`` on the same
image for the same number of iterations (``max_num_iter``, ``tol=0``); target ratio <= 0.5. The image is the liver slice
of a 256×256 CT phantom windowed to [0, 1] with its fitting term ``Φ`` and geodesic distance from five liver clicks.
``--quick``: 64×64, 20 iterations.
"""

from __future__ import annotations

import numpy as np
from _common import ct_phantom, emit, parser, timed
from geodesic_fast import liver_seeds, windowed


def main() -> None:
    args = parser(__doc__).parse_args()
    from skimage.segmentation import chan_vese

    from pipeline.selective.baselines import elastica_segment, tv_segment
    from transforms import ChanVeseFitting, EdgeIndicator, GeodesicDistance

    size, iterations = (64, 20) if args.quick else (256, 100)
    volume, labels, _ = ct_phantom((size, size, 8), args.seed)
    seeds3 = liver_seeds(labels, 5, args.seed)
    z = int(np.flatnonzero(seeds3.any(axis=(0, 1)))[0])
    image, seeds = windowed(volume[:, :, z]).astype(np.float64), seeds3[:, :, z]
    fitting = np.asarray(ChanVeseFitting()(image, seeds), dtype=np.float64)
    distance = np.asarray(GeodesicDistance()(image, seeds), dtype=np.float64)
    edge = np.asarray(EdgeIndicator()(image), dtype=np.float64)
    repeats = args.repeats or 3
    t_cv, _ = timed(lambda: chan_vese(image, max_num_iter=iterations, tol=0.0), repeats, warmup=1)
    for name, solve in (("tv", tv_segment), ("elastica", elastica_segment)):
        t, result = timed(lambda: solve(fitting, distance, edge=edge, max_iter=iterations, tol=0.0), repeats, warmup=1)
        emit(f"solver_{name}", t, "s", t_cv, shape=f"{size}x{size}", iterations=iterations,
             sweeps_run=result.iterations, baseline_name="skimage chan_vese")


if __name__ == "__main__":
    main()
