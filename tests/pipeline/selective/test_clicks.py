"""Clicks to a 3D mask without training: propagation through a phantom structure, its stop rules, the adaptive crop,
``varseg infer lung --method tv`` with a 3D Slicer markups file, bad inputs, and the real CT liver."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.selective.clicks import ClickSegmentation, SliceSolver, keep_marked
from pipeline.selective.samples import SelectiveSlices

pytestmark = pytest.mark.usefixtures("one_thread")

TV = {"lam": 2.0, "theta": 30.0, "mu": 1.0, "max_iter": 300}
WINDOW = (-160.0, 240.0)


def _phantom(shape=(64, 64, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HU volume: soft tissue (-100 HU) with an ellipsoidal 'organ' (100 HU) on slices 4-16 and a bone block (400 HU)
    touching it; the organ mask."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    organ = ((i - 30) / 14.0) ** 2 + ((j - 30) / 12.0) ** 2 + ((k - 10) / 6.5) ** 2 <= 1.0
    hu = np.full(shape, -100.0) + rng.normal(0, 10, shape)
    hu[organ] = 100.0 + rng.normal(0, 10, int(organ.sum()))
    hu[44:54, 20:40, :] = 400.0  # bone next to the organ
    return hu.astype(np.float32), organ


def _clicks(shape, points) -> np.ndarray:
    clicks = np.zeros(shape, np.uint8)
    for p in points:
        clicks[tuple(p)] = 1
    return clicks


def _segmenter(**kwargs) -> ClickSegmentation:
    return ClickSegmentation(SelectiveSlices(window=WINDOW, progress=False), SliceSolver("tv", TV), progress=False,
                             **kwargs)


CLICKS = [(26, 26, 10), (34, 26, 10), (34, 34, 10), (26, 34, 10), (30, 30, 10)]


def test_clicks_on_one_slice_segment_the_whole_structure_and_stop_where_it_ends() -> None:
    hu, organ = _phantom()
    result = _segmenter()(hu, _clicks(hu.shape, CLICKS))
    assert dice_jaccard(result.mask, organ)[0] > 0.9
    organ_slices = set(np.flatnonzero(organ.any(axis=(0, 1))).tolist())
    assert set(result.slices) <= organ_slices and len(result.slices) >= len(organ_slices) - 2
    assert not result.mask[:, :, :3].any() and not result.mask[:, :, 18:].any()  # nothing beyond the ends
    assert not (result.mask & (hu > 300)).any()  # no leak into the bone
    stops = [r for r in result.records if r.stop]
    assert {r.slice < 10 for r in stops} == {True, False}  # one stop below, one above the clicked slice
    clicked = [r for r in result.records if r.source == "clicks"]
    assert [r.slice for r in clicked] == [10] and clicked[0].area > 0
    assert all(r.source == "propagated from 10" for r in result.records if r.slice != 10)


def test_only_the_clicked_slices_without_propagation() -> None:
    hu, organ = _phantom()
    result = _segmenter(propagate=False)(hu, _clicks(hu.shape, CLICKS + [(30, 30, 6)]))
    assert result.slices == [6, 10]
    assert dice_jaccard(result.mask[:, :, 10], organ[:, :, 10])[0] > 0.9


def test_a_slice_between_two_clicked_slices_is_solved_once() -> None:
    hu, _ = _phantom()
    result = _segmenter()(hu, _clicks(hu.shape, CLICKS + [(30, 30, 13), (28, 30, 13), (32, 30, 13)]))
    solved = [r.slice for r in result.records]
    assert len(solved) == len(set(solved))


def test_the_crop_grows_until_the_mask_no_longer_touches_it() -> None:
    """Markers in one corner of a large structure: the first box cuts the structure, so it grows; the result is the
    one of the whole slice."""
    hu = np.full((96, 96), -100.0, np.float32)
    hu[10:86, 10:86] = 100.0
    hu += np.random.default_rng(0).normal(0, 10, hu.shape).astype(np.float32)
    markers = np.zeros((96, 96), bool)
    markers[14:40, 14:40] = True
    mask, crop = _segmenter(min_margin=8, crop_margin=0.25).solve_slice(hu, markers)
    whole, whole_crop = _segmenter(min_margin=200).solve_slice(hu, markers)
    assert whole_crop == (96, 96) and crop[0] > 26 + 2 * 8 and crop[1] > 26 + 2 * 8  # grown beyond the first box
    assert dice_jaccard(mask, whole)[0] > 0.97


def test_keep_marked_components() -> None:
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = mask[6:9, 6:9] = True
    markers = np.zeros_like(mask)
    markers[7, 7] = True
    kept = keep_marked(mask, markers)
    assert kept.sum() == 9 and kept[7, 7] and not kept[1, 1]
    assert not keep_marked(np.zeros_like(mask), markers).any()


def test_bad_settings_and_inputs() -> None:
    with pytest.raises(ValueError, match="unknown per-image method 'm4'"):
        SliceSolver("m4", TV)
    with pytest.raises(ValueError, match=r"lack \['mu'\]"):
        SliceSolver("tv", {"lam": 1, "theta": 1, "max_iter": 1})
    with pytest.raises(ValueError, match="max_growth must be > 1"):
        _segmenter(max_growth=1.0)
    hu, _ = _phantom()
    with pytest.raises(ValueError, match="no click inside the volume"):
        _segmenter()(hu, np.zeros(hu.shape, np.uint8))
    empty = ClickSegmentation(SelectiveSlices(window=WINDOW, progress=False),
                              lambda sample: np.zeros(sample["intensity"].shape[-2:], bool), progress=False)
    with pytest.raises(ValueError, match="clicked on slice 10 is empty after solving"):
        empty(hu, _clicks(hu.shape, CLICKS))


# ----------------------------------------------------------------------------------------------------------------
# From the command line
# ----------------------------------------------------------------------------------------------------------------


def _slicer_markups(points_ras_mm: np.ndarray, path: Path, space: str = "LPS") -> Path:
    flip = np.array([-1.0, -1.0, 1.0]) if space == "LPS" else np.ones(3)
    points = [{"id": str(n + 1), "label": f"F-{n + 1}", "position": [float(v) for v in p * flip]}
              for n, p in enumerate(points_ras_mm)]
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": space,
                                             "controlPoints": points}]}))
    return path


def test_varseg_infer_per_image_method_from_a_slicer_markups_file(tmp_path: Path) -> None:
    from pipeline.inference.cli import main

    hu, organ = _phantom()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 10.0, -300.0)
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "ct.nii.gz"))
    ras = (affine @ np.c_[np.array(CLICKS), np.ones(len(CLICKS))].T).T[:, :3]
    markers = _slicer_markups(ras, tmp_path / "clicks.mrk.json")
    out = tmp_path / "out"
    args = ["lung", "--method", "tv", "--input", str(tmp_path / "ct.nii.gz"), "--markers", str(markers),
            "--output", str(out), "--window", "-160", "240", "--no-mlflow", "--no-progress"]
    assert main(args) == 0
    row = next(csv.DictReader((out / "cases.csv").open()))
    assert row["status"] == "done" and row["mask"] == "ct_selective.nii.gz"
    written = nib.load(str(out / "ct_selective.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)  # the input's geometry
    assert dice_jaccard(np.asarray(written.dataobj) > 0, organ)[0] > 0.9

    # a markers file of another image: no click inside this volume -> a failed row, the batch goes on
    far = _slicer_markups(ras + np.array([0.0, 0.0, 500.0]), tmp_path / "other.mrk.json")
    assert main([*args[:6], str(far), "--output", str(tmp_path / "far"), *args[9:]]) == 1
    row = next(csv.DictReader((tmp_path / "far" / "cases.csv").open()))
    assert row["status"] == "failed" and "markers outside the image" in row["reason"]


def test_window_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.inference.cli import main

    assert main(["lung", "--method", "tv", "--input", str(tmp_path), "--window", "240", "-160"]) == 2
    assert "--window needs LOW < HIGH" in capsys.readouterr().err
    assert main(["lits", "--input", str(tmp_path), "--window", "0", "1"]) == 2
    assert "no intensity window setting" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Real CT: the liver of the TotalSegmentator DICOM series from clicks on 3 slices
# ----------------------------------------------------------------------------------------------------------------


def _real_liver():
    from pipeline.paths import real_data_root

    root = real_data_root() / "a_liver_ct" / "totalsegmentator"
    series, label = root / "example_ct_dicom", root / "example_seg_dicom.nii.gz"
    if not (series.is_dir() and label.is_file()):
        pytest.skip(f"real sample data not found at {real_data_root()} (set VARSEG_REAL_DATA to the folder of "
                    "shared/data/real)")
    return series, label


def test_real_ct_liver_from_clicks_on_three_slices(tmp_path: Path) -> None:
    """At most 8 clicks on each of 3 slices (simulated inside the liver, seeded), given as a Slicer LPS markups file:
    the whole-volume Dice against the liver label (5) is at least 0.90."""
    from pipeline.experiments.real_eval import label_on_grid
    from pipeline.inference.cli import main
    from pipeline.io.volumes import read_volume
    from pipeline.selective.clicks import simulate_clicks

    series, label = _real_liver()
    volume = read_volume(series)
    liver = np.asarray(volume.to_ras(label_on_grid(label, volume)[0] == 5))
    clicks = simulate_clicks(liver, (0.2, 0.5, 0.8), num_clicks=(4, 8), min_distance=10, seed=0)
    per_slice = clicks.sum(axis=(0, 1))
    assert np.count_nonzero(per_slice) == 3 and per_slice.max() <= 8
    voxels = np.argwhere(np.asarray(volume.from_ras(clicks)) > 0)
    ras = (volume.affine @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
    markers = _slicer_markups(ras, tmp_path / "liver.mrk.json")
    out = tmp_path / "out"
    assert main(["lung", "--method", "tv", "--input", str(series), "--markers", str(markers), "--output", str(out),
                 "--window", "-160", "240", "--no-mlflow", "--no-progress", "--output_postfix", "liver"]) == 0
    (mask_file,) = out.glob("*_liver.nii.gz")
    mask = read_volume(mask_file)
    assert mask.shape == volume.shape
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-3)  # the series' own geometry
    dice = dice_jaccard(np.asarray(mask.to_ras()) > 0, liver)[0]
    assert dice >= 0.90, dice
