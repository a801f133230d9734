"""Real-data evaluation command: end to end on the real sample cases with tiny untrained networks, label alignment,
and the exit-2 paths (no real-data folder, no checkpoint, BraTS, bad method).

Tests that read the real cases are skipped when the real-data folder (``VARSEG_REAL_DATA`` or ``../shared/data/real``)
is absent.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.paths import real_data_root
from pipeline.experiments.real_eval import LITS_CASES, LIVER_LABEL, SPECT_CASE, label_on_grid, main, spect_applicability

REPO = Path(__file__).resolve().parents[3]
REAL = real_data_root()
TS = REAL / "a_liver_ct" / "totalsegmentator"
_SKIP_REASON = f"real sample data not found at {REAL} (set VARSEG_REAL_DATA to the folder of shared/data/real)"
needs_real_ct = pytest.mark.skipif(
    not all((REAL / p).exists() for pair in LITS_CASES for p in pair), reason=_SKIP_REASON)
needs_real_nm = pytest.mark.skipif(not (REAL / SPECT_CASE).is_file(), reason=_SKIP_REASON)


pytestmark = pytest.mark.usefixtures("fast_sqlite", "one_thread")


def _tiny_checkpoint(bundle: str, path: Path, overrides: dict, files: list[str]) -> Path:
    """A freshly initialised network built from the bundle's config (with ``overrides``), saved as a state_dict."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    configs = REPO / "bundles" / bundle / "configs"
    config.read_config([str(configs / f) for f in files] if len(files) > 1 else str(configs / files[0]))
    for key, value in overrides.items():
        config[key] = value
    config["device"] = "$torch.device('cpu')"
    torch.manual_seed(0)
    torch.save(config.get_parsed_content("network_def").state_dict(), path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------------------------
# End to end on the real cases
# ----------------------------------------------------------------------------------------------------------------


@needs_real_ct
def test_lits_end_to_end_with_tiny_network(tmp_path, monkeypatch, capsys):
    import mlflow

    store = tmp_path / "mlruns"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    ckpt = _tiny_checkpoint("lits", tmp_path / "tiny.pt", {"features": 4}, ["inference.json"])
    out = tmp_path / "out"
    code = main(["lits", "--real-data", str(REAL), "--out", str(out), "--ckpt_path", str(ckpt), "--features", "4",
                 "--num_threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = _rows(out / "cases.csv")
    assert len(rows) == len(LITS_CASES)
    assert [r["status"] for r in rows] == ["done"] * len(LITS_CASES)
    assert rows[0]["case"] == "example_ct_sm"
    assert rows[1]["case"].startswith("dcm-")  # the DICOM series by its pseudonym
    for row in rows:
        dice = float(row["liver_dice"])
        assert math.isfinite(dice) and 0.0 <= dice <= 1.0
        assert 0.0 <= float(row["liver_jaccard"]) <= dice
        assert float(row["lesion_ml_predicted"]) >= 0.0
        assert row["label_voxels"] == row["label_voxels_on_grid"]
        assert (out / row["mask"]).is_file()
    assert "| liver Dice |" in printed and "example_ct_sm" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == [r["case"] for r in rows] and summary["real_data"] == REAL.name
    for text in ((out / "cases.csv").read_text(), (out / "summary.json").read_text(), printed):
        assert "example_ct_dicom" not in text  # DICOM folder names stay out of every output
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("varseg-lits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name.startswith("lits-real-eval-") and run.info.status == "FINISHED"
    assert run.data.tags["workflow"] == "real-eval"
    params = run.data.params
    assert params["checkpoint"] == "tiny.pt" and len(params["checkpoint_sha256"]) == 12
    assert params["real_data"] == REAL.name
    assert json.loads(params["cases"]) == [r["case"] for r in rows]
    assert not any(str(REAL) in v for v in params.values())
    assert 0.0 <= run.data.metrics["liver_dice_mean"] <= 1.0


@needs_real_ct
def test_lung_end_to_end_with_tiny_network(tmp_path, capsys):
    files = ["inference.json", "methods/m4.json"]
    ckpt = _tiny_checkpoint("lung", tmp_path / "vm.pt", {"features": 4, "levels": 2}, files)
    out = tmp_path / "out"
    code = main(["lung", "--real-data", str(REAL), "--out", str(out), "--no-mlflow", "--ckpt_path", str(ckpt),
                 "--features", "4", "--levels", "2", "--num_threads", "1"])
    assert code == 0, capsys.readouterr().err
    rows = _rows(out / "cases.csv")
    assert 1 <= len(rows) <= 3 and all(r["status"] == "done" for r in rows)
    areas = [int(r["object_pixels"]) for r in rows]
    assert areas == sorted(areas, reverse=True)
    for row in rows:
        for key in ("vm_dice", "tv_dice"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert float(row["tv_mu"]) == 1.0


@needs_real_nm
def test_spect_nm_file_is_not_applicable(tmp_path, capsys):
    case, reason = spect_applicability(REAL / SPECT_CASE)
    assert case.startswith("dcm-")
    assert reason is not None and "planar" in reason and "not a reconstructed 3-D SPECT volume" in reason
    ckpt = _tiny_checkpoint("spect", tmp_path / "rcnn.pt", {"features": 4}, ["inference.json"])
    out = tmp_path / "out"
    code = main(["spect", "--real-data", str(REAL), "--out", str(out), "--no-mlflow", "--ckpt_path", str(ckpt),
                 "--features", "4"])
    assert code == 0
    (row,) = _rows(out / "cases.csv")
    assert row["case"] == case and row["status"] == "not applicable" and row["reason"] == reason
    assert "not applicable" in capsys.readouterr().out


@needs_real_ct
def test_dicom_label_resampling_keeps_every_labelled_voxel():
    from pipeline.io.volumes import read_volume

    volume = read_volume(TS / "example_ct_dicom")
    labels, before, after = label_on_grid(TS / "example_seg_dicom.nii.gz", volume)
    stored = np.asarray(nib.load(str(TS / "example_seg_dicom.nii.gz")).dataobj)
    assert labels.shape == volume.shape
    assert before == after == int(np.count_nonzero(stored))
    assert int((labels == LIVER_LABEL).sum()) == int((stored == LIVER_LABEL).sum())
    # LAS label on an LPS series: the same voxels with the second axis reversed
    np.testing.assert_array_equal(labels, stored[:, ::-1, :])


# ----------------------------------------------------------------------------------------------------------------
# Exit code 2
# ----------------------------------------------------------------------------------------------------------------


def test_missing_real_folder_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "VARSEG_REAL_DATA": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.experiments.real_eval", "lits", "--no-mlflow"], cwd=REPO,
                          env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: real-data folder")
    assert "set VARSEG_REAL_DATA" in lines[0] and "Traceback" not in proc.stderr


def test_missing_real_folder_argument(tmp_path, capsys):
    assert main(["spect", "--real-data", str(tmp_path / "absent"), "--no-mlflow"]) == 2
    assert "set VARSEG_REAL_DATA" in capsys.readouterr().err


@pytest.mark.parametrize(("bundle", "command"), [
    ("lits", "bundles/lits/configs/train.json"),
    ("lung", "methods/m4.json"),
    ("spect", "bundles/spect/configs/train.json"),
])
def test_missing_checkpoint_exits_2(tmp_path, capsys, bundle, command):
    missing = tmp_path / "none.pt"
    assert main([bundle, "--real-data", str(tmp_path), "--no-mlflow", "--ckpt_path", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(missing) in err and "train first:" in err and command in err


def test_brats_without_checkpoint_exits_2_with_the_training_command(tmp_path, capsys):
    missing = tmp_path / "none" / "model.pt"
    assert main(["brats", "--ckpt_path", str(missing), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(missing) in err and "train first:" in err and "methods/flair_t1ce.json" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["lung", "--method", "m9"], "unknown method 'm9'"),
    (["lits", "--method", "m4"], "has no --method"),
    (["prostate"], "unknown bundle"),
    (["lits", "--features"], "no value"),
])
def test_bad_command_lines_exit_2(capsys, argv, message):
    assert main([*argv, "--no-mlflow"]) == 2
    assert message in capsys.readouterr().err


def test_misspelt_setting_is_refused_before_any_work(tmp_path, capsys):
    code = main(["lits", "--real-data", str(tmp_path), "--no-mlflow", "--num_thread", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown setting --num_thread for bundle lits" in err and "closest known: --num_threads" in err
