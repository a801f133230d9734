"""Shared helpers of the bench scripts: command line, timing, phantom data, one JSON line per figure."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the flags every bench script takes (``--quick``, ``--seed``, ``--repeats``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (CI); figures are not meaningful")
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom data (default 0)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    return p


def timed(fn: Callable[[], Any], repeats: int = 1, warmup: int = 0) -> tuple[float, Any]:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls; and the last result."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def emit(figure: str, value: float, unit: str, baseline: float, ratio: float | None = None, **extra: Any) -> dict:
    """Print one JSON line ``{"figure", "value", "unit", "baseline", "ratio", ...}`` and return it.

    ``ratio`` defaults to ``value / baseline``.
    """
    if ratio is None:
        ratio = value / baseline if baseline else float("nan")
    record = {"figure": figure, "value": _round(value), "unit": unit, "baseline": _round(baseline),
              "ratio": _round(ratio), **{k: _round(v) for k, v in extra.items()}}
    print(json.dumps(record), flush=True)
    return record


def _round(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return float(f"{float(x):.4g}")
    return x


def ct_phantom(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A LiTS-like CT phantom (int16 HU, labels, affine) of ``shape`` from :func:`pipeline.data.lits.make_lits_case`."""
    from pipeline.data.lits import make_lits_case

    return make_lits_case(0, shape=shape, seed=seed)
