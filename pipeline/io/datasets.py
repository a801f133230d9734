"""Indexers of the data sets' own on-disk layouts: LiTS, Learn2Reg lung CT and the bone SPECT layout.

Each returns a MONAI datalist (``[{"image": ..., "label": ..., "case": ...}, ...]``) of a real folder, or of the
phantoms :mod:`pipeline.data` writes in the same layout; a folder not in the layout raises :class:`LayoutError`
naming it and what is missing. The generic layouts (a file, a folder, DICOM, MSD/nnU-Net datalists, BraTS) and
their auto-detection are in :mod:`pipeline.io.layouts`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGES_DIR",
    "LITS_SEGMENTATION_RE",
    "LITS_VOLUME_RE",
    "LUNG_IMAGE_RE",
    "MASKS_DIR",
    "SPECT_CASE_RE",
    "SPECT_RECON_RE",
    "LayoutError",
    "index_lits",
    "index_lung",
    "index_spect",
]

IMAGES_DIR, MASKS_DIR = "imagesTr", "masksTr"
LITS_VOLUME_RE = re.compile(r"^volume-(\d+)\.nii(?:\.gz)?$")
LITS_SEGMENTATION_RE = re.compile(r"^segmentation-(\d+)\.nii(?:\.gz)?$")
_LITS_LAYOUT = (
    "expected the LiTS layout: volume-N.nii[.gz] with segmentation-N.nii[.gz], possibly in sub-folders "
    "such as 'Training Batch 1/'"
)
LUNG_IMAGE_RE = re.compile(r"^(?P<case>.+)_(?P<phase>\d{4})\.nii(?:\.gz)?$")
_LUNG_LAYOUT = (
    "expected the Learn2Reg lung CT layout: imagesTr/<case>_0000.nii[.gz] with masksTr/<case>_0000.nii[.gz]"
)
SPECT_CASE_RE = re.compile(r"^case-(\d+)$")
SPECT_RECON_RE = re.compile(r"^recon_osem(\d+)\.nii(?:\.gz)?$")
_SPECT_LAYOUT = "expected the bone SPECT layout: case-N/recon_osemK.nii[.gz] with case-N/bone.nii[.gz]"


class LayoutError(ValueError):
    """A folder is not in the expected dataset layout (the message names the folder and what is missing)."""


def _collect_lits(files: Sequence[Path], pattern: re.Pattern[str], root: Path) -> dict[int, Path]:
    """Case number -> file for the files matching ``pattern``; raises on duplicated case numbers."""
    found: dict[int, Path] = {}
    for path in files:
        match = pattern.match(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise LayoutError(f"case {number} appears twice under {root}: {found[number]} and {path}")
        found[number] = path
    return found


def _no_lits_volume(root: Path, files: Sequence[Path]) -> str:
    """Explain that no volume file was found under ``root`` and show what is there instead."""
    if not files:
        return f"no volume-N.nii[.gz] files under {root}: the folder holds no files; {_LITS_LAYOUT}"
    names = ", ".join(str(p.relative_to(root)) for p in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return f"no volume-N.nii[.gz] files under {root}; found instead: {names}{more}; {_LITS_LAYOUT}"


def _pair(images: Mapping[Any, Path], labels: Mapping[Any, Path], require_labels: bool, case: Callable[[Any], str],
          lacking: Callable[[list[Any], list[Any]], str], orphans_are: str) -> list[dict[str, str]]:
    """Datalist of images (by key) with their labels; images without a label raise when ``require_labels``
    (``lacking(missing, first five)`` is the message), labels without an image are logged and ignored."""
    missing = sorted(set(images) - set(labels))
    if missing and require_labels:
        raise LayoutError(lacking(missing, missing[:5]) + (" ..." if len(missing) > 5 else ""))
    orphans = sorted(set(labels) - set(images))
    if orphans:
        logger.warning("%d %s (e.g. %s); ignored", len(orphans), orphans_are, labels[orphans[0]].name)
    datalist = []
    for key in sorted(images):
        entry = {"image": str(images[key])}
        if key in labels:
            entry["label"] = str(labels[key])
        entry["case"] = case(key)
        datalist.append(entry)
    return datalist


def index_lits(root: str | Path, require_labels: bool = True) -> list[dict[str, str]]:
    """Datalist of a folder in the LiTS layout (searched recursively, e.g. ``Training Batch 1/``).

    Args:
        root: dataset folder.
        require_labels: demand a segmentation for every volume; when False the ``"label"`` key is left out for
            volumes without one.

    Returns:
        ``[{"image": ..., "label": ..., "case": "volume-N"}, ...]`` sorted by case number ``N``.

    Raises:
        LayoutError: if the folder is missing or not a folder, holds no volume files, has a volume without its
            segmentation (when ``require_labels``) or a case number twice.
    """
    folder = Path(root).expanduser().absolute()
    if not folder.exists():
        raise LayoutError(f"LiTS folder {folder} does not exist")
    if not folder.is_dir():
        raise LayoutError(f"LiTS folder {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    volumes = _collect_lits(files, LITS_VOLUME_RE, folder)
    if not volumes:
        raise LayoutError(_no_lits_volume(folder, files))
    labels = _collect_lits(files, LITS_SEGMENTATION_RE, folder)
    return _pair(volumes, labels, require_labels, lambda n: f"volume-{n}",
                 lambda missing, names: f"{len(missing)} volume(s) under {folder} lack segmentation-N.nii[.gz]: "
                                        f"{', '.join(str(volumes[n].relative_to(folder)) for n in names)}",
                 f"segmentation(s) under {folder} have no volume")

def _collect_lung(folder: Path, phase: str | None) -> dict[str, Path]:
    """Key -> NIfTI file in ``folder`` (``<case>`` for one phase, ``<case>_<phase>`` for all phases)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        match = LUNG_IMAGE_RE.match(path.name)
        if match is None or (phase is not None and match["phase"] != phase):
            continue
        key = match["case"] if phase is not None else f"{match['case']}_{match['phase']}"
        if key in found:
            raise LayoutError(f"{key} appears twice in {folder}: {found[key].name} and {path.name}")
        found[key] = path
    return found


def index_lung(root: str | Path, require_labels: bool = True, phase: str | None = "0000") -> list[dict[str, str]]:
    """Datalist of a folder in the Learn2Reg lung CT layout (``imagesTr/`` with ``masksTr/``).

    Args:
        root: dataset folder.
        require_labels: demand a mask for every image; when False the ``"label"`` key is left out for images
            without one.
        phase: the four-digit image number to read (``"0000"``; Learn2Reg's second breathing phase is ``"0001"``);
            None reads every image, naming the cases ``<case>_<phase>``.

    Returns:
        ``[{"image": ..., "label": ..., "case": "<case>"}, ...]`` sorted by case name.

    Raises:
        LayoutError: if the folder is missing or not a folder, has no ``imagesTr/``, no image of that phase, no
            ``masksTr/`` or an image without its mask (when ``require_labels``), or a case twice (``.nii`` and
            ``.nii.gz``).
    """
    if phase is not None and not re.fullmatch(r"\d{4}", str(phase)):
        raise ValueError(f"phase must be four digits such as '0000' or None, got {phase!r}")
    folder = Path(root).expanduser().absolute()
    if not folder.exists():
        raise LayoutError(f"lung CT folder {folder} does not exist")
    if not folder.is_dir():
        raise LayoutError(f"lung CT folder {folder} is not a folder")
    images_dir, masks_dir = folder / IMAGES_DIR, folder / MASKS_DIR
    if not images_dir.is_dir():
        names = ", ".join(sorted(p.name for p in folder.iterdir())[:5]) or "nothing"
        raise LayoutError(f"no {IMAGES_DIR}/ folder in {folder} (found: {names}); {_LUNG_LAYOUT}")
    images = _collect_lung(images_dir, phase)
    if not images:
        what = f"_{phase}" if phase is not None else "_NNNN"
        raise LayoutError(f"no <case>{what}.nii[.gz] images in {images_dir}; {_LUNG_LAYOUT}")
    if not masks_dir.is_dir():
        if require_labels:
            raise LayoutError(f"no {MASKS_DIR}/ folder in {folder} for the {len(images)} image(s) of "
                              f"{IMAGES_DIR}/; {_LUNG_LAYOUT}")
        masks: dict[str, Path] = {}
    else:
        masks = _collect_lung(masks_dir, phase)
    return _pair(images, masks, require_labels, str,
                 lambda missing, names: f"{len(missing)} image(s) in {images_dir} lack a mask of the same name in "
                                        f"{masks_dir}: {', '.join(images[k].name for k in names)}",
                 f"mask(s) in {masks_dir} have no image")


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def index_spect(root: str | Path, iterations: int = 5, require_labels: bool = True) -> list[dict[str, str]]:
    """Datalist of a folder in the bone SPECT layout (``case-N/recon_osemK.nii[.gz]``, ``case-N/bone.nii[.gz]``).

    Args:
        root: dataset folder.
        iterations: which reconstruction the ``"image"`` key points to; every reconstruction found is also given
            as ``"image_osemK"``.
        require_labels: demand ``bone.nii[.gz]`` in every case; when False the ``"label"`` key is left out for cases
            without one.

    Returns:
        ``[{"image": ..., "label": ..., "case": "case-N", "image_osemK": ...}, ...]`` sorted by ``N``.

    Raises:
        LayoutError: if the folder is missing or not a folder, holds no ``case-N`` folders, or a case lacks the
            requested reconstruction or (when ``require_labels``) its label.
    """
    folder = Path(root).expanduser().absolute()
    if not folder.exists():
        raise LayoutError(f"bone SPECT folder {folder} does not exist")
    if not folder.is_dir():
        raise LayoutError(f"bone SPECT folder {folder} is not a folder")
    cases = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := SPECT_CASE_RE.match(p.name)))
    if not cases:
        found = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        what = f"found instead: {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}" if found else "it is empty"
        raise LayoutError(f"no case-N folders under {folder}; {what}; {_SPECT_LAYOUT}")
    datalist = []
    for number, case in cases:
        image, label = _find_nifti(case, f"recon_osem{int(iterations)}"), _find_nifti(case, "bone")
        if image is None:
            raise LayoutError(f"{case} lacks recon_osem{int(iterations)}.nii[.gz]; {_SPECT_LAYOUT}")
        if label is None and require_labels:
            raise LayoutError(f"{case} lacks bone.nii[.gz]; {_SPECT_LAYOUT}")
        entry = {"image": str(image)}
        if label is not None:
            entry["label"] = str(label)
        entry["case"] = f"case-{number}"
        recons = sorted((int(m.group(1)), p) for p in case.iterdir() if (m := SPECT_RECON_RE.match(p.name)))
        entry.update({f"image_osem{k}": str(p) for k, p in recons})
        datalist.append(entry)
    return datalist
