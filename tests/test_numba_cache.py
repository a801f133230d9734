"""numba kernels are served from numba's disk cache in a new process instead of being compiled again.

Kernels that close over other jitted functions get a new cache key in every process, so each process would pay the
compilation again (about 17 s for the TV/elastica kernels, 4 s for the geodesic sweeps). This runs the baseline
solvers and the fast geodesic backend in two fresh processes that share an empty cache folder and checks that the
second one compiled nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json
import numpy as np
from pipeline.selective._kernels import KERNELS
from pipeline.selective.baselines import elastica_segment, tv_segment
from transforms import GeodesicDistance
from transforms import _eikonal_kernels, _guidance_kernels

rng = np.random.default_rng(0)
phi, dist = rng.standard_normal((16, 12)), np.zeros((16, 12))
tv_segment(phi, dist, max_iter=3)
elastica_segment(phi, dist, max_iter=3)
for shape in ((12, 10), (12, 10, 6)):
    seeds = np.zeros(shape, bool)
    seeds[(5,) * len(shape)] = True
    GeodesicDistance(backend="fast")(rng.random(shape).astype(np.float32), seeds)
kernels = dict(KERNELS, sweep2=_eikonal_kernels.sweep2, sweep3=_eikonal_kernels.sweep3,
               sumsq2=_guidance_kernels.sumsq2, sumsq3=_guidance_kernels.sumsq3)
print(json.dumps({name: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                  for name, k in kernels.items()}))
"""


@pytest.mark.slow
def test_second_process_loads_every_kernel_from_the_cache(tmp_path: Path) -> None:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                              encoding="utf-8", timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert all(misses >= 1 for _, misses in first.values()), first  # every kernel ran and was compiled once
    compiled_again = {name: counts for name, counts in second.items() if counts[1] or not counts[0]}
    assert not compiled_again, f"compiled again in a new process (hits, misses): {compiled_again}"
