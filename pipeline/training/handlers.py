"""Ignite handlers used by the bundles: per-case metric statistics and CSV reports, overlay figures, and resumable
training checkpoints (model, optimizer, scheduler, trainer, random states, best validation and the MLflow run id)."""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["OverlaySaver", "PerCaseMetrics", "RandomStates", "TrainingCheckpoint", "channel_output",
           "checkpoint_epoch"]


def _case_of(item: Any, fallback: str) -> str:
    if isinstance(item, dict):
        if "case" in item:
            return str(item["case"])
        image = item.get("image")
        meta = getattr(image, "meta", None)
        if meta and meta.get("filename_or_obj"):
            name = os.path.basename(str(meta["filename_or_obj"]))
            for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
                if name.endswith(ext):
                    return name[: -len(ext)]
            return name
    return fallback


def channel_output(channel: int, keys: Sequence[str] = ("pred", "label")) -> Any:
    """An ``output_transform`` for MONAI metric handlers that keeps one class channel of one-hot outputs.

    ``channel_output(2)`` lets ``MeanDice(include_background=True)`` score only class 2 (e.g. lesion in a
    background/liver/lesion network), so each region gets its own metric name.
    """
    if channel < 0:
        raise ValueError(f"channel must be >= 0, got {channel}")

    def _transform(output: Any) -> tuple[list[Any], ...]:
        items = output if isinstance(output, list) else [output]
        return tuple([item[key][channel : channel + 1] for item in items] for key in keys)

    return _transform


class PerCaseMetrics:
    """Per-case values, standard deviation and a CSV for metrics computed by MONAI metric handlers.

    MONAI's metric handlers (``MeanDice``, ``MeanIoUHandler``, ...) keep per-case values in
    ``engine.state.metric_details[name]`` (``save_details=True``, their default). At each evaluator epoch end this
    handler adds ``<name>_std`` (population std over cases, NaN cases excluded) to ``engine.state.metrics`` and, with
    ``save_dir``, writes ``<save_dir>/<filename>`` with one row per case and a ``mean``/``std`` footer.

    Args:
        metric_names: names of metrics whose details to summarise.
        save_dir: folder of the CSV (None: no file).
        filename: CSV file name.
    """

    def __init__(self, metric_names: Sequence[str], save_dir: str | Path | None = None,
                 filename: str = "per_case_metrics.csv") -> None:
        self.metric_names = tuple(metric_names)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.filename = filename
        self._cases: list[str] = []
        self.last_rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)

    def _reset(self, engine: Engine) -> None:
        self._cases = []

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            self._cases.append(_case_of(item, f"case_{len(self._cases)}"))

    @property
    def csv_path(self) -> Path | None:
        return None if self.save_dir is None else self.save_dir / self.filename

    def _summarise(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        columns: dict[str, list[float]] = {}
        for name in self.metric_names:
            if name not in details:
                logger.warning("metric %s has no per-case details (save_details=False?)", name)
                continue
            values = torch.as_tensor(details[name], dtype=torch.float64)
            per_case = values.reshape(values.shape[0], -1).nanmean(dim=1) if values.ndim > 1 else values
            columns[name] = [float(v) for v in per_case]
            finite = per_case[~torch.isnan(per_case)]
            std = float(finite.std(unbiased=False)) if finite.numel() else math.nan
            engine.state.metrics[f"{name}_std"] = std
        n = max((len(v) for v in columns.values()), default=0)
        cases = (self._cases + [f"case_{i}" for i in range(len(self._cases), n)])[:n]
        self.last_rows = [{"case": c, **{k: v[i] for k, v in columns.items()}} for i, c in enumerate(cases)]
        if self.save_dir is not None and self.last_rows:
            self._write_csv(engine)

    def _write_csv(self, engine: Engine) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.csv_path.with_suffix(".csv.tmp")
        names = list(self.last_rows[0].keys())
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=names)
            writer.writeheader()
            for row in self.last_rows:
                writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
            for stat in ("mean", "std"):
                row = {"case": stat}
                for k in names[1:]:
                    key = k if stat == "mean" else f"{k}_std"
                    value = engine.state.metrics.get(key)
                    row[k] = f"{float(value):.6f}" if value is not None else ""
                writer.writerow(row)
        os.replace(tmp, self.csv_path)


def checkpoint_epoch(trainer_state: Mapping[str, Any]) -> int:
    """The epoch a checkpoint was saved at, from the ``trainer`` entry (ignite ``Engine.state_dict()``)."""
    if "epoch" in trainer_state:
        return int(trainer_state["epoch"])
    return int(trainer_state["iteration"]) // max(1, int(trainer_state["epoch_length"]))


def _np_state(rng: np.random.RandomState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = rng.get_state()
    if name != "MT19937":  # pragma: no cover - the only bit generator RandomState has
        raise ValueError(f"unexpected RandomState generator {name}")
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_np_state(rng: np.random.RandomState, state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    rng.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])))


class RandomStates:
    """The random number generators a training draws from, as one ``state_dict`` for checkpoints.

    Resuming with the same model, optimizer and epoch is not enough to continue *exactly* as an uninterrupted run:
    the shuffling of the data loader and the random augmentations would restart from the seed. This object saves and
    restores, together:

    * the global torch (and, when initialised, CUDA), NumPy and Python ``random`` generators;
    * the ``RandomState`` of every MONAI ``Randomizable`` transform, and every ``np.random.RandomState`` and
      ``torch.Generator``, reachable from ``roots`` (e.g. the trainer's data loader: its dataset, transforms,
      sampler), found in attribute order so that the same config finds them in the same order.

    Args:
        roots: objects to search for generators; an ignite ``Engine`` stands for its data loader
            (``engine.data_loader`` for MONAI trainers, else ``engine.state.dataloader``), looked up at save time.
        max_depth: how deep attributes, mappings and sequences are followed.
        max_items: mappings and sequences longer than this (data lists, caches) are not searched.
    """

    def __init__(self, *roots: Any, max_depth: int = 8, max_items: int = 256) -> None:
        self.roots = roots
        self.max_depth = max_depth
        self.max_items = max_items

    def _resolved_roots(self) -> list[Any]:
        out = []
        for root in self.roots:
            if isinstance(root, Engine):
                loader = getattr(root, "data_loader", None)
                root = loader if loader is not None else getattr(root.state, "dataloader", None)
            if root is not None:
                out.append(root)
        return out

    def generators(self) -> list[np.random.RandomState | torch.Generator]:
        """The generators reachable from ``roots``, each once, in a reproducible order."""
        from monai.transforms import Randomizable

        found: list[Any] = []
        seen: set[int] = set()

        def add(gen: Any) -> None:
            if id(gen) not in seen:
                seen.add(id(gen))
                found.append(gen)

        def walk(obj: Any, depth: int) -> None:
            if isinstance(obj, (np.random.RandomState, torch.Generator)):
                add(obj)
                return
            if (depth > self.max_depth or id(obj) in seen or obj is None
                    or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, np.ndarray, torch.nn.Module,
                                        Engine, type))):
                return
            seen.add(id(obj))
            if isinstance(obj, Randomizable):
                add(obj.R)
            if isinstance(obj, Mapping):
                children = list(obj.values()) if len(obj) <= self.max_items else []
            elif isinstance(obj, (list, tuple)):
                children = list(obj) if len(obj) <= self.max_items else []
            elif hasattr(obj, "__dict__"):
                children = [v for k, v in vars(obj).items() if not k.startswith("__")]
            else:
                return
            for child in children:
                walk(child, depth + 1)

        for root in self._resolved_roots():
            walk(root, 0)
        return found

    def state_dict(self) -> dict[str, Any]:
        """Current states (tensors and numbers only, so ``torch.load(weights_only=True)`` reads them)."""
        py_version, py_state, py_gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _np_state(np.random.mtrand._rand),
            "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss},
            "objects": [_np_state(g) if isinstance(g, np.random.RandomState) else {"torch": g.get_state()}
                        for g in self.generators()],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict` (a different set of generators is skipped with a warning)."""
        torch.set_rng_state(state["torch"])
        _set_np_state(np.random.mtrand._rand, state["numpy"])
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        generators, saved = self.generators(), list(state.get("objects", []))
        kinds = ["torch" if isinstance(g, torch.Generator) else "numpy" for g in generators]
        saved_kinds = ["torch" if "torch" in s else "numpy" for s in saved]
        if kinds != saved_kinds:
            logger.warning("the checkpoint has %d transform/loader random generator(s), this training %d: their "
                           "states are not restored, so augmentation and shuffling differ from an uninterrupted run",
                           len(saved), len(generators))
            return
        for gen, gen_state in zip(generators, saved):
            if isinstance(gen, torch.Generator):
                gen.set_state(gen_state["torch"])
            else:
                _set_np_state(gen, gen_state)


class _RunReference:
    """Checkpoint entry naming the MLflow run a training logs to (read back by :class:`TrainingCheckpoint`)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def state_dict(self) -> dict[str, str]:
        from pipeline.training.tracking import tracking_uri

        try:
            uri = tracking_uri(getattr(self.tracker, "store_dir", None))
        except ValueError:
            uri = ""
        return {"run_id": str(self.tracker.run_id or ""), "run_name": str(getattr(self.tracker, "run_name", "")),
                "experiment_name": str(getattr(self.tracker, "experiment_name", "")), "tracking_uri": uri}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # read at attach time, nothing to restore
        pass


class _BestValidation:
    """Checkpoint entry with the best validation so far: what the key-metric ``CheckpointSaver`` remembers of the
    model it saved (score and file name) and the evaluator's ``best_metric`` / ``best_metric_epoch``."""

    def __init__(self, best_saver: Any = None, evaluator: Any = None) -> None:
        self.checkpoint = getattr(best_saver, "_key_metric_checkpoint", None)  # ignite Checkpoint
        if best_saver is not None and self.checkpoint is None:
            raise ValueError("best_saver must be a CheckpointSaver with save_key_metric=True")
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.checkpoint is not None:
            state["saved"] = [[float(priority), str(name)] for priority, name in self.checkpoint._saved]
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.checkpoint is not None and "saved" in state:
            handler = self.checkpoint.save_handler
            names = [getattr(handler, "filename", None) or name for _, name in state["saved"]]
            missing = [n for n in names if not (Path(handler.dirname) / n).is_file()]
            if missing:
                logger.warning("best-validation model file(s) %s not found in %s: the best score before the resume "
                               "is not restored, the next validation saves a new one", missing, handler.dirname)
            else:
                self.checkpoint.load_state_dict({"_saved": [(p, n) for p, n in state["saved"]]})
        if self.evaluator is not None and "best_metric" in state:
            self.evaluator.state.best_metric = state["best_metric"]
            self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class TrainingCheckpoint:
    """Save everything needed to resume training every ``interval`` epochs and at the end, and resume from it.

    The checkpoint (``<save_dir>/checkpoint_epoch=N.pt``) holds:

    * ``model``, ``optimizer``, ``lr_scheduler`` (when given): their ``state_dict``;
    * ``trainer``: the trainer's own state (epoch and iteration), so a resumed run continues where the last saved
      epoch ended;
    * ``rng`` (``save_rng``): the random generators (:class:`RandomStates` of the trainer's data loader), so the
      resumed epochs shuffle and augment as an uninterrupted run would;
    * ``mlflow`` (with ``tracker``): the id, name, experiment and store of the MLflow run the training logs to;
    * ``best_validation`` (with ``best_saver`` and/or ``evaluator``): the score and file name of the best-validation
      model the key-metric ``CheckpointSaver`` wrote, and the evaluator's ``best_metric`` / ``best_metric_epoch``, so
      after a resume a worse validation does not overwrite the best model of the epochs before the interruption.

    Only the newest checkpoint is kept; it is written by MONAI's ``CheckpointSaver`` (via ignite's atomic save).

    With ``resume`` and a ``tracker``, the training continues *the same* MLflow run: the run id is read from the
    checkpoint and handed to :meth:`pipeline.training.tracking.MLflowTracker.resume_run`, which sets the run RUNNING
    again and deletes its metric points after the checkpoint's epoch, so the final history equals an uninterrupted
    run's. Without ``resume`` a new run is always created. With a ``tracker``, the model's final weights are also logged
    as the artifact ``model/final_model.pt`` when the run finishes.

    Args:
        save_dir: checkpoint folder.
        model, optimizer, lr_scheduler: objects whose ``state_dict`` is saved (the scheduler is optional).
        interval: save every ``interval`` epochs.
        resume: at start, load the newest checkpoint from ``save_dir`` if there is one. Without it, the ``*.pt``
            files an earlier training left in ``save_dir`` are moved to ``save_dir/previous/<UTC time>/`` first.
        tracker: the training's :class:`pipeline.training.tracking.MLflowTracker` (optional).
        save_rng: save (and on resume restore) the random generator states.
        log_final_model: with a ``tracker``, log the final weights when the run finishes.
        best_saver: the validation's key-metric ``CheckpointSaver`` (``save_key_metric=True``, optional).
        evaluator: the validation evaluator (optional), whose best metric and its epoch are kept.
        extra: more objects with ``state_dict`` / ``load_state_dict`` saved and restored under their names (e.g. the
            refinement's :class:`pipeline.refine.engine.RefinementRounds`).
    """

    def __init__(self, save_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any = None,
                 interval: int = 1, resume: bool = False, tracker: Any = None, save_rng: bool = True,
                 log_final_model: bool = True, best_saver: Any = None, evaluator: Any = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.save_dir = Path(save_dir)
        self.objects = {"model": model, "optimizer": optimizer}
        if lr_scheduler is not None:
            self.objects["lr_scheduler"] = lr_scheduler
        reserved = {"model", "optimizer", "lr_scheduler", "trainer", "rng", "best_validation", "mlflow"}
        for name in extra or {}:
            if name in reserved:
                raise ValueError(f"extra checkpoint entry '{name}' clashes with a built-in entry ({sorted(reserved)})")
        self.extra = dict(extra or {})
        self.interval = interval
        self.resume = resume
        self.tracker = tracker
        self.save_rng = save_rng
        self.log_final_model = log_final_model
        self.best = _BestValidation(best_saver, evaluator) if best_saver is not None or evaluator is not None else None
        self.resumed_from: Path | None = None
        self.resumed_epoch: int | None = None
        self.resumed_run_id: str | None = None

    def latest(self) -> Path | None:
        """The newest ``checkpoint_epoch=N.pt`` in ``save_dir``, or None."""
        found = []
        for p in self.save_dir.glob("checkpoint_epoch=*.pt"):
            try:
                found.append((int(p.stem.split("=")[-1]), p))
            except ValueError:
                continue
        return max(found)[1] if found else None

    def attach(self, engine: Engine) -> None:
        from monai.handlers import CheckpointLoader, CheckpointSaver

        save_dict = {**self.objects, "trainer": engine, **self.extra}
        if self.save_rng:
            save_dict["rng"] = RandomStates(engine)
        if self.best is not None:
            save_dict["best_validation"] = self.best
        if self.tracker is not None:
            save_dict["mlflow"] = _RunReference(self.tracker)
            if self.log_final_model:
                self.tracker.add_end_callback(self._log_final_model)
        if not self.resume:
            self._archive_previous()
        if self.resume:
            path = self.latest()
            if path is None:
                logger.warning("resume requested but no checkpoint in %s; training starts from scratch", self.save_dir)
            else:
                logger.info("resuming from %s", path)
                saved = torch.load(path, map_location="cpu", weights_only=True)
                # entries an older checkpoint lacks (random states, best validation, run id) are not loaded; the
                # others must be there
                optional = ("rng", "best_validation")
                load_dict = {k: v for k, v in save_dict.items() if k != "mlflow" and (k in saved or k not in optional)}
                if "rng" not in saved and self.save_rng:
                    logger.warning("%s holds no random generator states: the resumed epochs shuffle and augment "
                                   "differently from an uninterrupted run", path)
                if "best_validation" not in saved and self.best is not None:
                    logger.warning("%s holds no best validation score: the best score before the resume is unknown, "
                                   "so the next validation overwrites the best-validation model", path)
                self.resumed_from, self.resumed_epoch = path, checkpoint_epoch(saved["trainer"])
                self.resumed_run_id = str((saved.get("mlflow") or {}).get("run_id") or "") or None
                del saved
                CheckpointLoader(load_path=str(path), load_dict=load_dict, map_location="cpu").attach(engine)
                if self.tracker is not None:
                    if self.resumed_run_id:
                        self.tracker.resume_run(self.resumed_run_id, self.resumed_epoch)
                    else:
                        logger.warning("%s names no MLflow run: the resumed training is logged as a new run", path)
        # ignite names a multi-object checkpoint "<prefix>_checkpoint_epoch=N.pt"; an empty prefix gives the
        # "checkpoint_epoch=N.pt" that latest() looks for
        saver = CheckpointSaver(
            save_dir=str(self.save_dir), save_dict=save_dict, file_prefix="", save_interval=self.interval,
            n_saved=1, epoch_level=True,
        )
        saver.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._remove_stale)

        def _save_last(engine: Engine) -> None:
            # the last epoch is always checkpointed, also when it is not a multiple of the interval
            if engine.state.epoch % self.interval:
                saver.interval_completed(engine)
                self._remove_stale(engine)

        engine.add_event_handler(Events.COMPLETED, _save_last)

    def _log_final_model(self, tracker: Any) -> None:
        """Log the model's final weights (``state_dict``) as the artifact ``model/final_model.pt``."""
        model = self.objects["model"]
        model = getattr(model, "module", model)  # DataParallel / DistributedDataParallel
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "final_model.pt"
            torch.save(model.state_dict(), path)
            tracker.log_artifact(path, artifact_path="model")

    def _archive_previous(self) -> None:
        """Move the ``*.pt`` files of an earlier training to ``previous/<UTC time>/``: a new run never mixes with
        (or silently replaces) them."""
        old = sorted(self.save_dir.glob("*.pt"))
        if not old:
            return
        import time

        target = self.save_dir / "previous" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target.mkdir(parents=True, exist_ok=True)
        for p in old:
            os.replace(p, target / p.name)
        logger.warning("a new training started in %s: the %d checkpoint file(s) of the previous training were "
                       "moved to %s (use resume=true to continue a training instead)", self.save_dir, len(old), target)

    def _remove_stale(self, engine: Engine) -> None:
        # checkpoints left by an earlier (resumed) run are not tracked by this run's saver: keep only the newest
        newest = self.latest()
        for p in self.save_dir.glob("checkpoint_epoch=*.pt"):
            if newest is not None and p != newest:
                p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- overlays
def _label_map(x: Any) -> np.ndarray:
    """Channel-first one-hot / probability / binary array -> integer label map without the channel axis."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    if a.ndim >= 3 and a.shape[0] > 1:
        return a.argmax(axis=0).astype(np.int16)
    return (a[0] > 0.5).astype(np.int16) if a.ndim >= 3 else (a > 0.5).astype(np.int16)


def _pick_slices(label: np.ndarray, pred: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` axial (last axis) slices: the one with most ground truth, spread over the foreground."""
    depth = label.shape[-1]
    area = (label > 0).reshape(-1, depth).sum(axis=0)
    if not area.any():
        area = (pred > 0).reshape(-1, depth).sum(axis=0)
    if not area.any():
        return [depth // 2]
    fg = np.flatnonzero(area)
    picks = {int(np.argmax(area))}
    for q in np.linspace(0, len(fg) - 1, num=n):
        if len(picks) >= n:
            break
        picks.add(int(fg[int(round(q))]))
    return sorted(picks)


class OverlaySaver:
    """PNG figures of a few validation slices (image, ground truth, prediction) every ``interval`` epochs and at the
    end, saved to ``output_dir`` and logged to MLflow.

    Attach to the validation evaluator. At evaluations where the trainer's epoch (from ``tracker``) is a multiple of
    ``interval`` or the last epoch (and at every run of a lone evaluator), the first ``num_cases`` cases are drawn:
    for a 3D case, ``num_slices`` axial slices (the one with the largest ground-truth area and others spread over
    the foreground); a 2D case is drawn as it is. Rows are slices; the columns show the image (first channel), the
    ground truth and the prediction as coloured label maps over the image. Files:
    ``<output_dir>/<subdir>/epoch=NNNN/<case>.png``, logged as artifacts under ``<subdir>/epoch=NNNN``.

    Labels and predictions may be one-hot / probabilities with several channels (argmax) or one channel (> 0.5).

    Args:
        output_dir: folder of the figures.
        tracker: the :class:`pipeline.training.tracking.MLflowTracker` of the run (epochs and logging); None:
            files only.
        interval: draw every ``interval`` trainer epochs (0: only at the last epoch).
        num_cases: how many validation cases to draw.
        num_slices: slices per 3D case.
        subdir: folder name under ``output_dir`` and in the run's artifacts.
        image_key, label_key, pred_key: keys of the evaluator's (decollated) output.
    """

    def __init__(self, output_dir: str | Path, tracker: Any = None, interval: int = 5, num_cases: int = 2,
                 num_slices: int = 3, subdir: str = "overlays", image_key: str = "image", label_key: str = "label",
                 pred_key: str = "pred") -> None:
        if interval < 0 or num_cases < 1 or num_slices < 1:
            raise ValueError(f"need interval >= 0, num_cases >= 1, num_slices >= 1; got {interval}, {num_cases}, "
                             f"{num_slices}")
        self.output_dir = Path(output_dir)
        self.tracker = tracker
        self.interval = int(interval)
        self.num_cases = int(num_cases)
        self.num_slices = int(num_slices)
        self.subdir = subdir
        self.keys = (image_key, label_key, pred_key)
        self._items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _epoch(self) -> tuple[int, int | None]:
        trainer = getattr(self.tracker, "trainer", None)
        if trainer is None:
            return 0, None
        return int(trainer.state.epoch), trainer.state.max_epochs

    def _due(self) -> bool:
        epoch, max_epochs = self._epoch()
        if epoch == 0:
            return True
        return (self.interval > 0 and epoch % self.interval == 0) or (max_epochs is not None and epoch >= max_epochs)

    def _reset(self, engine: Engine) -> None:
        self._items = []

    def _collect(self, engine: Engine) -> None:
        if len(self._items) >= self.num_cases or not self._due():
            return
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch
        batch = batch if isinstance(batch, list) else [batch] * len(outputs)
        image_key, label_key, pred_key = self.keys
        for i, out in enumerate(outputs):
            if len(self._items) >= self.num_cases:
                break
            if not isinstance(out, Mapping) or not all(k in out for k in self.keys):
                continue
            image = out[image_key]
            image = np.asarray((image.detach().cpu() if isinstance(image, torch.Tensor) else image)[0],
                               dtype=np.float32)
            case = _case_of(batch[i] if i < len(batch) else None, f"case_{len(self._items)}")
            self._items.append((case, image, _label_map(out[label_key]), _label_map(out[pred_key])))

    def _write(self, engine: Engine) -> None:
        if not self._items:
            return
        epoch, _ = self._epoch()
        folder = f"{self.subdir}/epoch={epoch:04d}" if epoch else self.subdir
        for case, image, label, pred in self._items:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case)
            path = self._figure(image, label, pred, self.output_dir / folder / f"{safe}.png",
                                f"{case}" + (f", epoch {epoch}" if epoch else ""))
            self.written.append(path)
            if self.tracker is not None:
                self.tracker.log_artifact(path, artifact_path=folder)
        self._items = []

    def _figure(self, image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        if image.ndim == 3:
            slices = _pick_slices(label, pred, self.num_slices)
            rows = [(f"slice {z}", image[..., z], label[..., z], pred[..., z]) for z in slices]
        else:
            rows = [("", image, label, pred)]
        colours = ListedColormap(["#00ff00", "#ff3030", "#3090ff", "#ffd000", "#ff00ff", "#00ffff"])
        lo, hi = float(np.percentile(image, 1)), float(np.percentile(image, 99))
        fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
        for r, (name, img, gt, pr) in enumerate(rows):
            for c, (col, mask) in enumerate((("image", None), ("ground truth", gt), ("prediction", pr))):
                ax = axes[r, c]
                ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
                if mask is not None and mask.any():
                    shown = np.ma.masked_where(mask.T == 0, (mask.T - 1) % colours.N)
                    ax.imshow(shown, cmap=colours, vmin=0, vmax=colours.N - 1, alpha=0.45, origin="lower",
                              interpolation="nearest")
                ax.set_title(f"{col} {name}".strip(), fontsize=8)
                ax.axis("off")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        return path
