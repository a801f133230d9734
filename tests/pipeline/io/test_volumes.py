"""Tests of pipeline.io.volumes: reading NIfTI/DICOM inputs with validation and writing masks in the input's
geometry."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.io import volumes
from pipeline.paths import real_data_root
from pipeline.io.volumes import (
    CaseError,
    Volume,
    clean_stale_temporaries,
    is_dicom_file,
    label_volumes_ml,
    list_dicom_series,
    pseudonym,
    read_volume,
    write_mask,
)

IDENTIFIERS = ("DOE^JOHN", "DOE", "PID-12345", "19700101", "ACC-98765")
PATIENT_FOLDER = "DOE_JOHN_PID-12345"  # a folder name that identifies the patient
UID_A = "1.2.826.0.1.3680043.2.1125.7.1001"
UID_B = "1.2.826.0.1.3680043.2.1125.7.2002"
REAL_CT = "a_liver_ct/totalsegmentator/example_ct_dicom"


# ----------------------------------------------------------------------------------------------- helpers
def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _oblique_affine() -> np.ndarray:
    """Oblique rotation, a flipped axis, non-unit anisotropic spacing and an offset origin."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.3, -0.2, 0.5) @ np.diag([-0.8, 1.2, 2.5])
    affine[:3, 3] = [10.5, -20.25, 33.0]
    return affine


def _permuted_affine() -> np.ndarray:
    """Axes permuted and flipped: i -> -S, j -> R, k -> -A (slightly oblique)."""
    affine = np.zeros((4, 4))
    affine[:3, :3] = _rotation(0.05, 0.0, -0.04) @ np.array([[0, 1.5, 0], [0, 0, -0.9], [-2.0, 0, 0]])
    affine[:3, 3] = [-4.0, 7.0, 12.0]
    affine[3, 3] = 1
    return affine


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _assert_same_geometry(image: sitk.Image, expected: sitk.Image, atol: float = 0.0) -> None:
    """Same size; spacing, origin, direction equal (exactly, or within ``atol`` for float32 NIfTI headers)."""
    assert image.GetSize() == expected.GetSize()
    for got, want in zip(_geometry(image)[1:], _geometry(expected)[1:]):
        if atol == 0.0:
            assert got == want
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def _hu_volume(nx: int, ny: int, nz: int) -> np.ndarray:
    """(Z, Y, X) int16 HU values spanning -1024..1975."""
    return ((np.arange(nx * ny * nz).reshape(nz, ny, nx) * 37) % 3000 - 1024).astype(np.int16)


def _dicom_series(
    folder: Path,
    hu: np.ndarray,
    uid: str,
    *,
    prefix: str = "IM",
    skip: tuple[int, ...] = (),
    origin: tuple[float, float, float] = (10.0, -20.0, 30.0),
    angle: float = 0.3,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    slice_step: float = 2.5,
) -> list[Path]:
    """Write a synthetic oblique CT series of HU values ``hu`` (Z, Y, X) with identifying tags, one file a slice.

    GDCM stores ``HU - RescaleIntercept`` (intercept -1024, slope 1) and applies the rescale when reading.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([-np.sin(angle), np.cos(angle), 0.0])
    normal = np.cross(row, col)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(hu.shape[0]):
        if k in skip:
            continue
        image = sitk.GetImageFromArray(hu[k])
        image.SetSpacing(pixel_spacing)
        position = np.asarray(origin) + k * slice_step * normal
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0050": "ACC-98765",
            "0008|0060": "CT",
            "0010|0010": "DOE^JOHN",
            "0010|0020": "PID-12345",
            "0010|0030": "19700101",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7.1",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0018|0050": str(slice_step),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    return files


def _plain_series_image(folder: Path, uid: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def _assert_no_identifiers(*texts: str) -> None:
    for text in texts:
        for secret in (*IDENTIFIERS, PATIENT_FOLDER):
            assert secret not in text, f"{secret!r} leaked into {text!r}"


# -------------------------------------------------------------------------------------------------- NIfTI
def test_nifti_round_trip_keeps_values_affine_and_geometry(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal((5, 6, 7)).astype(np.float32)
    source = _nifti(tmp_path / "case_017.nii.gz", data, _oblique_affine())

    volume = read_volume(source)
    assert (volume.kind, volume.case, volume.source, volume.series_uid) == ("nifti", "case_017", str(source), None)
    assert volume.array.dtype == np.float32 and volume.array.shape == (5, 6, 7) == volume.shape
    np.testing.assert_array_equal(volume.array, data)
    np.testing.assert_allclose(volume.affine, nib.load(str(source)).affine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, [0.8, 1.2, 2.5], atol=1e-6)
    assert "case_017" in repr(volume) and "array" not in repr(volume)

    mask = (data > 0.3).astype(np.uint8) + (data > 1.0)
    written = write_mask(mask, volume, tmp_path / "out" / "nested" / "case_017.nii.gz")
    assert written == tmp_path / "out" / "nested" / "case_017.nii.gz"
    # in memory the geometry is copied exactly; a NIfTI file stores it in float32
    _assert_same_geometry(sitk.ReadImage(str(written)), sitk.ReadImage(str(source)), atol=1e-6)
    back = nib.load(str(written))
    assert back.shape == data.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, nib.load(str(source)).affine, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask)
    assert sorted(p.name for p in written.parent.iterdir()) == ["case_017.nii.gz"]  # no temporary left

    exact = write_mask(mask, volume, tmp_path / "case_017.mha")  # double-precision header: bit-exact geometry
    _assert_same_geometry(sitk.ReadImage(str(exact)), sitk.ReadImage(str(source)))


@pytest.mark.parametrize("affine", [_oblique_affine(), _permuted_affine()], ids=["oblique", "permuted"])
def test_to_ras_matches_nibabel_canonical_and_from_ras_inverts_it(tmp_path: Path, affine: np.ndarray) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    source = _nifti(tmp_path / "ras.nii", data, affine)
    volume = read_volume(source)

    canonical = nib.as_closest_canonical(nib.load(str(source)))
    ras = volume.to_ras()
    assert ras.flags["C_CONTIGUOUS"] and not np.shares_memory(ras, volume.array)
    np.testing.assert_array_equal(ras, np.asarray(canonical.dataobj))
    np.testing.assert_allclose(volume.ras_affine, canonical.affine, rtol=0, atol=1e-4)
    assert nib.aff2axcodes(volume.ras_affine) == ("R", "A", "S")

    np.testing.assert_array_equal(volume.from_ras(ras), data)
    labels = (data.astype(np.int64) % 3).astype(np.uint8)
    np.testing.assert_array_equal(volume.from_ras(volume.to_ras(labels)), labels)
    with_channels = np.stack([data, -data], axis=-1)  # trailing axes are carried along
    np.testing.assert_array_equal(volume.from_ras(volume.to_ras(with_channels)), with_channels)
    with pytest.raises(ValueError, match="shape"):
        volume.to_ras(np.zeros((4, 5, 7)))
    if ras.shape != data.shape:
        with pytest.raises(ValueError, match="RAS shape"):
            volume.from_ras(data)


def test_4d_with_singleton_axis_is_squeezed_and_larger_4d_rejected(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((4, 5, 6, 1)).astype(np.float32)
    volume = read_volume(_nifti(tmp_path / "t1.nii.gz", data, _oblique_affine()))
    assert volume.shape == (4, 5, 6)
    np.testing.assert_array_equal(volume.array, data[..., 0])
    with pytest.raises(CaseError, match=r"t2\.nii\.gz.*4D.*expected a 3D"):
        read_volume(_nifti(tmp_path / "t2.nii.gz", np.zeros((4, 5, 6, 2), np.float32), np.eye(4)))


# -------------------------------------------------------------------------------------------------- DICOM
def test_dicom_series_reads_hu_with_pseudonym_and_no_identifiers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pipeline.io.volumes")
    folder = tmp_path / PATIENT_FOLDER
    hu = _hu_volume(6, 5, 4)
    files = _dicom_series(folder, hu, UID_A)
    assert all(is_dicom_file(f) for f in files) and not is_dicom_file(tmp_path) and not is_dicom_file(tmp_path / "x")

    # GDCM stored HU - intercept: reading gives HU back only because the rescale is applied
    stored = np.frombuffer(files[0].read_bytes()[-hu[0].size * 2 :], dtype="<i2").reshape(hu[0].shape)
    np.testing.assert_array_equal(stored, hu[0].astype(np.int32) + 1024)

    volume = read_volume(folder)
    assert (volume.kind, volume.series_uid, volume.source) == ("dicom", UID_A, str(folder))
    assert volume.case == pseudonym(UID_A) and volume.case.startswith("dcm-") and len(volume.case) == 16
    np.testing.assert_array_equal(volume.array, hu.transpose(2, 1, 0).astype(np.float32))
    plain = _plain_series_image(folder, UID_A)
    assert volume.reference.GetSize() == (6, 5, 4)
    _assert_same_geometry(volume.reference, plain)
    assert volume.reference.GetMetaDataKeys() == ()  # no DICOM header kept
    np.testing.assert_allclose(volume.spacing, (0.7, 0.8, 2.5), atol=1e-6)

    from_file = read_volume(files[2])  # one file of the series reads the whole series
    assert from_file.case == volume.case and from_file.shape == volume.shape

    series = list_dicom_series(tmp_path)
    assert [(s.uid, s.num_slices, s.pseudonym) for s in series] == [(UID_A, 4, pseudonym(UID_A))]
    assert series[0].files == [str(f) for f in files]
    _assert_no_identifiers(volume.case, repr(volume), repr(series), *(r.getMessage() for r in caplog.records))

    mask = (volume.array > 0).astype(np.uint8)
    written = write_mask(mask, volume, tmp_path / "masks" / f"{volume.case}.nii.gz")
    _assert_same_geometry(sitk.ReadImage(str(written)), plain, atol=1e-6)
    exact = write_mask(mask, volume, tmp_path / "masks" / f"{volume.case}.mha")
    _assert_same_geometry(sitk.ReadImage(str(exact)), plain)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(exact))), mask.transpose(2, 1, 0))
    _assert_no_identifiers(*(r.getMessage() for r in caplog.records))


def test_two_dicom_series_need_series_uid(tmp_path: Path) -> None:
    folder = tmp_path / PATIENT_FOLDER
    _dicom_series(folder, _hu_volume(6, 5, 4), UID_A, prefix="A")
    files_b = _dicom_series(folder, _hu_volume(6, 5, 3) + 7, UID_B, prefix="B", origin=(0.0, 0.0, 0.0), angle=0.0)

    with pytest.raises(CaseError) as info:
        read_volume(folder)
    message = str(info.value)
    assert pseudonym(UID_A) in message and pseudonym(UID_B) in message and "series_uid" in message
    assert "\n" not in message
    _assert_no_identifiers(message)

    volume_b = read_volume(folder, series_uid=UID_B)
    assert volume_b.shape == (6, 5, 3) and volume_b.case == pseudonym(UID_B) and volume_b.series_uid == UID_B
    np.testing.assert_array_equal(volume_b.array, (_hu_volume(6, 5, 3) + 7).transpose(2, 1, 0))
    assert read_volume(folder, series_uid=pseudonym(UID_A)).shape == (6, 5, 4)  # the pseudonym selects too
    assert read_volume(files_b[0]).case == pseudonym(UID_B)  # a file picks its own series

    with pytest.raises(CaseError, match="no series") as info:
        read_volume(folder, series_uid="1.2.3.4")
    _assert_no_identifiers(str(info.value))

    identified = read_volume(folder, series_uid=UID_B, identify=True)
    assert identified.case == f"{PATIENT_FOLDER}_{pseudonym(UID_B)}" and str(folder) in repr(identified)
    with pytest.raises(CaseError, match=PATIENT_FOLDER):
        read_volume(folder, identify=True)


def test_dicom_series_with_missing_slice_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / PATIENT_FOLDER
    _dicom_series(folder, _hu_volume(6, 5, 5), UID_A, skip=(2,))
    with pytest.raises(CaseError, match="regular grid") as info:
        read_volume(folder)
    assert pseudonym(UID_A) in str(info.value)
    _assert_no_identifiers(str(info.value))


def test_dicom_errors_hide_paths_unless_identify(tmp_path: Path) -> None:
    missing = tmp_path / PATIENT_FOLDER
    with pytest.raises(CaseError, match="not found") as info:
        read_volume(missing)
    _assert_no_identifiers(str(info.value))
    with pytest.raises(CaseError, match=PATIENT_FOLDER):
        read_volume(missing, identify=True)

    empty = tmp_path / "empty" / PATIENT_FOLDER
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    _nifti(empty / "scan.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(CaseError, match="no DICOM series") as info:
        read_volume(empty)
    _assert_no_identifiers(str(info.value))
    assert list_dicom_series(empty) == [] and list_dicom_series(tmp_path / "nowhere") == []
    with pytest.raises(CaseError, match=f"{PATIENT_FOLDER}.*no DICOM series"):
        read_volume(empty, identify=True)

    garbage = tmp_path / "DOE_JOHN"  # no suffix: could be a DICOM file, so its name stays out of the message
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CaseError, match="unreadable") as info:
        read_volume(garbage)
    _assert_no_identifiers(str(info.value))


# ------------------------------------------------------------------------------------------- validation
def test_truncated_and_corrupt_nifti_fail_at_read_time(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((20, 20, 20)).astype(np.float32)
    full = _nifti(tmp_path / "full.nii.gz", data, np.eye(4)).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(CaseError, match=r"truncated\.nii\.gz.*(truncated|corrupt)"):
        read_volume(truncated)

    corrupt = bytearray(full)
    middle = slice(len(full) // 2, len(full) // 2 + 40)
    corrupt[middle] = bytes(b ^ 0xFF for b in corrupt[middle])
    (tmp_path / "corrupt.nii.gz").write_bytes(bytes(corrupt))
    with pytest.raises(CaseError, match=r"corrupt\.nii\.gz"):
        read_volume(tmp_path / "corrupt.nii.gz")

    plain = _nifti(tmp_path / "plain.nii", data, np.eye(4)).read_bytes()
    (tmp_path / "short.nii").write_bytes(plain[: len(plain) - 100])
    with pytest.raises(CaseError, match=r"short\.nii: truncated"):
        read_volume(tmp_path / "short.nii")

    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 40))
    with pytest.raises(CaseError, match=r"junk\.nii\.gz"):
        read_volume(tmp_path / "junk.nii.gz")


def test_invalid_inputs_raise_case_errors_naming_the_file(tmp_path: Path) -> None:
    flat = _nifti(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.float32), np.eye(4))
    with pytest.raises(CaseError, match=r"flat\.nii\.gz.*2D.*3D"):
        read_volume(flat)

    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, :3] = np.nan
    data[1, 2, 3] = np.inf
    with pytest.raises(CaseError, match=r"nan\.nii\.gz: 4 of 64 voxels are NaN or Inf"):
        read_volume(_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))

    with pytest.raises(CaseError, match=r"absent\.nii\.gz: not found"):
        read_volume(tmp_path / "absent.nii.gz")

    # no orientation at all: SimpleITK and nibabel place the voxels differently
    image = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None)
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    nib.save(image, str(tmp_path / "unoriented.nii.gz"))
    with pytest.raises(CaseError, match=r"unoriented\.nii\.gz.*disagree"):
        read_volume(tmp_path / "unoriented.nii.gz")

    assert isinstance(CaseError("x"), ValueError)


def test_other_itk_formats_are_read(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((3, 4, 5)).astype(np.float32)
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())
    image.SetSpacing((0.5, 0.6, 0.7))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    volume = read_volume(tmp_path / "scan.nrrd")
    assert (volume.kind, volume.case) == ("itk", "scan")
    np.testing.assert_array_equal(volume.array, data)
    np.testing.assert_allclose(volume.affine[:3, 3], [-1.0, -2.0, 3.0])  # LPS origin -> RAS
    np.testing.assert_allclose(np.diag(volume.affine)[:3], [-0.5, -0.6, 0.7])

    data[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(data.transpose(2, 1, 0).copy()), str(tmp_path / "nan.mha"))
    with pytest.raises(CaseError, match=r"nan\.mha: 1 of 60 voxels are NaN"):
        read_volume(tmp_path / "nan.mha")


# ------------------------------------------------------------------------------------------- write_mask
def test_write_mask_refuses_overwrite_checks_shape_and_cleans_temporaries(tmp_path: Path, monkeypatch) -> None:
    volume = read_volume(_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), _oblique_affine()))
    out = tmp_path / "masks" / "img.nii.gz"
    first = np.zeros((4, 5, 6), np.uint8)
    write_mask(first, volume, out)
    before = out.read_bytes()

    second = np.ones((4, 5, 6), bool)
    with pytest.raises(FileExistsError, match=r"img\.nii\.gz"):
        write_mask(second, volume, out)
    assert out.read_bytes() == before
    write_mask(second, volume, out, overwrite=True)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), second.astype(np.uint8))
    write_mask(np.full((4, 5, 6), 300), volume, tmp_path / "wide.nii.gz", dtype=np.int16)
    assert nib.load(str(tmp_path / "wide.nii.gz")).get_data_dtype() == np.int16

    with pytest.raises(ValueError, match=r"shape \(6, 5, 4\)"):
        write_mask(np.zeros((6, 5, 4), np.uint8), volume, tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="uint8"):
        write_mask(np.full((4, 5, 6), 300), volume, tmp_path / "overflow.nii.gz")
    with pytest.raises(ValueError, match="unsupported"):
        write_mask(first, volume, tmp_path / "mask.png")

    def crash(image: sitk.Image, name: str, *args, **kwargs) -> None:
        Path(name).write_bytes(b"partial")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(volumes.sitk, "WriteImage", crash)
    with pytest.raises(KeyboardInterrupt):
        write_mask(first, volume, tmp_path / "masks" / "crashed.nii.gz")
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.iterdir()) == ["img.nii.gz"]

    stale = out.parent / ".crashed.nii.gz.tmp-0123456789ab.nii.gz"
    stale.write_bytes(b"partial")
    keep = [out.parent / ".hidden", out.parent / "other.tmp-0123456789ab.nii.gz"]
    for path in keep:
        path.write_bytes(b"x")
    assert clean_stale_temporaries(out.parent, min_age_s=3600) == []
    assert clean_stale_temporaries(out.parent) == [stale]
    assert not stale.exists() and all(p.exists() for p in keep)
    assert clean_stale_temporaries(tmp_path / "nowhere") == []


# ------------------------------------------------------------------------------------------- measures
def test_label_volumes_ml_hand_computed() -> None:
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, :4] = 1  # 4 voxels
    mask[1, 1, 1] = 1  # 5th voxel of label 1
    mask[3, 3, 2:4] = 3  # 2 voxels
    spacing = (2.0, 2.5, 4.0)  # 20 mm^3 = 0.02 mL per voxel
    assert label_volumes_ml(mask, spacing) == pytest.approx({1: 0.1, 3: 0.04})
    assert label_volumes_ml(mask, spacing, labels=[1, 2]) == pytest.approx({1: 0.1, 2: 0.0})
    assert label_volumes_ml(np.zeros((2, 2, 2)), spacing) == {}
    with pytest.raises(ValueError, match="spacing"):
        label_volumes_ml(mask, (1.0, 1.0))


def test_pseudonym_is_stable_and_documented_form() -> None:
    assert pseudonym(UID_A) == pseudonym(UID_A + " ") == pseudonym(UID_A + "\x00")
    assert pseudonym(UID_A) != pseudonym(UID_B)
    assert pseudonym("1.2.3") == "dcm-" + hashlib.sha256(b"1.2.3").hexdigest()[:12]
    assert volumes.__all__ and set(volumes.__all__) <= set(dir(volumes)) and Volume.__name__ in volumes.__all__


# ------------------------------------------------------------------------------------------- real data
def test_real_ct_dicom_series() -> None:
    folder = real_data_root() / REAL_CT
    if not folder.is_dir():
        pytest.skip(f"real CT DICOM sample not found at {folder} (set VARSEG_REAL_DATA to the real data folder)")
    volume = read_volume(folder)
    assert volume.kind == "dicom" and volume.shape == (512, 512, 20) and volume.array.dtype == np.float32
    assert volume.case.startswith("dcm-")
    assert -1030 <= float(volume.array.min()) <= -1000 and float(volume.array.max()) > 1000  # HU, rescale applied

    uid = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))[0]
    plain = _plain_series_image(folder, uid)
    _assert_same_geometry(volume.reference, plain)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(plain).transpose(2, 1, 0))


def test_mean_slice_shape_follows_the_ras_slices_monai_trains_on(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    from pipeline.io.volumes import mean_slice_shape

    permuted = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])  # voxel axes (z, x, y)
    nib.save(nib.Nifti1Image(np.zeros((10, 20, 30), np.float32), permuted), str(tmp_path / "a.nii.gz"))
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                    Orientationd("image", axcodes="RAS")])
    ras = tuple(load({"image": str(tmp_path / "a.nii.gz")})["image"].shape[1:3])
    assert mean_slice_shape([{"image": str(tmp_path / "a.nii.gz")}]) == ras == (20, 30)
    # equal sizes give the size itself (integers); different sizes the mean weighted by the number of slices
    nib.save(nib.Nifti1Image(np.zeros((8, 12, 1), np.float32), np.eye(4)), str(tmp_path / "b.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 24, 3), np.float32), np.eye(4)), str(tmp_path / "c.nii.gz"))
    assert mean_slice_shape([{"image": [str(tmp_path / "b.nii.gz")]}] * 2) == (8, 12)
    mean = mean_slice_shape([{"image": str(tmp_path / "b.nii.gz")}, {"image": str(tmp_path / "c.nii.gz")}])
    assert mean == pytest.approx((14.0, 21.0))  # (8*1 + 16*3) / 4, (12*1 + 24*3) / 4
    with pytest.raises(ValueError, match="at least one"):
        mean_slice_shape([])
