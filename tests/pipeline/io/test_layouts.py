"""Input layout indexers: single files, folders, JSON datalists, DICOM series, LiTS, Learn2Reg, BraTS, bone SPECT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.io.layouts import (
    LAYOUTS,
    LayoutError,
    brats_modalities_available,
    index_brats,
    index_dicom,
    index_inputs,
    index_msd,
    index_nifti_folder,
)
from pipeline.paths import real_data_root

PATIENT_NAME, PATIENT_ID = "DOE^JOHN", "PID-778899"


def _nifti(path: Path, value: int = 0) -> Path:
    """Write a 4x4x4 NIfTI (any ``.nii``/``.nii.gz`` name); parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), value, np.int16), np.eye(4)), path)
    return path


def _mha(path: Path) -> Path:
    """Write a 4x4x4 MetaImage; parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path))
    return path


def _dicom_series(folder: Path, series_uid: str, slices: int = 3, prefix: str = "IM") -> list[Path]:
    """Write a tiny CT series (4x4 pixels, ``slices`` slices) of patient DOE^JOHN with SimpleITK."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    paths = []
    for i in range(slices):
        image = sitk.GetImageFromArray(np.full((4, 4), 10 * i, np.int16))
        image.SetSpacing((1.0, 1.0))
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{i + 1}",
            "0010|0010": PATIENT_NAME, "0010|0020": PATIENT_ID, "0020|000d": study_uid, "0020|000e": series_uid,
            "0020|0013": str(i + 1), "0020|0032": f"0\\0\\{2.0 * i}", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": "2.0",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"{prefix}{i:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def _values(datalist: list[dict[str, Any]]) -> str:
    """Every value of every entry as one string (to look for leaked identifiers)."""
    return json.dumps(datalist)


def _assert_entries(datalist: list[dict[str, Any]], layout: str) -> None:
    """Common checks: absolute existing paths, unique case names, the layout tag."""
    assert len({e["case"] for e in datalist}) == len(datalist)
    for entry in datalist:
        assert entry["layout"] == layout
        assert entry["kind"] in ("nifti", "dicom", "itk")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        for path in [*images, *([entry["label"]] if "label" in entry else [])]:
            assert Path(path).is_absolute() and Path(path).exists(), path


# ---------------------------------------------------------------------------------------------- files, folders


def test_single_files(tmp_path: Path) -> None:
    nii, mha = _nifti(tmp_path / "ct scan.nii.gz"), _mha(tmp_path / "other.mha")
    for layout in ("auto", "file"):
        (entry,) = index_inputs(nii, layout)
        assert entry == {"case": "ct scan", "image": str(nii), "kind": "nifti", "layout": "file"}
    (entry,) = index_inputs(mha)
    assert (entry["case"], entry["kind"]) == ("other", "itk")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(LayoutError, match="notes.txt"):
        index_inputs(text)
    with pytest.raises(LayoutError, match="does not exist"):
        index_inputs(tmp_path / "absent.nii.gz")
    with pytest.raises(LayoutError, match="needs a file"):
        index_inputs(tmp_path, "file")
    with pytest.raises(ValueError, match="layout must be one of"):
        index_inputs(nii, "nnunet")


def test_plain_folder(tmp_path: Path) -> None:
    for name in ("b.nii", "a.nii.gz", "c.mha"):
        _nifti(tmp_path / name) if name.endswith((".nii", ".nii.gz")) else _mha(tmp_path / name)
    (tmp_path / "readme.txt").write_text("not an image")
    _nifti(tmp_path / "sub" / "d.nii.gz")
    for layout in ("auto", "folder"):
        datalist = index_inputs(tmp_path, layout)
        assert [e["case"] for e in datalist] == ["a", "b", "c"]
        assert [e["kind"] for e in datalist] == ["nifti", "nifti", "itk"]
        _assert_entries(datalist, "folder")
    assert [e["case"] for e in index_nifti_folder(tmp_path, recursive=True)] == ["a", "b", "c", "sub_d"]
    with pytest.raises(LayoutError, match="no labels"):
        index_inputs(tmp_path, require_labels=True)
    with pytest.raises(LayoutError, match="one image per case"):
        index_inputs(tmp_path, modalities=("flair",))


def test_empty_folder_error(tmp_path: Path) -> None:
    with pytest.raises(LayoutError) as err:
        index_inputs(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "empty" in message
    for looked_for in ("Learn2Reg", "dataset.json", "LiTS", "BraTS", "DICOM", ".nii.gz"):
        assert looked_for in message
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match=r"found: notes\.txt"):
        index_inputs(tmp_path)
    with pytest.raises(LayoutError, match="no image files"):
        index_nifti_folder(tmp_path)


def test_duplicate_case_error(tmp_path: Path) -> None:
    _nifti(tmp_path / "case1.nii")
    _nifti(tmp_path / "case1.nii.gz")
    with pytest.raises(LayoutError, match="case 'case1' appears twice"):
        index_inputs(tmp_path)


# ---------------------------------------------------------------------------------------------- JSON datalists


def _msd(root: Path) -> Path:
    """A small MSD task: two labelled training cases and one test case."""
    for case in ("la_003", "la_004"):
        _nifti(root / "imagesTr" / f"{case}.nii.gz")
        _nifti(root / "labelsTr" / f"{case}.nii.gz")
    _nifti(root / "imagesTs" / "la_001.nii.gz")
    content = {
        "name": "LeftAtrium", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ("la_003", "la_004")],
        "test": ["./imagesTs/la_001.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(content))
    return root / "dataset.json"


def test_msd_dataset_json(tmp_path: Path) -> None:
    dataset = _msd(tmp_path)
    for source, layout in ((tmp_path, "auto"), (dataset, "auto"), (tmp_path, "msd"), (dataset, "datalist")):
        datalist = index_inputs(source, layout)
        assert [e["case"] for e in datalist] == ["la_003", "la_004", "la_001"]
        assert datalist[0]["label"] == str(tmp_path / "labelsTr" / "la_003.nii.gz")
        assert "label" not in datalist[2]
        _assert_entries(datalist, "msd")
    assert [e["case"] for e in index_inputs(tmp_path, require_labels=True)] == ["la_003", "la_004"]
    assert [e["case"] for e in index_msd(dataset)] == ["la_003", "la_004"]
    assert [e["case"] for e in index_msd(dataset, split="test")] == ["la_001"]
    assert len(index_msd(tmp_path, split="all")) == 3
    with pytest.raises(LayoutError, match="no label"):
        index_msd(dataset, split="all", require_labels=True)
    with pytest.raises(LayoutError, match="lists no case"):
        index_msd(dataset, split="validation")
    with pytest.raises(ValueError, match="split must be"):
        index_msd(dataset, split="train")


def test_msd_multimodal_channels(tmp_path: Path) -> None:
    _nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz")
    _nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz")
    content = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
               "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
               "test": []}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    (entry,) = index_inputs(tmp_path, modalities=("t1c", "FLAIR"))
    assert (entry["channels"], entry["modalities"]) == ([2, 0], ["t1ce", "flair"])
    content["modality"] = {"0": "FLAIR"}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(LayoutError, match="lacks modality t1ce"):
        index_inputs(tmp_path, modalities=("t1ce", "flair"))


def test_nnunet_v2_dataset_json(tmp_path: Path) -> None:
    for case in ("c1", "c2"):
        for channel in (0, 1):
            _nifti(tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        _nifti(tmp_path / "labelsTr" / f"{case}.nii.gz")
    content = {"channel_names": {"0": "T2", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1},
               "numTraining": 2, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    datalist = index_inputs(tmp_path)
    assert [e["case"] for e in datalist] == ["c1", "c2"]
    assert [Path(p).name for p in datalist[0]["image"]] == ["c1_0000.nii.gz", "c1_0001.nii.gz"]
    _assert_entries(datalist, "msd")
    (entry, _) = index_inputs(tmp_path, modalities=("flair", "t2"), require_labels=True)
    assert [Path(p).name for p in entry["image"]] == ["c1_0001.nii.gz", "c1_0000.nii.gz"]


def test_plain_json_list(tmp_path: Path) -> None:
    _nifti(tmp_path / "data" / "img1.nii.gz")
    _nifti(tmp_path / "data" / "lab1.nii.gz")
    absolute = _nifti(tmp_path / "elsewhere" / "img2.nii")
    listing = tmp_path / "lists" / "cases.json"
    listing.parent.mkdir()
    listing.write_text(json.dumps([
        {"image": "../data/img1.nii.gz", "label": "../data/lab1.nii.gz", "fold": 1},
        {"image": str(absolute), "case": "second"},
    ]))
    for layout in ("auto", "datalist"):
        datalist = index_inputs(listing, layout)
        assert [e["case"] for e in datalist] == ["img1", "second"]
        assert datalist[0]["label"] == str(tmp_path / "data" / "lab1.nii.gz")
        assert datalist[0]["fold"] == 1
        _assert_entries(datalist, "datalist")
    with pytest.raises(LayoutError, match="1 case"):
        index_inputs(listing, require_labels=True)
    with pytest.raises(LayoutError, match="needs a JSON file"):
        index_inputs(tmp_path, "datalist")


def test_json_missing_file_and_duplicates(tmp_path: Path) -> None:
    _nifti(tmp_path / "a.nii.gz")
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"image": "a.nii.gz", "label": "missing_label.nii.gz"}]))
    with pytest.raises(LayoutError) as err:
        index_inputs(listing)
    assert str(tmp_path / "missing_label.nii.gz") in str(err.value) and str(listing) in str(err.value)
    listing.write_text(json.dumps([{"image": "a.nii.gz"}, {"image": "./a.nii.gz"}]))
    with pytest.raises(LayoutError, match="case 'a' appears twice"):
        index_inputs(listing)
    listing.write_text("{not json")
    with pytest.raises(LayoutError, match="cannot read"):
        index_inputs(listing)


# ---------------------------------------------------------------------------------------------- LiTS, Learn2Reg, SPECT


def test_lits_layout(tmp_path: Path) -> None:
    for n in (3, 1):
        _nifti(tmp_path / "Training Batch 1" / f"volume-{n}.nii")
        _nifti(tmp_path / "Training Batch 1" / f"segmentation-{n}.nii")
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "LiTS phantoms", "cases": [1, 3]}))
    for layout in ("auto", "lits"):
        datalist = index_inputs(tmp_path, layout)
        assert [e["case"] for e in datalist] == ["volume-1", "volume-3"]
        assert all(e["kind"] == "nifti" and "label" in e for e in datalist)
        _assert_entries(datalist, "lits")


def test_learn2reg_layout(tmp_path: Path) -> None:
    for case in ("lung_001", "lung_002"):
        _nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _nifti(tmp_path / "masksTr" / f"{case}_0000.nii.gz")
    _nifti(tmp_path / "imagesTr" / "lung_001_0001.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/lung_001_0000.nii.gz",
                                                                     "mask": "./masksTr/lung_001_0000.nii.gz"}]}))
    for layout in ("auto", "learn2reg"):
        datalist = index_inputs(tmp_path, layout, require_labels=True)
        assert [e["case"] for e in datalist] == ["lung_001", "lung_002"]
        _assert_entries(datalist, "learn2reg")


def test_spect_layout(tmp_path: Path) -> None:
    _nifti(tmp_path / "case-0" / "recon_osem5.nii.gz")
    _nifti(tmp_path / "case-0" / "bone.nii.gz")
    for layout in ("auto", "spect"):
        (entry,) = index_inputs(tmp_path, layout)
        assert entry["case"] == "case-0" and entry["label"].endswith("bone.nii.gz")
        _assert_entries([entry], "spect")


# ---------------------------------------------------------------------------------------------- BraTS


def _brats2020(root: Path, case: str, roles: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "seg"),
               ext: str = ".nii.gz") -> None:
    for role in roles:
        _nifti(root / case / f"{case}_{role}{ext}")


def test_brats_2018_2021_naming(tmp_path: Path) -> None:
    _brats2020(tmp_path / "HGG", "Brats18_TCIA_001_1")
    _brats2020(tmp_path / "LGG", "Brats18_TCIA_002_1", ext=".nii")
    for layout in ("auto", "brats"):
        datalist = index_inputs(tmp_path, layout)
        assert [e["case"] for e in datalist] == ["Brats18_TCIA_001_1", "Brats18_TCIA_002_1"]
        _assert_entries(datalist, "brats")
    entry = index_brats(tmp_path)[0]
    assert entry["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert [Path(p).name.split("_")[-1] for p in entry["image"]] == ["t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz",
                                                                     "flair.nii.gz"]
    assert entry["label"].endswith("_seg.nii.gz") and entry["label_convention"] == "brats2017+"
    entry = index_brats(tmp_path, modalities=("T2F", "t1c"))[0]
    assert entry["modalities"] == ["flair", "t1ce"]
    assert [Path(p).name for p in entry["image"]] == ["Brats18_TCIA_001_1_flair.nii.gz",
                                                      "Brats18_TCIA_001_1_t1ce.nii.gz"]
    with pytest.raises(ValueError, match="unknown modality"):
        index_brats(tmp_path, modalities=("dwi",))
    with pytest.raises(ValueError, match="twice"):
        index_brats(tmp_path, modalities=("flair", "t2f"))


def test_brats_2023_naming(tmp_path: Path) -> None:
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"):
        for role in ("t1n", "t1c", "t2w", "t2f", "seg"):
            _nifti(tmp_path / "Training" / case / f"{case}-{role}.nii.gz")
    for layout in ("auto", "brats"):
        datalist = index_inputs(tmp_path, layout, modalities=("t1", "t1ce", "t2", "flair"), require_labels=True)
        assert [e["case"] for e in datalist] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
        assert [Path(p).name[-10:] for p in datalist[0]["image"]] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz",
                                                                      "t2f.nii.gz"]
        assert datalist[0]["label_convention"] == "brats2023"
        _assert_entries(datalist, "brats")


def test_brats_2015_naming(tmp_path: Path) -> None:
    case = tmp_path / "BRATS2015_Training" / "HGG" / "brats_2013_pat0001_1"
    for role, number in (("MR_Flair", 54512), ("MR_T1", 54513), ("MR_T1c", 54514), ("MR_T2", 54515)):
        name = f"VSD.Brain.XX.O.{role}.{number}"
        _mha(case / name / f"{name}.mha")
    label = "VSD.Brain_3more.XX.O.OT.54517"
    _mha(case / label / f"{label}.mha")
    for layout in ("auto", "brats"):
        (entry,) = index_inputs(tmp_path, layout, modalities=("flair", "t1", "t1ce", "t2"))
        assert entry["case"] == "brats_2013_pat0001_1"
        assert [Path(p).name.split(".")[4] for p in entry["image"]] == ["MR_Flair", "MR_T1", "MR_T1c", "MR_T2"]
        assert Path(entry["label"]).name == f"{label}.mha"
        assert (entry["kind"], entry["label_convention"]) == ("itk", "brats2015")
        _assert_entries([entry], "brats")


def _deepmedic(root: Path, case: str, modalities: tuple[str, ...] = ("Flair", "T1c")) -> Path:
    for name in modalities:
        _nifti(root / case / f"{name}_subtrMeanDivStd.nii.gz")
    _nifti(root / case / "OTMultiClass.nii.gz")
    _nifti(root / case / "brainmask.nii.gz")
    return root / case


def test_brats_deepmedic_copy_and_missing_modality(tmp_path: Path) -> None:
    _deepmedic(tmp_path, "brats_2013_pat0001_1", ("Flair", "T1c", "T1", "T2"))
    second = _deepmedic(tmp_path, "brats_2013_pat0002_1")
    assert brats_modalities_available(tmp_path) == {"brats_2013_pat0001_1": ["t1", "t1ce", "t2", "flair"],
                                                     "brats_2013_pat0002_1": ["t1ce", "flair"]}
    with pytest.raises(LayoutError) as err:
        index_brats(tmp_path)
    message = str(err.value)
    assert str(second) in message and "lacks modality t1, t2" in message and "found t1ce, flair" in message
    for layout in ("auto", "brats"):
        datalist = index_inputs(tmp_path, layout, modalities=("flair", "t1ce"))
        assert [Path(p).name for p in datalist[1]["image"]] == ["Flair_subtrMeanDivStd.nii.gz",
                                                                "T1c_subtrMeanDivStd.nii.gz"]
        assert datalist[1]["mask"] == str(second / "brainmask.nii.gz")
        assert datalist[1]["label"] == str(second / "OTMultiClass.nii.gz")
        assert datalist[1]["label_convention"] == "brats2015"
        _assert_entries(datalist, "brats")
    # without modalities, the ones every case has
    assert index_inputs(tmp_path)[0]["modalities"] == ["t1ce", "flair"]


def test_brats_errors(tmp_path: Path) -> None:
    _brats2020(tmp_path / "Training", "BraTS20_Training_001")
    _brats2020(tmp_path / "copy", "BraTS20_Training_001")
    with pytest.raises(LayoutError, match="'BraTS20_Training_001' appears twice"):
        index_brats(tmp_path)
    unlabelled = tmp_path / "other"
    _brats2020(unlabelled, "BraTS20_Validation_001", ("t1", "t1ce", "t2", "flair"))
    with pytest.raises(LayoutError, match="has no label"):
        index_brats(unlabelled)
    assert "label" not in index_brats(unlabelled, require_labels=False)[0]
    assert "label" not in index_inputs(unlabelled)[0]
    with pytest.raises(LayoutError, match="no BraTS cases"):
        index_brats(_nifti(tmp_path / "plain" / "x.nii.gz").parent)


# ---------------------------------------------------------------------------------------------- DICOM


@pytest.fixture()
def dicom_folder(tmp_path: Path) -> Path:
    """Two 3-slice CT series of patient DOE^JOHN in sub-folders ``scan_a`` and ``scan_b`` of ``exam``."""
    root = tmp_path / "exam"
    _dicom_series(root / "scan_a", "1.2.826.0.1.3680043.8.498.11")
    _dicom_series(root / "scan_b", "1.2.826.0.1.3680043.8.498.22")
    return root


def test_dicom_folder_pseudonyms(dicom_folder: Path) -> None:
    from pipeline.io.volumes import pseudonym, read_volume

    uids = ["1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.22"]
    for layout in ("auto", "dicom"):
        datalist = index_inputs(dicom_folder, layout)
        assert [e["case"] for e in datalist] == sorted(pseudonym(u) for u in uids)
        assert all(e["series_uid"] == e["case"] for e in datalist)
        assert {Path(e["image"]).name for e in datalist} == {"scan_a", "scan_b"}
        _assert_entries(datalist, "dicom")
        assert all(e["kind"] == "dicom" for e in datalist)
        text = _values(datalist)
        for identifier in ("DOE", "JOHN", PATIENT_ID, *uids, "3680043"):
            assert identifier not in text
    identified = index_dicom(dicom_folder, identify=True)
    assert [e["case"] for e in identified] == ["scan_a_43849811", "scan_b_43849822"]
    assert [e["series_uid"] for e in identified] == uids
    assert "DOE" not in _values(identified) and PATIENT_ID not in _values(identified)
    # the entries are enough to read each series back
    for entry in index_inputs(dicom_folder):
        volume = read_volume(entry["image"], series_uid=entry["series_uid"])
        assert volume.array.shape == (4, 4, 3) and volume.case == entry["case"]


def test_dicom_series_sharing_a_folder(tmp_path: Path) -> None:
    _dicom_series(tmp_path / "mixed", "1.2.826.0.1.3680043.8.498.44")
    _dicom_series(tmp_path / "mixed", "1.2.826.0.1.3680043.8.498.55", prefix="OTHER")
    datalist = index_inputs(tmp_path / "mixed")
    assert len(datalist) == 2 and {e["image"] for e in datalist} == {str(tmp_path / "mixed")}
    assert [e["case"] for e in index_dicom(tmp_path, identify=True)] == ["mixed_43849844", "mixed_43849855"]


def test_single_dicom_file_is_its_series(dicom_folder: Path) -> None:
    _dicom_series(dicom_folder / "scan_a", "1.2.826.0.1.3680043.8.498.33", prefix="OTHER")
    first, second = dicom_folder / "scan_a" / "IM000.dcm", dicom_folder / "scan_a" / "IM001.dcm"
    for layout in ("auto", "file", "dicom"):
        assert index_inputs(second, layout) == index_inputs(first)
    (entry,) = index_inputs(dicom_folder / "scan_a" / "IM001.dcm", identify=True)
    assert entry["series_uid"] == "1.2.826.0.1.3680043.8.498.11"
    assert entry["image"] == str(dicom_folder / "scan_a") and entry["kind"] == "dicom"
    assert len(index_inputs(dicom_folder)) == 3


# ---------------------------------------------------------------------------------------------- real sample data


def test_real_brats_sample() -> None:
    root = real_data_root() / "c_brain_mr" / "deepmedic_brats2015"
    if not root.is_dir():
        pytest.skip(f"real BraTS sample not present at {root} (set VARSEG_REAL_DATA)")
    datalist = index_brats(root, modalities=("flair", "t1ce"))
    assert len(datalist) == 4
    assert all(e["modalities"] == ["flair", "t1ce"] and "mask" in e and "label" in e for e in datalist)
    assert index_inputs(root, modalities=("flair", "t1ce")) == datalist
    assert all(found == ["t1ce", "flair"] for found in brats_modalities_available(root).values())
    with pytest.raises(LayoutError, match="lacks modality t1, t2"):
        index_brats(root)


def test_real_ct_dicom_folder() -> None:
    root = real_data_root() / "a_liver_ct" / "totalsegmentator" / "example_ct_dicom"
    if not root.is_dir():
        pytest.skip(f"real CT DICOM series not present at {root} (set VARSEG_REAL_DATA)")
    (entry,) = index_inputs(root)
    assert entry["kind"] == "dicom" and entry["image"] == str(root) and entry["layout"] == "dicom"
    assert index_inputs(root, "dicom") == [entry]


def test_layout_names() -> None:
    assert LAYOUTS[:9] == ("auto", "file", "folder", "dicom", "datalist", "msd", "lits", "brats", "learn2reg")
