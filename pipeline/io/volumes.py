"""Reading input volumes (NIfTI, other ITK formats, DICOM series) for inference and writing masks in their geometry.

Every bundle reads its inference inputs through :func:`read_volume` and writes its masks through :func:`write_mask`,
so that a mask always carries exactly the geometry (size, spacing, origin, direction) that SimpleITK reads from the
input, for NIfTI files and DICOM series alike.

Conventions:

* ``Volume.array`` is float32 with shape ``(X, Y, Z)`` in the file's own voxel index order: ``array[i, j, k]`` is the
  voxel SimpleITK indexes as ``(i, j, k)`` (the array is Fortran-ordered, like nibabel's). DICOM CT values are in HU
  (GDCM applies RescaleSlope/RescaleIntercept, slice by slice).
* ``Volume.affine`` maps a voxel index ``(i, j, k)`` to RAS world millimetres (the nibabel/MONAI convention). It is
  built from SimpleITK's LPS geometry; for NIfTI files it equals nibabel's ``img.affine`` (checked at read time).
* DICOM inputs are named by a pseudonym of their SeriesInstanceUID (:func:`pseudonym`). Unless ``identify=True``, no
  patient identifier nor any folder or file name of a DICOM input appears in ``Volume.case``, in ``repr(volume)``, in
  log messages or in :class:`CaseError` messages.

Validation is done at read time, so that a bad case fails in :func:`read_volume` with a one-line :class:`CaseError`:
missing path, unreadable, corrupt or truncated file, not 3D, NaN or Inf voxels, a DICOM folder without series or with
several, irregular DICOM slice positions, and NIfTI headers on which SimpleITK and nibabel disagree about the geometry.
SimpleITK reads a truncated or corrupt ``.nii.gz`` without complaint and turns NaN/Inf NIfTI voxels into 0, so the
voxel data of NIfTI files is also scanned here as stored.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import re
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel import orientations

from pipeline.io.files import atomic_write

__all__ = [
    "CaseError",
    "DicomSeries",
    "Volume",
    "clean_stale_temporaries",
    "is_dicom_file",
    "label_volumes_ml",
    "list_dicom_series",
    "mean_slice_shape",
    "pseudonym",
    "read_nifti_array",
    "read_volume",
    "write_mask",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""Suffixes read as NIfTI (kind ``"nifti"``)."""
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".hdr", ".img", ".vtk", ".gipl", ".gipl.gz", ".tif", ".tiff")
"""Other single-image suffixes read with SimpleITK (kind ``"itk"``)."""
WRITE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
"""Mask formats :func:`write_mask` writes: single-file formats only, so that the final rename is atomic."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_CASE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl.gz")
_TEMP_RE = re.compile(r"^\.(?P<final>.+)\.tmp-[0-9a-f]{12}(?P<ext>\.nii\.gz|\.nii|\.mha|\.nrrd)$")
_DICOM_LIKE_SUFFIXES = ("", ".dcm", ".ima", ".dicom")
_GEOMETRY_ATOL = 1e-3  # mm; SimpleITK vs nibabel NIfTI affines (float32 headers)


class CaseError(ValueError):
    """A problem with one input case.

    ``str(err)`` is one line naming the file (or, for DICOM, the series pseudonym and, with ``identify=True``, the
    folder) and the problem.
    """


# ----------------------------------------------------------------------------------------------------------- Volume
@dataclass(eq=False, repr=False)
class Volume:
    """One input volume and the geometry its masks must be written with.

    Attributes:
        array: float32 voxel values, shape ``(X, Y, Z)`` in the file's voxel index order (SimpleITK index
            ``(i, j, k)``); CT DICOM in HU.
        affine: 4x4 float64 matrix from voxel index ``(i, j, k)`` to RAS world millimetres.
        reference: a SimpleITK image (uint8, zero-filled, no metadata) with the size, spacing, origin and direction of
            the input as SimpleITK reads it; :func:`write_mask` copies its geometry.
        source: path of the file or DICOM folder read.
        case: case id: the file name without its image suffix; for DICOM the series pseudonym (see
            :func:`read_volume` for ``identify=True``).
        kind: ``"nifti"``, ``"dicom"`` or ``"itk"`` (other single-file formats SimpleITK reads).
        series_uid: the DICOM SeriesInstanceUID (as GDCM reports it; may be empty for anonymised series), else None.
        identified: whether the volume was read with ``identify=True`` (``repr`` then shows the DICOM source path).
    """

    array: np.ndarray
    affine: np.ndarray
    reference: sitk.Image
    source: str
    case: str
    kind: str
    series_uid: str | None = None
    identified: bool = field(default=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(X, Y, Z)`` of :attr:`array`."""
        return tuple(int(n) for n in self.reference.GetSize())

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along each array axis."""
        return tuple(float(s) for s in self.reference.GetSpacing())

    @property
    def _ornt(self) -> np.ndarray:
        return orientations.io_orientation(self.affine)

    @property
    def ras_affine(self) -> np.ndarray:
        """Affine of the :meth:`to_ras` array (voxel index -> RAS mm)."""
        return self.affine @ orientations.inv_ornt_aff(self._ornt, self.shape)

    def to_ras(self, array: np.ndarray | None = None) -> np.ndarray:
        """Reorient an array of the volume's shape to RAS index order (axis flips/permutations only, no resampling).

        Uses nibabel's ``io_orientation``/``apply_orientation`` (closest RAS axes for oblique volumes), i.e. the same
        array as ``nibabel.as_closest_canonical`` gives for a NIfTI input.

        Args:
            array: array whose first three axes have the volume's shape (extra trailing axes are carried along);
                default :attr:`array`.

        Returns:
            A C-contiguous copy in RAS order; its affine is :attr:`ras_affine`.

        Raises:
            ValueError: if the array's first three axes do not match the volume's shape.
        """
        array = self.array if array is None else np.asarray(array)
        if array.ndim < 3 or tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"to_ras: array of shape {array.shape} does not match volume '{self.case}' {self.shape}")
        return np.array(orientations.apply_orientation(array, self._ornt), order="C")

    def from_ras(self, array_ras: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_ras`: bring a RAS-ordered array back to the volume's own voxel order.

        Args:
            array_ras: array whose first three axes have the shape of ``to_ras()``'s output.

        Returns:
            A C-contiguous copy of shape ``(X, Y, Z, ...)``, e.g. ready for :func:`write_mask`.

        Raises:
            ValueError: if the array's first three axes do not match the RAS shape.
        """
        array_ras = np.asarray(array_ras)
        ornt = self._ornt
        ras_shape = tuple(self.shape[int(ax)] for ax in np.argsort(ornt[:, 0]))
        if array_ras.ndim < 3 or tuple(array_ras.shape[:3]) != ras_shape:
            raise ValueError(
                f"from_ras: array of shape {array_ras.shape} does not match the RAS shape {ras_shape} "
                f"of volume '{self.case}'"
            )
        back = orientations.ornt_transform(orientations.axcodes2ornt(("R", "A", "S")), ornt)
        return np.array(orientations.apply_orientation(array_ras, back), order="C")

    def __repr__(self) -> str:
        shown_source = self.kind != "dicom" or self.identified
        source = f", source={self.source!r}" if shown_source else ""
        spacing = tuple(round(s, 4) for s in self.spacing)
        return f"Volume(case={self.case!r}, kind={self.kind!r}, shape={self.shape}, spacing={spacing}{source})"


@dataclass
class DicomSeries:
    """One DICOM series found by :func:`list_dicom_series`.

    Attributes:
        uid: SeriesInstanceUID as GDCM reports it (empty for series whose UID was blanked by anonymisation).
        files: slice files in GDCM's order (sorted along the slice normal).
        pseudonym: :func:`pseudonym` of ``uid``; for a blank UID, of a key built from the slice file names.
        num_slices: number of files.
    """

    uid: str
    files: list[str]
    pseudonym: str
    num_slices: int

    @property
    def folder(self) -> str:
        """Folder holding the series' files."""
        return str(Path(self.files[0]).parent) if self.files else ""

    def __repr__(self) -> str:
        return f"DicomSeries(pseudonym={self.pseudonym!r}, num_slices={self.num_slices})"


def pseudonym(series_uid: str) -> str:
    """Stable, non-identifying name of a DICOM series: ``"dcm-"`` + the first 12 hex digits of SHA-256 of its UID.

    The UID is stripped of DICOM padding (spaces, NUL) first. The same series always gets the same pseudonym, on any
    machine; it reveals neither patient data nor paths.

    Args:
        series_uid: the SeriesInstanceUID.

    Returns:
        e.g. ``"dcm-3f2a9c0d41be"``.
    """
    key = series_uid.strip(" \x00")
    return "dcm-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _series_pseudonym(uid: str, files: Sequence[str]) -> str:
    """Pseudonym of a series; a blank UID (anonymised series) is replaced by a key from its sorted file names."""
    if uid.strip(" \x00"):
        return pseudonym(uid)
    return pseudonym("no-series-uid:" + "\n".join(sorted(Path(f).name for f in files)))


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file: a 128-byte preamble followed by ``b"DICM"``.

    Args:
        path: any path; folders, missing or unreadable files give False.

    Returns:
        True for a DICOM file with the standard preamble.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK/GDCM warnings (they may print DICOM file names to stderr) for the duration of the block."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _dir_has_dicom(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.is_file() and (is_dicom_file(entry.path) or entry.name.lower().endswith(".dcm")):
                return True
    return False


def list_dicom_series(folder: str | Path, recursive: bool = True) -> list[DicomSeries]:
    """DICOM series in ``folder`` (and its sub-folders when ``recursive``), found with GDCM.

    A folder is scanned (``sitk.ImageSeriesReader.GetGDCMSeriesIDs``) when it holds at least one file with the DICOM
    preamble (or a ``.dcm`` name); each series' files come from ``GetGDCMSeriesFileNames``, sorted along the slice
    normal. A series split over several folders is listed once per folder.

    Args:
        folder: folder to scan.
        recursive: also scan every sub-folder.

    Returns:
        The series sorted by pseudonym (then folder); ``[]`` when there is none or ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    folders = [root]
    if recursive:
        folders = [Path(d) for d, _, _ in sorted(os.walk(root), key=lambda t: t[0])]
    found: list[DicomSeries] = []
    with _quiet_itk():
        for directory in folders:
            if not _dir_has_dicom(directory):
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)):
                files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
                if files:
                    found.append(DicomSeries(uid, files, _series_pseudonym(uid, files), len(files)))
    found.sort(key=lambda s: (s.pseudonym, s.folder))
    return found


# -------------------------------------------------------------------------------------------------------- reading
def _sitk_reason(exc: BaseException, *, hide_paths: bool = False) -> str:
    """One-line reason from a (multi-line) SimpleITK exception, without source locations or object addresses."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    for index, line in enumerate(lines):
        match = re.search(r"(?:sitk::ERROR|ITK ERROR|ERROR):\s*(.*)", line)
        if match:
            reason = " ".join([match.group(1), *lines[index + 1 :]])
            break
    reason = re.sub(r"\b\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)
    if hide_paths:
        reason = re.sub(r"\"[^\"]*\"|'[^']*'", "<path>", reason)
        reason = re.sub(r"\S*[/\\]\S*", "<path>", reason)
    return reason


def _file_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, ".gipl.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in _CASE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _lps_affine(image: sitk.Image) -> np.ndarray:
    """Voxel index -> RAS mm affine of a 3D SimpleITK image (LPS geometry)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def _geometry_image(image: sitk.Image) -> sitk.Image:
    """Zero uint8 image with ``image``'s size, spacing, origin and direction and no metadata."""
    reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(image)
    return reference


def _to_3d(image: sitk.Image, label: str) -> sitk.Image:
    """Check that ``image`` is a scalar 3D image (squeezing extra axes of size 1), else raise ``CaseError``."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(
            f"{label}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar 3D volume"
        )
    size = image.GetSize()
    if len(size) < 3:
        raise CaseError(f"{label}: is a {len(size)}D image of size {size}; expected a 3D volume")
    if len(size) > 3:
        extra = size[3:]
        if any(n != 1 for n in extra):
            raise CaseError(
                f"{label}: is a {len(size)}D image of size {size}; expected a 3D volume "
                "(extra axes are accepted only with size 1)"
            )
        image = sitk.Extract(image, [*size[:3], *([0] * len(extra))], [0] * len(size))
    return image


def _count_non_finite(array: np.ndarray) -> int:
    """Number of NaN/Inf voxels of a 3D float array, checked slab by slab to keep memory low."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    step = max(1, (1 << 24) // max(1, array.shape[0] * array.shape[1]))
    bad = 0
    for k in range(0, array.shape[2], step):
        slab = array[..., k : k + step]
        bad += slab.size - int(np.count_nonzero(np.isfinite(slab)))
    return bad


def _volume_from_image(image: sitk.Image, label: str) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """(float32 (X, Y, Z) array, RAS affine, geometry reference) of a 3D image; ``CaseError`` on non-finite voxels."""
    image = _to_3d(image, label)
    array = sitk.GetArrayViewFromImage(image).astype(np.float32).transpose(2, 1, 0)
    bad = _count_non_finite(array)
    if bad:
        raise CaseError(f"{label}: {bad} of {array.size} voxels are NaN or Inf")
    return array, _lps_affine(image), _geometry_image(image)


def _scan_voxel_bytes(stream: BinaryIO, offset: int, nbytes: int, dtype: np.dtype) -> tuple[int, int]:
    """Read a stream to its end; return (bytes present after ``offset``, NaN/Inf count in the first ``nbytes``)."""
    floating = dtype.kind in "fc"
    skip, present, bad, pending = offset, 0, 0, b""
    while chunk := stream.read(1 << 22):
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        voxels = chunk[: max(0, nbytes - present)]
        present += len(chunk)
        if floating and voxels:
            buffer = pending + voxels
            usable = len(buffer) - len(buffer) % dtype.itemsize
            values = np.frombuffer(buffer, dtype=dtype, count=usable // dtype.itemsize)
            bad += values.size - int(np.count_nonzero(np.isfinite(values)))
            pending = buffer[usable:]
    return present, bad


def _check_nifti(path: Path, label: str) -> np.ndarray:
    """Check a NIfTI file's voxel data; return nibabel's affine.

    SimpleITK reads truncated or corrupt ``.nii.gz`` files without an error (missing voxels come back as garbage) and
    turns NaN/Inf voxels into 0, so the voxel data is read once here as stored: the gzip stream is decompressed to its
    end (CRC checked), its length compared to the header's, and float voxels checked for NaN/Inf.

    Raises:
        CaseError: unreadable header, corrupt or truncated data, NaN or Inf voxels.
    """
    try:
        img = nib.load(str(path))
        offset = int(img.dataobj.offset)
        dtype = np.dtype(img.dataobj.dtype)
        count = int(np.prod(img.dataobj.shape, dtype=np.int64))
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
        raise CaseError(f"{label}: unreadable NIfTI header ({type(exc).__name__}: {exc})") from exc
    nbytes = count * dtype.itemsize
    opener = _gzip_open if _file_suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:
            present, bad = _scan_voxel_bytes(stream, offset, nbytes, dtype)
    except (OSError, EOFError, zlib.error) as exc:
        raise CaseError(f"{label}: corrupt or truncated data ({exc})") from exc
    if present < nbytes:
        raise CaseError(
            f"{label}: truncated NIfTI file: {present} bytes of voxel data, the header needs {nbytes}"
        )
    if bad:
        raise CaseError(f"{label}: {bad} of {count} voxels are NaN or Inf")
    return affine


def _gzip_open(path: Path, mode: str = "rb") -> BinaryIO:
    """``gzip.open``, or ISA-L's drop-in ``isal.igzip.open`` (same checks, 2-3× faster inflate) when installed."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.open(path, mode)
    return igzip.open(path, mode)


def read_nifti_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a NIfTI file into its voxel array and affine, fast: one inflate, no copy of the voxels.

    The file is read in one go and, for ``.nii.gz``, inflated with ISA-L (``isal.igzip``, when installed; else zlib);
    the voxels are a read-only Fortran-ordered view of the decoded bytes in the stored dtype (as nibabel's
    ``img.dataobj`` gives them, without ``scl_slope``/``scl_inter`` when those are unset or 1/0; scaled to float32
    otherwise). No validation beyond nibabel's header parsing: :func:`read_volume` is the checked reader.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array, affine)``: array of the header's shape (X, Y, Z[, ...]) in the file's voxel order, and nibabel's
        4x4 affine.

    Raises:
        CaseError: unreadable header, or fewer voxel bytes than the header needs.
    """
    path = Path(path)
    data = path.read_bytes()
    if _file_suffix(path) == ".nii.gz":
        try:
            from isal import igzip

            data = igzip.decompress(data)
        except ImportError:
            data = zlib.decompress(data, 31)
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(data[:540]))
        shape, dtype = header.get_data_shape(), header.get_data_dtype()
        offset, affine = int(header.get_data_offset()), np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
        raise CaseError(f"{path}: unreadable NIfTI header ({type(exc).__name__}: {exc})") from exc
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset < count * dtype.itemsize:
        raise CaseError(f"{path}: truncated NIfTI file: {len(data) - offset} bytes of voxel data, the header needs "
                        f"{count * dtype.itemsize}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        array = array.astype(np.float32) * np.float32(slope or 1.0) + np.float32(inter or 0.0)
    return array, affine


def _read_file(path: Path, kind: str, label: str | None = None) -> Volume:
    """Read a single-file image; ``label`` (default the path) names it in errors, without paths when given."""
    hide_paths = label is not None
    label = str(path) if label is None else label
    nib_affine = _check_nifti(path, label) if kind == "nifti" else None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = _sitk_reason(exc, hide_paths=hide_paths)
        # MetaIO reports a short read with a stale errno ("No such file or directory") for an existing file
        reason = re.sub(r"\s*Reason: No such file or directory$", " (truncated or corrupt data?)", reason)
        raise CaseError(f"{label}: unreadable or corrupt image file ({reason})") from exc
    array, affine, reference = _volume_from_image(image, label)
    del image
    if nib_affine is not None and not np.allclose(affine, nib_affine, rtol=0, atol=_GEOMETRY_ATOL):
        header = nib.load(str(path)).header
        raise CaseError(
            f"{label}: SimpleITK and nibabel disagree on the NIfTI geometry (qform_code={int(header['qform_code'])}, "
            f"sform_code={int(header['sform_code'])}); fix the header's qform/sform so that masks line up in every "
            "viewer"
        )
    if not hide_paths:
        logger.debug("read %s volume %s: shape %s", kind, _case_id(path), array.shape)
    return Volume(array, affine, reference, str(path), _case_id(path), kind)


def _dicom_label(series: DicomSeries, identify: bool) -> str:
    return f"DICOM series {series.pseudonym}" + (f" in {series.folder}" if identify else "")


def _folder_label(path: Path, identify: bool) -> str:
    return f"DICOM input {path}" if identify else "DICOM input (path hidden; pass identify=True to show it)"


def _check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, label: str) -> None:
    """Raise ``CaseError`` if the slices do not lie on the regular grid SimpleITK assumed (missing slices, tilt...)."""
    count = image.GetSize()[2]
    positions = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # no positions (e.g. secondary capture): nothing to check against
        try:
            positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            return
    if count < 2 or len(positions) != count or any(len(p) != 3 for p in positions):
        return
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    step = image.GetSpacing()[2] * direction[:, 2]
    expected = np.asarray(image.GetOrigin()) + np.arange(count)[:, None] * step[None, :]
    worst = float(np.max(np.linalg.norm(np.asarray(positions) - expected, axis=1)))
    if worst > max(0.05 * image.GetSpacing()[2], 0.02):
        raise CaseError(
            f"{label}: slice positions are not on a regular grid (missing or duplicate slices, varying spacing or "
            f"gantry tilt; a slice is {worst:.2f} mm off); refusing to read it as a regular volume"
        )


def _read_dicom_series(series: DicomSeries, identify: bool, folder_series_count: int) -> Volume:
    label = _dicom_label(series, identify)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    reader.SetOutputPixelType(sitk.sitkFloat32)  # rescale applied per slice, no truncation to the first slice's type
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise CaseError(f"{label}: unreadable DICOM series ({_sitk_reason(exc, hide_paths=not identify)})") from exc
    if image.GetDimension() == 3:
        _check_slice_positions(reader, image, label)
    del reader  # holds every slice's header, identifiers included
    array, affine, reference = _volume_from_image(image, label)
    del image
    case = series.pseudonym
    if identify:
        folder_name = Path(series.folder).name or series.pseudonym
        case = folder_name if folder_series_count == 1 else f"{folder_name}_{series.pseudonym}"
    logger.debug("read DICOM series %s: shape %s", series.pseudonym, array.shape)
    return Volume(array, affine, reference, series.folder, case, "dicom", series.uid, identified=identify)


def _select_series(candidates: list[DicomSeries], series_uid: str | None, label: str) -> DicomSeries:
    if series_uid is not None:
        wanted = series_uid.strip(" \x00")
        chosen = [s for s in candidates if s.uid.strip(" \x00") == wanted or s.pseudonym == wanted]
        if not chosen:
            names = ", ".join(s.pseudonym for s in candidates)
            raise CaseError(f"{label}: no series {pseudonym(wanted)} (series_uid given); series found: {names}")
    else:
        chosen = candidates
    if len(chosen) > 1:
        names = ", ".join(f"{s.pseudonym} ({s.num_slices} slices)" for s in chosen)
        hint = "pass series_uid (the SeriesInstanceUID or its pseudonym)"
        if series_uid is not None:
            hint = "the series is split over several folders; pass one folder"
        raise CaseError(f"{label}: {len(chosen)} DICOM series: {names}; {hint}")
    return chosen[0]


def _looks_like_headerless_dicom(path: Path) -> bool:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        return False
    keys = set(reader.GetMetaDataKeys())
    return "0020|000e" in keys or "0008|0016" in keys


def read_volume(path: str | Path, *, series_uid: str | None = None, identify: bool = False) -> Volume:
    """Read one input volume for inference, validating it.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``), another single-file format SimpleITK reads (``.mha``, ``.nrrd``...),
            a DICOM file (its whole series is read from the same folder), or a folder holding DICOM series (searched
            recursively: its only series, or the one named by ``series_uid``).
        series_uid: SeriesInstanceUID (or its :func:`pseudonym`) of the DICOM series to read.
        identify: allow identifying names for DICOM inputs: error messages and ``repr`` then show the path, and
            ``case`` is the series folder's name (with ``_<pseudonym>`` appended when that folder holds several
            series). Without it, DICOM messages and ``case`` use the pseudonym only.

    Returns:
        The :class:`Volume`.

    Raises:
        CaseError: missing path; unreadable, corrupt or truncated file; not a 3D scalar image (4D and 5D images are
            accepted when their extra axes have size 1, and squeezed); NaN or Inf voxels; no DICOM series in a folder,
            several and no ``series_uid``, or ``series_uid`` not found; DICOM slices off a regular grid; a NIfTI header
            on which SimpleITK and nibabel disagree.
    """
    path = Path(path)
    suffix = _file_suffix(path)
    dicom_like = suffix in _DICOM_LIKE_SUFFIXES
    if not path.exists():
        shown = str(path) if identify or not dicom_like else "input path (hidden; pass identify=True to show it)"
        raise CaseError(f"{shown}: not found")
    if path.is_dir():
        candidates = list_dicom_series(path, recursive=True)
        if not candidates:
            raise CaseError(f"{_folder_label(path, identify)}: folder holds no DICOM series")
        series = _select_series(candidates, series_uid, _folder_label(path, identify))
        in_folder = sum(1 for s in candidates if s.folder == series.folder)
        return _read_dicom_series(series, identify, in_folder)
    if suffix in NIFTI_SUFFIXES:
        return _read_file(path, "nifti")
    if is_dicom_file(path) or (dicom_like and _looks_like_headerless_dicom(path)):
        label = _folder_label(path, identify)
        candidates = list_dicom_series(path.parent, recursive=False)
        target = os.path.realpath(path)
        owners = [s for s in candidates if target in {os.path.realpath(f) for f in s.files}]
        if not owners:
            raise CaseError(f"{label}: file is not part of a DICOM image series GDCM can read")
        series = _select_series(owners, None, label)
        if series_uid is not None and series_uid.strip(" \x00") not in (series.uid.strip(" \x00"), series.pseudonym):
            raise CaseError(f"{_dicom_label(series, identify)}: the file belongs to this series, not to series_uid")
        return _read_dicom_series(series, identify, len(candidates))
    if dicom_like and not identify:
        # a file without an image suffix may be a DICOM file without preamble: keep its name out of messages
        return _read_file(path, "itk", "input file (path hidden; pass identify=True to show it)")
    return _read_file(path, "itk")


# -------------------------------------------------------------------------------------------------------- writing
def _write_suffix(path: Path) -> str:
    suffix = _file_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: unsupported mask format '{suffix}'; use one of {', '.join(WRITE_SUFFIXES)}")
    return suffix


def _mask_image(mask: np.ndarray, reference: Volume, dtype: np.dtype, path: Path) -> sitk.Image:
    mask = np.asarray(mask)
    if mask.shape != reference.shape:
        raise ValueError(
            f"{path}: mask shape {mask.shape} does not match the reference volume's {reference.shape} "
            "(masks are written in the input's own voxel order; use Volume.from_ras for RAS-ordered masks)"
        )
    dtype = np.dtype(np.uint8 if np.dtype(dtype) == np.bool_ else dtype)
    cast = mask.astype(dtype, copy=False)
    if cast is not mask and not np.array_equal(cast, mask):
        raise ValueError(f"{path}: mask values do not fit {dtype} unchanged (e.g. out of range or fractional)")
    image = sitk.GetImageFromArray(np.ascontiguousarray(cast.transpose(2, 1, 0)))
    image.CopyInformation(reference.reference)
    return image


def write_mask(mask: np.ndarray, reference: Volume, path: str | Path, *, overwrite: bool = False,
               dtype: type | np.dtype = np.uint8) -> Path:
    """Write a mask with exactly the geometry of the input it was computed from.

    The file is written to a temporary file in the same folder (``.<name>.tmp-<12 hex><suffix>``), synced, then
    renamed into place, so that a crash never leaves a partial file under the final name (see
    :func:`clean_stale_temporaries` for the leftovers of a kill).

    Args:
        mask: array of the reference's shape ``(X, Y, Z)``, in its own voxel order (see :meth:`Volume.from_ras`).
        reference: the volume the mask belongs to; its size, spacing, origin and direction are copied (SimpleITK
            ``CopyInformation``), for DICOM series too.
        path: output file; the format follows the suffix: ``.nii.gz`` (usual), ``.nii``, ``.mha`` or ``.nrrd``
            (compressed). Parent folders are created.
        overwrite: replace an existing file.
        dtype: voxel type written (bool is written as uint8); values must convert to it unchanged.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (the existing file is left unchanged).
        ValueError: shape mismatch, values that do not fit ``dtype``, or an unsupported suffix.
    """
    path = Path(path)
    _write_suffix(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    image = _mask_image(mask, reference, dtype, path)
    atomic_write(path.parent, path.name, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True),
                 overwrite=overwrite)
    logger.debug("wrote mask %s", path.name if reference.kind != "dicom" or reference.identified else reference.case)
    return path


def clean_stale_temporaries(folder: str | Path, *, recursive: bool = False, min_age_s: float = 0.0) -> list[Path]:
    """Remove temporary files that :func:`write_mask` left behind when its process was killed.

    Only names of the form ``.<name>.tmp-<12 hex><suffix>`` are touched.

    Args:
        folder: output folder.
        recursive: also clean its sub-folders.
        min_age_s: keep temporaries modified less than this many seconds ago (another process may be writing them).

    Returns:
        The removed files (``[]`` when ``folder`` does not exist).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*.tmp-*") if recursive else root.glob(".*.tmp-*")
    now = time.time()
    removed = []
    for candidate in sorted(candidates):
        if not _TEMP_RE.match(candidate.name) or not candidate.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - candidate.stat().st_mtime < min_age_s:
                continue
            candidate.unlink()
            removed.append(candidate)
    for item in removed:
        logger.info("removed stale temporary %s", item.name)
    return removed


# ------------------------------------------------------------------------------------------------------- measures
def label_volumes_ml(
    mask: np.ndarray, spacing: Sequence[float], labels: Sequence[int] | None = None
) -> dict[int, float]:
    """Volume in millilitres of each label of a mask.

    Args:
        mask: integer-valued label array.
        spacing: voxel spacing in mm, one value per mask axis.
        labels: labels to measure (absent ones get 0.0); default every non-zero label present.

    Returns:
        ``{label: volume_ml}`` in label order.

    Raises:
        ValueError: if ``spacing`` does not have one value per mask axis.
    """
    mask = np.asarray(mask)
    if len(spacing) != mask.ndim:
        raise ValueError(f"label_volumes_ml: {len(spacing)} spacing values for a {mask.ndim}D mask")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    values, counts = np.unique(mask, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts)}
    wanted = sorted(v for v in found if v != 0) if labels is None else [int(v) for v in labels]
    return {label: found.get(label, 0) * voxel_ml for label in wanted}


def mean_slice_shape(datalist: Sequence[Mapping[str, Any]], image_key: str = "image") -> tuple[float, float]:
    """Mean in-plane size ``(H, W)`` of the axial slices of a datalist's images once reoriented to RAS.

    Each volume counts once per axial slice, so the means are those of the slices a 2.5D training draws from. Only
    the NIfTI headers are read (other formats and DICOM series are read whole). When every volume has the same
    in-plane size the result is that size exactly (integers), e.g. the phantoms' ``synthetic_shape[:2]``. Used to
    turn the papers' per-pixel loss weights into the ``sum``-reduced weights of the bundles, whatever data they
    train on.

    Raises:
        CaseError: an image that cannot be read (names the file).
        ValueError: an empty datalist.
    """
    if not datalist:
        raise ValueError("mean_slice_shape needs at least one datalist entry")
    sizes, weights = [], []
    for entry in datalist:
        image = entry[image_key]
        shape = _ras_shape(str(image[0] if isinstance(image, (list, tuple)) else image))
        sizes.append(shape[:2])
        weights.append(shape[2])
    if len(set(sizes)) == 1:
        return sizes[0]
    mean = np.average(np.asarray(sizes, dtype=np.float64), axis=0, weights=np.asarray(weights, dtype=np.float64))
    return float(mean[0]), float(mean[1])


def _ras_shape(path: str) -> tuple[int, int, int]:
    """``(X, Y, Z)`` of an image file after reorientation to RAS, from its header where it is a NIfTI file."""
    import nibabel as nib
    from nibabel.orientations import io_orientation

    if Path(path).name.lower().endswith(NIFTI_SUFFIXES):
        try:
            image = nib.load(path)
            shape, affine = image.shape[:3], image.affine
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
            raise CaseError(f"{path}: cannot read the NIfTI header ({type(err).__name__}: {err})") from None
        if len(shape) < 3:
            raise CaseError(f"{path}: a 3D volume is expected, got shape {tuple(shape)}")
        order = io_orientation(affine)[:, 0].astype(int)  # RAS axis of each voxel axis
        ras = [0, 0, 0]
        for axis, target in enumerate(order):
            ras[target] = int(shape[axis])
        return ras[0], ras[1], ras[2]
    volume = read_volume(path)
    x, y, z = volume.to_ras().shape
    return int(x), int(y), int(z)
