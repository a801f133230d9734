"""Batch inference for every bundle: many inputs in, one mask and one CSV row per case out, nothing lost.

    varseg infer <bundle> --input PATH [--layout auto] [--output DIR] [--markers FILE_OR_DIR]
        [--markers-space RAS|LPS] [--overwrite] [--identify] [--no-mlflow] [--key value ...]

(the command line is :mod:`pipeline.inference.cli`; a bundle's ``python -m monai.bundle run --config_file
.../inference.json`` reaches the same :func:`run_from_config`).

* **Inputs**: a file, a folder or a datalist, indexed by :func:`pipeline.io.layouts.index_inputs` (NIfTI, DICOM, MSD
  ``dataset.json``, LiTS, BraTS, Learn2Reg layouts).
* **Outputs**: ``<output>/<case>_<postfix>.nii.gz`` with the input's exact geometry, written atomically; an existing
  mask is never overwritten without ``--overwrite`` (the case is *skipped*), so re-running a half-finished batch
  finishes the rest. ``<output>/cases.csv`` (one row per case: ``case, status, reason, volume_ml_<label>...,
  runtime_s, quality, mask``) is rewritten atomically after every case and keeps the rows of earlier runs;
  ``quality`` is the predicted quality (Dice) of the mask when the predictor returns ``(mask, quality)`` (``--refine``:
  :class:`pipeline.refine.predictors.RefinePredictor`), else empty.
* **Failures**: a case that cannot be read or segmented is a ``failed`` row with a one-line reason; the batch goes
  on. Exit code 0: every case done or skipped; 1: some case failed; 2: bad command line, missing checkpoint or
  nothing to do (one line on stderr, no traceback).
* **Privacy**: DICOM series are named by a pseudonym of their SeriesInstanceUID unless ``--identify``; their paths
  are never logged, written to the CSV or to MLflow.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.arguments import one_line
from pipeline.io.files import sha256_prefix

logger = logging.getLogger("pipeline.inference.batch")  # the same name when run as python -m pipeline.inference.cli

__all__ = [
    "BatchError",
    "BatchReport",
    "CSV_COLUMNS",
    "case_name",
    "execute",
    "mask_name",
    "run_batch",
    "run_from_config",
]

#: Leading CSV columns; ``volume_ml_<label>`` columns go between ``reason`` and ``runtime_s``.
CSV_COLUMNS = ("case", "status", "reason", "runtime_s", "quality", "mask")
VOLUME_PREFIX = "volume_ml_"
_CASE_ERRORS = (ValueError, OSError, RuntimeError)
_MARKER_EXTENSIONS = (".csv", ".mrk.json", ".json")
_AFFINE_ATOL_MM = 1e-3
# absolute paths, home/relative paths and anything with two separators (not "2D/3D")
_PSEUDONYM = re.compile(r"dcm-[0-9a-f]{12}")
_PATH_TOKEN = re.compile(r"(?:(?<![\w.~])(?:[A-Za-z]:|~|\.{1,2})?[/\\]|\S*[/\\]\S*[/\\])[^\s'\")]*")


class BatchError(ValueError):
    """A batch that cannot start (bad command line, missing checkpoint, nothing to do): exit code 2."""


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What one :func:`run_batch` call did.

    Attributes:
        output_dir: the mask folder.
        csv_path: the per-case CSV (rows of earlier runs included).
        rows: this run's rows, in input order (``case``, ``status``, ``reason``, volumes, ``runtime_s``, ...).
    """

    output_dir: Path
    csv_path: Path
    rows: list[dict[str, str]] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.get("status") == status)

    @property
    def done(self) -> int:
        """Cases segmented in this run."""
        return self._count("done")

    @property
    def skipped(self) -> int:
        """Cases whose mask already existed."""
        return self._count("skipped")

    @property
    def failed(self) -> int:
        """Cases that failed."""
        return self._count("failed")

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(case, reason)`` of every failed case."""
        return [(r["case"], r.get("reason", "")) for r in self.rows if r.get("status") == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when no case failed, else 1."""
        return 1 if self.failed else 0

    def summary_line(self) -> str:
        """``"N done, M skipped, K failed -> <output_dir>"``."""
        return f"{self.done} done, {self.skipped} skipped, {self.failed} failed -> {self.output_dir}"

    def summary(self) -> str:
        """The summary line plus one ``case: reason`` line per failure."""
        return "\n".join([self.summary_line()] + [f"  {case}: {reason}" for case, reason in self.failures])


# ----------------------------------------------------------------------------------------------------------------
# Names, privacy
# ----------------------------------------------------------------------------------------------------------------


def _is_dicom(entry: Mapping[str, Any]) -> bool:
    return str(entry.get("kind", "")).lower() == "dicom"


def _safe_name(text: str) -> str:
    name = re.sub(r"[\\/\x00-\x1f]+", "_", str(text)).strip()
    return name if name not in ("", ".", "..") else "case"


def _image_paths(entry: Mapping[str, Any]) -> list[Any]:
    image = entry.get("image")
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _stem(path: Any) -> str:
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def case_name(entry: Mapping[str, Any], identify: bool = False) -> str:
    """The case name of an entry: its ``case`` (or image stem); a DICOM series' pseudonym unless ``identify``."""
    if _is_dicom(entry) and not identify and entry.get("series_uid"):
        from pipeline.io.volumes import pseudonym

        uid = str(entry["series_uid"]).strip(" \x00")
        return _safe_name(uid if _PSEUDONYM.fullmatch(uid) else pseudonym(uid))  # the selector may be the pseudonym
    case = entry.get("case")
    if not case:
        if _is_dicom(entry) and not identify:
            raise BatchError("a DICOM entry has neither a case pseudonym nor a series_uid")
        case = _stem(_image_paths(entry)[0])
    return _safe_name(str(case))


def mask_name(case: str, postfix: str) -> str:
    """The mask file name of a case: ``<case>_<postfix>.nii.gz``."""
    return f"{case}_{postfix}.nii.gz" if postfix else f"{case}.nii.gz"


def _private_names(entry: Mapping[str, Any]) -> list[str]:
    """File and folder names of a DICOM entry that must never be shown (longest first)."""
    names: set[str] = set()
    for p in [*_image_paths(entry), entry.get("label")]:
        if not p:
            continue
        path = Path(str(p))
        names.update({str(p), str(path.expanduser()), path.name})
        if path.suffix.lower() == ".dcm" or path.is_file():
            names.add(path.parent.name)
        try:
            names.add(str(path.expanduser().resolve()))
        except OSError:
            pass
    return sorted((n for n in names if len(n) >= 3), key=len, reverse=True)


def _scrub(text: Any, entry: Mapping[str, Any], case: str, identify: bool) -> str:
    """One line of ``text``; for a DICOM entry (unless ``identify``) paths and file names become the case name."""
    line = one_line(text)
    if identify or not _is_dicom(entry):
        return line
    for name in _private_names(entry):
        line = line.replace(name, case)
    return _PATH_TOKEN.sub(f"<{case}>", line)


def _describe(volume: Any) -> str:
    affine = np.asarray(volume.affine, dtype=float)
    spacing = tuple(round(float(s), 4) for s in volume.spacing)
    origin = tuple(round(float(o), 3) for o in affine[:3, 3])
    return f"shape {tuple(volume.array.shape)}, spacing {spacing}, origin {origin}"


def _same_geometry(a: Any, b: Any) -> bool:
    if tuple(a.array.shape) != tuple(b.array.shape):
        return False
    return bool(np.allclose(np.asarray(a.affine, float), np.asarray(b.affine, float), rtol=1e-5, atol=_AFFINE_ATOL_MM))


# ----------------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------------


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as fh:
            return {row["case"]: dict(row) for row in csv.DictReader(fh) if row.get("case")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError) as err:
        logger.warning("cannot read the earlier %s (%s); it will be rewritten", path.name, one_line(err))
        return {}


def _columns(rows: Sequence[Mapping[str, str]], volume_columns: Sequence[str]) -> list[str]:
    seen_volumes = list(volume_columns)
    extra: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith(VOLUME_PREFIX):
                if key not in seen_volumes:
                    seen_volumes.append(key)
            elif key not in CSV_COLUMNS and key not in extra:
                extra.append(key)
    fixed = [k for k in seen_volumes if k in volume_columns]
    others = sorted((k for k in seen_volumes if k not in volume_columns), key=_volume_sort_key)
    return ["case", "status", "reason", *fixed, *others, "runtime_s", "quality", "mask", *extra]


def _volume_sort_key(column: str) -> tuple[int, str]:
    suffix = column[len(VOLUME_PREFIX):]
    return (int(suffix), "") if suffix.isdigit() else (10**9, suffix)


def _write_rows(path: Path, rows: Sequence[Mapping[str, str]], volume_columns: Sequence[str]) -> None:
    """Write the CSV atomically (temporary file in the same folder, then rename)."""
    columns = _columns(rows, volume_columns)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in columns})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_rows(path: Path, rows: Sequence[Mapping[str, str]], volume_columns: Sequence[str]) -> None:
    """:func:`_write_rows`, with a write failure (e.g. a full disk) logged instead of stopping the batch."""
    try:
        _write_rows(path, rows, volume_columns)
    except OSError as err:
        logger.warning("cannot write %s (%s); it is written again after the next case", path.name, one_line(err))


def _clean_csv_temporaries(folder: Path, csv_name: str) -> list[Path]:
    removed = []
    for p in folder.glob(f".{csv_name}.*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Tracking (optional, never fatal)
# ----------------------------------------------------------------------------------------------------------------


class _SafeTracker:
    """Wraps a tracker so that an MLflow problem is logged once and never stops the batch."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.broken = tracker is None

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            return None
        try:
            return getattr(self.tracker, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must not lose work
            self.broken = True
            logger.warning("MLflow tracking stopped (%s: %s); the batch goes on without it", type(err).__name__,
                           one_line(err)[:300])
            return None


def make_tracker(bundle: str, *, experiment_name: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None) -> Any:
    """A :class:`pipeline.training.tracking.MLflowTracker` for one batch run (no merged config: it may hold DICOM
    paths)."""
    from pipeline.training.tracking import MLflowTracker, make_run_name

    return MLflowTracker(experiment_name=experiment_name or f"varseg-{bundle}", run_name=make_run_name(bundle, "infer"),
                         bundle=bundle, params=dict(params or {}), tags={"workflow": "infer", **dict(tags or {})},
                         log_config=False)


# ----------------------------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------------------------


def _labels_list(labels: Mapping[Any, Any] | Sequence[int] | None) -> tuple[list[int] | None, dict[int, str]]:
    if labels is None:
        return None, {}
    if isinstance(labels, Mapping):
        names = {int(k): str(v) for k, v in labels.items()}
        return sorted(names), names
    values = [int(v) for v in labels]
    return values, {v: str(v) for v in values}


def _markers_for_case(markers: Path, entry: Mapping[str, Any], case: str, identify: bool) -> Path:
    from pipeline.io.volumes import CaseError

    if markers.is_file():
        return markers
    stems = [case]
    if not _is_dicom(entry) or identify:
        stems += [_stem(p) for p in _image_paths(entry) if p]
    for stem in dict.fromkeys(stems):
        for ext in _MARKER_EXTENSIONS:
            candidate = markers / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    raise CaseError(f"no markers file {case}.csv or {case}.mrk.json in {markers}")


def _read_case(entry: Mapping[str, Any], case: str, identify: bool) -> tuple[Any, list[Any]]:
    """Read an entry's volume(s); check the modalities share one geometry and the label matches it."""
    from pipeline.io.volumes import CaseError, read_volume

    images = _image_paths(entry)
    modalities = entry.get("modalities") or []
    names = [str(m) for m in modalities] if len(modalities) == len(images) else [f"#{i}" for i in range(len(images))]
    missing = [names[i] for i, p in enumerate(images) if not p or not Path(str(p)).exists()]
    if missing and len(images) > 1:
        raise CaseError(f"missing modality {', '.join(missing)}")
    if not images or not images[0]:
        raise CaseError("the entry has no image")
    uid = entry.get("series_uid") if len(images) == 1 else None
    volumes = [read_volume(p, series_uid=uid, identify=identify) for p in images]
    first = volumes[0]
    for name, path, vol in zip(names[1:], images[1:], volumes[1:]):
        if not _same_geometry(first, vol):
            raise CaseError(f"modality {name} ({path}: {_describe(vol)}) does not share the geometry of "
                            f"{images[0]} ({_describe(first)})")
    label = entry.get("label")
    if label:
        lab = read_volume(label, identify=identify)
        if not _same_geometry(first, lab):
            raise CaseError(f"label geometry does not match its image: {label} ({_describe(lab)}) vs "
                            f"{images[0]} ({_describe(first)})")
    return (volumes if isinstance(entry.get("image"), (list, tuple)) else first), volumes


def _volume_cells(mask: np.ndarray, spacing: Sequence[float], labels: list[int] | None,
                  names: Mapping[int, str]) -> dict[str, str]:
    from pipeline.io.volumes import label_volumes_ml

    volumes = label_volumes_ml(mask, spacing, labels)
    return {f"{VOLUME_PREFIX}{names.get(int(k), str(int(k)))}": f"{float(v):.3f}" for k, v in volumes.items()
            if int(k) != 0}


def _existing_mask_cells(path: Path, labels: list[int] | None, names: Mapping[int, str]) -> dict[str, str]:
    """Volumes of an already written mask (a mask written just before a kill has no CSV row yet)."""
    try:
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
        return _volume_cells(sitk.GetArrayFromImage(image), image.GetSpacing(), labels, names)
    except Exception as err:  # noqa: BLE001 - only numbers for the CSV
        logger.debug("cannot measure the existing mask %s: %s", path.name, err)
        return {}


# ----------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------


def _mask_names(cases: Sequence[str], postfix: str) -> None:
    """Refuse two inputs that would write the same mask."""
    targets: dict[str, int] = {}
    for i, case in enumerate(cases):
        name = mask_name(case, postfix)
        if name in targets:
            raise BatchError(f"inputs {targets[name] + 1} and {i + 1} (case {case}) would both write {name}: "
                             "rename one input or segment them in separate batches")
        targets[name] = i


def _markers_path(markers: str | Path | None, num_entries: int, predict: Any) -> Path | None:
    """The markers file or folder, checked against the number of inputs and whether the predictor needs clicks."""
    path = Path(markers).expanduser() if markers not in (None, "") else None
    if path is None:
        if getattr(predict, "needs_markers", False):
            raise BatchError("no markers given: pass --markers <CSV / .mrk.json file, or a folder of them>")
        return None
    if not path.exists():
        raise BatchError(f"markers {path} do not exist: pass --markers <file or folder>")
    if path.is_file() and num_entries > 1:
        raise BatchError(f"{num_entries} inputs but one markers file {path}: pass a folder with one "
                         "<case>.csv or <case>.mrk.json per input")
    return path


def _prepare_output(out: Path, csv_name: str) -> dict[str, dict[str, str]]:
    """Create the output folder, remove what an interrupted run left, and return the rows of earlier runs."""
    from pipeline.io.volumes import clean_stale_temporaries

    out.mkdir(parents=True, exist_ok=True)
    stale = list(clean_stale_temporaries(out) or []) + _clean_csv_temporaries(out, csv_name)
    if stale:
        logger.info("removed %d leftover temporary file(s) of an interrupted run in %s", len(stale), out)
    return _read_rows(out / csv_name)


def _close_tracking(track: _SafeTracker, report: BatchReport, status: str) -> None:
    """Counts, a ``status`` tag and the CSV to the MLflow run, then end it with ``status``."""
    track("log_params", {"num_done": report.done, "num_skipped": report.skipped, "num_failed": report.failed})
    track("log_metrics", {"cases_done": report.done, "cases_skipped": report.skipped, "cases_failed": report.failed})
    track("set_tag", "status", {"FINISHED": "some cases failed" if report.failed else "ok",
                                "KILLED": "interrupted"}.get(status, "error"))
    if report.csv_path.is_file():
        track("log_artifact", report.csv_path)
    track("end_run", status)


@dataclass
class _Batch:
    """What every case of a batch shares."""

    predict: Callable[..., np.ndarray]
    out: Path
    postfix: str
    overwrite: bool
    identify: bool
    label_values: list[int] | None
    label_names: Mapping[int, str]
    markers: Path | None


def run_batch(entries: Sequence[Mapping[str, Any]], predict: Callable[[Any, Mapping[str, Any]], np.ndarray],
              output_dir: str | Path, postfix: str, *, overwrite: bool = False, csv_name: str = "cases.csv",
              labels: Mapping[Any, Any] | Sequence[int] | None = None, identify: bool = False, progress: bool = True,
              tracker: Any = None, markers: str | Path | None = None) -> BatchReport:
    """Segment every entry, one mask and one CSV row per case; failures are rows, never crashes (module docstring).

    Per entry (from :func:`pipeline.io.layouts.index_inputs`): an existing ``<output_dir>/<case>_<postfix>.nii.gz``
    is ``skipped`` unless ``overwrite``; else the image(s) are read, ``predict(volume_or_volumes, entry)`` gives the
    mask (first volume's shape and voxel order) and :func:`pipeline.io.volumes.write_mask` writes it atomically in the
    input's geometry. ``ValueError``/``OSError``/``RuntimeError`` fail the case with a one-line reason; any other
    exception fails it as ``internal error``; ``KeyboardInterrupt`` stops the batch after the CSV is saved.

    Args:
        entries, output_dir, postfix, overwrite: the datalist, the mask folder, the mask name postfix, replace masks.
        predict: ``predict(volume_or_volumes, entry) -> mask``; ``entry`` has ``case`` (and ``markers``).
        csv_name: per-case CSV in ``output_dir``, rewritten after every case, rows of earlier runs kept.
        labels: label values to measure (a list, or ``{value: name}``); None: every non-zero label found.
        identify, progress: DICOM-derived names instead of pseudonyms; a progress bar.
        tracker: optional :class:`pipeline.training.tracking.MLflowTracker`-like object (run opened if needed,
            counts, ``status`` tag and CSV logged, run closed).
        markers: a markers file (one input) or a folder of ``<case>.csv`` / ``<case>.mrk.json`` files.

    Raises:
        BatchError: two inputs map to the same mask name, no entries, or unusable ``markers``.
    """
    entries = list(entries)
    if not entries:
        raise BatchError("nothing to do: no input case")
    cases = [case_name(e, identify) for e in entries]
    _mask_names(cases, postfix)
    label_values, label_names = _labels_list(labels)
    batch = _Batch(predict, Path(output_dir).expanduser(), postfix, overwrite, identify, label_values, label_names,
                   _markers_path(markers, len(entries), predict))
    merged = _prepare_output(batch.out, csv_name)
    report = BatchReport(output_dir=batch.out, csv_path=batch.out / csv_name)
    track = _SafeTracker(tracker)
    track("start_run")
    track("log_params", {"num_inputs": len(entries)})
    status = "FAILED"
    try:
        _run_cases(entries, cases, batch, merged, report, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        logger.warning("interrupted: %d of %d case(s) handled; re-run the same command to finish the rest",
                       len(report.rows), len(entries))
        raise
    finally:
        _close_tracking(track, report, status)
    logger.info(report.summary_line())
    for failed_case, reason in report.failures:
        logger.info("failed %s: %s", failed_case, reason)
    print(report.summary(), flush=True)
    return report


def _run_cases(entries: Sequence[Mapping[str, Any]], cases: Sequence[str], batch: _Batch,
               merged: dict[str, dict[str, str]], report: BatchReport, progress: bool) -> None:
    """Every case in turn, the CSV rewritten after each (rows of earlier runs kept)."""
    from tqdm import tqdm

    from pipeline.io.volumes import write_mask

    volume_columns = [f"{VOLUME_PREFIX}{batch.label_names[v]}" for v in (batch.label_values or [])]
    with tqdm(total=len(entries), desc="inference", unit="case", disable=not progress, dynamic_ncols=True) as bar:
        for entry, case in zip(entries, cases):
            bar.set_postfix_str(case, refresh=False)
            row = _run_case(entry, case, batch.predict, batch.out, batch.postfix, batch.overwrite, batch.identify,
                            batch.label_values, batch.label_names, merged.get(case), batch.markers, write_mask)
            report.rows.append(row)
            merged[case] = row
            _save_rows(report.csv_path, list(merged.values()), volume_columns)
            bar.update(1)


def _run_case(entry: Mapping[str, Any], case: str, predict: Callable[..., np.ndarray], out: Path, postfix: str,
              overwrite: bool, identify: bool, label_values: list[int] | None, label_names: Mapping[int, str],
              previous: Mapping[str, str] | None, markers: Path | None,
              write_mask: Callable[..., Path]) -> dict[str, str]:
    target = out / mask_name(case, postfix)
    row: dict[str, str] = {"case": case, "mask": target.name, "quality": ""}
    if target.exists() and not overwrite:
        if previous:
            row.update({k: v for k, v in previous.items() if k.startswith(VOLUME_PREFIX)})
            row.update(runtime_s=previous.get("runtime_s", ""), quality=previous.get("quality", ""))
            row.update({k: v for k, v in previous.items() if k not in row and k not in CSV_COLUMNS})
        else:
            row.update(_existing_mask_cells(target, label_values, label_names))
        row.update(status="skipped", reason="output exists")
        logger.info("%s: skipped (output exists)", case)
        return row
    start = time.perf_counter()
    try:
        item = dict(entry, case=case)
        if markers is not None:
            item["markers"] = str(_markers_for_case(markers, entry, case, identify))
        volume, volumes = _read_case(entry, case, identify)
        first = volumes[0]
        result = predict(volume, item)
        quality = None
        if isinstance(result, tuple):  # (mask, predicted quality), e.g. pipeline.refine.predictors.RefinePredictor
            result, quality = result
        mask = np.asarray(result)
        if tuple(mask.shape) != tuple(first.array.shape):
            raise RuntimeError(f"the prediction has shape {tuple(mask.shape)}, the image "
                               f"{tuple(first.array.shape)}")
        write_mask(mask, first, target, overwrite=overwrite)
        row.update(_volume_cells(mask, first.spacing, label_values, label_names))
        row.update(status="done", reason="", runtime_s=f"{time.perf_counter() - start:.2f}")
        if quality is not None:
            row["quality"] = f"{float(quality):.4f}"
        logger.info("%s: done in %.1f s -> %s", case, time.perf_counter() - start, target.name)
    except _CASE_ERRORS as err:  # CaseError is a ValueError
        row.update(status="failed", reason=_scrub(err, entry, case, identify) or type(err).__name__)
    except Exception as err:  # noqa: BLE001 - an unexpected error fails this case, not the batch
        detail = _scrub(err, entry, case, identify)
        row.update(status="failed", reason=f"internal error: {type(err).__name__}: {detail}")
        if identify or not _is_dicom(entry):
            logger.debug("%s: traceback of the internal error", case, exc_info=True)
    if row["status"] == "failed":
        row.update(runtime_s=f"{time.perf_counter() - start:.2f}", mask="")
        logger.warning("%s: failed: %s", case, row["reason"])
    return row


# ----------------------------------------------------------------------------------------------------------------
# From a config or the command line
# ----------------------------------------------------------------------------------------------------------------


def _error(message: Any) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def _index_and_load(input_path: Any, output_dir: Any, predictor: Any, ckpt_path: Any, ckpt_hint: str, layout: str,
                    modalities: Sequence[str] | None, identify: bool) -> list[dict[str, Any]]:
    """Check the command, index the inputs and load the model before the first case; raises ``BatchError``."""
    from pipeline.io.layouts import index_inputs

    if input_path is None or str(input_path).strip() == "":
        raise BatchError("no input given: pass --input <file, folder or datalist>")
    if output_dir is None or str(output_dir).strip() == "":
        raise BatchError("no output folder given: pass --output <folder>")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        hint = f" ({ckpt_hint})" if ckpt_hint else ""
        raise BatchError(f"checkpoint {ckpt_path} not found{hint}")
    entries = index_inputs(str(input_path), layout or "auto", modalities=list(modalities) if modalities else None,
                           identify=identify, missing_modalities="keep")
    if not entries:
        raise BatchError(f"nothing to do: no input case found in {input_path}")
    if hasattr(predictor, "load"):
        try:
            predictor.load()
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise BatchError(f"cannot load the model: {one_line(err)}") from None
    return entries


def _batch_tracker(bundle: str, entries: Sequence[Mapping[str, Any]], input_path: Any, postfix: str, ckpt_path: Any,
                   layout: str, overwrite: bool, identify: bool, csv_name: str, experiment_name: str | None,
                   tags: Mapping[str, Any] | None) -> Any:
    """The batch's MLflow run (params without DICOM paths), or None when tracking cannot start."""
    dicom = any(_is_dicom(e) for e in entries)
    params: dict[str, Any] = {"bundle": bundle, "postfix": postfix, "overwrite": bool(overwrite),
                              "identify": bool(identify), "layout": layout or "auto", "csv_name": csv_name}
    if ckpt_path is not None:
        params["checkpoint"] = Path(ckpt_path).name
        params["checkpoint_sha256"] = sha256_prefix(ckpt_path)
    if not dicom:
        params["input"] = str(Path(str(input_path)).expanduser().resolve())
    try:
        return make_tracker(bundle, experiment_name=experiment_name, params=params,
                            tags={**dict(tags or {}), "inputs": "dicom" if dicom else "files"})
    except Exception as err:  # noqa: BLE001 - tracking is optional
        logger.warning("MLflow tracking is off: %s", one_line(err))
        return None


def execute(bundle: str, input_path: str | Path | None, output_dir: str | Path | None, postfix: str,
            predictor: Callable[[Any, Mapping[str, Any]], np.ndarray], *, ckpt_path: str | Path | None = None,
            ckpt_hint: str = "", layout: str = "auto", modalities: Sequence[str] | None = None,
            markers: str | Path | None = None, overwrite: bool = False, identify: bool = False,
            labels: Mapping[Any, Any] | Sequence[int] | None = None, csv_name: str = "cases.csv", mlflow: bool = True,
            experiment_name: str | None = None, tags: Mapping[str, Any] | None = None, progress: bool = True) -> int:
    """Check the checkpoint, index the inputs, load the model, run the batch (tracked), return the exit code.

    Problems before the first case (no input, missing/unloadable checkpoint, unreadable layout, duplicate output
    names) print one ``error: ...`` line on stderr and return 2; otherwise the code of :class:`BatchReport`.
    ``KeyboardInterrupt`` is re-raised after the CSV is saved.
    """
    try:
        entries = _index_and_load(input_path, output_dir, predictor, ckpt_path, ckpt_hint, layout, modalities,
                                  identify)
    except (BatchError, ValueError, OSError, RuntimeError) as err:
        return _error(err)
    tracker = None
    if mlflow:
        tracker = _batch_tracker(bundle, entries, input_path, postfix, ckpt_path, layout, overwrite, identify,
                                 csv_name, experiment_name, tags)
    try:
        report = run_batch(entries, predictor, output_dir, postfix, overwrite=overwrite, csv_name=csv_name,
                           labels=labels, identify=identify, progress=progress, tracker=tracker, markers=markers)
    except BatchError as err:
        if tracker is not None:
            _SafeTracker(tracker)("end_run", "FAILED")
        return _error(err)
    return report.exit_code


def run_from_config(bundle: str, input_path: str | Path | None, output_dir: str | Path | None, postfix: str,
                    predictor: Callable[[Any, Mapping[str, Any]], np.ndarray], **kwargs: Any) -> int:
    """:func:`execute` for a bundle's ``inference.json`` ``run`` section; a non-zero code exits the process.

    Raises:
        SystemExit: with code 1 (some case failed), 2 (bad input / checkpoint) or 130 (interrupted).
    """
    kwargs.setdefault("labels", None)
    if kwargs.get("labels") is not None and isinstance(kwargs["labels"], Mapping):
        kwargs["labels"] = {int(k): str(v) for k, v in kwargs["labels"].items()}
    try:
        code = execute(bundle, input_path, output_dir, postfix, predictor, **kwargs)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to finish the remaining cases", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    if code:
        raise SystemExit(code)
    return code
