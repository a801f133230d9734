"""Synthetic LiTS phantoms, the LiTS layout indexer, and the case split helpers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.io.datasets import LayoutError, index_lits
from pipeline.data.lits import generate_lits_phantoms, lits_datalist, make_lits_case
from pipeline.data.splits import mark_labelled, split_cases
from pipeline.data.lits import TISSUES, _render_case, main

DEFAULT = (128, 128, 32)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the first three default phantoms of seed 0."""
    folder = tmp_path_factory.mktemp("lits_synthetic")
    generate_lits_phantoms(folder, num_cases=3, progress=False)
    return folder


@pytest.fixture(scope="module")
def default_cases() -> list:
    """The first 16 default cases of seed 0 (rendered with their tissue maps)."""
    return [_render_case(i) for i in range(16)]


@pytest.fixture(scope="module")
def large_case():
    """A whole-abdomen 512 x 512 x 8 case."""
    return _render_case(0, (512, 512, 8))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------------------------------- generator


def test_case_is_deterministic_and_seeded() -> None:
    first, second = make_lits_case(3), make_lits_case(3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = make_lits_case(3, seed=1)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(make_lits_case(4)[0], first[0])


def test_case_does_not_depend_on_the_batch(phantom_dir: Path, tmp_path: Path) -> None:
    alone = generate_lits_phantoms(tmp_path, num_cases=1, start_index=2, progress=False)
    assert [d["case"] for d in alone] == ["volume-2"]
    for folder in (phantom_dir, tmp_path):
        volume = np.asanyarray(nib.load(folder / "volume-2.nii.gz").dataobj)
        np.testing.assert_array_equal(volume, make_lits_case(2)[0])


def test_files_on_disk(phantom_dir: Path) -> None:
    for index in range(3):
        vol = nib.load(phantom_dir / f"volume-{index}.nii.gz")
        seg = nib.load(phantom_dir / f"segmentation-{index}.nii.gz")
        assert vol.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        assert vol.shape == seg.shape == DEFAULT
        np.testing.assert_array_equal(vol.affine, seg.affine)
        for image in (vol, seg):
            header = image.header
            assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
            np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-5)
            assert header.get_xyzt_units()[0] == "mm"
            np.testing.assert_allclose(header.get_zooms(), np.diag(image.affine)[:3], rtol=1e-6)
            assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        labels = np.asanyarray(seg.dataobj)
        assert set(np.unique(labels)) == {0, 1, 2}
        np.testing.assert_array_equal(labels, make_lits_case(index)[1])


def test_spacing_ranges(default_cases: list) -> None:
    spacings = np.array([case.spacing for case in default_cases])
    assert np.all((spacings[:, :2] >= 0.6) & (spacings[:, :2] <= 0.9))
    assert np.all((spacings[:, 2] >= 1.0) & (spacings[:, 2] <= 5.0))
    assert len(np.unique(spacings[:, 2])) > 2
    for case in default_cases[:4]:
        np.testing.assert_allclose(np.diag(case.affine)[:3], case.spacing)
        assert np.linalg.norm(case.affine[:3, 3]) > 100.0


def test_hu_statistics_per_class(default_cases: list) -> None:
    for case in default_cases[:6]:
        liver = float(np.median(case.volume[case.segmentation == 1]))
        lesion = float(np.median(case.volume[case.segmentation == 2]))
        assert 40.0 <= liver <= 100.0
        assert 15.0 <= liver - lesion <= 60.0
        assert 10.0 <= case.noise_sigma <= 25.0


def test_large_grid_shows_whole_abdomen(large_case) -> None:
    tissue, volume = large_case.tissue, large_case.volume
    border = np.concatenate([tissue[0].ravel(), tissue[-1].ravel(), tissue[:, 0].ravel(), tissue[:, -1].ravel()])
    assert np.all(border == TISSUES["air"])
    assert abs(float(np.median(volume[tissue == TISSUES["air"]])) + 1000.0) <= 10.0
    assert -130.0 <= float(np.median(volume[tissue == TISSUES["fat"]])) <= -70.0
    assert 30.0 <= float(np.median(volume[tissue == TISSUES["muscle"]])) <= 70.0
    bone = ndimage.binary_erosion(tissue == TISSUES["bone"], iterations=2)
    assert np.count_nonzero(bone) > 200
    low, high = np.percentile(volume[bone], [5, 95])
    assert 250.0 <= low and high <= 1050.0
    assert np.count_nonzero(large_case.segmentation == 2) > 0


def test_lesions_present_and_visible(default_cases: list) -> None:
    fractions = np.array([np.mean(case.segmentation == 2) for case in default_cases])
    assert np.all(fractions > 0)
    assert 0.01 <= fractions.mean() <= 0.06
    for case in default_cases:
        assert np.all(case.tissue[case.segmentation == 2] == TISSUES["lesion"])


def test_default_view_is_liver_centred_with_other_tissues(default_cases: list) -> None:
    for case in default_cases:
        fractions = np.bincount(case.tissue.ravel(), minlength=len(TISSUES)) / case.tissue.size
        assert np.mean(case.segmentation > 0) >= 0.3
        others = np.delete(fractions, [TISSUES["liver"], TISSUES["lesion"], TISSUES["vessel"]])
        assert np.count_nonzero(others >= 0.01) >= 2


def test_lesion_not_separable_by_hu_thresholds(default_cases: list) -> None:
    for case in default_cases[:4]:
        volume, lesion = case.volume.astype(np.float32), case.segmentation == 2
        cuts = np.percentile(volume[lesion], np.linspace(0, 100, 21))
        one_sided = max(max(_dice(volume < t, lesion), _dice(volume > t, lesion)) for t in cuts)
        band = max(_dice((volume >= lo) & (volume <= hi), lesion) for lo in cuts for hi in cuts if hi > lo)
        assert one_sided < 0.6 and band < 0.6


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        make_lits_case(0, shape=(128, 128))
    with pytest.raises(ValueError, match="out of range"):
        make_lits_case(0, shape=(4, 128, 32))
    with pytest.raises(ValueError, match="index"):
        make_lits_case(-1)


# ---------------------------------------------------------------------------------------------- writing


def test_regeneration_is_idempotent(phantom_dir: Path) -> None:
    files = sorted(phantom_dir.iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in files}
    datalist = generate_lits_phantoms(phantom_dir, num_cases=3, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in sorted(phantom_dir.iterdir())} == before
    assert [d["case"] for d in datalist] == ["volume-0", "volume-1", "volume-2"]
    assert all(Path(d["image"]).is_file() and Path(d["label"]).is_file() for d in datalist)
    meta = json.loads((phantom_dir / "dataset.json").read_text())
    assert meta["seed"] == 0 and meta["shape"] == list(DEFAULT) and meta["num_cases"] == 3
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "lesion"}
    assert not [p for p in phantom_dir.iterdir() if p.name.startswith(".")]


def test_partial_pair_is_refused(tmp_path: Path) -> None:
    generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), progress=False)
    (tmp_path / "segmentation-0.nii.gz").unlink()
    with pytest.raises(ValueError, match="volume-0.nii.gz"):
        generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), progress=False)
    generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), overwrite=True, progress=False)
    assert (tmp_path / "segmentation-0.nii.gz").is_file()


def test_folder_of_other_settings_is_refused(tmp_path: Path) -> None:
    generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), seed=1, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 16), progress=False)
    generate_lits_phantoms(tmp_path, num_cases=2, shape=(32, 32, 8), progress=False)
    assert json.loads((tmp_path / "dataset.json").read_text())["cases"] == [0, 1]


def test_foreign_files_without_dataset_json_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "volume-0.nii")
    with pytest.raises(ValueError, match="volume-0.nii"):
        generate_lits_phantoms(tmp_path, num_cases=1, shape=(32, 32, 8), progress=False)


def test_cli_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path), "--num-cases", "2", "--shape", "32", "32", "8", "--seed", "5", "--no-progress"]
    assert main(args) == 0
    assert "2 written" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 written, 2 already present" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- indexing


def _fake_lits(root: Path) -> Path:
    for batch, numbers, ext in (("Training Batch 1", (0, 2), ".nii"), ("Training Batch 2", (10, 27), ".nii.gz")):
        for n in numbers:
            _touch(root / batch / f"volume-{n}{ext}")
            _touch(root / batch / f"segmentation-{n}{ext}")
    _touch(root / "README.txt")
    return root


def test_index_real_layout(tmp_path: Path) -> None:
    datalist = index_lits(_fake_lits(tmp_path / "LiTS"))
    assert [d["case"] for d in datalist] == ["volume-0", "volume-2", "volume-10", "volume-27"]
    assert datalist[0]["image"].endswith("Training Batch 1/volume-0.nii")
    assert datalist[3]["label"].endswith("Training Batch 2/segmentation-27.nii.gz")


def test_index_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        index_lits(tmp_path / "nowhere")
    with pytest.raises(LayoutError, match="not a folder"):
        index_lits(_touch(tmp_path / "file.nii"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="holds no files"):
        index_lits(tmp_path / "empty")
    _touch(tmp_path / "other" / "case_00000" / "imaging.nii.gz")
    with pytest.raises(LayoutError, match=r"found instead: case_00000/imaging\.nii\.gz.*volume-N"):
        index_lits(tmp_path / "other")
    root = _fake_lits(tmp_path / "LiTS")
    (root / "Training Batch 2" / "segmentation-27.nii.gz").unlink()
    with pytest.raises(LayoutError, match="volume-27.nii.gz"):
        index_lits(root)
    unlabelled = index_lits(root, require_labels=False)
    assert "label" not in unlabelled[-1] and "label" in unlabelled[0]
    _touch(root / "volume-2.nii.gz")
    with pytest.raises(LayoutError, match="case 2 appears twice"):
        index_lits(root, require_labels=False)


def test_lits_datalist_synthetic_and_real(phantom_dir: Path, tmp_path: Path) -> None:
    for choice in (None, "", "synthetic"):
        datalist = lits_datalist(choice, phantom_dir, num_cases=2)
        assert [d["case"] for d in datalist] == ["volume-0", "volume-1"]
    real = _fake_lits(tmp_path / "LiTS")
    before = sorted(real.rglob("*"))
    assert len(lits_datalist(real, tmp_path / "unused")) == 4
    assert sorted(real.rglob("*")) == before and not (tmp_path / "unused").exists()


# ---------------------------------------------------------------------------------------------- splits


def _cases(n: int) -> list[dict[str, str]]:
    return [{"image": f"volume-{i}.nii.gz", "label": f"segmentation-{i}.nii.gz", "case": f"volume-{i}"}
            for i in range(n)]


def test_split_cases_counts_and_determinism() -> None:
    split = split_cases(_cases(16))
    assert {k: len(v) for k, v in split.items()} == {"train": 10, "val": 2, "test": 4}
    names = [d["case"] for part in split.values() for d in part]
    assert sorted(names) == sorted(d["case"] for d in _cases(16))
    assert split == split_cases(_cases(16))
    assert split != split_cases(_cases(16), seed=1)
    assert {k: len(v) for k, v in split_cases(_cases(3)).items()} == {"train": 1, "val": 1, "test": 1}
    assert len(split_cases(_cases(2), val_fraction=0, test_fraction=0)["train"]) == 2
    with pytest.raises(ValueError, match="too few cases"):
        split_cases(_cases(2))
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(_cases(16), val_fraction=1.5)


def test_mark_labelled() -> None:
    train = split_cases(_cases(16))["train"]
    marked = mark_labelled(train, "1/3", seed=0)
    assert [d["case"] for d in marked] == [d["case"] for d in train]
    assert sum(d["labelled"] for d in marked) == 3
    assert all("label" in d for d in marked) and "labelled" not in train[0]
    assert marked == mark_labelled(train, 1 / 3, seed=0)
    assert sum(d["labelled"] for d in mark_labelled(train, 0.01)) == 1
    assert all(d["labelled"] for d in mark_labelled(train, "1"))
    picks = {tuple(d["labelled"] for d in mark_labelled(train, 0.5, seed=s)) for s in range(5)}
    assert len(picks) > 1
    for bad in (0, 1.5, "x/3", "1/0"):
        with pytest.raises(ValueError, match="fraction"):
            mark_labelled(train, bad)
