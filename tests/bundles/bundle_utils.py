"""Helpers shared by the end-to-end bundle tests: run a bundle as a user does, in an isolated MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def isolated_env(root: Path) -> dict[str, str]:
    """The current environment with MLflow tracking redirected to ``root/mlruns`` and warnings silenced."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["VARSEG_MLRUNS"] = str(root / "mlruns")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_bundle(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <args>`` from the repository root; fails the test with its output on error."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
