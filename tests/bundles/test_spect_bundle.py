"""End-to-end: the bone SPECT bundle's modes (train.json + methods/modeN.json), evaluate and inference configs.

Tiny simulated data (4 cases of 32×32×8: 2 train / 1 val / 1 test) and a narrow RCNN keep this well under two
minutes on 2 CPU cores. Runs are tracked in a temporary MLflow store, so the repository's ``mlruns/`` is untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.data.spect import generate_spect_phantoms

from bundle_utils import isolated_env, run_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "spect" / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")


def _mode(n: int) -> str:
    return str(CONFIGS / "methods" / f"mode{n}.json")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("spect_bundle")
    data = root / "data"
    generate_spect_phantoms(data, num_cases=4, shape=(32, 32, 8), seed=0, progress=False)
    env = isolated_env(root)
    common = [
        "--synthetic_dir", str(data), "--synthetic_cases", "4", "--synthetic_shape", "[32,32,8]",
        "--models_root", str(root / "models"), "--output_dir", str(root / "eval"),
        "--features", "4", "--batch_size", "8", "--num_threads", "2", "--max_epochs", "2",
    ]
    return {"root": root, "data": data, "env": env, "common": common}


@pytest.fixture(scope="module")
def mode1(workspace):
    run_bundle(["--config_file", TRAIN, *workspace["common"]], workspace["env"])
    return workspace


def _client(ws) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws['root'] / 'mlruns' / 'mlflow.db'}")


def _runs(ws, workflow: str, method: str):
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-spect")
    assert exp is not None, "experiment varseg-spect was not created"
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.workflow = '{workflow}' and tags.method = '{method}'")
    return client, runs


def test_mode1_logs_one_finished_unsupervised_run(mode1):
    client, runs = _runs(mode1, "train", "mode1")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("spect-train-mode1-osem5-")
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert sorted(m.step for m in history) == [1, 2]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert "val_jaccard" in run.data.metrics and "val_dice_std" in run.data.metrics
    params = run.data.params
    assert params["num_labelled_cases"] == "0"  # no labels at all in Mode 1
    assert params["alpha"] == "0.0" and params["nu"] == "0.004" and params["learning_rate"] == "0.0005"
    assert (mode1["root"] / "models" / "mode1" / "model.pt").is_file()
    assert (mode1["root"] / "models" / "mode1" / "checkpoint_epoch=2.pt").is_file()


def test_mode4_joint_run(mode1):
    run_bundle(["--config_file", f"['{TRAIN}','{_mode(4)}']", *mode1["common"]], mode1["env"])
    client, runs = _runs(mode1, "train", "mode4")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert int(params["num_labelled_cases"]) >= 1 and params["alpha"] == "0.4"
    assert len(client.get_metric_history(runs[0].info.run_id, "val_dice")) == 2
    assert (mode1["root"] / "models" / "mode4" / "model.pt").is_file()


def _state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state["model"] if "model" in state and isinstance(state["model"], dict) else state


def test_mode2_finetunes_from_mode1_with_first_block_frozen(mode1):
    run_bundle(["--config_file", f"['{TRAIN}','{_mode(2)}']", *mode1["common"]], mode1["env"])
    client, runs = _runs(mode1, "train", "mode2")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["labelled_slices"] == "10" and params["frozen_blocks"] == "1"
    assert params["init_ckpt"].endswith(os.path.join("mode1", "model.pt"))
    before = _state(mode1["root"] / "models" / "mode1" / "model.pt")
    after = _state(mode1["root"] / "models" / "mode2" / "checkpoint_epoch=2.pt")
    first = [k for k in before if k.startswith("blocks.0.")]
    assert first and any("running_mean" in k for k in first)
    for key in first:  # weights and batch-norm statistics of the frozen block
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after[k], before[k]) for k in before if not k.startswith("blocks.0."))


def test_evaluate_logs_test_dice(mode1):
    run_bundle(["--config_file", f"['{TRAIN}','{EVALUATE}']", *mode1["common"]], mode1["env"])
    _, runs = _runs(mode1, "evaluate", "mode1")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert 0.0 <= metrics["test_dice"] <= 1.0 and "test_jaccard" in metrics and "test_dice_std" in metrics
    lines = (mode1["root"] / "eval" / "per_case_test_metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("case,test_dice,test_jaccard") and len(lines) == 1 + 1 + 2  # one test case


def test_inference_mask_has_input_shape_and_affine(mode1, tmp_path):
    image = mode1["data"] / "case-0" / "recon_osem5.nii.gz"
    out = tmp_path / "masks"
    args = ["--config_file", INFERENCE, "--input", str(image), "--output", str(out),
            "--ckpt_path", str(mode1["root"] / "models" / "mode1" / "model.pt"), "--features", "4",
            "--num_threads", "2"]
    run_bundle(args, mode1["env"])
    mask_file = out / "recon_osem5_bone.nii.gz"
    assert mask_file.is_file()
    src, mask = nib.load(str(image)), nib.load(str(mask_file))
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    assert (out / "cases.csv").read_text().splitlines()[1].startswith("recon_osem5,done,")
    # a second run skips the existing mask (never overwrites it) and exits 0
    stamp = (mask_file.stat().st_ino, mask_file.stat().st_mtime_ns)
    proc = run_bundle(args, mode1["env"])
    assert "0 done, 1 skipped, 0 failed" in proc.stdout
    assert (mask_file.stat().st_ino, mask_file.stat().st_mtime_ns) == stamp
