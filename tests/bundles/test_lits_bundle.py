"""End-to-end: the LiTS bundle's train, evaluate and inference configs run as a user runs them.

A tiny synthetic dataset (64×64×8 phantoms) and a narrow network keep this to well under two minutes on 2 CPU cores.
The runs are tracked in a temporary MLflow store, so the repository's ``mlruns/`` is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from pipeline.data.lits import generate_lits_phantoms

from bundle_utils import isolated_env, run_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "lits" / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lits_bundle")
    data = root / "data"
    generate_lits_phantoms(data, num_cases=6, shape=(64, 64, 8), seed=0, progress=False)
    env = isolated_env(root)
    common = [
        "--synthetic_dir", str(data), "--synthetic_cases", "6", "--synthetic_shape", "[64,64,8]",
        "--ckpt_dir", str(root / "models"), "--output_dir", str(root / "eval"),
        "--features", "4", "--batch_size", "4", "--num_threads", "2",
    ]
    return {"root": root, "data": data, "env": env, "common": common}


@pytest.fixture(scope="module")
def trained(workspace):
    run_bundle(["--config_file", TRAIN, *workspace["common"], "--max_epochs", "2"], workspace["env"])
    return workspace


def _client(ws) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws['root'] / 'mlruns' / 'mlflow.db'}")


def _runs(ws, workflow: str):
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-lits")
    assert exp is not None, "experiment varseg-lits was not created"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.workflow = '{workflow}'")
    return client, runs


def test_train_logs_one_finished_run_with_per_epoch_val_dice(trained):
    client, runs = _runs(trained, "train")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("lits-train-ms-semi-lab1of3-")
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert sorted(m.step for m in history) == [1, 2]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert "val_jaccard" in run.data.metrics and "val_dice_std" in run.data.metrics
    params = run.data.params
    for key in ("learning_rate", "beta", "tv_weight", "labelled_fraction", "features", "seed", "max_epochs",
                "num_labelled_cases", "version.monai", "version.torch", "git_commit"):
        assert key in params, key
    assert params["labelled_fraction"] == "1/3" and params["features"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config" in artifacts
    config_file = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config/merged_config.json",
        tracking_uri=f"sqlite:///{trained['root'] / 'mlruns' / 'mlflow.db'}",
        dst_path=str(trained["root"] / "dl")))
    merged = json.loads(config_file.read_text())
    assert merged["features"] == 4 and merged["max_epochs"] == 2  # the command-line overrides are in it
    artifact_root = trained["root"] / "mlruns" / "artifacts"
    assert artifact_root.is_dir() and any(artifact_root.rglob("merged_config.json"))


def test_train_writes_checkpoints(trained):
    models = trained["root"] / "models"
    assert (models / "model.pt").is_file()  # best validation Dice
    assert (models / "checkpoint_epoch=2.pt").is_file()  # resumable state


def test_evaluate_logs_test_metrics(trained):
    run_bundle(["--config_file", f"['{TRAIN}','{EVALUATE}']", *trained["common"]], trained["env"])
    client, runs = _runs(trained, "evaluate")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert 0.0 <= metrics["test_dice"] <= 1.0 and "test_jaccard" in metrics and "test_dice_std" in metrics
    csv_path = trained["root"] / "eval" / "per_case_test_metrics.csv"
    lines = csv_path.read_text().strip().splitlines()
    assert lines[0].startswith("case,test_dice,test_jaccard")
    assert lines[-2].startswith("mean,") and lines[-1].startswith("std,")
    per_case = np.array([float(line.split(",")[1]) for line in lines[1:-2]])
    assert len(per_case) == 2  # 6 cases -> 3 train / 1 val / 2 test
    # the logged mean and std are those of this evaluation's per-case values (not of an earlier epoch)
    assert metrics["test_dice"] == pytest.approx(per_case.mean(), abs=1e-5)
    assert metrics["test_dice_std"] == pytest.approx(per_case.std(), abs=1e-5)


def test_inference_mask_has_input_shape_and_affine(trained, tmp_path):
    image = trained["data"] / "volume-0.nii.gz"
    out = tmp_path / "masks"
    args = ["--config_file", INFERENCE, "--input", str(image), "--output", str(out),
            "--ckpt_path", str(trained["root"] / "models" / "model.pt"), "--features", "4", "--num_threads", "2"]
    run_bundle(args, trained["env"])
    mask_file = out / "volume-0_lesion.nii.gz"
    assert mask_file.is_file()
    src, mask = nib.load(str(image)), nib.load(str(mask_file))
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
    values = np.unique(np.asarray(mask.dataobj))
    assert set(values.tolist()) <= {0, 1}
    rows = (out / "cases.csv").read_text().splitlines()
    assert rows[0].startswith("case,status,reason,volume_ml_lesion,runtime_s,quality") and rows[1].startswith(
        "volume-0,done,")
    client, runs = _runs(trained, "infer")
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert runs[0].data.params["checkpoint"] == "model.pt" and runs[0].data.tags["status"] == "ok"
    # a second run skips the existing mask (never overwrites it) and exits 0
    stamp = (mask_file.stat().st_ino, mask_file.stat().st_mtime_ns)
    proc = run_bundle(args, trained["env"])
    assert "0 done, 1 skipped, 0 failed" in proc.stdout
    assert (mask_file.stat().st_ino, mask_file.stat().st_mtime_ns) == stamp


def test_inference_keeps_geometry_of_a_non_ras_folder_input(trained, tmp_path):
    """Inputs in LPS (or any) orientation come back in their own geometry, not in the RAS used inside."""
    src = nib.load(str(trained["data"] / "volume-1.nii.gz"))
    lps = src.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(lps, str(folder / "scan-lps.nii.gz"))
    out = tmp_path / "masks"
    run_bundle(["--config_file", INFERENCE, "--input", str(folder), "--output", str(out),
             "--ckpt_path", str(trained["root"] / "models" / "model.pt"), "--features", "4", "--num_threads", "2"],
            trained["env"])
    mask = nib.load(str(out / "scan-lps_lesion.nii.gz"))
    assert mask.shape == lps.shape
    np.testing.assert_allclose(mask.affine, lps.affine, atol=1e-4)


def test_inference_on_real_ct_keeps_its_geometry(trained, tmp_path):
    """A real abdominal CT (TotalSegmentator test fixture, Apache-2.0) goes through inference in its own geometry."""
    from pipeline.paths import real_data_root

    real = real_data_root() / "a_liver_ct" / "totalsegmentator" / "example_ct_sm.nii.gz"
    if not real.is_file():
        pytest.skip(f"real sample data not found at {real} (set VARSEG_REAL_DATA to the folder of shared/data/real)")
    out = tmp_path / "masks"
    run_bundle(["--config_file", INFERENCE, "--input", str(real), "--output", str(out),
             "--ckpt_path", str(trained["root"] / "models" / "model.pt"), "--features", "4", "--num_threads", "2"],
            trained["env"])
    src, mask = nib.load(str(real)), nib.load(str(out / "example_ct_sm_lesion.nii.gz"))
    assert mask.shape == src.shape  # 122 x 101 x 30: not a multiple of 16, padded and cropped back inside
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_documented_mlflow_ui_command_lists_the_run(trained):
    """The README's `mlflow ui --backend-store-uri sqlite:///.../mlflow.db --host 127.0.0.1` serves the run."""
    import time
    import urllib.request

    port = _free_port()
    db = trained["root"] / "mlruns" / "mlflow.db"
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_exe), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=trained["root"], env=trained["env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(f"mlflow ui did not come up on {base}")
                time.sleep(0.5)
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=varseg-lits")
        with urllib.request.urlopen(req, timeout=10) as resp:
            exp_id = json.load(resp)["experiment"]["experiment_id"]
        body = json.dumps({"experiment_ids": [exp_id], "filter": "tags.workflow = 'train'"}).encode()
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            runs = json.load(resp)["runs"]
        assert len(runs) == 1
        run_id = runs[0]["info"]["run_id"]
        url = f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=val_dice"
        with urllib.request.urlopen(url, timeout=10) as resp:
            history = json.load(resp)["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_beta_follows_the_slices_trained_on(tmp_path):
    """β = beta_paper · batch · N · C · H · W with H × W of the training volumes, not of the phantom setting."""
    from monai.bundle import ConfigParser

    real = tmp_path / "lits"
    real.mkdir()
    for n in range(8):  # a LiTS-layout folder whose scans are 64 x 48 in-plane
        nib.save(nib.Nifti1Image(np.zeros((64, 48, 4), np.int16), np.eye(4)), str(real / f"volume-{n}.nii"))
        nib.save(nib.Nifti1Image(np.zeros((64, 48, 4), np.uint8), np.eye(4)), str(real / f"segmentation-{n}.nii"))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["dataset_dir"] = str(real)
    expected = parser.get_parsed_content("beta_paper") * 8 * 3 * 3 * 64 * 48
    assert parser.get_parsed_content("slice_shape") == (64, 48)
    assert parser.get_parsed_content("beta") == pytest.approx(expected)
    # on the phantoms: their grid's in-plane size
    phantoms = ConfigParser()
    phantoms.read_config(str(CONFIGS / "train.json"))
    phantoms["synthetic_dir"] = str(tmp_path / "phantoms")
    phantoms["synthetic_cases"] = 8
    phantoms["synthetic_shape"] = [40, 36, 8]
    assert phantoms.get_parsed_content("slice_shape") == (40, 36)
