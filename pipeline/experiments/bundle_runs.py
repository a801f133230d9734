"""Running bundle configs from the table commands: one ``monai.bundle run`` subprocess, and ``--key value`` overrides.

Shared by :mod:`pipeline.experiments.selective_table`, :mod:`pipeline.experiments.refine_table`,
:mod:`pipeline.experiments.brats_table` and
:mod:`pipeline.experiments.cascade`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.paths import REPO_ROOT

logger = logging.getLogger(__name__)


__all__ = ["config_spec", "override_dict", "run_bundle"]


def config_spec(files: Sequence[str | Path]) -> str:
    """The ``--config_file`` argument that merges ``files`` in order: ``"['a.json','b.json']"``."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def run_bundle(files: Sequence[str | Path], overrides: Sequence[str]) -> float:
    """Run ``python -m monai.bundle run`` on the merged ``files`` with ``--key value`` overrides; wall seconds.

    Raises:
        RuntimeError: the run failed; the message holds the command and the end of its output.
    """
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_spec(files), *overrides]
    logger.info("running %s", " ".join(cmd))
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - start


def override_dict(overrides: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs as a config-override dict (JSON values parsed, anything else kept as text)."""
    out: dict[str, Any] = {}
    for key, value in zip(overrides[::2], overrides[1::2]):
        try:
            out[key.lstrip("-")] = json.loads(value)
        except ValueError:
            out[key.lstrip("-")] = value
    return out
