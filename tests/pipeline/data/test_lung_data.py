"""Synthetic lung CT phantoms (thorax) and the Learn2Reg-like lung layout indexer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.io.datasets import LayoutError, index_lung
from pipeline.data.lung import generate_lung_phantoms, make_lung_case
from pipeline.data.lung import TISSUES, _render_case, main


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the first three default phantoms of seed 0."""
    folder = tmp_path_factory.mktemp("lung_synthetic")
    generate_lung_phantoms(folder, num_cases=3, progress=False)
    return folder


@pytest.fixture(scope="module")
def default_cases() -> list:
    """The first six default cases of seed 0 (rendered with their tissue and nodule maps)."""
    return [_render_case(i) for i in range(6)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _threshold_lungs(volume: np.ndarray, fill: bool) -> np.ndarray:
    """Plain threshold segmentation: HU < -400, components touching the in-plane border (outside air) removed."""
    dark = volume < -400
    components, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([components[0].ravel(), components[-1].ravel(), components[:, 0].ravel(),
                                     components[:, -1].ravel()]))
    inside = dark & ~np.isin(components, edge)
    if fill:
        inside = np.stack([ndimage.binary_fill_holes(inside[:, :, k]) for k in range(inside.shape[2])], axis=2)
    return inside


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centroid of ``mask``."""
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


# ---------------------------------------------------------------------------------------------- generator


def test_case_is_deterministic_and_seeded() -> None:
    first, second = make_lung_case(1), make_lung_case(1)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(make_lung_case(1, seed=1)[0], first[0])
    assert not np.array_equal(make_lung_case(2)[0], first[0])


def test_case_does_not_depend_on_the_batch(phantom_dir: Path, tmp_path: Path) -> None:
    alone = generate_lung_phantoms(tmp_path, num_cases=1, start_index=2, progress=False)
    assert [d["case"] for d in alone] == ["lung_002"]
    for folder in (phantom_dir, tmp_path):
        image = np.asanyarray(nib.load(folder / "imagesTr" / "lung_002_0000.nii.gz").dataobj)
        np.testing.assert_array_equal(image, make_lung_case(2)[0])


def test_files_on_disk(phantom_dir: Path) -> None:
    for index in range(3):
        image = nib.load(phantom_dir / "imagesTr" / f"lung_{index:03d}_0000.nii.gz")
        mask = nib.load(phantom_dir / "masksTr" / f"lung_{index:03d}_0000.nii.gz")
        assert image.shape == mask.shape == (128, 128, 48)
        assert image.get_data_dtype() == np.int16 and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, mask.affine)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert image.header.get_qform(coded=True)[1] == image.header.get_sform(coded=True)[1] == 1
        volume, label, affine = make_lung_case(index)
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume)
        np.testing.assert_array_equal(np.asanyarray(mask.dataobj), label)
        np.testing.assert_allclose(image.affine, affine)
        assert set(np.unique(label)) == {0, 1, 2}
    description = json.loads((phantom_dir / "dataset.json").read_text())
    assert description["cases"] == [0, 1, 2] and description["shape"] == [128, 128, 48]
    assert description["labels"] == {"0": "background", "1": "left lung", "2": "right lung"}
    assert description["training"][0] == {"image": "./imagesTr/lung_000_0000.nii.gz",
                                          "mask": "./masksTr/lung_000_0000.nii.gz"}


def test_grid_spacing_and_whole_thorax_in_view(default_cases: list) -> None:
    for case in default_cases:
        pixel_x, pixel_y, thickness = case.spacing
        assert pixel_x == pixel_y and 2.3 <= pixel_x <= 3.2 and thickness in (2.0, 2.5, 3.0)
        body = case.tissue != TISSUES["air"]
        assert not body[[0, -1]].any() and not body[:, [0, -1]].any()  # air all around the body
        assert 20.0 <= case.noise_sigma <= 40.0


def test_left_lung_is_on_the_patients_left(default_cases: list) -> None:
    """RAS+ world: +x points to the patient's right, so the left lung (label 1) lies towards -x."""
    for case in default_cases:
        assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
        left, right = _world(case.affine, case.label == 1), _world(case.affine, case.label == 2)
        axis = _world(case.affine, case.tissue != TISSUES["air"])[0]  # body axis (the body is symmetric in x)
        assert left[0] < axis - 30.0 < axis + 30.0 < right[0]
        i_left, i_right = np.argwhere(case.label == 1)[:, 0], np.argwhere(case.label == 2)[:, 0]
        assert i_left.max() < i_right.min()  # diagonal affine with +x: the left lung has the smaller voxel i


def test_hu_statistics_per_tissue(default_cases: list) -> None:
    for case in default_cases:
        volume, tissue = case.volume, case.tissue
        parenchyma = ndimage.binary_erosion(tissue == TISSUES["lung"], iterations=2)
        assert abs(float(np.median(volume[parenchyma])) + 850.0) <= 60.0
        bone = ndimage.binary_erosion(tissue == TISSUES["bone"], iterations=1)
        assert bone.sum() > 500 and 300.0 <= float(np.median(volume[bone])) <= 1000.0
        muscle = ndimage.binary_erosion(tissue == TISSUES["muscle"], iterations=1)
        assert 30.0 <= float(np.median(volume[muscle])) <= 70.0
        outside = ndimage.binary_erosion(tissue == TISSUES["air"], iterations=2)
        assert float(np.median(volume[outside])) < -950.0


def test_vessels_and_nodules_inside_the_lungs(default_cases: list) -> None:
    for case in default_cases:
        lung = case.label > 0
        vessels = (case.tissue == TISSUES["vessel"]) & lung
        assert 0.01 <= vessels.sum() / lung.sum() <= 0.08
        assert (case.inner_nodules & lung).any() and (case.pleural_nodules & lung).any()
        assert (case.pleural_nodules & ~lung).any()  # attached to the wall: partly outside the lung field
        assert float(np.median(case.volume[case.inner_nodules])) > -300.0


def test_plain_threshold_misses_pleural_nodules(default_cases: list) -> None:
    for case in default_cases:
        lung = case.label > 0
        plain, filled = _threshold_lungs(case.volume, False), _threshold_lungs(case.volume, True)
        # the lungs are the main dark structures inside the body ...
        assert np.count_nonzero(plain & lung) / np.count_nonzero(plain) > 0.98
        # ... but the threshold misses lung-mask voxels (vessels, nodules), and hole filling cannot restore the
        # pleural nodules, while it restores the nodules surrounded by parenchyma
        assert 0.9 < _dice(plain, lung) < 0.995
        assert _dice(filled, lung) < 0.998
        pleural, inner = case.pleural_nodules & lung, case.inner_nodules & lung
        assert filled[pleural].mean() < 0.2
        assert filled[inner].mean() > 0.5


def test_larger_grid_shows_apex_and_diaphragm() -> None:
    case = _render_case(0, (96, 96, 128))
    per_slice = (case.label > 0).sum(axis=(0, 1))
    assert per_slice[0] == 0 or per_slice[-1] == 0  # the slab reaches beyond the lungs
    assert per_slice.max() > 0 and case.spacing[0] > 3.0  # coarser pixels for a smaller in-plane grid


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_lung_case(-1)
    with pytest.raises(ValueError):
        make_lung_case(0, (4, 128, 48))
    with pytest.raises(ValueError):
        generate_lung_phantoms(tmp_path, num_cases=0, progress=False)


# ---------------------------------------------------------------------------------------------- writing


def test_regeneration_is_idempotent(phantom_dir: Path) -> None:
    image = phantom_dir / "imagesTr" / "lung_000_0000.nii.gz"
    before = image.stat().st_mtime_ns
    datalist = generate_lung_phantoms(phantom_dir, num_cases=3, progress=False)
    assert image.stat().st_mtime_ns == before
    assert [d["case"] for d in datalist] == ["lung_000", "lung_001", "lung_002"]
    assert datalist == index_lung(phantom_dir)
    assert not [p for p in phantom_dir.rglob(".*")]  # no temporary files left


def test_partial_pair_is_refused(tmp_path: Path) -> None:
    generate_lung_phantoms(tmp_path, num_cases=1, progress=False)
    (tmp_path / "masksTr" / "lung_000_0000.nii.gz").unlink()
    with pytest.raises(ValueError, match="without its pair"):
        generate_lung_phantoms(tmp_path, num_cases=1, progress=False)
    generate_lung_phantoms(tmp_path, num_cases=1, overwrite=True, progress=False)
    assert (tmp_path / "masksTr" / "lung_000_0000.nii.gz").exists()


def test_folder_of_other_settings_or_foreign_files_is_refused(tmp_path: Path) -> None:
    generate_lung_phantoms(tmp_path / "a", num_cases=1, shape=(32, 32, 8), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate_lung_phantoms(tmp_path / "a", num_cases=1, shape=(32, 32, 8), seed=1, progress=False)
    foreign = tmp_path / "b" / "imagesTr"
    foreign.mkdir(parents=True)
    (foreign / "LungCT_0001_0000.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="dataset.json"):
        generate_lung_phantoms(tmp_path / "b", num_cases=1, shape=(32, 32, 8), progress=False)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--num-cases", "2", "--shape", "32", "32", "8", "--no-progress"]) == 0
    assert "2 lung phantom cases" in capsys.readouterr().out
    assert len(index_lung(tmp_path)) == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--num-cases", "2", "--shape", "32", "32", "8", "--seed", "3", "--no-progress"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- indexing


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_index_real_layout(tmp_path: Path) -> None:
    for case in ("LungCT_0002", "LungCT_0001"):
        for phase in ("0000", "0001"):
            _touch(tmp_path / "imagesTr" / f"{case}_{phase}.nii.gz")
            _touch(tmp_path / "masksTr" / f"{case}_{phase}.nii.gz")
    datalist = index_lung(tmp_path)
    assert [d["case"] for d in datalist] == ["LungCT_0001", "LungCT_0002"]
    assert datalist[0]["image"].endswith("imagesTr/LungCT_0001_0000.nii.gz")
    assert datalist[0]["label"].endswith("masksTr/LungCT_0001_0000.nii.gz")
    assert [d["case"] for d in index_lung(tmp_path, phase="0001")] == ["LungCT_0001", "LungCT_0002"]
    assert len(index_lung(tmp_path, phase=None)) == 4
    with pytest.raises(ValueError):
        index_lung(tmp_path, phase="1")


def test_index_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        index_lung(tmp_path / "missing")
    with pytest.raises(LayoutError, match="not a folder"):
        index_lung(_touch(tmp_path / "file.txt"))
    with pytest.raises(LayoutError, match="no imagesTr"):
        index_lung(tmp_path)
    _touch(tmp_path / "imagesTr" / "notes.txt")
    with pytest.raises(LayoutError, match="no <case>_0000"):
        index_lung(tmp_path)
    _touch(tmp_path / "imagesTr" / "lung_000_0000.nii.gz")
    with pytest.raises(LayoutError, match="no masksTr"):
        index_lung(tmp_path)
    assert index_lung(tmp_path, require_labels=False) == [
        {"image": str(tmp_path / "imagesTr" / "lung_000_0000.nii.gz"), "case": "lung_000"}]
    _touch(tmp_path / "masksTr" / "other_0000.nii.gz")
    with pytest.raises(LayoutError, match="lack a mask"):
        index_lung(tmp_path)
    _touch(tmp_path / "masksTr" / "lung_000_0000.nii.gz")
    assert [d["case"] for d in index_lung(tmp_path)] == ["lung_000"]
    _touch(tmp_path / "imagesTr" / "lung_000_0000.nii")
    with pytest.raises(LayoutError, match="appears twice"):
        index_lung(tmp_path)


def test_layout_error_is_the_shared_one() -> None:
    from pipeline.io.datasets import LayoutError as LitsLayoutError

    assert LayoutError is LitsLayoutError
