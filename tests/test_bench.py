"""Smoke test of the bench scripts: each runs at --quick sizes and prints valid JSON lines (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
KEYS = {"figure", "value", "unit", "baseline", "ratio"}
SCRIPTS = {
    "geodesic_fast": ["geodesic_fast_3d"],
    "geodesic_2d": ["geodesic_fast_2d"],
    "geodesic_exact": ["geodesic_exact_3d"],
    "data_path": ["data_path"],
    "solvers": ["solver_tv", "solver_elastica"],
    "inference": ["inference_lits"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_mode_prints_json_figures(script):
    extra = ["--networks", "lits", "--no-compile"] if script == "inference" else []  # compile: tests/pipeline
    done = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--quick", "--repeats", "1", *extra],
                          capture_output=True, text=True, encoding="utf-8", cwd=str(BENCH), timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [r["figure"] for r in records] == SCRIPTS[script]
    for record in records:
        assert KEYS <= set(record)
        assert isinstance(record["unit"], str) and record["unit"]
        for key in ("value", "baseline", "ratio"):
            assert isinstance(record[key], float) and math.isfinite(record[key]) and record[key] > 0
        assert record["ratio"] == pytest.approx(record["value"] / record["baseline"], rel=1e-2)
