"""End-to-end: the lung bundle's selective methods (train / evaluate / per-image), inference from clicks, the table.

Tiny synthetic data (5 cases of 64×64×12: 2 train / 1 val / 2 test) and narrow networks keep this around a minute on
2 CPU cores. Runs are tracked in a temporary MLflow store, so the repository's ``mlruns/`` is untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from pipeline.data.lung import generate_lung_phantoms

from bundle_utils import isolated_env, run_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "lung" / "configs"
TRAIN = str(CONFIGS / "train.json")


def _configs(*names: str) -> str:
    files = [TRAIN] + [str(CONFIGS / n) for n in names]
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_bundle")
    data = root / "data"
    generate_lung_phantoms(data, num_cases=5, shape=(64, 64, 12), seed=0, progress=False)
    env = isolated_env(root)
    common = [
        "--synthetic_dir", str(data), "--synthetic_cases", "5", "--synthetic_shape", "[64,64,12]",
        "--num_train", "2", "--num_val", "1", "--num_test", "2", "--models_root", str(root / "models"),
        "--features", "8", "--levels", "2", "--num_threads", "2", "--max_epochs", "4", "--val_interval", "2",
    ]
    return {"root": root, "data": data, "env": env, "common": common}


def _client(ws) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws['root'] / 'mlruns' / 'mlflow.db'}")


def _runs(ws, method: str, workflow: str):
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-lung")
    assert exp is not None, "no varseg-lung experiment in the store"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.method = '{method}' and tags.workflow = '{workflow}'")
    return client, runs


@pytest.fixture(scope="module")
def m4(workspace):
    out = workspace["root"] / "eval" / "m4"
    args = [*workspace["common"], "--output_dir", str(out)]
    run_bundle(["--config_file", _configs("methods/m4.json"), *args], workspace["env"])
    run_bundle(["--config_file", _configs("methods/m4.json", "evaluate.json"), *args], workspace["env"])
    return out


def test_m4_trains_and_evaluates_with_its_own_runs(workspace, m4):
    models = workspace["root"] / "models" / "m4"
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=4.pt").is_file()
    client, runs = _runs(workspace, "m4", "train")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["guidance"] == "geodesic" and run.data.params["use_dip"].lower() == "true"
    assert float(run.data.params["lam"]) == 2.0 and float(run.data.params["theta"]) == 30.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [2, 4]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    client, runs = _runs(workspace, "m4", "evaluate")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert 0.0 <= metrics["test_dice"] <= 1.0 and "test_jaccard_std" in metrics
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"overlay_m4.png", "per_case_test_metrics.csv"} <= artifacts
    rows = (m4 / "per_case_test_metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 2  # header, two test cases, mean and std


def test_m1_trains_without_a_dip_net(workspace):
    out = workspace["root"] / "eval" / "m1"
    run_bundle(["--config_file", _configs("methods/m1.json"), *workspace["common"], "--output_dir", str(out)],
               workspace["env"])
    _, runs = _runs(workspace, "m1", "train")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["use_dip"].lower() == "false" and params["guidance"] == "polygon" and float(params["mu"]) > 0


@pytest.mark.parametrize("method, extra", [("tv", ["--tv_mu_grid", "[0.5,1.0]"]),
                                           ("dip", ["--dip_epochs_grid", "[2,4]"])])
def test_per_image_methods_choose_on_validation(workspace, method, extra):
    out = workspace["root"] / "eval" / method
    run_bundle(["--config_file", _configs(f"methods/{method}.json"), *workspace["common"], *extra,
                "--output_dir", str(out)], workspace["env"])
    client, runs = _runs(workspace, method, "per-image")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["chosen_setting"] in ({"tv": ["0.5", "1.0"], "dip": ["2", "4"]}[method])
    assert 0.0 <= run.data.metrics["test_dice"] <= 1.0
    assert len(client.get_metric_history(run.info.run_id, "val_dice")) == 2
    assert (out / f"overlay_{method}.png").is_file()


def test_inference_from_a_markers_file_keeps_geometry(workspace, m4, tmp_path):
    image = workspace["data"] / "imagesTr" / "lung_004_0000.nii.gz"
    img = nib.load(str(image))
    label = np.asarray(nib.load(str(workspace["data"] / "masksTr" / "lung_004_0000.nii.gz")).dataobj) == 1
    z = int(np.argmax(label.sum(axis=(0, 1))))
    inside = np.argwhere(label[:, :, z])
    chosen = inside[np.random.default_rng(1).choice(len(inside), 4, replace=False)]
    markers = tmp_path / "lung_004_0000.csv"
    markers.write_text("i,j,k\n" + "".join(f"{i},{j},{z}\n" for i, j in chosen))
    out = tmp_path / "masks"
    # inference.json runs on its own (model-zoo convention), the method's file merged after it
    files = "[" + ",".join(f"'{CONFIGS / n}'" for n in ("inference.json", "methods/m4.json")) + "]"
    args = ["--config_file", files, "--models_root", str(workspace["root"] / "models"), "--features", "8",
            "--levels", "2", "--num_threads", "2", "--input", str(image), "--markers", str(markers),
            "--output", str(out)]
    run_bundle(args, workspace["env"])
    saved = nib.load(str(out / "lung_004_0000_left_lung.nii.gz"))
    assert saved.shape == img.shape and np.allclose(saved.affine, img.affine)
    mask = np.asarray(saved.dataobj)
    assert set(np.unique(mask)) <= {0, 1} and mask.sum() == mask[:, :, z].sum()
    # a second run skips the existing mask (never overwrites it) and exits 0
    stamp = (out / "lung_004_0000_left_lung.nii.gz").stat().st_mtime_ns
    proc = run_bundle(args, workspace["env"])
    assert "0 done, 1 skipped, 0 failed" in proc.stdout
    assert (out / "lung_004_0000_left_lung.nii.gz").stat().st_mtime_ns == stamp


def test_table_command_writes_markdown_csv_and_a_run(workspace, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.experiments.selective_table", "lung", "--methods", "m2", "tv",
           "--eval-root", str(tmp_path / "eval"), *workspace["common"], "--tv_mu_grid", "[1.0]"]
    proc = subprocess.run(cmd, cwd=REPO, env=workspace["env"], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "eval" / "table" / "selective_table.md").read_text()
    assert "| M2 |" in table and "| TV |" in table and "0.935 ± 0.048" in table  # paper's M2 next to ours
    csv_rows = (tmp_path / "eval" / "table" / "selective_table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("method,dice_mean") and len(csv_rows) == 3
    assert (tmp_path / "eval" / "table" / "overlays" / "overlay_tv.png").is_file()
    client, runs = _runs(workspace, "table", "table")
    assert len(runs) == 1 and "m2_test_dice" in runs[0].data.metrics
