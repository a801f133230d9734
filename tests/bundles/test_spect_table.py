"""``python -m pipeline.experiments.spect_table`` on tiny simulated data: table files, Otsu row and an MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

from pipeline.data.spect import generate_spect_phantoms

REPO = Path(__file__).resolve().parents[2]


def test_spect_table_writes_markdown_csv_and_mlflow_run(tmp_path):
    data = tmp_path / "data"
    generate_spect_phantoms(data, num_cases=4, shape=(32, 32, 8), seed=0, progress=False)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["VARSEG_MLRUNS"] = str(tmp_path / "mlruns")
    env["PYTHONWARNINGS"] = "ignore"
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "pipeline.experiments.spect_table", "--out", str(out), "--modes", "1", "2",
           "--synthetic_dir", str(data), "--synthetic_cases", "4", "--synthetic_shape", "[32,32,8]",
           "--models_root", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
           "--features", "4", "--batch_size", "8", "--num_threads", "2", "--max_epochs", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "mode_table.md").read_text()
    assert "| otsu |" in md and "| mode1 |" in md and "| mode2 |" in md and "±" in md
    header = (out / "mode_table.csv").read_text().splitlines()[0]
    assert header.startswith("method,description,cases,dice_mean,dice_std")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("varseg-spect")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.method = 'table'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"otsu_test_dice", "mode1_test_dice", "mode2_test_dice"} <= set(runs[0].data.metrics)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"mode_table.md", "mode_table.csv"}
