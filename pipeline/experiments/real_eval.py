"""Evaluate a trained bundle on the small real sample cases that fit it.

    python -m pipeline.experiments.real_eval <lits|lung|spect|brats> [--real-data DIR] [--out DIR] [--method m4|mode1]
    [--no-mlflow]
        [--key value ...]

The real-data folder (``--real-data``, else ``VARSEG_REAL_DATA``, else ``../shared/data/real``; see
:func:`pipeline.paths.real_data_root`) holds a few public cases, described in its ``PROVENANCE.md``. Only the cases
that fit a bundle are used, and only the comparisons their labels allow:

* **lits**: the TotalSegmentator abdominal CT ``a_liver_ct/totalsegmentator/example_ct_sm.nii.gz`` (3 mm) with
  ``example_seg.nii.gz``, and the CT DICOM series ``example_ct_dicom/`` (0.98 x 0.98 x 2 mm) with
  ``example_seg_dicom.nii.gz``; liver = label 5 in both (a model output, not a manual annotation). The network's
  full 3-class argmax (background / liver / lesion) is computed; the predicted liver (liver or lesion class) is
  compared with label 5 (Dice, Jaccard), and the predicted lesion volume is reported in mL without a reference
  (there is no tumour label). Labels are resampled onto the image grid in physical space (SimpleITK,
  nearest neighbour, :func:`label_on_grid`): the DICOM label is stored LAS while the series reads LPS.
* **lung** (selective): the left-lung labels {10, 11} of ``example_seg.nii.gz`` on ``example_ct_sm.nii.gz`` (lung
  bases only). On each of up to 3 axial slices (RAS) with the largest left-lung region, clicks are simulated inside
  that region with the bundle's slicer settings (seeded as
  :meth:`pipeline.selective.samples.SelectiveSlices.from_volume`
  seeds them), then the trained VM-Net (``--method``, default m4) and the per-image TV baseline (the bundle's TV
  settings, ``mu`` = ``tv_real_mu`` of ``methods/tv.json``, the middle of ``tv_mu_grid``) segment it; Dice and Jaccard
  against the region, per slice.
* **brats**: the four BraTS 2015 cases of ``c_brain_mr/deepmedic_brats2015/`` (FLAIR and T1c only, already z-scored
  inside the brain, 1 mm, with the brain mask and the manual labels ``OTMultiClass`` 0-4). The model trained on
  FLAIR + T1c phantoms (``methods/flair_t1ce.json``) segments each case with the settings of
  ``configs/real_eval.json``: input clipped like in training, 0 outside the brain mask (the phantoms' z-scored
  background), then once on the native grid and once resampled to ``real_eval_spacings_mm`` (the phantoms show a
  brain at about 0.4 times real size on 1 mm voxels, so 2.5 mm puts a real brain at the size the network saw);
  class probabilities go back to the native grid (trilinear), argmax, inside the brain. Complete tumour
  (label > 0): Dice, Jaccard, precision, recall per case and grid.
* **spect**: ``d_nm/nema_wg04/NM1_UNC.dcm`` is checked first (:func:`spect_applicability`); a planar NM image is
  reported as ``not applicable`` with the reason. A reconstructed 3-D SPECT volume would be segmented and its
  predicted bone volume reported (no reference).

Outputs in ``--out`` (default ``bundles/<bundle>/eval/real``): ``cases.csv`` (one row per case, or per slice for
lung), ``summary.json``, ``summary.md`` (the Markdown table, also printed) and, for lits, the predicted class maps
``masks/<case>_classes.nii.gz`` in each input's geometry. One MLflow run in the bundle's experiment (run name
``<bundle>-real-eval-...``, tag ``workflow=real-eval``) logs the checkpoint's name and SHA-256 prefix, the real-data
folder's name (never its absolute path), the case list, the metrics and the files above. Cases are named by file
stem or DICOM series pseudonym only.

Exit code 0: every case evaluated (or not applicable); 1: a case failed or its files are missing; 2: unknown bundle,
missing real-data folder, missing checkpoint or bad configuration (one ``error:`` line on stderr, no traceback).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import mask_scores
from pipeline.io.arguments import OneLineArgumentParser, OverrideError, one_line, parse_overrides
from pipeline.io.files import sha256_prefix

logger = logging.getLogger("pipeline.experiments.real_eval")

__all__ = [
    "BUNDLES",
    "LEFT_LUNG_LABELS",
    "LITS_CASES",
    "LIVER_LABEL",
    "LUNG_CASE",
    "RealEvalError",
    "RealEvalResult",
    "SPECT_CASE",
    "evaluate",
    "label_on_grid",
    "main",
    "spect_applicability",
]

BUNDLES = ("lits", "lung", "spect", "brats")
DEFAULT_METHODS = {"lung": "m4", "spect": "mode1"}
METHOD_CHOICES = {"lung": ("m1", "m2", "m3", "m4"), "spect": ("mode1", "mode2", "mode3", "mode4")}
_TS = "a_liver_ct/totalsegmentator"
LITS_CASES: tuple[tuple[str, str], ...] = (
    (f"{_TS}/example_ct_sm.nii.gz", f"{_TS}/example_seg.nii.gz"),
    (f"{_TS}/example_ct_dicom", f"{_TS}/example_seg_dicom.nii.gz"),
)
"""(image, label) of the LiTS cases, relative to the real-data folder."""
LIVER_LABEL = 5
"""Liver in the TotalSegmentator v2 class map."""
LUNG_CASE: tuple[str, str] = (f"{_TS}/example_ct_sm.nii.gz", f"{_TS}/example_seg.nii.gz")
"""(image, label) of the lung case, relative to the real-data folder."""
LEFT_LUNG_LABELS = (10, 11)
"""Left upper and lower lobe in the TotalSegmentator v2 class map."""
LUNG_SLICES = 3
BRATS_FOLDER = "c_brain_mr/deepmedic_brats2015"
"""The DeepMedic copy of BraTS 2015 cases, relative to the real-data folder."""
SPECT_CASE = "d_nm/nema_wg04/NM1_UNC.dcm"
"""The only nuclear-medicine file of the real-data folder, relative to it."""
_RECON_TYPES = ("RECON TOMO", "RECON GATED TOMO")
_SOP_NAMES = {"1.2.840.10008.5.1.4.1.1.7": "Secondary Capture", "1.2.840.10008.5.1.4.1.1.20": "NM Image",
              "1.2.840.10008.5.1.4.1.1.128": "PET Image"}
_TRAIN_COMMANDS = {
    "lits": "python -m monai.bundle run --config_file bundles/lits/configs/train.json",
    "lung": "python -m monai.bundle run --config_file \"['bundles/lung/configs/train.json',"
            "'bundles/lung/configs/methods/{method}.json']\"",
    "spect": "python -m monai.bundle run --config_file \"['bundles/spect/configs/train.json',"
             "'bundles/spect/configs/methods/{method}.json']\"",
    "spect-mode1": "python -m monai.bundle run --config_file bundles/spect/configs/train.json",
    "brats": "python -m monai.bundle run --config_file \"['bundles/brats/configs/train.json',"
             "'bundles/brats/configs/methods/flair_t1ce.json']\"",
}


class RealEvalError(ValueError):
    """An evaluation that cannot start (unknown bundle, no real-data folder, no checkpoint): exit code 2."""


@dataclass
class RealEvalResult:
    """What one evaluation produced.

    Attributes:
        bundle: the bundle evaluated.
        rows: one dict per case (per slice for lung), as written to ``cases.csv``.
        summary: the ``summary.json`` content (settings and aggregate metrics).
        table: the Markdown table (``summary.md``).
        out_dir: where the files were written.
        columns: the ``cases.csv`` columns, in order.
    """

    bundle: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    table: str
    out_dir: Path
    columns: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every case was evaluated or is not applicable, else 1."""
        return 0 if all(r.get("status") in ("done", "not applicable") for r in self.rows) else 1


# ----------------------------------------------------------------------------------------------------------------
# Helpers usable on their own
# ----------------------------------------------------------------------------------------------------------------


def label_on_grid(label_path: str | Path, volume: Any) -> tuple[np.ndarray, int, int]:
    """Resample a label map onto a volume's voxel grid in physical space (SimpleITK, nearest neighbour).

    Both images are placed by their own geometry (origin, spacing, direction), so a label stored in another axis
    order or orientation (e.g. a LAS NIfTI label of an LPS DICOM series) lands on the right voxels; a label that
    covers the same physical region on the same lattice keeps every labelled voxel.

    Args:
        label_path: the label file (NIfTI or another format SimpleITK reads).
        volume: a :class:`pipeline.io.volumes.Volume` (its ``reference`` gives the target grid).

    Returns:
        ``(labels, labelled_before, labelled_after)``: the label array in the volume's own voxel order (shape
        ``volume.shape``, integer values), and the number of non-zero voxels in the label file and on the grid.

    Raises:
        pipeline.io.volumes.CaseError: naming the label file when it cannot be read or is not a scalar 3D image.
    """
    import SimpleITK as sitk

    from pipeline.io.volumes import CaseError

    path = Path(label_path)
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = " ".join(str(err).split())[-300:]
        raise CaseError(f"{path.name}: unreadable label file ({reason})") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path.name}: label is a {label.GetDimension()}D image with "
                        f"{label.GetNumberOfComponentsPerPixel()} component(s); a scalar 3D label map is expected")
    before = int(np.count_nonzero(sitk.GetArrayViewFromImage(label)))
    resampled = sitk.Resample(label, volume.reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              label.GetPixelID())
    labels = np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))
    after = int(np.count_nonzero(labels))
    return labels, before, after


def spect_applicability(path: str | Path) -> tuple[str, str | None]:
    """Whether a file is a reconstructed 3-D SPECT volume the SPECT bundle can segment.

    The header is read with SimpleITK (dimension, size, modality, number of frames, ImageType, SOP class); DICOM
    files that are planar (one frame) or whose ImageType is not ``RECON TOMO`` are not applicable, and so is a file
    :func:`pipeline.io.volumes.read_volume` rejects. Non-DICOM files (NIfTI...) need a third axis longer than 1.

    Args:
        path: the file.

    Returns:
        ``(case, reason)``: the case id (DICOM series pseudonym, or file stem) and None when the file is usable,
        else a one-line reason without identifying fields.
    """
    import SimpleITK as sitk

    from pipeline.io.volumes import CaseError, is_dicom_file, pseudonym, read_volume

    path = Path(path)
    dicom = is_dicom_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return (path.name.split(".")[0] if not dicom else "dicom-file"), "unreadable image header"

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip(" \x00") if reader.HasMetaDataKey(key) else ""

    case = pseudonym(tag("0020|000e")) if dicom and tag("0020|000e") else path.name.split(".")[0]
    size = tuple(int(n) for n in reader.GetSize())
    try:
        volume = read_volume(path)
        case = volume.case
        size = volume.shape
    except CaseError as err:
        text = str(err).split(": ", 1)[-1]
        return case, f"read_volume rejects it ({text})"
    in_plane = "x".join(str(n) for n in size[:2])
    if not dicom:
        if len(size) < 3 or size[2] <= 1:
            return case, f"a 2-D image ({in_plane} pixels, one slice), not a reconstructed 3-D SPECT volume"
        return case, None
    modality = tag("0008|0060") or "unknown"
    frames = tag("0028|0008") or "1"
    image_type = [v.strip() for v in tag("0008|0008").split("\\")]
    sop = _SOP_NAMES.get(tag("0008|0016"), tag("0008|0016") or "unknown")
    kind = " ".join(v.lower() for v in image_type[2:3])
    described = (f"ImageType {'/'.join(image_type) or 'unknown'}, {in_plane} pixels x {size[2]} slice(s), "
                 f"{frames} frame(s), {sop} storage")
    if modality not in ("NM", "PT") or size[2] <= 1 or not any(t in image_type for t in _RECON_TYPES):
        what = f"{'a 2-D planar' if size[2] <= 1 else 'a'} {kind + ' ' if kind else ''}{modality} image"
        return case, (f"{what} ({described}), not a reconstructed 3-D SPECT volume (ImageType RECON TOMO with "
                      "several slices)")
    return case, None


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def _load_config(bundle: str, method: str | None, overrides: Mapping[str, Any]) -> Any:
    """The bundle's inference config (as :mod:`pipeline.inference.batch` builds it, then ``configs/real_eval.json``
    where the bundle has one) with ``method`` and ``overrides`` set."""
    from monai.bundle import ConfigParser

    from pipeline.inference.batch import BatchError
    from pipeline.inference.cli import bundle_config_files, inference_config_files
    from pipeline.io.arguments import check_override_keys, config_keys

    try:
        files = inference_config_files(bundle, method)
        check_override_keys(overrides, config_keys(bundle_config_files(bundle)), f"bundle {bundle}")
    except (BatchError, OverrideError) as err:
        raise RealEvalError(str(err)) from None
    real_eval_config = Path(files[0]).with_name("real_eval.json")  # real-data settings merged last, if any
    if real_eval_config.is_file():
        files = [*files, str(real_eval_config)]
    config = ConfigParser()
    config.read_config(files if len(files) > 1 else files[0])
    if method is not None:
        config["method"] = method
    for key, value in overrides.items():
        config[key] = value
    return config


def _train_command(bundle: str, method: str | None) -> str:
    if bundle == "spect" and method == "mode1":
        return _TRAIN_COMMANDS["spect-mode1"]
    return _TRAIN_COMMANDS[bundle].format(method=method)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------------------------------------------
# LiTS
# ----------------------------------------------------------------------------------------------------------------

_LITS_COLUMNS = ["case", "input", "status", "reason", "spacing_mm", "liver_dice", "liver_jaccard",
                 "liver_ml_predicted", "liver_ml_reference", "lesion_ml_predicted", "label_voxels",
                 "label_voxels_on_grid", "runtime_s", "mask"]


def _evaluate_lits(config: Any, root: Path, out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from pipeline.evaluation.metrics import dice_jaccard
    from pipeline.io.volumes import CaseError, read_volume, write_mask

    num_classes = int(config.get_parsed_content("num_classes"))
    lesion_class = int(config.get_parsed_content("lesion_channel"))
    config["target_labels"] = list(range(num_classes))  # the full argmax: 0 background, 1 liver, 2 lesion
    predictor = config.get_parsed_content("predictor")
    predictor.load()
    rows = []
    for image_rel, label_rel in LITS_CASES:
        image_path, label_path = root / image_rel, root / label_rel
        stem = Path(image_rel).name.split(".")[0]
        dicom = image_path.is_dir()
        row: dict[str, Any] = {"case": stem if not dicom else "dicom-series", "input": "DICOM" if dicom else "NIfTI"}
        start = time.perf_counter()
        missing = [p.name for p in (image_path, label_path) if not p.exists()]
        if missing:
            what = "the DICOM series folder" if dicom and not image_path.exists() else ", ".join(missing)
            row.update(status="missing", reason=f"not in the real-data folder: {what}")
            rows.append(row)
            continue
        try:
            volume = read_volume(image_path)
            row["case"] = volume.case
            labels, before, after = label_on_grid(label_path, volume)
            classes = np.asarray(predictor(volume, {"case": volume.case}))
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            liver_pred = classes > 0
            reference = labels == LIVER_LABEL
            dice, jaccard = dice_jaccard(liver_pred, reference)
            mask = write_mask(classes.astype(np.uint8), volume, out_dir / "masks" / f"{volume.case}_classes.nii.gz",
                              overwrite=True)
            row.update(status="done", reason="", spacing_mm="x".join(f"{s:.3g}" for s in volume.spacing),
                       liver_dice=dice, liver_jaccard=jaccard,
                       liver_ml_predicted=float(liver_pred.sum()) * voxel_ml,
                       liver_ml_reference=float(reference.sum()) * voxel_ml,
                       lesion_ml_predicted=float((classes == lesion_class).sum()) * voxel_ml,
                       label_voxels=before, label_voxels_on_grid=after,
                       mask=str(Path("masks") / mask.name))
            if after != before:
                row["reason"] = f"label resampling kept {after} of {before} labelled voxels"
        except (CaseError, ValueError, RuntimeError, OSError) as err:
            row.update(status="failed", reason=one_line(err)[:300])
        row["runtime_s"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows, _LITS_COLUMNS


def _lits_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| case | input | spacing (mm) | liver Dice | liver Jaccard | liver mL predicted / label 5 | "
             "predicted lesion mL (no ground truth) | labelled voxels kept on the grid |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "done":
            lines.append(f"| {r['case']} | {r.get('input', '')} | {r['status']}: {r.get('reason', '')} "
                         "| | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['input']} | {r['spacing_mm']} | {_fmt(r['liver_dice'])} | "
                     f"{_fmt(r['liver_jaccard'])} | {_fmt(r['liver_ml_predicted'], 1)} / "
                     f"{_fmt(r['liver_ml_reference'], 1)} | {_fmt(r['lesion_ml_predicted'], 1)} | "
                     f"{r['label_voxels_on_grid']} of {r['label_voxels']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Lung (selective)
# ----------------------------------------------------------------------------------------------------------------

_LUNG_COLUMNS = ["case", "slice", "status", "reason", "object_pixels", "left_lung_pixels", "clicks", "vm_dice",
                 "vm_jaccard", "vm_pixels", "tv_dice", "tv_jaccard", "tv_pixels", "tv_mu", "runtime_s"]


def _tv_settings(overrides: Mapping[str, Any]) -> dict[str, float]:
    """``lam``, ``theta``, ``mu`` (``tv_real_mu``) and ``max_iter`` of the lung bundle's TV (``methods/tv.json``).

    No validation slices with labels exist on a real scan, so ``mu`` is not chosen there: the config's
    ``tv_real_mu`` (the middle of ``tv_mu_grid`` by default) is used, and an override (``--tv_real_mu 2``) changes it.
    """
    from monai.bundle import ConfigParser

    from pipeline.paths import bundle_root

    configs = Path(bundle_root("lung")) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "methods" / "tv.json")])
    for key, value in overrides.items():
        parser[key] = value
    return {key: float(parser.get_parsed_content(name)) for key, name in
            (("lam", "lam"), ("theta", "theta"), ("mu", "tv_real_mu"), ("max_iter", "tv_max_iter"))}


def _lung_slices(target: np.ndarray, count: int) -> list[tuple[int, np.ndarray, int]]:
    """``(z, largest region, slice area)`` of the ``count`` axial slices whose largest region is biggest."""
    from pipeline.selective.samples import largest_component

    found = []
    for z in np.flatnonzero(target.any(axis=(0, 1))):
        region = largest_component(target[:, :, z])
        found.append((int(region.sum()), int(z), region, int(target[:, :, z].sum())))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [(z, region, area) for _, z, region, area in found[:count]]


def _evaluate_lung(config: Any, root: Path, overrides: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    from pipeline.evaluation.metrics import dice_jaccard
    from pipeline.io.files import load_weights
    from pipeline.io.volumes import CaseError, read_volume
    from pipeline.selective import baselines
    from pipeline.selective.evaluation import predict_mask
    from pipeline.selective.samples import loader_samples

    image_path, label_path = root / LUNG_CASE[0], root / LUNG_CASE[1]
    stem = Path(LUNG_CASE[0]).name.split(".")[0]
    missing = [p.name for p in (image_path, label_path) if not p.exists()]
    if missing:
        return ([{"case": stem, "status": "missing", "reason": f"not in the real-data folder: {', '.join(missing)}"}],
                _LUNG_COLUMNS)
    network = config.get_parsed_content("network")
    slicer = config.get_parsed_content("slicer")
    guidance = str(config.get_parsed_content("guidance"))
    divisible = int(config.get_parsed_content("divisible"))
    device = config.get_parsed_content("device")
    load_weights(network, config.get_parsed_content("ckpt_path"), device)
    tv = _tv_settings(overrides)
    rows: list[dict[str, Any]] = []
    try:
        volume = read_volume(image_path)
        labels, _, _ = label_on_grid(label_path, volume)
    except (CaseError, ValueError, OSError) as err:
        return [{"case": stem, "status": "failed", "reason": one_line(err)[:300]}], _LUNG_COLUMNS
    hu_ras = np.asarray(volume.to_ras(), dtype=np.float32)
    target = np.isin(volume.to_ras(labels), LEFT_LUNG_LABELS)
    if not target.any():
        return ([{"case": volume.case, "status": "failed",
                  "reason": f"{label_path.name}: no voxel with labels {list(LEFT_LUNG_LABELS)}"}], _LUNG_COLUMNS)
    for position, (z, region, area) in enumerate(_lung_slices(target, LUNG_SLICES)):
        start = time.perf_counter()
        row: dict[str, Any] = {"case": volume.case, "slice": z, "object_pixels": int(region.sum()),
                               "left_lung_pixels": area}
        try:
            seed = int(np.random.default_rng([slicer.seed, position]).integers(2**31 - 1))
            sample = slicer.from_slice(hu_ras[:, :, z], region, case=volume.case, slice_index=z, seed=seed)
            vm = predict_mask(network, loader_samples([sample], guidance)[0], divisible, device)
            result = baselines.tv_segment(np.asarray(sample["fitting"][0], dtype=np.float64),
                                          np.asarray(sample["geodesic"][0], dtype=np.float64), lam=tv["lam"],
                                          theta=tv["theta"], mu=tv["mu"], max_iter=int(tv["max_iter"]))
            vm_dice, vm_jaccard = dice_jaccard(vm, region)
            tv_dice, tv_jaccard = dice_jaccard(result.mask, region)
            row.update(status="done", reason="", clicks=len(json.loads(sample["points"])), vm_dice=vm_dice,
                       vm_jaccard=vm_jaccard, vm_pixels=int(np.count_nonzero(vm)), tv_dice=tv_dice,
                       tv_jaccard=tv_jaccard, tv_pixels=int(np.count_nonzero(result.mask)), tv_mu=tv["mu"])
        except (ValueError, RuntimeError) as err:
            row.update(status="failed", reason=one_line(err)[:300])
        row["runtime_s"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows, _LUNG_COLUMNS


def _lung_table(rows: Sequence[Mapping[str, Any]], method: str) -> str:
    name = method.upper()
    lines = [f"| case | axial slice (RAS z) | region px (left lung px) | clicks | {name} Dice | {name} Jaccard | "
             f"{name} predicted px | TV Dice | TV Jaccard | TV predicted px |", "|---" * 10 + "|"]
    for r in rows:
        if r.get("status") != "done":
            lines.append(f"| {r['case']} | {r.get('slice', '')} | {r['status']}: {r.get('reason', '')} | | | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['slice']} | {r['object_pixels']} ({r['left_lung_pixels']}) | "
                     f"{r['clicks']} | {_fmt(r['vm_dice'])} | {_fmt(r['vm_jaccard'])} | {r['vm_pixels']} | "
                     f"{_fmt(r['tv_dice'])} | {_fmt(r['tv_jaccard'])} | {r['tv_pixels']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# SPECT
# ----------------------------------------------------------------------------------------------------------------

_SPECT_COLUMNS = ["case", "status", "reason", "spacing_mm", "bone_ml_predicted", "runtime_s"]


def _evaluate_spect(config: Any, root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from pipeline.io.volumes import CaseError, read_volume

    path = root / SPECT_CASE
    if not path.exists():
        return ([{"case": Path(SPECT_CASE).stem, "status": "missing",
                  "reason": "not in the real-data folder: the NM DICOM file"}], _SPECT_COLUMNS)
    start = time.perf_counter()
    case, reason = spect_applicability(path)
    row: dict[str, Any] = {"case": case}
    if reason is not None:
        row.update(status="not applicable", reason=reason)
    else:
        try:
            predictor = config.get_parsed_content("predictor")
            predictor.load()
            volume = read_volume(path)
            mask = np.asarray(predictor(volume, {"case": volume.case}))
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            row.update(status="done", reason="", spacing_mm="x".join(f"{s:.3g}" for s in volume.spacing),
                       bone_ml_predicted=float((mask > 0).sum()) * voxel_ml)
        except (CaseError, ValueError, RuntimeError, OSError) as err:
            row.update(status="failed", reason=one_line(err)[:300])
    row["runtime_s"] = round(time.perf_counter() - start, 2)
    return [row], _SPECT_COLUMNS


# ----------------------------------------------------------------------------------------------------------------
# BraTS
# ----------------------------------------------------------------------------------------------------------------

_BRATS_COLUMNS = ["case", "grid_mm", "status", "reason", "dice", "jaccard", "precision", "recall",
                  "tumour_ml_predicted", "tumour_ml_reference", "runtime_s", "mask"]


def _brats_inputs(entry: Mapping[str, Any], normalize: Any) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray]:
    """One real BraTS case in RAS: the first volume, the normalised image (0 outside the brain), brain, reference,
    voxel spacing."""
    import torch

    from pipeline.io.volumes import CaseError, read_volume

    case = str(entry["case"])
    volumes = [read_volume(p) for p in entry["image"]]
    image = torch.stack([torch.as_tensor(v.to_ras(), dtype=torch.float32) for v in volumes])
    image = torch.as_tensor(normalize(image, source=f"case '{case}'"))
    brain = read_volume(entry["mask"]).to_ras() > 0.5 if entry.get("mask") else \
        (image != image.amin()).any(0).numpy()
    image[:, ~torch.as_tensor(brain)] = 0.0
    reference = read_volume(entry["label"]).to_ras() > 0
    if reference.shape != brain.shape or image.shape[1:] != reference.shape:
        raise CaseError(f"label {entry['label']} does not share the image grid {tuple(image.shape[1:])}")
    return volumes[0], image, brain, reference, np.linalg.norm(volumes[0].ras_affine[:3, :3], axis=0)


def _brats_predict(image: Any, spacing: np.ndarray, grid: float, inferer: Any, network: Any, device: Any) -> Any:
    """Tumour class probabilities of ``image`` segmented on a ``grid`` mm grid, back on the image's grid."""
    import torch
    import torch.nn.functional as F

    size = [max(16, int(round(n * s / grid))) for n, s in zip(image.shape[1:], spacing)]
    x = image[None]
    if list(size) != list(image.shape[1:]):
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    with torch.no_grad():
        prob = torch.softmax(inferer(x.to(device), network).float().cpu(), dim=1)
        if list(size) != list(image.shape[1:]):
            prob = F.interpolate(prob, size=list(image.shape[1:]), mode="trilinear", align_corners=False)
    return prob


def _evaluate_brats(config: Any, root: Path, out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from pipeline.io.files import load_weights
    from pipeline.io.layouts import index_brats
    from pipeline.io.volumes import CaseError, write_mask
    from transforms import NormalizeModalities

    modalities = [str(m) for m in config.get_parsed_content("modalities")]
    tumour = int(config.get_parsed_content("tumour_channel"))
    normalize = NormalizeModalities(modalities, already_normalized=bool(config.get_parsed_content(
        "already_normalized")), clip=config.get_parsed_content("intensity_clip"))
    device, network = config.get_parsed_content("device"), config.get_parsed_content("network")
    load_weights(network, config.get_parsed_content("ckpt_path"), device)
    inferer = config.get_parsed_content("inferer")
    rows = []
    for entry in index_brats(root / BRATS_FOLDER, modalities=modalities):
        case = str(entry["case"])
        try:
            first, image, brain, reference, spacing = _brats_inputs(entry, normalize)
        except (CaseError, ValueError, RuntimeError, OSError) as err:
            rows.append({"case": case, "status": "failed", "reason": one_line(err)[:300]})
            continue
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for grid in [float(g) for g in config.get_parsed_content("real_eval_spacings_mm")]:
            start = time.perf_counter()
            row: dict[str, Any] = {"case": case, "grid_mm": grid}
            try:
                prob = _brats_predict(image, spacing, grid, inferer, network, device)
                pred = (prob[0].argmax(0) == tumour).numpy() & brain
                mask = write_mask(first.from_ras(pred.astype(np.uint8)), first,
                                  out_dir / "masks" / f"{case}_tumour_grid{grid:g}mm.nii.gz", overwrite=True)
                row.update(status="done", reason="", **mask_scores(pred, reference, empty=float("nan")),
                           tumour_ml_predicted=float(pred.sum()) * voxel_ml,
                           tumour_ml_reference=float(reference.sum()) * voxel_ml, mask=str(Path("masks") / mask.name))
            except (CaseError, ValueError, RuntimeError, OSError) as err:
                row.update(status="failed", reason=one_line(err)[:300])
            row["runtime_s"] = round(time.perf_counter() - start, 2)
            rows.append(row)
    return rows, _BRATS_COLUMNS


def _brats_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| case | grid (mm) | status | Dice | Jaccard | precision | recall | tumour mL predicted / reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {_fmt(r.get('grid_mm'), 1)} | {r['status']} | {_fmt(r.get('dice'))} | "
                     f"{_fmt(r.get('jaccard'))} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} | "
                     f"{_fmt(r.get('tumour_ml_predicted'), 1)} / {_fmt(r.get('tumour_ml_reference'), 1)} |"
                     + (f" {r['reason']}" if r.get("reason") else ""))
    for grid in sorted({r["grid_mm"] for r in rows if "grid_mm" in r}):
        grid_rows = [r for r in rows if r.get("grid_mm") == grid]
        lines.append(f"| **mean** | {grid:g} | | {_fmt(_mean(grid_rows, 'dice'))} | {_fmt(_mean(grid_rows, 'jaccard'))} "
                     f"| {_fmt(_mean(grid_rows, 'precision'))} | {_fmt(_mean(grid_rows, 'recall'))} | |")
    return "\n".join(lines)


def _spect_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| case | status | spacing (mm) | predicted bone mL (no ground truth) | reason |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['status']} | {r.get('spacing_mm', '')} | "
                     f"{_fmt(r.get('bone_ml_predicted'), 1)} | {r.get('reason', '')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------


def _check_start(bundle: str, real_data: str | Path | None, method: str | None) -> tuple[Path, str | None]:
    """Validate the bundle, the method and the real-data folder; returns ``(real-data folder, method)``."""
    from pipeline.paths import real_data_root

    if bundle not in BUNDLES:
        raise RealEvalError(f"unknown bundle {bundle!r}; expected one of {', '.join(BUNDLES)}")
    if method is not None and bundle not in METHOD_CHOICES:
        raise RealEvalError(f"bundle {bundle} has no --method (only lung and spect have one)")
    method = method or DEFAULT_METHODS.get(bundle)
    if method is not None and method not in METHOD_CHOICES[bundle]:
        raise RealEvalError(f"bundle {bundle}: unknown method {method!r}; expected one of "
                            f"{', '.join(METHOD_CHOICES[bundle])}")
    root = Path(real_data).expanduser().resolve() if real_data else real_data_root()
    if not root.is_dir():
        raise RealEvalError(f"real-data folder {root} not found: set VARSEG_REAL_DATA to the folder holding "
                            "a_liver_ct/, c_brain_mr/ and d_nm/ (see its PROVENANCE.md) or pass --real-data DIR")
    return root, method


def _write_outputs(result: RealEvalResult) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with (out / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=result.columns, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    (out / "summary.md").write_text(result.table + "\n")


def _track(result: RealEvalResult, experiment: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
    """One MLflow run with the params, metrics and files of ``result``; a tracking failure only warns."""
    from pipeline.training.tracking import MLflowTracker, make_run_name

    tracker = MLflowTracker(experiment_name=experiment, run_name=make_run_name(result.bundle, "real-eval"),
                            bundle=result.bundle, params=dict(params), tags={"workflow": "real-eval", **tags},
                            log_config=False)
    try:
        tracker.start_run()
        metrics = {k: v for k, v in result.summary.get("metrics", {}).items() if isinstance(v, (int, float))}
        for row in result.rows:
            for key in ("liver_dice", "lesion_ml_predicted", "vm_dice", "tv_dice", "bone_ml_predicted", "dice"):
                if isinstance(row.get(key), float):
                    suffix = f"{row['case']}" + (f".slice{row['slice']}" if "slice" in row else "") + (
                        f".grid{row['grid_mm']:g}mm" if "grid_mm" in row else "")
                    metrics[f"{key}.{suffix}"] = row[key]
        tracker.log_metrics(metrics)
        for name in ("cases.csv", "summary.json", "summary.md"):
            tracker.log_artifact(result.out_dir / name)
        tracker.end_run("FINISHED")
        result.summary["mlflow_run"] = tracker.run_name
    except Exception as err:  # noqa: BLE001 - tracking must not lose the evaluation
        logger.warning("MLflow tracking failed (%s: %s); the results are in %s", type(err).__name__,
                       one_line(err)[:300], result.out_dir)
        try:
            tracker.end_run("FAILED")
        except Exception:  # noqa: BLE001
            pass


def _settings(bundle: str, method: str | None, overrides: Mapping[str, Any]) -> tuple[Any, Path, Path, str]:
    """The merged config, the checkpoint, the bundle folder and the MLflow experiment; raises ``RealEvalError``."""
    try:
        config = _load_config(bundle, method, overrides)
        ckpt_path = Path(str(config.get_parsed_content("ckpt_path")))
        bundle_dir = Path(str(config.get_parsed_content("bundle_root")))
        experiment = str(config.get_parsed_content("experiment_name")) if "experiment_name" in config \
            else f"varseg-{bundle}"
    except RealEvalError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad override or config value
        raise RealEvalError(f"bundle {bundle}: bad configuration ({type(err).__name__}: {one_line(err)[:300]})") \
            from None
    if not ckpt_path.is_file():
        raise RealEvalError(f"bundle {bundle} has no trained checkpoint {ckpt_path}: train first: "
                            f"{_train_command(bundle, method)}")
    return config, ckpt_path, bundle_dir, experiment


def _check_cases(bundle: str, root: Path) -> None:
    expected = {"lits": [p for pair in LITS_CASES for p in pair], "lung": list(LUNG_CASE), "spect": [SPECT_CASE],
                "brats": [BRATS_FOLDER]}
    if not any((root / rel).exists() for rel in expected[bundle]):
        raise RealEvalError(f"no real case for bundle {bundle} in {root} (expected {', '.join(expected[bundle])})")


def _brats_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    metrics = {}
    for grid in sorted({r["grid_mm"] for r in rows if "grid_mm" in r}):
        grid_rows = [r for r in rows if r.get("grid_mm") == grid]
        for key in ("dice", "jaccard", "precision", "recall"):
            metrics[f"{key}_mean.grid{grid:g}mm"] = _mean(grid_rows, key)
    return metrics


def _run(bundle: str, config: Any, root: Path, out: Path, method: str | None,
         overrides: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str], str, dict[str, float | None]]:
    """Rows, CSV columns, Markdown table and summary metrics of the bundle's evaluation."""
    if bundle == "lits":
        rows, columns = _evaluate_lits(config, root, out)
        return rows, columns, _lits_table(rows), {
            "liver_dice_mean": _mean(rows, "liver_dice"), "liver_jaccard_mean": _mean(rows, "liver_jaccard"),
            "lesion_ml_predicted_mean": _mean(rows, "lesion_ml_predicted")}
    if bundle == "lung":
        rows, columns = _evaluate_lung(config, root, overrides)
        return rows, columns, _lung_table(rows, str(method)), {
            "vm_dice_mean": _mean(rows, "vm_dice"), "vm_jaccard_mean": _mean(rows, "vm_jaccard"),
            "tv_dice_mean": _mean(rows, "tv_dice"), "tv_jaccard_mean": _mean(rows, "tv_jaccard")}
    if bundle == "brats":
        rows, columns = _evaluate_brats(config, root, out)
        return rows, columns, _brats_table(rows), _brats_metrics(rows)
    rows, columns = _evaluate_spect(config, root)
    return rows, columns, _spect_table(rows), {"bone_ml_predicted_mean": _mean(rows, "bone_ml_predicted")}


def _summary(bundle: str, method: str | None, ckpt_path: Path, root: Path, rows: Sequence[Mapping[str, Any]],
             metrics: Mapping[str, float | None]) -> dict[str, Any]:
    return {
        "bundle": bundle,
        "method": method,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": ckpt_path.name,
        "checkpoint_sha256": sha256_prefix(ckpt_path),
        "real_data": root.name,
        "cases": list(dict.fromkeys(str(r["case"]) for r in rows)),
        "statuses": {r["case"] + (f"/slice{r['slice']}" if "slice" in r else "")
                     + (f"/grid{r['grid_mm']:g}mm" if "grid_mm" in r else ""): r["status"] for r in rows},
        "metrics": {k: v for k, v in metrics.items() if v is not None},
    }


def evaluate(bundle: str, real_data: str | Path | None = None, out_dir: str | Path | None = None,
             method: str | None = None, overrides: Mapping[str, Any] | None = None,
             mlflow: bool = True) -> RealEvalResult:
    """Evaluate a trained bundle on the real cases that fit it; write the outputs; log one MLflow run.

    Args:
        bundle: ``lits``, ``lung``, ``spect`` or ``brats``.
        real_data: the real-data folder (default :func:`pipeline.paths.real_data_root`).
        out_dir: output folder (default ``bundles/<bundle>/eval/real``).
        method: lung ``m1``-``m4`` (default ``m4``), spect ``mode1``-``mode4`` (default ``mode1``).
        overrides: config overrides of the bundle's inference config (e.g. ``ckpt_path``, ``features``,
            ``num_threads``).
        mlflow: log the MLflow run.

    Returns:
        The :class:`RealEvalResult`.

    Raises:
        RealEvalError: unknown bundle, bad method, missing real-data folder or checkpoint, a
            config that cannot be built, or no case of the bundle in the folder.
    """
    overrides = dict(overrides or {})
    root, method = _check_start(bundle, real_data, method)
    config, ckpt_path, bundle_dir, experiment = _settings(bundle, method, overrides)
    _check_cases(bundle, root)
    if "num_threads" in overrides:
        import torch

        torch.set_num_threads(max(1, int(overrides["num_threads"])))
    out = Path(out_dir).expanduser() if out_dir else bundle_dir / "eval" / "real"
    try:
        rows, columns, table, metrics = _run(bundle, config, root, out, method, overrides)
    except (OSError, RuntimeError, KeyError) as err:
        raise RealEvalError(f"bundle {bundle}: cannot run the evaluation ({type(err).__name__}: "
                            f"{one_line(err)[:300]})") from None
    summary = _summary(bundle, method, ckpt_path, root, rows, metrics)
    result = RealEvalResult(bundle, rows, summary, table, out, columns)
    _write_outputs(result)
    if mlflow:
        params = {"checkpoint": summary["checkpoint"], "checkpoint_sha256": summary["checkpoint_sha256"],
                  "real_data": root.name, "cases": summary["cases"], "method": method or ""}
        _track(result, experiment, params, {"method": method} if method else {})
        (out / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _build_parser(prog: str) -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Evaluate a trained bundle on the real sample cases that fit it: per-case CSV, summary, "
                    "Markdown table, one MLflow run. Exit code 0: all cases evaluated or not applicable, 1: a case "
                    "failed or is missing, 2: unknown bundle, no real-data folder, no checkpoint.",
        epilog="Any other --key value pair overrides the bundle's inference config (e.g. --ckpt_path m.pt "
               "--num_threads 1).")
    parser.add_argument("bundle", help="lits, lung, spect or brats")
    parser.add_argument("--real-data", default=None,
                        help="real-data folder (default: $VARSEG_REAL_DATA, else ../shared/data/real)")
    parser.add_argument("--out", default=None, help="output folder (default: bundles/<bundle>/eval/real)")
    parser.add_argument("--method", default=None, help="lung: m1-m4 (default m4); spect: mode1-mode4 (default mode1)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.experiments.real_eval") -> int:
    """Command line; returns the exit code (see the module docstring)."""
    parser = _build_parser(prog)
    try:
        args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        try:
            overrides = parse_overrides(rest)
        except OverrideError as err:
            raise RealEvalError(str(err)) from None
        result = evaluate(args.bundle, args.real_data, args.out, args.method, overrides, mlflow=not args.no_mlflow)
    except RealEvalError as err:
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    title = f"Real data: bundle {result.bundle}" + (f", method {result.summary['method']}"
                                                      if result.summary.get("method") else "")
    print(f"{title} (checkpoint {result.summary['checkpoint']} sha256 {result.summary['checkpoint_sha256']}, "
          f"{result.summary['date_utc']})\n")
    print(result.table)
    print(f"\n-> {result.out_dir / 'cases.csv'}, summary.json, summary.md"
          + (f"; MLflow run {result.summary['mlflow_run']}" if result.summary.get("mlflow_run") else ""))
    return result.exit_code


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
