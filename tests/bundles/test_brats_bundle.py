"""End-to-end: the BraTS bundle's train, evaluate, inference, β-sweep, unsupervised and real-data commands.

Tiny phantoms (32×32×16, 6 cases) and a narrow network keep each run to seconds; runs are tracked in a temporary
MLflow store, so the repository's ``mlruns/`` is untouched.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from pipeline.experiments.brats_table import PAPER_TABLE_V, beta_label, format_bias, format_sweep, read_test_metrics
from pipeline.data.brats import generate_brats_phantoms
from pipeline.paths import real_data_root

from bundle_utils import isolated_env, run_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "brats" / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
SHAPE = "[32,32,16]"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_bundle")
    data = root / "data"
    generate_brats_phantoms(data, num_cases=6, shape=(32, 32, 16), seed=0, progress=False)
    env = isolated_env(root)
    common = [
        "--synthetic_dir", str(data), "--synthetic_cases", "6", "--synthetic_shape", SHAPE,
        "--val_fraction", "0.17", "--test_fraction", "0.34",
        "--features", "4", "--batch_size", "4", "--num_threads", "2",
    ]
    return {"root": root, "data": data, "env": env, "common": common}


@pytest.fixture(scope="module")
def trained(workspace):
    ws = workspace
    paths = ["--ckpt_dir", str(ws["root"] / "models"), "--output_dir", str(ws["root"] / "eval")]
    run_bundle(["--config_file", TRAIN, *ws["common"], *paths, "--max_epochs", "2"], ws["env"])
    run_bundle(["--config_file", f"['{TRAIN}','{EVALUATE}']", *ws["common"], *paths], ws["env"])
    return ws


def _client(ws) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws['root'] / 'mlruns' / 'mlflow.db'}")


def _runs(ws, workflow: str, method: str | None = None):
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-brats")
    assert exp is not None, "experiment varseg-brats was not created"
    query = f"tags.workflow = '{workflow}'" + (f" and tags.method = '{method}'" if method else "")
    return client, client.search_runs([exp.experiment_id], filter_string=query)


def test_train_uses_twelve_channels_and_a_quarter_labelled(trained):
    client, runs = _runs(trained, "train", "ms-semi")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["in_channels"] == "12"
    assert json.loads(params["modalities"].replace("'", '"')) == ["t1", "t1ce", "t2", "flair"]
    assert params["labelled_fraction"] == "1/4"
    # 6 cases: 1 validation, 2 test, 3 training cases; round(3 / 4) = 1 labelled
    assert params["num_train_cases"] == "3" and params["num_labelled_cases"] == "1"
    history = client.get_metric_history(runs[0].info.run_id, "val_precision")
    assert sorted(m.step for m in history) == [1, 2]
    assert "val_recall" in runs[0].data.metrics


def test_evaluate_writes_dice_precision_recall_iou_per_case(trained):
    rows = list(csv.DictReader((trained["root"] / "eval" / "per_case_test_metrics.csv").open()))
    cases = [r for r in rows if r["case"] not in ("mean", "std")]
    assert len(cases) == 2
    for row in cases:
        dice, jaccard = float(row["test_dice"]), float(row["test_jaccard"])
        assert 0.0 <= dice <= 1.0
        assert jaccard == pytest.approx(dice / (2 - dice), abs=1e-4)  # IoU and Dice of the same masks
        recall = float(row["test_recall"])
        precision = float(row["test_precision"]) if row["test_precision"] not in ("", "nan") else math.nan
        if not math.isnan(precision) and precision + recall > 0:
            # Dice is the harmonic mean of precision and recall
            assert dice == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-4)
    _, runs = _runs(trained, "evaluate")
    assert len(runs) == 1 and {"test_dice", "test_precision", "test_recall", "test_jaccard"} <= set(runs[0].data.metrics)


def test_inference_writes_masks_in_the_input_geometry(trained):
    ws = trained
    out = ws["root"] / "masks"
    run_bundle(["--config_file", INFERENCE, "--input", str(ws["data"]), "--output", str(out),
                "--ckpt_dir", str(ws["root"] / "models"), "--features", "4", "--num_threads", "2"], ws["env"])
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    case = rows[0]["case"]
    mask = nib.load(str(out / f"{case}_tumour.nii.gz"))
    flair = nib.load(str(ws["data"] / case / f"{case}_flair.nii.gz"))
    assert mask.shape == flair.shape
    assert np.allclose(mask.affine, flair.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}


def test_unsupervised_bias_mode_trains_without_labels(workspace):
    ws = workspace
    files = f"['{TRAIN}','{CONFIGS / 'methods' / 'unsup_bias.json'}']"
    eval_files = f"['{TRAIN}','{CONFIGS / 'methods' / 'unsup_bias.json'}','{EVALUATE}']"
    paths = ["--ckpt_dir", str(ws["root"] / "unsup"), "--output_dir", str(ws["root"] / "unsup_eval"),
             "--synthetic_dir", str(ws["root"] / "data_bias")]
    common = [c for c in ws["common"]]
    common[common.index("--synthetic_dir") + 1] = str(ws["root"] / "data_bias")
    run_bundle(["--config_file", files, *common, *paths, "--max_epochs", "1"], ws["env"])
    run_bundle(["--config_file", eval_files, *common, *paths], ws["env"])
    client, runs = _runs(ws, "train", "ms-unsup-bias")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["num_labelled_cases"] == "0" and params["loss"] == "BiasFieldMumfordShahLoss"
    assert params["out_channels"] == "5"  # 4 classes + 1 bias channel
    assert params["bias_strength"] == "0.3"
    metrics = read_test_metrics(ws["root"] / "unsup_eval" / "per_case_test_metrics.csv")
    assert len(metrics["dice"]) == 2 and all(0.0 <= d <= 1.0 for d in metrics["dice"])
    assert (ws["root"] / "unsup" / "model.pt").is_file()


def test_beta_sweep_command_writes_table_and_runs(workspace):
    ws = workspace
    out = ws["root"] / "sweep"
    cmd = [sys.executable, "-m", "pipeline.experiments.brats_table", "sweep", "--betas", "0", "1e-6", "--out", str(out),
           "--models", str(ws["root"] / "sweep_models"), *ws["common"], "--max_epochs", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=ws["env"], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "beta_sweep.csv").open()))
    assert [float(r["beta_paper"]) for r in rows] == [0.0, 1e-6]
    assert float(rows[0]["beta"]) == 0.0
    # β = β_paper · B·N·C·P with B = 4, N = 2, C = 12, P = 32·32
    assert float(rows[1]["beta"]) == pytest.approx(1e-6 * 4 * 2 * 12 * 32 * 32)
    for row in rows:
        assert 0.0 <= float(row["dice_mean"]) <= 1.0
    table = (out / "beta_sweep.md").read_text()
    assert "| 0 |" in table and "0.880" in table  # measured rows, then the paper's Table V
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-brats")
    table_runs = client.search_runs([exp.experiment_id], filter_string="tags.table = 'beta-sweep'")
    assert len(table_runs) == 1 and "beta_1e-06_test_dice" in table_runs[0].data.metrics
    evals = client.search_runs([exp.experiment_id], filter_string="tags.workflow = 'evaluate'")
    names = " ".join(r.info.run_name for r in evals)
    assert "-beta0-" in names and "-beta0.0983-" in names  # one evaluation per β (β = 0 and 1e-6·4·2·12·32·32)


def test_table_formatting_and_metrics_reader(tmp_path):
    rows = [{"beta_paper": 0.0, "beta": 0.0, "seconds": 10.0,
             "metrics": {"dice": [0.8, 0.6], "precision": [0.9, math.nan], "recall": [0.7, 0.5], "jaccard": [0.67, 0.43]}},
            {"beta_paper": 1e-6, "beta": 1.77, "seconds": 12.0,
             "metrics": {"dice": [0.9, 0.7], "precision": [0.9, 0.8], "recall": [0.9, 0.6], "jaccard": [0.8, 0.5]}}]
    table = format_sweep(rows)
    assert "| 0 | 0 | 0.700 ± 0.100 | 0.900 ± 0.000 | 0.600 ± 0.100 | 0.550 ± 0.120 | 10 | nan |" in table
    assert "Best Dice at β_paper = 1e-06 (+0.100 against β = 0)" in table
    paper_rows = [line for line in table.splitlines() if line.startswith("| β = 0 |") or line.startswith("| β > 0")]
    assert len(paper_rows) == len(PAPER_TABLE_V) and "| β > 0 (3) | 0.880 | 0.904 | 0.858 | 0.786 |" in paper_rows
    assert beta_label(0) == "0" and beta_label(1e-6) == "1e-06"
    bias = format_bias([{"name": "plain", "metrics": rows[0]["metrics"], "seconds": 5.0}])
    assert "| plain | 0.700 ± 0.100 |" in bias
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("case,test_dice,test_jaccard,test_precision,test_recall\n"
                        "a,0.5,0.333,nan,0.4\nmean,0.5,0.333,,0.4\n")
    got = read_test_metrics(csv_path)
    assert got["dice"] == [0.5] and math.isnan(got["precision"][0])
    with pytest.raises(FileNotFoundError, match="per-case metrics"):
        read_test_metrics(tmp_path / "missing.csv")


def _real_folder() -> Path:
    return real_data_root() / "c_brain_mr" / "deepmedic_brats2015"


@pytest.mark.skipif(not _real_folder().is_dir(),
                    reason="real BraTS 2015 sample not found (set VARSEG_REAL_DATA to the shared real-data folder)")
def test_real_eval_brats_on_the_deepmedic_sample(workspace):
    ws = workspace
    models = ws["root"] / "ft_models"
    flair_t1ce = str(CONFIGS / "methods" / "flair_t1ce.json")
    run_bundle(["--config_file", f"['{TRAIN}','{flair_t1ce}']", *ws["common"], "--ckpt_dir", str(models),
                "--output_dir", str(ws["root"] / "ft_eval"), "--max_epochs", "1"], ws["env"])
    out = ws["root"] / "real"
    cmd = [sys.executable, "-m", "pipeline.experiments.real_eval", "brats", "--out", str(out),
           "--ckpt_dir", str(models), "--features", "4", "--num_threads", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=ws["env"], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert sorted({r["case"] for r in rows}) == [f"brats_2013_pat000{i}_1" for i in range(1, 5)]
    assert sorted({float(r["grid_mm"]) for r in rows}) == [1.0, 2.5]
    assert all(r["status"] == "done" and 0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    # reference volume = voxels with label > 0 at 1 mm³ (PROVENANCE: pat0002 has 163 + 53 736 + 943 + 8 219)
    ref = {r["case"]: float(r["tumour_ml_reference"]) for r in rows}
    assert ref["brats_2013_pat0002_1"] == pytest.approx((163 + 53736 + 943 + 8219) / 1000.0)
    mask = nib.load(str(out / rows[0]["mask"]))
    image = nib.load(str(_real_folder() / rows[0]["case"] / "Flair_subtrMeanDivStd.nii.gz"))
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    summary = json.loads((out / "summary.json").read_text())
    assert "dice_mean.grid2.5mm" in summary["metrics"]
    # the same model through the batch command: two modalities in the bundle's order, already z-scored input
    masks = ws["root"] / "real_masks"
    cmd = [sys.executable, "-m", "pipeline.inference.cli", "brats", "--input", str(_real_folder()),
           "--output", str(masks), "--modalities", "flair", "t1ce", "--ckpt_dir", str(models), "--features", "4",
           "--already_normalized", "true", "--num_threads", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=ws["env"], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((masks / "cases.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    first = nib.load(str(masks / f"{rows[0]['case']}_tumour.nii.gz"))
    assert first.shape == (240, 240, 155)
