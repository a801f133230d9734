"""``scripts/compare_screenshot.py`` captures the MLflow compare page and chart view of two runs with headless Chromium.

Runs the script as a user does on a temporary store and checks that both PNGs exist and are not blank, and that the
rendered pages (the DOM dumped by the same Chromium call) show both runs and their ``val_dice``. Skipped when no
Chromium binary is on PATH. About 40 s on 2 CPU cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from test_mlflow_server import load_script, make_store

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_screenshot.py"

pytestmark = pytest.mark.skipif(
    load_script().find_chromium() is None,
    reason="no Chromium binary on PATH (apt-get install -y chromium, or set $CHROMIUM)",
)


def test_screenshots_show_the_two_newest_runs_with_val_dice(tmp_path: Path) -> None:
    store = tmp_path / "store"
    uri, exp_id, ids = make_store(store, {"run-old": [0.1, 0.2, 0.3], "run-a": [0.30, 0.52, 0.61],
                                          "run-b": [0.25, 0.40, 0.47]})
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_terminated(client.create_run(exp_id, run_name="run-no-dice").info.run_id)  # newest, but no val_dice
    out = tmp_path / "shots"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--store", str(store), "--experiment", "varseg-compare",
                           "--out", str(out)], cwd=REPO, capture_output=True,
                               encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    pngs = [Path(line) for line in proc.stdout.split()]
    assert [p.name.split("-")[0] for p in pngs] == ["compare", "chart"] and all(p.parent == out for p in pngs)
    for png, size in zip(pngs, [(1600, 1700), (1600, 1000)]):
        image = Image.open(png).convert("L")
        assert image.size == size
        pixels = np.asarray(image, dtype=np.float64)
        assert pixels.std() > 10.0, f"{png} looks blank"
    compare_dom, chart_dom = (p.with_suffix(".html").read_text() for p in pngs)
    # the compare page names both runs and shows their val_dice; the chart view draws one val_dice curve per run
    for name in ("run-a", "run-b"):
        assert name in compare_dom and ids[name] in compare_dom
        assert f"{name} (val_dice)" in chart_dom
    assert "val_dice" in compare_dom
    for name in ("run-old", "run-no-dice"):
        assert name not in compare_dom and f"{name} (val_dice)" not in chart_dom
