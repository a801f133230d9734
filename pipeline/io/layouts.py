"""Datalists from what is on disk: single files, folders, DICOM series, JSON datalists and known challenge layouts.

:func:`index_inputs` is the entry point: it takes a path (file or folder) and a layout name (``"auto"`` detects
it) and returns a datalist for batch inference or evaluation. Every entry is a dict with absolute paths::

    {"case": str,                  # unique within the datalist; used to name outputs
     "image": str | list[str],     # one path, or one path per modality (in the order requested)
     "label": str,                 # only when the layout has one for this case
     "kind": "nifti" | "dicom" | "itk",
     "series_uid": str,            # DICOM only: the SeriesInstanceUID, or its pseudonym unless identify=True
     "layout": str}                # the layout that produced the entry (see LAYOUTS)

Some layouts add keys: BraTS entries carry ``"modalities"`` (canonical names, in the order of ``"image"``),
``"label_convention"`` and, for the DeepMedic copy, ``"mask"`` (brain mask); MSD entries of a 4-D multi-modal image
carry ``"modalities"`` and ``"channels"`` (indices into the image's channel axis) when modalities are requested;
bone SPECT entries carry ``"image_osemK"``.

Layouts (``LAYOUTS``):

* ``file``: one image file (NIfTI ``.nii``/``.nii.gz`` or another ITK format: ``.mha``, ``.mhd``, ``.nrrd``,
  ``.nhdr``, ``.hdr``) is one case; a single DICOM file stands for its whole series;
* ``folder``: every image file directly in a folder is a case (:func:`index_nifti_folder`);
* ``dicom``: every DICOM series found under a folder is a case (:func:`index_dicom`);
* ``datalist``: a JSON file holding a list of ``{"image": ..., "label": ...}`` (paths relative to the JSON's folder);
* ``msd``: a Medical Segmentation Decathlon ``dataset.json`` (``"training"``/``"test"`` lists; an nnU-Net v2
  ``dataset.json`` with ``"channel_names"`` and ``"file_ending"`` is read too) (:func:`index_msd`);
* ``lits``: the LiTS challenge layout (``volume-N.nii[.gz]`` / ``segmentation-N.nii[.gz]``, :func:`index_lits`);
* ``brats``: BraTS case folders, 2015 to 2023+ naming and the DeepMedic copy of BraTS 2015 (:func:`index_brats`);
* ``learn2reg``: the Learn2Reg lung CT layout (``imagesTr/`` + ``masksTr/``, :func:`index_lung`);
* ``spect``: the bone SPECT layout of :mod:`pipeline.data.spect` (``case-N/recon_osemK.nii.gz``).

Auto-detection of a folder tries, in this order: ``imagesTr/`` with ``masksTr/`` (learn2reg), a ``dataset.json``
with case lists (msd), ``volume-N.nii[.gz]`` anywhere below (lits), ``case-N/recon_osemK`` (spect), BraTS case
files (brats), ``imagesTr/`` with ``<case>_NNNN.nii[.gz]`` images alone (learn2reg, unlabelled), DICOM files
anywhere below (dicom), then image files directly in the folder (folder).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.io.datasets import LayoutError, index_lits, index_lung, index_spect

logger = logging.getLogger(__name__)

__all__ = [
    "BRATS_MODALITIES",
    "LAYOUTS",
    "LayoutError",
    "brats_modalities_available",
    "index_brats",
    "index_dicom",
    "index_inputs",
    "index_msd",
    "index_nifti_folder",
]

LAYOUTS = ("auto", "file", "folder", "dicom", "datalist", "msd", "lits", "brats", "learn2reg", "spect")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".hdr")
_IMAGE_EXTENSIONS = _NIFTI_EXTENSIONS + _ITK_EXTENSIONS
_LISTED = ", ".join(_IMAGE_EXTENSIONS)
_DATASET_JSON = "dataset.json"
_SPLIT_KEYS = {"training": ("training",), "validation": ("validation",), "test": ("test", "testing")}
_SPLITS = ("training", "validation", "test", "all")
_LABELLED_SPLITS = ("training", "validation")

# ---- BraTS naming schemes ----------------------------------------------------------------------------------------
_MODALITY_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
}
_BRATS_2017 = re.compile(r"^(?P<case>.+)_(?P<role>t1|t1ce|t2|flair|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_BRATS_2023 = re.compile(r"^(?P<case>.+)-(?P<role>t1n|t1c|t2w|t2f|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_BRATS_2015 = re.compile(r"^VSD\.Brain(?:_\d+more)?\.XX\.O\.(?P<role>MR_Flair|MR_T1c|MR_T1|MR_T2|OT)\.\d+\.mha$",
                         re.IGNORECASE)
_DEEPMEDIC = re.compile(r"^(?:(?P<role>Flair|T1c|T1|T2)_subtrMeanDivStd|(?P<other>OTMultiClass|brainmask))"
                        r"\.nii(?:\.gz)?$", re.IGNORECASE)
_ROLE = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "label",
         "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair",
         "mr_flair": "flair", "mr_t1c": "t1ce", "mr_t1": "t1", "mr_t2": "t2", "ot": "label",
         "otmulticlass": "label", "brainmask": "mask"}
_CONVENTIONS = {"brats2015": "brats2015", "deepmedic": "brats2015", "brats2017": "brats2017+",
                "brats2023": "brats2023"}
_BRATS_EXPECTED = (
    "expected BraTS case folders: <case>/<case>_t1|_t1ce|_t2|_flair|_seg.nii[.gz] (2018-2021), "
    "<case>/<case>-t1n|-t1c|-t2w|-t2f|-seg.nii[.gz] (2023+), <case>/VSD.Brain.XX.O.MR_<Flair|T1|T1c|T2>.<id>/*.mha "
    "(2015) or <case>/<Flair|T1c|T1|T2>_subtrMeanDivStd.nii.gz with OTMultiClass.nii.gz (DeepMedic)"
)

# ---- MSD modality names (dataset.json "modality") -> canonical BraTS names -------------------------------------------
_MSD_MODALITY = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1ce", "t1ce": "t1ce", "t1c": "t1ce",
                 "t2w": "t2", "t2": "t2", "t2f": "flair", "t1n": "t1"}
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_LITS_VOLUME = re.compile(r"^volume-\d+\.nii(?:\.gz)?$")
_LUNG_IMAGE = re.compile(r"^.+_\d{4}\.nii(?:\.gz)?$")
_SPECT_CASE = re.compile(r"^case-\d+$")


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _split_extension(name: str) -> tuple[str, str]:
    """``(stem, extension)`` of a file name for the known image extensions (``.nii.gz`` counts as one)."""
    lower = name.lower()
    for ext in _IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext}") if dot and stem else (name, "")


def _image_kind(path: str | Path) -> str | None:
    """``"nifti"``, ``"itk"``, ``"dicom"`` (a folder) or None for a path that is none of these."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    ext = _split_extension(path.name)[1].lower()
    if ext in _NIFTI_EXTENSIONS:
        return "nifti"
    if ext in _ITK_EXTENSIONS:
        return "itk"
    return None


def _absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute (symbolic links kept)."""
    return Path(path).expanduser().absolute()


def _visible_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively, sorted), skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)


def _found_names(folder: Path, limit: int = 5) -> str:
    """A short listing of ``folder`` for error messages."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        return f"it cannot be listed ({err})"
    if not names:
        return "it is empty"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"found: {', '.join(names[:limit])}{more}"


def _check_unique(datalist: Sequence[dict[str, Any]], where: str | Path) -> None:
    """Raise LayoutError when two entries share a case name."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in datalist:
        case = entry["case"]
        if case in seen:
            first, second = seen[case]["image"], entry["image"]
            raise LayoutError(f"case '{case}' appears twice in {where}: {first} and {second}")
        seen[case] = entry


def _require_folder(path: Path, what: str) -> None:
    """Raise LayoutError unless ``path`` is an existing folder."""
    if not path.exists():
        raise LayoutError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise LayoutError(f"{what} {path} is not a folder")


def _tag(datalist: list[dict[str, Any]], layout: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Add ``"layout"`` (and ``"kind"`` from the image path unless given) to every entry; returns the datalist."""
    for entry in datalist:
        image = entry["image"]
        first = image[0] if isinstance(image, list) else image
        entry["kind"] = kind or entry.get("kind") or _image_kind(first) or "itk"
        entry["layout"] = layout
    return datalist


def _canonical_modalities(modalities: Iterable[str], accepted: dict[str, str] = _MODALITY_ALIASES) -> list[str]:
    """Canonical names of the requested modalities (case-insensitive, aliases resolved); ValueError if invalid."""
    if isinstance(modalities, str):
        modalities = [modalities]
    out: list[str] = []
    for name in modalities:
        canonical = accepted.get(str(name).strip().lower())
        if canonical is None:
            raise ValueError(f"unknown modality {name!r}; accepted: t1, t1ce (alias t1c), t2, flair (alias t2f)")
        if canonical in out:
            raise ValueError(f"modality {name!r} is requested twice (as {canonical}) in {list(modalities)}")
        out.append(canonical)
    if not out:
        raise ValueError("no modality requested; give at least one of t1, t1ce, t2, flair")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Plain files and folders
# ----------------------------------------------------------------------------------------------------------------


def _file_entry(path: Path, case: str | None = None) -> dict[str, Any]:
    """Entry of one image file (NIfTI or ITK); LayoutError for another file type."""
    kind = _image_kind(path)
    if kind not in ("nifti", "itk"):
        raise LayoutError(f"{path} is not an image file this pipeline reads (expected {_LISTED} or a DICOM file)")
    return {"case": case or _split_extension(path.name)[0], "image": str(path), "kind": kind, "layout": "file"}


def index_nifti_folder(root: str | Path, recursive: bool = False) -> list[dict[str, Any]]:
    """Datalist of a folder of image files, one case per file (NIfTI, or another ITK format such as ``.mha``).

    Args:
        root: the folder.
        recursive: also take files in sub-folders; their case names join the relative path with ``_``
            (``sub/a.nii.gz`` -> ``sub_a``).

    Returns:
        ``[{"case": <file name without extension>, "image": ..., "kind": "nifti"|"itk", "layout": "folder"}, ...]``
        sorted by path.

    Raises:
        LayoutError: if the folder is missing, holds no image file, or two files give the same case name (such as
            ``a.nii`` and ``a.nii.gz``).
    """
    folder = _absolute(root)
    _require_folder(folder, "image folder")
    if recursive:
        files = _visible_files(folder)
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    datalist = []
    for path in files:
        kind = _image_kind(path)
        if kind not in ("nifti", "itk"):
            continue
        parts = [*path.relative_to(folder).parent.parts, _split_extension(path.name)[0]]
        datalist.append({"case": "_".join(parts), "image": str(path), "kind": kind, "layout": "folder"})
    if not datalist:
        where = "under" if recursive else "directly in"
        raise LayoutError(f"no image files ({_LISTED}) {where} {folder}; {_found_names(folder)}")
    _check_unique(datalist, folder)
    return datalist


# ----------------------------------------------------------------------------------------------------------------
# JSON datalists: MSD dataset.json, nnU-Net v2 dataset.json, plain lists
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; LayoutError naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"cannot read the JSON datalist {path}: {err}") from err


def _is_case_list_json(content: Any) -> bool:
    """Whether parsed JSON is a datalist: a list, a dict with case lists, or an nnU-Net v2 ``dataset.json``."""
    if isinstance(content, list):
        return True
    if not isinstance(content, dict):
        return False
    if "channel_names" in content and "file_ending" in content:
        return True
    return any(isinstance(content.get(k), list) for keys in _SPLIT_KEYS.values() for k in keys)


def _case_from_image(image: str | list[str]) -> str:
    """Case name derived from an image path (first path of a list; an nnU-Net ``_NNNN`` channel suffix dropped)."""
    first = image[0] if isinstance(image, list) else image
    stem = _split_extension(Path(first).name)[0]
    match = _CHANNEL_RE.match(stem)
    if match is not None and (isinstance(image, list) or match["channel"] == "0000"):
        return match["case"]
    return stem


def _resolve(value: Any, base: Path, source: Path, position: str) -> Path:
    """Absolute path of a listed file (relative to ``base``); LayoutError naming the JSON when it does not exist."""
    if not isinstance(value, str) or not value.strip():
        raise LayoutError(f"{source}: {position} has an invalid path {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    path = Path(os.path.normpath(path))
    if not path.exists():
        raise LayoutError(f"{source}: {position} lists {path}, which does not exist")
    return path


def _entry_from_json(item: Any, base: Path, source: Path, position: str) -> dict[str, Any]:
    """One datalist entry from a JSON item (a path string or a dict with ``"image"``)."""
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict) or "image" not in item:
        raise LayoutError(f"{source}: {position} is neither a path nor an object with an \"image\" key: {item!r}")
    entry = dict(item)
    image = item["image"]
    if isinstance(image, list):
        if not image:
            raise LayoutError(f"{source}: {position} has an empty \"image\" list")
        entry["image"] = [str(_resolve(v, base, source, position)) for v in image]
    else:
        entry["image"] = str(_resolve(image, base, source, position))
    for key in ("label", "mask"):
        if key in item and item[key] is not None:
            entry[key] = str(_resolve(item[key], base, source, f"{position} ({key})"))
    entry["case"] = str(item.get("case") or _case_from_image(entry["image"]))
    return entry


def _nnunet_entries(content: dict[str, Any], folder: Path, source: Path,
                    splits: tuple[str, ...]) -> list[dict[str, Any]]:
    """Entries of an nnU-Net v2 raw data set (``imagesTr/<case>_NNNN<ending>``, ``labelsTr/<case><ending>``)."""
    ending = str(content["file_ending"])
    channels = sorted(int(k) for k in content["channel_names"])
    datalist: list[dict[str, Any]] = []
    for name, images_dir, labels_dir in (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        if name not in splits or not (folder / images_dir).is_dir():
            continue
        cases: dict[str, dict[int, Path]] = {}
        for path in sorted((folder / images_dir).iterdir()):
            if path.name.endswith(ending) and (m := _CHANNEL_RE.match(path.name[: -len(ending)])):
                cases.setdefault(m["case"], {})[int(m["channel"])] = path
        for case, files in cases.items():
            missing = [c for c in channels if c not in files]
            if missing:
                raise LayoutError(f"{source}: case '{case}' in {folder / images_dir} lacks channel file(s) "
                                  + ", ".join(f"{case}_{c:04d}{ending}" for c in missing))
            images = [str(files[c]) for c in channels]
            entry: dict[str, Any] = {"case": case, "image": images if len(images) > 1 else images[0]}
            label = folder / labels_dir / f"{case}{ending}"
            if label.is_file():
                entry["label"] = str(label)
            datalist.append(entry)
    return datalist


def _msd_channels(content: dict[str, Any], modalities: Sequence[str], source: Path) -> list[int]:
    """Channel indices of the requested modalities from ``dataset.json`` (``"modality"`` or ``"channel_names"``)."""
    table = content.get("modality") or content.get("channel_names")
    if not isinstance(table, dict) or not table:
        raise LayoutError(f"{source} names no modalities (no \"modality\" or \"channel_names\"), so modalities "
                          f"{list(modalities)} cannot be selected")
    available: dict[str, int] = {}
    for key, name in table.items():
        canonical = _MSD_MODALITY.get(str(name).strip().lower())
        if canonical is not None:
            available.setdefault(canonical, int(key))
    missing = [m for m in modalities if m not in available]
    if missing:
        raise LayoutError(f"{source} lacks modality {', '.join(missing)} (requested {', '.join(modalities)}; "
                          f"its channels: {', '.join(f'{k}={v}' for k, v in sorted(table.items()))})")
    return [available[m] for m in modalities]


def index_msd(datalist_json: str | Path, split: str = "training", require_labels: bool = False,
              modalities: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Datalist of a JSON datalist: an MSD ``dataset.json``, an nnU-Net v2 ``dataset.json`` or a plain JSON list.

    Relative paths are resolved against the JSON's folder. MSD ``"test"`` items are plain path strings; MONAI-style
    ``"validation"`` and ``"testing"`` lists are read too. An nnU-Net v2 ``dataset.json`` (``"channel_names"``,
    ``"file_ending"``, no case lists) is read through its folders ``imagesTr/<case>_NNNN<ending>``,
    ``labelsTr/<case><ending>`` and ``imagesTs/``.

    Args:
        datalist_json: the JSON file, or a folder holding ``dataset.json``.
        split: ``"training"``, ``"validation"``, ``"test"`` or ``"all"`` (every list in the file); ignored for a plain
            JSON list.
        require_labels: demand a label for every entry.
        modalities: for a multi-modal data set, the modalities to use (t1, t1ce, t2, flair and aliases): a 4-D image
            gets ``"channels"`` (indices into its channel axis), an image list is reordered; both get
            ``"modalities"``.

    Returns:
        Entries with ``"case"`` (from ``"case"`` if given, else the image file name without extension and without an
        nnU-Net ``_0000`` suffix), ``"image"``, ``"label"`` when listed, ``"kind"`` and ``"layout"`` (``"msd"``
        for a JSON object, ``"datalist"`` for a plain list). Other keys of the items are kept as they are.

    Raises:
        LayoutError: if the file is unreadable or not a datalist, the split is absent or empty, a listed file is
            missing, a label is missing (when ``require_labels``), a case name repeats, or modalities cannot be
            matched.
        ValueError: for an unknown split or modality name.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    splits = tuple(s for s in _SPLITS[:-1] if split in (s, "all"))
    return _index_json(datalist_json, splits, require_labels, modalities)


def _index_json(datalist_json: str | Path, splits: tuple[str, ...], require_labels: bool,
                modalities: Sequence[str] | None) -> list[dict[str, Any]]:
    """:func:`index_msd` for a set of splits (``"training"``, ``"validation"``, ``"test"``)."""
    wanted = _canonical_modalities(modalities) if modalities is not None else None
    source = _absolute(datalist_json)
    if source.is_dir():
        if not (source / _DATASET_JSON).is_file():
            raise LayoutError(f"no {_DATASET_JSON} in {source}; {_found_names(source)}")
        source = source / _DATASET_JSON
    if not source.is_file():
        raise LayoutError(f"JSON datalist {source} does not exist")
    content = _read_json(source)
    base = source.parent
    if isinstance(content, list):
        layout = "datalist"
        datalist = [_entry_from_json(item, base, source, f"item {i}") for i, item in enumerate(content)]
    elif isinstance(content, dict) and _is_case_list_json(content):
        layout = "msd"
        has_lists = any(isinstance(content.get(k), list) for keys in _SPLIT_KEYS.values() for k in keys)
        if not has_lists:
            datalist = _nnunet_entries(content, base, source, splits)
        else:
            datalist = []
            for key in (k for s in splits for k in _SPLIT_KEYS[s]):
                for i, item in enumerate(content.get(key) or []):
                    datalist.append(_entry_from_json(item, base, source, f"\"{key}\" item {i}"))
    else:
        raise LayoutError(f"{source} is not a datalist: expected a JSON list of {{\"image\": ..., \"label\": ...}} "
                          f"or an object with \"training\"/\"test\" lists (MSD dataset.json)")
    if not datalist:
        raise LayoutError(f"{source} lists no case in {' or '.join(repr(s) for s in splits)}")
    if require_labels:
        unlabelled = [e["case"] for e in datalist if "label" not in e]
        if unlabelled:
            raise LayoutError(f"{source}: {len(unlabelled)} case(s) have no label: {', '.join(unlabelled[:5])}"
                              f"{' ...' if len(unlabelled) > 5 else ''}")
    if wanted is not None:
        _select_json_modalities(datalist, content, wanted, source)
    _check_unique(datalist, source)
    return _tag(datalist, layout)


def _select_json_modalities(datalist: list[dict[str, Any]], content: Any, wanted: list[str], source: Path) -> None:
    """Apply requested modalities to JSON entries (channels of a 4-D image, or a reordered image list)."""
    for entry in datalist:
        given = entry.get("modalities")
        if isinstance(entry["image"], list) and isinstance(given, list):
            names = _canonical_modalities(given)
            missing = [m for m in wanted if m not in names]
            if missing:
                raise LayoutError(f"{source}: case '{entry['case']}' lacks modality {', '.join(missing)} "
                                  f"(requested {', '.join(wanted)}; found {', '.join(names)})")
            entry["image"] = [entry["image"][names.index(m)] for m in wanted]
        elif isinstance(content, dict):
            channels = _msd_channels(content, wanted, source)
            if isinstance(entry["image"], list):
                if max(channels) >= len(entry["image"]):
                    raise LayoutError(f"{source}: case '{entry['case']}' has {len(entry['image'])} image(s), "
                                      f"fewer than the channels {channels} of modalities {', '.join(wanted)}")
                entry["image"] = [entry["image"][c] for c in channels]
            else:
                entry["channels"] = channels
        elif not (isinstance(entry["image"], list) and len(entry["image"]) == len(wanted)):
            raise LayoutError(f"{source}: case '{entry['case']}' does not say which modality each image is (give "
                              f"\"modalities\" in the item, or one image per requested modality: {', '.join(wanted)})")
        entry["modalities"] = list(wanted)


# ----------------------------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------------------------


def _short_uid(uid: str) -> str:
    """The last eight digits of a DICOM UID (the prefix is usually shared by an organisation)."""
    return uid.replace(".", "").strip(" \x00")[-8:]


def _dicom_entries(series: Sequence[Any], identify: bool, where: Path) -> list[dict[str, Any]]:
    """Entries for DICOM series (:class:`pipeline.io.volumes.DicomSeries`)."""
    datalist = []
    for item in series:
        folder = Path(item.folder)
        uid = str(item.uid).strip(" \x00")
        if identify and uid:
            case, selector = f"{folder.name}_{_short_uid(uid)}", uid
        else:
            case, selector = str(item.pseudonym), str(item.pseudonym)
        datalist.append({"case": case, "image": str(folder), "kind": "dicom", "series_uid": selector,
                         "layout": "dicom"})
    datalist.sort(key=lambda e: e["case"])
    _check_unique(datalist, where)
    return datalist


def index_dicom(root: str | Path, identify: bool = False) -> list[dict[str, Any]]:
    """Datalist of the DICOM series under a folder (searched recursively), or of the series of one DICOM file.

    Without ``identify``, no DICOM identifier ends up in the datalist or in output file names: the case name is the
    series' pseudonym (:func:`pipeline.io.volumes.pseudonym`, a hash of the SeriesInstanceUID) and ``"series_uid"``
    holds that pseudonym too (:func:`pipeline.io.volumes.read_volume` accepts either to pick the series). With
    ``identify=True``, cases are named ``<series folder name>_<last 8 digits of the SeriesInstanceUID>`` and
    ``"series_uid"`` is the UID itself. Paths are kept as they are on disk: folder names chosen by the user may
    themselves be identifying. A series split over several folders is listed once per folder, which makes its case
    name repeat (an error): point at one folder, or merge them.

    Args:
        root: a folder (every series below it is a case) or a single DICOM file (its series is the case).
        identify: name cases after their folder and series UID instead of a pseudonym.

    Returns:
        ``[{"case": ..., "image": <folder of the series' files>, "kind": "dicom", "series_uid": ..., "layout":
        "dicom"}, ...]`` sorted by case name.

    Raises:
        LayoutError: if the path is missing, holds no DICOM series, is a file that is not DICOM, or two series get
            the same case name.
    """
    from pipeline.io.volumes import is_dicom_file, list_dicom_series

    path = _absolute(root)
    if not path.exists():
        raise LayoutError(f"DICOM path {path} does not exist")
    if path.is_file():
        if not is_dicom_file(path):
            raise LayoutError(f"{path} is not a DICOM file")
        own = [s for s in list_dicom_series(path.parent, recursive=False)
               if any(_absolute(f) == path for f in s.files)]
        if not own:
            raise LayoutError(f"{path} is a DICOM file but no readable image series holds it")
        return _dicom_entries(own, identify, path)
    series = list_dicom_series(path, recursive=True)
    if not series:
        raise LayoutError(f"no DICOM image series under {path}; {_found_names(path)}")
    return _dicom_entries(series, identify, path)


def _has_dicom(files: Iterable[Path]) -> bool:
    """Whether any of ``files`` (skipping known non-DICOM extensions) is a DICOM file."""
    from pipeline.io.volumes import is_dicom_file

    skip = (*_IMAGE_EXTENSIONS, ".json", ".txt", ".md", ".csv", ".raw", ".img", ".zip", ".gz", ".png", ".jpg")
    return any(is_dicom_file(p) for p in files if not p.name.lower().endswith(skip))


# ----------------------------------------------------------------------------------------------------------------
# BraTS
# ----------------------------------------------------------------------------------------------------------------


def _brats_role(path: Path) -> tuple[str, str, str] | None:
    """``(scheme, case key, role)`` of a BraTS file, or None; role is a canonical modality, ``label`` or ``mask``."""
    name = path.name
    if m := _BRATS_2023.match(name):
        return "brats2023", m["case"], _ROLE[m["role"].lower()]
    if m := _BRATS_2017.match(name):
        return "brats2017", m["case"], _ROLE[m["role"].lower()]
    if m := _DEEPMEDIC.match(name):
        return "deepmedic", "", _ROLE[(m["role"] or m["other"]).lower()]
    if m := _BRATS_2015.match(name):
        return "brats2015", "", _ROLE[m["role"].lower()]
    return None


def _brats_cases(folder: Path, files: Sequence[Path] | None = None) -> dict[str, dict[str, Any]]:
    """BraTS cases under ``folder``: name -> ``{"folder", "scheme", "files": {role: path}}``.

    Cases of the 2018-2021 and 2023 naming are keyed by the file-name prefix (normally the folder name), so a
    flattened folder of several cases works too; 2015 (VSD) and DeepMedic cases are keyed by their case folder.
    """
    groups: dict[tuple[Path, str], dict[str, Any]] = {}
    for path in files if files is not None else _visible_files(folder):
        found = _brats_role(path)
        if found is None:
            continue
        scheme, key, role = found
        case_folder = path.parent
        if scheme == "brats2015" and case_folder.name.upper().startswith("VSD.") and case_folder != folder:
            case_folder = case_folder.parent
        name = key or case_folder.name
        group = groups.setdefault((case_folder, name), {"folder": case_folder, "schemes": set(), "files": {}})
        group["schemes"].add(scheme)
        if role in group["files"]:
            raise LayoutError(f"BraTS case folder {case_folder} has two files for {role}: "
                              f"{group['files'][role].name} and {path.relative_to(case_folder)}")
        group["files"][role] = path
    cases: dict[str, dict[str, Any]] = {}
    for (case_folder, name), group in sorted(groups.items(), key=lambda kv: (kv[0][1], str(kv[0][0]))):
        if len(group["schemes"]) > 1:
            raise LayoutError(f"BraTS case folder {case_folder} mixes naming schemes "
                              f"({', '.join(sorted(group['schemes']))}); keep one per case")
        if not any(role in BRATS_MODALITIES for role in group["files"]):
            continue
        if name in cases:
            raise LayoutError(f"BraTS case '{name}' appears twice under {folder}: in {cases[name]['folder']} and in "
                              f"{case_folder}")
        cases[name] = {"folder": case_folder, "scheme": group["schemes"].pop(), "files": group["files"]}
    return cases


def _found_modalities(case: dict[str, Any]) -> list[str]:
    """Canonical modalities present in a case, in the order t1, t1ce, t2, flair."""
    return [m for m in BRATS_MODALITIES if m in case["files"]]


def brats_modalities_available(root: str | Path) -> dict[str, list[str]]:
    """Which modalities each BraTS case under ``root`` has.

    Args:
        root: the BraTS folder (cases directly below it, or under ``HGG/``, ``LGG/``, ``Training/`` and the like).

    Returns:
        ``{case: [modalities found, in the order t1, t1ce, t2, flair]}`` sorted by case.

    Raises:
        LayoutError: if the folder is missing or holds no BraTS case.
    """
    folder = _absolute(root)
    _require_folder(folder, "BraTS folder")
    cases = _brats_cases(folder)
    if not cases:
        raise LayoutError(f"no BraTS cases under {folder}; {_found_names(folder)}; {_BRATS_EXPECTED}")
    return {name: _found_modalities(case) for name, case in cases.items()}


def index_brats(root: str | Path, modalities: Sequence[str] | None = BRATS_MODALITIES,
                require_labels: bool = True, missing_modalities: str = "raise") -> list[dict[str, Any]]:
    """Datalist of BraTS cases (2015, 2018-2021, 2023+ naming, or the DeepMedic copy of BraTS 2015).

    Accepted per case folder (cases directly under ``root`` or in sub-folders such as ``HGG/``, ``LGG/``,
    ``Training/``; ``.nii`` or ``.nii.gz``):

    * 2018-2021: ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (labels 0, 1, 2, 4: ``"brats2017+"``);
    * 2023+: ``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (labels 0, 1, 2, 3: ``"brats2023"``);
    * 2015: ``VSD.Brain.XX.O.MR_Flair.<id>/VSD.Brain.XX.O.MR_Flair.<id>.mha`` (``MR_T1``, ``MR_T1c``, ``MR_T2``) and
      ``VSD.Brain_3more.XX.O.OT.<id>/...mha`` (labels 0-4: ``"brats2015"``);
    * DeepMedic: ``Flair_subtrMeanDivStd``, ``T1c_...``, ``T1_...``, ``T2_...``, label ``OTMultiClass``, brain mask
      ``brainmask`` (labels 0-4: ``"brats2015"``).

    Args:
        root: the BraTS folder, or a single case folder.
        modalities: modalities in the order wanted (t1, t1ce or t1c, t2, flair or t2f; case-insensitive); None
            takes the modalities every case has (in the order t1, t1ce, t2, flair).
        require_labels: demand a label in every case.
        missing_modalities: ``"raise"`` (a case without a requested modality is an error) or ``"keep"`` (the case
            is listed with an empty path for each missing modality and ``"missing_modalities"``, a warning is
            logged, so a batch can report that case as failed and go on with the others).

    Returns:
        ``[{"case", "image": [one path per modality], "label", "mask" (DeepMedic), "kind": "nifti"|"itk",
        "layout": "brats", "modalities": [...], "label_convention": ...}, ...]`` sorted by case.

    Raises:
        LayoutError: if the folder is missing or holds no BraTS case, a case lacks a requested modality (the
            message names the case folder, the missing modality and those found) or its label (when
            ``require_labels``), a case name appears twice, or a case has two files for one modality.
        ValueError: for an unknown or repeated modality name.
    """
    if missing_modalities not in ("raise", "keep"):
        raise ValueError(f"missing_modalities must be 'raise' or 'keep', got {missing_modalities!r}")
    wanted = _canonical_modalities(modalities) if modalities is not None else None
    folder = _absolute(root)
    _require_folder(folder, "BraTS folder")
    cases = _brats_cases(folder)
    if not cases:
        raise LayoutError(f"no BraTS cases under {folder}; {_found_names(folder)}; {_BRATS_EXPECTED}")
    wanted = wanted if wanted is not None else _common_modalities(cases, folder)
    return [_brats_entry(name, case, wanted, require_labels, missing_modalities) for name, case in cases.items()]


def _common_modalities(cases: Mapping[str, dict[str, Any]], folder: Path) -> list[str]:
    """The modalities every case has (order t1, t1ce, t2, flair); a warning names those only some cases have."""
    wanted = [m for m in BRATS_MODALITIES if all(m in c["files"] for c in cases.values())]
    if not wanted:
        found = "; ".join(f"{n}: {', '.join(_found_modalities(c))}" for n, c in list(cases.items())[:5])
        raise LayoutError(f"the BraTS cases under {folder} have no modality in common; {found}")
    partial = sorted({m for c in cases.values() for m in c["files"] if m in BRATS_MODALITIES} - set(wanted))
    if partial:
        logger.warning("BraTS cases under %s: %s present in some cases only; using %s", folder, ", ".join(partial),
                       ", ".join(wanted))
    return wanted


def _brats_entry(name: str, case: Mapping[str, Any], wanted: Sequence[str], require_labels: bool,
                 missing_modalities: str) -> dict[str, Any]:
    """The datalist entry of one BraTS case folder (see :func:`index_brats`)."""
    files, found = case["files"], _found_modalities(case)
    missing = [m for m in wanted if m not in files]
    if missing and missing_modalities == "raise":
        raise LayoutError(f"BraTS case folder {case['folder']} lacks modality {', '.join(missing)} (requested "
                          f"{', '.join(wanted)}; found {', '.join(found)}); pass modalities=({', '.join(found)}) "
                          f"to use what is there")
    if missing:
        logger.warning("BraTS case folder %s lacks modality %s (found %s)", case["folder"], ", ".join(missing),
                       ", ".join(found))
    if require_labels and "label" not in files:
        raise LayoutError(f"BraTS case folder {case['folder']} has no label (_seg, -seg, OT or OTMultiClass file); "
                          f"pass require_labels=False for unlabelled cases")
    images = [str(files[m]) if m in files else "" for m in wanted]
    entry: dict[str, Any] = {"case": name, "image": images}
    if missing:
        entry["missing_modalities"] = missing
    for key in ("label", "mask"):
        if key in files:
            entry[key] = str(files[key])
    kinds = {_image_kind(p) for p in images if p}
    entry.update({"kind": "nifti" if kinds == {"nifti"} else "itk", "layout": "brats", "modalities": list(wanted),
                  "label_convention": _CONVENTIONS[case["scheme"]]})
    return entry


# ----------------------------------------------------------------------------------------------------------------
# Detection and the entry point
# ----------------------------------------------------------------------------------------------------------------


def _looks_like_brats(cases: dict[str, dict[str, Any]]) -> bool:
    """Whether detected BraTS cases are plausible: some case has two modalities, or a modality and a label."""
    return any(len(c["files"]) >= 2 for c in cases.values())


def _detect_folder(folder: Path) -> str:
    """Layout name of a folder (see the module docstring for the order); LayoutError when nothing fits."""
    if (folder / "imagesTr").is_dir() and (folder / "masksTr").is_dir():
        return "learn2reg"
    dataset_json = folder / _DATASET_JSON
    if dataset_json.is_file():
        try:
            content = json.loads(dataset_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            content = None
        if _is_case_list_json(content):
            return "msd"
    files = _visible_files(folder)
    if any(_LITS_VOLUME.match(p.name) for p in files):
        return "lits"
    if any(p.is_dir() and _SPECT_CASE.match(p.name) and any(q.name.startswith("recon_osem") for q in p.iterdir())
           for p in folder.iterdir()):
        return "spect"
    if _looks_like_brats(_brats_cases(folder, files)):
        return "brats"
    images_dir = folder / "imagesTr"
    if images_dir.is_dir() and any(_LUNG_IMAGE.match(p.name) for p in images_dir.iterdir()):
        return "learn2reg"
    if _has_dicom(files):
        top = [p.name for p in folder.iterdir() if p.is_file() and _image_kind(p) in ("nifti", "itk")]
        if top:
            logger.warning("%s holds DICOM files and %d image file(s) (e.g. %s); indexing the DICOM series; pass "
                           "layout='folder' for the image files", folder, len(top), top[0])
        return "dicom"
    if any(_image_kind(p) in ("nifti", "itk") for p in folder.iterdir() if p.is_file()):
        return "folder"
    raise LayoutError(
        f"no usable images in {folder}; {_found_names(folder)}. Looked for: imagesTr/ + masksTr/ (Learn2Reg), "
        f"{_DATASET_JSON} with case lists (MSD/nnU-Net), volume-N.nii[.gz] (LiTS), case-N/recon_osemK (bone SPECT), "
        f"BraTS case files, DICOM files (recursively) and image files ({_LISTED}) directly in the folder"
    )


def _detect(path: Path) -> str:
    """Layout name of a file or folder for ``layout="auto"``."""
    if path.is_dir():
        return _detect_folder(path)
    if path.name.lower().endswith(".json"):
        return "datalist"
    if _image_kind(path) in ("nifti", "itk"):
        return "file"
    from pipeline.io.volumes import is_dicom_file

    if is_dicom_file(path):
        return "dicom"
    raise LayoutError(f"{path} is neither an image file ({_LISTED}), a DICOM file, nor a JSON datalist")


def index_inputs(path: str | Path, layout: str = "auto", *, modalities: Sequence[str] | None = None,
                 require_labels: bool = False, identify: bool = False,
                 missing_modalities: str = "raise") -> list[dict[str, Any]]:
    """Datalist of whatever ``path`` holds: an image file, a DICOM file or folder, a JSON datalist or a data set.

    Args:
        path: an image file (one case), a DICOM file (its series), a JSON datalist (MSD ``dataset.json`` or a plain
            list; relative paths resolved against the JSON's folder) or a folder (layout detected, see the module
            docstring).
        layout: one of ``LAYOUTS``; ``"auto"`` detects it, any other value forces it.
        modalities: modalities to use, in order (t1, t1ce, t2, flair and aliases): BraTS cases get one image per
            modality, MSD multi-modal images get ``"channels"``. None takes, for BraTS, the modalities every case
            has. An error for layouts with one image per case.
        require_labels: demand a label for every case (JSON datalists: only the labelled ``"training"`` and
            ``"validation"`` lists are read). An error for layouts that never have labels (file, folder, DICOM).
        identify: DICOM only: name cases after their folder and series UID instead of a pseudonym.
        missing_modalities: BraTS only: ``"raise"`` or ``"keep"`` a case that lacks a requested modality (see
            :func:`index_brats`).

    Returns:
        The datalist (see the module docstring for the keys).

    Raises:
        LayoutError: if the path is missing, nothing usable is found (the message names the folder and what was
            looked for), a listed file is missing, a case name repeats, or the layout does not fit the request.
        ValueError: for an unknown layout or modality name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    source = _absolute(path)
    if not source.exists():
        raise LayoutError(f"input path {source} does not exist")
    chosen = _detect(source) if layout == "auto" else layout
    if modalities is not None and chosen not in ("brats", "msd", "datalist"):
        raise LayoutError(f"modalities {list(modalities)} were requested but {source} is in the '{chosen}' layout, "
                          "which has one image per case")
    if require_labels and chosen in ("file", "folder", "dicom"):
        raise LayoutError(f"labels are required but {source} is in the '{chosen}' layout, which has no labels")
    return _index_layout(source, chosen, modalities, require_labels, identify, missing_modalities)


def _index_file(source: Path, identify: bool) -> list[dict[str, Any]]:
    if source.is_dir():
        raise LayoutError(f"layout 'file' needs a file, but {source} is a folder")
    if _image_kind(source) is None and not source.name.lower().endswith(".json"):
        from pipeline.io.volumes import is_dicom_file

        if is_dicom_file(source):
            return index_dicom(source, identify=identify)
    return [_file_entry(source)]


def _index_layout(source: Path, chosen: str, modalities: Sequence[str] | None, require_labels: bool, identify: bool,
                  missing_modalities: str) -> list[dict[str, Any]]:
    """The datalist of ``source`` read in layout ``chosen`` (arguments as :func:`index_inputs`)."""
    if chosen == "file":
        return _index_file(source, identify)
    if chosen == "folder":
        return index_nifti_folder(source)
    if chosen == "dicom":
        return index_dicom(source, identify=identify)
    if chosen in ("datalist", "msd"):
        if chosen == "datalist" and source.is_dir():
            raise LayoutError(f"layout 'datalist' needs a JSON file, but {source} is a folder")
        splits = _LABELLED_SPLITS if require_labels else ("training", "validation", "test")
        return _index_json(source, splits, require_labels, modalities)
    if chosen == "brats":
        return index_brats(source, modalities=modalities, require_labels=require_labels,
                           missing_modalities=missing_modalities)
    _require_folder(source, f"{chosen} folder")
    indexers = {"lits": index_lits, "learn2reg": index_lung, "spect": index_spect}
    return _tag(indexers[chosen](source, require_labels=require_labels), chosen, "nifti")
