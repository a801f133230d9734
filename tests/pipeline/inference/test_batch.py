"""Batch inference: broken cases become CSV rows, resume after a kill, no overwrite, DICOM privacy, LiTS masks.

Runner tests use a thresholding ``predict``; the command-line tests use the LiTS bundle config with a tiny untrained
network (``--features 4``) saved as a checkpoint, so nothing here needs a trained model.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline.inference.batch import BatchError, case_name, mask_name, run_batch
from pipeline.inference.cli import main
from pipeline.io.layouts import index_inputs
from pipeline.inference.predictors import SelectivePredictor
from pipeline.io.volumes import pseudonym

REPO = Path(__file__).resolve().parents[3]
PRIVATE = ("DOE", "JOHN", "PID-12345", "19700101", "ACC-98765")


pytestmark = pytest.mark.usefixtures("fast_sqlite")


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _ct(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A small CT-like volume in HU: air around a soft-tissue body with a darker blob and noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[x**2 + y**2 < 0.7] = 50.0
    ct[(x - 0.2) ** 2 + (y + 0.1) ** 2 + 0.3 * z**2 < 0.05 + 0.02 * seed % 3] = -20.0
    return (ct + rng.normal(0, 10, shape)).astype(np.float32)


def _affine(kind: int) -> np.ndarray:
    spacing = np.diag([0.8, 0.9, 2.5])
    if kind % 3 == 1:  # LPS voxel order
        spacing = np.diag([-0.8, -0.9, 2.5])
    elif kind % 3 == 2:  # slightly oblique
        t = np.deg2rad(10)
        spacing = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ spacing
    affine = np.eye(4)
    affine[:3, :3] = spacing
    affine[:3, 3] = [-12.5 + kind, 30.0, -4.0 * kind]
    return affine


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _threshold(volume, entry) -> np.ndarray:
    first = volume[0] if isinstance(volume, list) else volume
    return (first.array > 0).astype(np.uint8)


def _geometry(path: Path | sitk.Image) -> tuple:
    image = sitk.ReadImage(str(path)) if not isinstance(path, sitk.Image) else path
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _assert_same_geometry(mask: Path, source: Path | sitk.Image) -> None:
    size, spacing, origin, direction = _geometry(mask)
    size0, spacing0, origin0, direction0 = _geometry(source)
    assert size == size0
    np.testing.assert_allclose(spacing, spacing0, rtol=1e-6)
    np.testing.assert_allclose(origin, origin0, atol=1e-4)
    np.testing.assert_allclose(direction, direction0, atol=1e-6)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(csv_path: Path) -> dict[str, dict[str, str]]:
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["case"] for r in rows}) == len(rows), "one row per case"
    return {r["case"]: r for r in rows}


def _inputs(folder: Path, n: int, shape=(24, 20, 5)) -> list[Path]:
    return [_save(folder / f"case{i:02d}.nii.gz", _ct(shape, i), _affine(i)) for i in range(n)]


def _tiny_lits_checkpoint(path: Path, seed: int = 0, tune_on: Path | None = None) -> Path:
    """An untrained LiTS network (features 4) as a checkpoint; with ``tune_on``, the lesion class wins on ~20% of it."""
    import networks
    from transforms import HUWindow

    torch.manual_seed(seed)
    net = networks.PolyphaseUNet(spatial_dims=2, in_channels=3, out_channels=3, features=4).eval()
    if tune_on is not None:
        from pipeline.inference.inferers import AdjacentSliceInferer
        from pipeline.io.volumes import read_volume

        x = HUWindow(-124, 276)(torch.as_tensor(read_volume(tune_on).to_ras())[None]).as_tensor()
        inferer = AdjacentSliceInferer(3, 32, 16)
        for module in net.modules():  # batch-norm statistics of this volume: outputs that vary between voxels
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0
        with torch.no_grad():
            inferer(x[None], net.train())
            logits = inferer(x[None], net.eval())[0]
            margin = logits[2] - torch.maximum(logits[0], logits[1])
            net.head.bias[2] -= torch.quantile(margin.flatten(), 0.8)
    torch.save(net.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Broken inputs through the command line
# ----------------------------------------------------------------------------------------------------------------


def test_cli_ten_inputs_three_broken(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    good = _inputs(folder, 7)
    truncated = _save(folder / "truncated.nii.gz", _ct((24, 20, 5), 7), _affine(0))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    _save(folder / "flat.nii.gz", _ct((24, 20, 5), 8)[:, :, 0], _affine(0))
    nan = _ct((24, 20, 5), 9)
    nan[3, 4, 2] = np.nan
    _save(folder / "nan.nii.gz", nan, _affine(0))
    hashes = {p: _sha(p) for p in folder.iterdir()}
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "masks"
    code = main(["lits", "--input", str(folder), "--output", str(out), "--no-mlflow", "--ckpt_path", str(ckpt),
                 "--features", "4", "--num_threads", "1"])
    captured = capfd.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err + captured.out
    assert "7 done, 0 skipped, 3 failed" in captured.out
    for image in good:
        mask = out / f"{image.name[: -len('.nii.gz')]}_lesion.nii.gz"
        _assert_same_geometry(mask, image)
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))).tolist()) <= {0, 1}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"case{i:02d}_lesion.nii.gz" for i in range(7))
    rows = _rows(out / "cases.csv")
    assert len(rows) == 10
    assert [c for c, r in rows.items() if r["status"] == "done"] == [f"case{i:02d}" for i in range(7)]
    assert all(float(rows[f"case{i:02d}"]["runtime_s"]) >= 0 for i in range(7))
    assert all(rows[f"case{i:02d}"]["volume_ml_lesion"] != "" for i in range(7))
    assert all("quality" in r and r["quality"] == "" for r in rows.values())
    failed = {c: r["reason"] for c, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {"truncated", "flat", "nan"}
    assert "truncated" in failed["truncated"] or "corrupt" in failed["truncated"]
    assert "2D" in failed["flat"] and "3D" in failed["flat"]
    assert "NaN" in failed["nan"]
    assert all("\n" not in reason for reason in failed.values())
    for case in failed:
        assert f"{case}: " in captured.out  # the summary lists each failure
    assert {p: _sha(p) for p in folder.iterdir()} == hashes  # inputs untouched


def test_cli_bad_command_lines_exit_2_without_traceback(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    _inputs(folder, 1)
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt")
    cases = [
        (["lits", "--input", str(folder), "--output", str(tmp_path / "o"), "--ckpt_path", str(tmp_path / "no.pt")],
         "not found"),
        (["lits", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--ckpt_path", str(ckpt)],
         "does not exist"),
        (["lits", "--output", str(tmp_path / "o")], "--input"),
        (["nosuchbundle", "--input", str(folder)], "nosuchbundle"),
        (["lits", "--input", str(folder), "--features"], "no value"),
        (["lits", "--input", str(folder), "--ckpt_path", str(ckpt), "--features", "4", "--layout", "brats"],
         "BraTS"),
        # a setting no config of the bundle defines is refused, with the closest known keys
        (["lits", "--input", str(folder), "--output", str(tmp_path / "o"), "--format", "both"],
         "unknown setting --format for bundle lits (no config of it defines this key); closest known: --"),
        (["lits", "--input", str(folder), "--output", str(tmp_path / "o"), "--ckpt_pth", str(ckpt)],
         "closest known: --ckpt_path"),
    ]
    for argv, expected in cases:
        code = main([*argv, "--no-mlflow"])
        captured = capfd.readouterr()
        assert code == 2, argv
        assert "Traceback" not in captured.err
        assert expected in captured.err, (argv, captured.err)
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.nii.gz"))


# ----------------------------------------------------------------------------------------------------------------
# Resume, overwrite, inputs untouched
# ----------------------------------------------------------------------------------------------------------------


def test_resume_after_a_kill(tmp_path: Path) -> None:
    _inputs(tmp_path / "in", 10)
    entries = index_inputs(tmp_path / "in")
    out = tmp_path / "out"
    calls: list[str] = []

    def killed_on_fourth(volume, entry):
        calls.append(entry["case"])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return _threshold(volume, entry)

    with pytest.raises(KeyboardInterrupt):
        run_batch(entries, killed_on_fourth, out, "seg", progress=False, labels=[1])
    first = sorted(out.glob("*_seg.nii.gz"))
    assert [p.name for p in first] == [f"case{i:02d}_seg.nii.gz" for i in range(3)]
    assert len(_rows(out / "cases.csv")) == 3  # saved after every case
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, _sha(p)) for p in first}
    # leftovers of a kill in the middle of writing: a mask temporary and a CSV temporary
    stale_mask = out / ".case03_seg.nii.gz.tmp-0123456789ab.nii.gz"
    stale_mask.write_bytes(b"partial")
    stale_csv = out / ".cases.csv.999.abcd0123.tmp"
    stale_csv.write_text("partial")
    # a mask written just before the kill, whose CSV row was never written
    (out / "case03_seg.nii.gz").write_bytes((out / "case00_seg.nii.gz").read_bytes())
    calls.clear()
    report = run_batch(entries, _counting(calls), out, "seg", progress=False, labels=[1])
    assert calls == [f"case{i:02d}" for i in range(4, 10)]  # finished cases are not redone
    assert (report.done, report.skipped, report.failed, report.exit_code) == (6, 4, 0, 0)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, _sha(p)) for p in first}
    assert after == before
    assert not stale_mask.exists() and not stale_csv.exists()
    rows = _rows(out / "cases.csv")
    assert sorted(rows) == [f"case{i:02d}" for i in range(10)]
    assert [rows[f"case{i:02d}"]["status"] for i in range(10)] == ["skipped"] * 4 + ["done"] * 6
    assert all(rows[c]["volume_ml_1"] != "" for c in rows)  # kept from the earlier rows, or measured (case03)
    assert len(list(out.glob("*_seg.nii.gz"))) == 10


def _counting(calls: list[str]):
    def predict(volume, entry):
        calls.append(entry["case"])
        return _threshold(volume, entry)

    return predict


def test_overwrite_replaces_and_default_skips(tmp_path: Path) -> None:
    images = _inputs(tmp_path / "in", 2)
    hashes = {p: _sha(p) for p in images}
    entries = index_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert run_batch(entries, _threshold, out, "seg", progress=False).done == 2
    mask = out / "case00_seg.nii.gz"
    stamp = (mask.stat().st_ino, mask.stat().st_mtime_ns, _sha(mask))

    def inverted(volume, entry):
        return 1 - _threshold(volume, entry)

    report = run_batch(entries, inverted, out, "seg", progress=False)
    assert (report.done, report.skipped) == (0, 2)
    assert (mask.stat().st_ino, mask.stat().st_mtime_ns, _sha(mask)) == stamp
    report = run_batch(entries, inverted, out, "seg", progress=False, overwrite=True)
    assert (report.done, report.skipped) == (2, 0)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).transpose(2, 1, 0)
    np.testing.assert_array_equal(written, inverted(*_volume_and_entry(images[0])))
    _assert_same_geometry(mask, images[0])
    assert {p: _sha(p) for p in images} == hashes
    assert _rows(out / "cases.csv")["case00"]["status"] == "done"


def _volume_and_entry(path: Path):
    from pipeline.io.volumes import read_volume

    return read_volume(path), {"case": "x"}


def test_duplicate_output_names_are_refused(tmp_path: Path) -> None:
    a = _save(tmp_path / "a" / "scan.nii.gz", _ct((8, 8, 3), 0), _affine(0))
    b = _save(tmp_path / "b" / "scan.nii.gz", _ct((8, 8, 3), 1), _affine(0))
    entries = [{"case": "scan", "image": str(a), "kind": "nifti"}, {"case": "scan", "image": str(b), "kind": "nifti"}]
    with pytest.raises(BatchError, match="would both write scan_seg.nii.gz"):
        run_batch(entries, _threshold, tmp_path / "out", "seg", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# Labels, modalities, markers
# ----------------------------------------------------------------------------------------------------------------


def test_label_geometry_missing_modality_and_markers_fail_their_case_only(tmp_path: Path) -> None:
    shape = (16, 16, 4)
    image = _save(tmp_path / "img.nii.gz", _ct(shape, 0), _affine(0))
    other = _save(tmp_path / "other.nii.gz", _ct(shape, 1), _affine(1))
    t2 = _save(tmp_path / "t2.nii.gz", _ct(shape, 2), _affine(0))
    good_label = _save(tmp_path / "label.nii.gz", np.zeros(shape, np.uint8), _affine(0))
    bad_label = _save(tmp_path / "label_bad.nii.gz", np.zeros((16, 16, 5), np.uint8), _affine(0))
    entries = [
        {"case": "ok", "image": str(image), "label": str(good_label), "kind": "nifti"},
        {"case": "badlabel", "image": str(image), "label": str(bad_label), "kind": "nifti"},
        {"case": "twomod", "image": [str(image), str(t2)], "modalities": ["t1", "t2"], "kind": "nifti"},
        {"case": "nomod", "image": [str(image), str(tmp_path / "gone_t2.nii.gz")], "modalities": ["t1", "t2"],
         "kind": "nifti"},
        {"case": "offgrid", "image": [str(image), str(other)], "modalities": ["t1", "t2"], "kind": "nifti"},
    ]
    report = run_batch(entries, _threshold, tmp_path / "out", "seg", progress=False)
    rows = _rows(tmp_path / "out" / "cases.csv")
    assert {c: r["status"] for c, r in rows.items()} == {"ok": "done", "badlabel": "failed", "twomod": "done",
                                                          "nomod": "failed", "offgrid": "failed"}
    assert "label geometry does not match" in rows["badlabel"]["reason"] and "label_bad.nii.gz" in \
        rows["badlabel"]["reason"]
    assert rows["nomod"]["reason"] == "missing modality t2"
    assert "modality t2" in rows["offgrid"]["reason"] and "other.nii.gz" in rows["offgrid"]["reason"] \
        and "img.nii.gz" in rows["offgrid"]["reason"]
    assert report.exit_code == 1 and report.failed == 3
    assert rows["badlabel"]["mask"] == "" and not (tmp_path / "out" / "badlabel_seg.nii.gz").exists()


def test_selective_markers_outside_the_image_fail_the_case(tmp_path: Path) -> None:
    from pipeline.selective.samples import SelectiveSlices

    shape = (32, 32, 6)
    for name in ("inside", "outside", "nomarkers"):
        _save(tmp_path / "in" / f"{name}.nii.gz", _ct(shape, 0), _affine(0))
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "inside.csv").write_text("i,j,k\n14,16,3\n18,16,3\n16,14,3\n16,18,3\n")
    (markers / "outside.csv").write_text("i,j,k\n14,16,3\n500,16,3\n")
    predictor = SelectivePredictor(None, None, "geodesic", SelectiveSlices(progress=False),
                                   sample_predict=lambda s: s["geodesic"][0].numpy() < 0.05)
    entries = index_inputs(tmp_path / "in")
    with pytest.raises(BatchError, match="no markers given"):
        run_batch(entries, predictor, tmp_path / "out", "sel", progress=False)
    with pytest.raises(BatchError, match="one markers file"):
        run_batch(entries, predictor, tmp_path / "out", "sel", progress=False, markers=markers / "inside.csv")
    report = run_batch(entries, predictor, tmp_path / "out", "sel", progress=False, markers=markers)
    rows = _rows(tmp_path / "out" / "cases.csv")
    assert rows["inside"]["status"] == "done" and float(rows["inside"]["volume_ml_1"]) > 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "inside_sel.nii.gz"))).transpose(2, 1, 0)
    assert mask[:, :, 3].sum() > 0 and mask.sum() == mask[:, :, 3].sum()
    assert rows["outside"]["status"] == "failed" and "markers outside the image" in rows["outside"]["reason"]
    assert rows["nomarkers"]["status"] == "failed" and "no markers file nomarkers.csv" in rows["nomarkers"]["reason"]
    assert report.exit_code == 1


# ----------------------------------------------------------------------------------------------------------------
# DICOM privacy
# ----------------------------------------------------------------------------------------------------------------


def _write_dicom_series(folder: Path, hu: np.ndarray, spacing=(0.7, 0.8, 2.0), origin=(-20.0, 15.0, 100.0)) -> str:
    """A CT series (int16 HU, one file per slice) with identifying tags; returns its SeriesInstanceUID."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.astype(np.int16).transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    series_uid = "1.2.826.0.1.3680043.2.1125.7.20240101.42"
    tags = {
        "0010|0010": "DOE^JOHN", "0010|0020": "PID-12345", "0010|0030": "19700101", "0008|0050": "ACC-98765",
        "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.7.20240101.1", "0020|000e": series_uid,
        "0008|0020": "20240101", "0008|103e": "abdomen", "0020|0037": "1\\0\\0\\0\\1\\0",
        "0018|0050": str(spacing[2]), "0028|1052": "0", "0028|1053": "1",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        piece = image[:, :, k]
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        piece.SetMetaData("0020|0013", str(k + 1))
        piece.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"DOE_JOHN_{k:03d}.dcm"))
        writer.Execute(piece)
    return series_uid


def _leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in PRIVATE if s.encode() in data]


def test_dicom_privacy_and_geometry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture,
                                    caplog: pytest.LogCaptureFixture) -> None:
    hu = _ct((40, 36, 6), 3)
    series = tmp_path / "scans" / "DOE_JOHN_PID-12345"
    uid = _write_dicom_series(series, hu)
    assert b"DOE^JOHN" in (series / "DOE_JOHN_000.dcm").read_bytes()  # the fixture does carry the identifiers
    store = tmp_path / "mlflow"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(store)  # MLflow's default artifact root (./mlruns) lands in the store folder
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "masks"
    caplog.set_level(logging.DEBUG)
    code = main(["lits", "--input", str(tmp_path / "scans"), "--output", str(out), "--ckpt_path", str(ckpt),
                 "--features", "4", "--num_threads", "1"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    case = pseudonym(uid)
    mask = out / f"{case}_lesion.nii.gz"
    assert mask.is_file()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    _assert_same_geometry(mask, reader.Execute())
    assert _rows(out / "cases.csv")[case]["status"] == "done"
    # a second run skips it; nothing identifying anywhere
    assert main(["lits", "--input", str(tmp_path / "scans"), "--output", str(out), "--ckpt_path", str(ckpt),
                 "--features", "4", "--num_threads", "1"]) == 0
    captured2 = capfd.readouterr()
    assert "0 done, 1 skipped, 0 failed" in captured2.out
    files = [p for root in (out, store) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "cases.csv" for p in store.rglob("*")), "the CSV is an MLflow artifact"
    assert any(p.name == "mlflow.db" for p in files)
    for path in files:
        assert not _leaks(str(path.relative_to(tmp_path))), path
        data = path.read_bytes()
        assert not _leaks(data), (path, _leaks(data))
        if path.name.endswith(".gz"):
            assert not _leaks(gzip.decompress(data)), path
    for text in (captured.out, captured.err, captured2.out, captured2.err, caplog.text):
        assert not _leaks(text), _leaks(text)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("varseg-lits").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    params = runs[0].data.params
    assert "input" not in params and params["checkpoint"] == "model.pt" and len(params["checkpoint_sha256"]) == 12
    assert runs[0].data.tags["status"] == "ok" and runs[0].info.run_name.startswith("lits-infer-")


def test_dicom_case_names_and_scrubbed_reasons(tmp_path: Path) -> None:
    entry = {"case": "whatever", "image": str(tmp_path / "DOE_JOHN_PID-12345"), "kind": "dicom",
             "series_uid": "1.2.3.4"}
    assert case_name(entry) == pseudonym("1.2.3.4")
    assert case_name(entry, identify=True) == "whatever"
    assert mask_name(case_name(entry), "lesion") == f"{pseudonym('1.2.3.4')}_lesion.nii.gz"

    def leaky(volume, entry):
        raise OSError(f"cannot read {tmp_path / 'DOE_JOHN_PID-12345' / 'IM1.dcm'} (DOE_JOHN_PID-12345)")

    series = tmp_path / "DOE_JOHN_PID-12345"
    uid = _write_dicom_series(series, _ct((12, 10, 3), 0))
    entries = index_inputs(tmp_path)
    report = run_batch(entries, leaky, tmp_path / "out", "seg", progress=False)
    reason = report.rows[0]["reason"]
    assert report.rows[0]["case"] == pseudonym(uid) and not _leaks(reason), reason


# ----------------------------------------------------------------------------------------------------------------
# LiTS masks identical to the former inference config
# ----------------------------------------------------------------------------------------------------------------


def _former_lits_mask(image: Path, ckpt: Path) -> np.ndarray:
    """The former ``inference.json`` pipeline (LoadImaged ... Invertd) on one volume, as an array."""
    import networks
    from monai.transforms import (Activationsd, AsDiscreted, Compose, EnsureChannelFirstd, EnsureTyped, Invertd,
                                  LoadImaged, MapLabelValued, Orientationd)

    from pipeline.inference.inferers import AdjacentSliceInferer
    from transforms import HUWindowd

    net = networks.PolyphaseUNet(spatial_dims=2, in_channels=3, out_channels=3, features=4)
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    net.eval()
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                   Orientationd("image", axcodes="RAS"), HUWindowd("image", a_min=-124, a_max=276),
                   EnsureTyped("image", dtype=torch.float32)])
    data = pre({"image": str(image)})
    with torch.no_grad():
        pred = AdjacentSliceInferer(num_slices=3, batch_size=32, divisible=16)(data["image"][None], net)[0]
    post = Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True),
                    MapLabelValued("pred", orig_labels=[0, 1, 2], target_labels=[0, 0, 1]),
                    Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)])
    out = post({"pred": pred, "image": data["image"]})
    return np.asarray(out["pred"][0]).astype(np.uint8)


@pytest.mark.parametrize("orientation", [1, 2])
def test_lits_masks_identical_to_the_former_config(tmp_path: Path, orientation: int) -> None:
    image = _save(tmp_path / "in" / "volume-7.nii.gz", _ct((40, 36, 6), 5).round().astype(np.int16),
                  _affine(orientation))
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt", seed=1, tune_on=image)
    out = tmp_path / "out"
    assert main(["lits", "--input", str(image), "--output", str(out), "--ckpt_path", str(ckpt), "--features", "4",
                 "--num_threads", "1", "--no-mlflow", "--no-progress"]) == 0
    written = np.asarray(nib.load(str(out / "volume-7_lesion.nii.gz")).dataobj)
    expected = _former_lits_mask(image, ckpt)
    assert 0.05 < expected.mean() < 0.6  # a mask with both classes, not a trivial one
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_allclose(nib.load(str(out / "volume-7_lesion.nii.gz")).affine, nib.load(str(image)).affine,
                               atol=1e-4)


def test_bundle_run_goes_through_the_batch(tmp_path: Path) -> None:
    """``python -m monai.bundle run --config_file inference.json``: same masks and CSV, exit 1 on a broken case."""
    folder = tmp_path / "in"
    _inputs(folder, 2)
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    config = str(REPO / "bundles" / "lits" / "configs" / "inference.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--input", str(folder),
           "--output", str(out), "--ckpt_path", str(ckpt), "--features", "4", "--num_threads", "1", "--mlflow", "false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "2 done, 0 skipped, 1 failed" in proc.stdout
    rows = _rows(out / "cases.csv")
    assert rows["broken"]["status"] == "failed" and rows["case00"]["status"] == "done"


def test_sigkill_halfway_then_rerun_finishes_the_rest(tmp_path: Path) -> None:
    """A real ``kill -9`` of the batch process mid-way; the same command again finishes without redoing any case."""
    import signal
    import time

    folder = tmp_path / "in"
    _inputs(folder, 10, shape=(64, 64, 24))
    ckpt = _tiny_lits_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.inference.cli", "lits", "--input", str(folder), "--output", str(out),
           "--no-mlflow", "--no-progress", "--ckpt_path", str(ckpt), "--features", "4", "--num_threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(list(out.glob("*_lesion.nii.gz"))) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, _sha(p)) for p in out.glob("*_lesion.nii.gz")}
    assert 3 <= len(first) < 10, "the kill should land in the middle of the batch"
    for name in first:  # every mask under its final name is complete
        assert nib.load(str(out / name)).get_fdata().shape == (64, 64, 24)
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace",
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, _sha(p)) for p in out.glob("*_lesion.nii.gz")}
    assert len(after) == 10
    assert {k: after[k] for k in first} == first  # finished masks untouched
    rows = _rows(out / "cases.csv")
    assert sorted(rows) == [f"case{i:02d}" for i in range(10)]
    assert {rows[c]["status"] for c in rows} <= {"done", "skipped"}
    assert sum(rows[c]["status"] == "skipped" for c in rows) == len(first)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_brats_case_missing_a_modality_fails_alone_in_a_batch(tmp_path: Path) -> None:
    """A BraTS folder where one case lacks FLAIR: indexing for a batch keeps it, the batch fails that case only."""
    from pipeline.io.layouts import LayoutError

    shape = (16, 16, 4)
    for case, modalities in (("BraTS20_Training_001", ("t1", "flair")), ("BraTS20_Training_002", ("t1",))):
        for m in modalities:
            _save(tmp_path / "brats" / case / f"{case}_{m}.nii.gz", _ct(shape, 0), _affine(0))
    with pytest.raises(LayoutError, match="lacks modality flair"):
        index_inputs(tmp_path / "brats", modalities=["t1", "flair"])
    entries = index_inputs(tmp_path / "brats", modalities=["t1", "flair"], missing_modalities="keep")
    assert [e.get("missing_modalities") for e in entries] == [None, ["flair"]]
    report = run_batch(entries, _threshold, tmp_path / "out", "seg", progress=False)
    rows = _rows(tmp_path / "out" / "cases.csv")
    assert rows["BraTS20_Training_001"]["status"] == "done"
    assert rows["BraTS20_Training_002"]["status"] == "failed"
    assert rows["BraTS20_Training_002"]["reason"] == "missing modality flair"
    assert report.exit_code == 1
