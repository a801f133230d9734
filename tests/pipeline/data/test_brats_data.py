"""Synthetic BraTS-style brain MR phantoms: generator, on-disk BraTS 2020 layout and datalist."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.brats import (
    BRATS_MODALITY_NAMES,
    brats_affine,
    brats_datalist,
    generate_brats_phantoms,
    make_brats_case,
)
from pipeline.data.brats import TISSUES, main
from pipeline.io.layouts import LayoutError, index_brats, index_inputs
from pipeline.paths import real_data_root

SMALL = (40, 44, 32)
REAL_SAMPLE = real_data_root() / "c_brain_mr" / "deepmedic_brats2015"
ROLES = (*BRATS_MODALITY_NAMES, "seg")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small phantoms of seed 0 written to disk."""
    folder = tmp_path_factory.mktemp("brats_synthetic")
    generate_brats_phantoms(folder, num_cases=2, shape=SMALL, progress=False)
    return folder


@pytest.fixture(scope="module")
def default_cases() -> list:
    """The first three default cases of seed 0."""
    return [make_brats_case(i) for i in range(3)]


def _tissue_means(case, modality: str) -> dict[str, float]:
    image = case.images[modality].astype(np.float64)
    return {name: float(image[case.tissue == value].mean()) for name, value in TISSUES.items() if value}


# ---------------------------------------------------------------------------------------------- generator


def test_case_is_deterministic_and_seeded() -> None:
    first, second = make_brats_case(1, SMALL), make_brats_case(1, SMALL)
    for name in BRATS_MODALITY_NAMES:
        np.testing.assert_array_equal(first.images[name], second.images[name])
        np.testing.assert_array_equal(first.bias[name], second.bias[name])
    np.testing.assert_array_equal(first.label, second.label)
    assert not np.array_equal(make_brats_case(1, SMALL, seed=1).images["t1"], first.images["t1"])
    assert not np.array_equal(make_brats_case(2, SMALL).label, first.label)
    unbiased = make_brats_case(1, SMALL, bias_strength=0.0)  # same anatomy, only the bias differs
    np.testing.assert_array_equal(unbiased.label, first.label)
    np.testing.assert_array_equal(unbiased.tissue, first.tissue)


def test_arrays_and_labels(default_cases: list) -> None:
    for case in default_cases:
        assert set(case.images) == set(BRATS_MODALITY_NAMES)
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1, 2, 4}
        for image in case.images.values():
            assert image.dtype == np.int16 and image.shape == case.label.shape
            assert image.min() == 0 and np.all(image[~case.brain] == 0) and np.all(image[case.brain] > 0)
        assert np.all(case.brain[case.label > 0])
        # all three tumour parts present, the oedema larger than the enhancing rim
        assert np.count_nonzero(case.label == 1) > 0 and np.count_nonzero(case.label == 4) > 0
        assert np.count_nonzero(case.label == 2) > np.count_nonzero(case.label == 4)


def test_contrasts(default_cases: list) -> None:
    for case in default_cases:
        t1, t2 = _tissue_means(case, "t1"), _tissue_means(case, "t2")
        t1ce, flair = _tissue_means(case, "t1ce"), _tissue_means(case, "flair")
        assert t1["white_matter"] > t1["grey_matter"] > t1["csf"]
        assert t2["csf"] > t2["grey_matter"] > t2["white_matter"]
        assert t1ce["enhancing"] > t1ce["necrosis"] and t1ce["enhancing"] > t1ce["white_matter"]
        assert flair["oedema"] > max(flair["white_matter"], flair["grey_matter"], flair["csf"])
        assert flair["csf"] < flair["white_matter"]  # CSF suppressed
        assert t2["oedema"] > t2["white_matter"]


def test_bias_field_off_is_flat_and_on_is_applied() -> None:
    flat, biased = make_brats_case(0, bias_strength=0.0), make_brats_case(0, bias_strength=0.3)
    white = flat.tissue == TISSUES["white_matter"]
    for name in BRATS_MODALITY_NAMES:
        np.testing.assert_array_equal(flat.bias[name], 1.0)
        b = biased.bias[name][biased.brain]
        assert b.min() > 0 and np.log(b).std() == pytest.approx(0.3, rel=1e-3)

    def octant_spread(image: np.ndarray) -> float:
        half = np.array(image.shape) // 2
        means = []
        for corner in np.ndindex(2, 2, 2):
            box = tuple(slice(c * h, (c + 1) * h) for c, h in zip(corner, half))
            means.append(image[box][white[box]].mean())
        return max(means) / min(means)

    for name in BRATS_MODALITY_NAMES:
        assert octant_spread(flat.images[name].astype(float)) < 1.06  # texture and noise only
        assert octant_spread(biased.images[name].astype(float)) > 1.2
        ratio = np.log(biased.images[name][white] / flat.images[name][white].astype(float))
        assert np.corrcoef(ratio, np.log(biased.bias[name][white]))[0, 1] > 0.95


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bias_strength"):
        make_brats_case(0, SMALL, bias_strength=-0.1)
    with pytest.raises(ValueError, match="index"):
        make_brats_case(-1, SMALL)
    with pytest.raises(ValueError, match="shape"):
        make_brats_case(0, (4, 40, 40))
    with pytest.raises(ValueError, match="num_cases"):
        generate_brats_phantoms(tmp_path, num_cases=0, progress=False)


# ---------------------------------------------------------------------------------------------- files on disk


def test_files_on_disk(phantom_dir: Path) -> None:
    description = json.loads((phantom_dir / "dataset.json").read_text())
    assert description["cases"] == [0, 1] and description["shape"] == list(SMALL)
    assert "training" not in description  # so that layout detection sees BraTS case folders, not an MSD list
    for case in ("brats_000", "brats_001"):
        images = {role: nib.load(phantom_dir / case / f"{case}_{role}.nii.gz") for role in ROLES}
        reference = images["seg"]
        for role, image in images.items():
            assert image.shape == SMALL
            np.testing.assert_array_equal(image.affine, reference.affine)
            assert image.get_data_dtype() == (np.uint8 if role == "seg" else np.int16)
        assert nib.aff2axcodes(reference.affine) == ("L", "P", "S")
        assert reference.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(reference.affine, brats_affine(SMALL))
        assert set(np.unique(np.asarray(reference.dataobj))) <= {0, 1, 2, 4}
    written = make_brats_case(1, SMALL)
    np.testing.assert_array_equal(np.asarray(nib.load(phantom_dir / "brats_001" / "brats_001_t1ce.nii.gz").dataobj),
                                  written.images["t1ce"])


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="real BraTS sample not available")
def test_affine_matches_the_real_brats_sample() -> None:
    real = nib.load(next(REAL_SAMPLE.glob("*/OTMultiClass.nii.gz")))
    np.testing.assert_array_equal(brats_affine(real.shape), real.affine)


def test_datalist_of_the_phantoms(phantom_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in phantom_dir.rglob("*.nii.gz")}
    datalist = brats_datalist(None, phantom_dir, num_cases=2, shape=SMALL)
    assert {p: p.stat().st_mtime_ns for p in phantom_dir.rglob("*.nii.gz")} == before  # nothing rewritten
    assert [d["case"] for d in datalist] == ["brats_000", "brats_001"]
    entry = datalist[0]
    assert entry["image"] == [str(phantom_dir / "brats_000" / f"brats_000_{m}.nii.gz") for m in BRATS_MODALITY_NAMES]
    assert entry["label"] == str(phantom_dir / "brats_000" / "brats_000_seg.nii.gz")
    assert entry["layout"] == "brats" and entry["label_convention"] == "brats2017+"
    assert entry["modalities"] == list(BRATS_MODALITY_NAMES)
    two = brats_datalist(None, phantom_dir, num_cases=2, shape=SMALL, modalities=("flair", "t1ce"))
    assert [Path(p).name for p in two[1]["image"]] == ["brats_001_flair.nii.gz", "brats_001_t1ce.nii.gz"]
    assert brats_datalist(phantom_dir, "unused") == datalist  # a real folder is indexed as it is
    assert [d["case"] for d in index_inputs(phantom_dir)] == ["brats_000", "brats_001"]  # detected as BraTS
    assert index_inputs(phantom_dir)[0]["layout"] == "brats"


def test_monai_loading_normalisation_and_stacking(phantom_dir: Path) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from transforms import NormalizeModalitiesd, StackModalitySlicesd

    entry = brats_datalist(None, phantom_dir, num_cases=2, shape=SMALL)[1]
    z = int(np.argwhere(make_brats_case(1, SMALL).label == 4)[:, 2].mean())
    pipeline = Compose([
        LoadImaged(keys=("image", "label")), EnsureChannelFirstd(keys=("image", "label")),
        NormalizeModalitiesd(keys="image"),
        StackModalitySlicesd(keys="image", index=z, label_key="label", target_key="target"),
    ])
    out = pipeline(entry)
    assert out["image"].shape == (12, SMALL[0], SMALL[1]) and out["target"].shape == (1, SMALL[0], SMALL[1])
    assert 0 < float(out["target"].sum()) < SMALL[0] * SMALL[1]


def test_generation_and_datalist_from_scratch(tmp_path: Path) -> None:
    datalist = brats_datalist("", tmp_path / "new", num_cases=1, shape=SMALL, seed=3, bias_strength=0.0)
    assert len(datalist) == 1 and all(Path(p).exists() for p in datalist[0]["image"])
    with pytest.raises(ValueError, match="other settings"):
        generate_brats_phantoms(tmp_path / "new", num_cases=1, shape=SMALL, seed=3, bias_strength=0.2, progress=False)


def test_missing_modality_is_a_layout_error(phantom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "damaged"
    generate_brats_phantoms(folder, num_cases=2, shape=SMALL, progress=False)
    os.remove(folder / "brats_001" / "brats_001_t2.nii.gz")
    with pytest.raises(LayoutError, match="lacks modality t2") as caught:
        brats_datalist(folder, tmp_path / "unused", modalities=BRATS_MODALITY_NAMES)
    assert "brats_001" in str(caught.value)
    with pytest.raises(LayoutError, match="lacks modality t2"):
        index_brats(folder)
    assert len(brats_datalist(folder, tmp_path / "unused", modalities=("flair", "t1ce"))) == 2
    with pytest.raises(ValueError, match="incomplete"):  # the generator refuses to skip a damaged case
        brats_datalist(None, folder, num_cases=2, shape=SMALL)
    generate_brats_phantoms(folder, num_cases=2, shape=SMALL, overwrite=True, progress=False)
    assert len(index_brats(folder)) == 2


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "BraTS20_Training_001").mkdir()
    (tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="no dataset.json"):
        generate_brats_phantoms(tmp_path, num_cases=1, shape=SMALL, progress=False)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "a"), "--num-cases", "1", "--shape", *map(str, SMALL), "--no-progress"]) == 0
    assert "1 BraTS phantom cases" in capsys.readouterr().out
    assert (tmp_path / "a" / "brats_000" / "brats_000_flair.nii.gz").exists()
    assert main([str(tmp_path / "a"), "--num-cases", "1", "--shape", *map(str, SMALL), "--no-progress"]) == 0
    assert "0 written, 1 already present" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--num-cases", "1"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "b"), "--bias-strength", "2", "--no-progress"])
