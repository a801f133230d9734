"""Ignite handlers used by the bundles: per-case metric statistics and CSV reports."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

__all__ = ["PerCaseMetrics", "TrainingCheckpoint", "channel_output"]


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


class TrainingCheckpoint:
    """Save everything needed to resume training every ``interval`` epochs and at the end, and resume from it.

    The checkpoint holds the model, optimizer, LR scheduler (when given) and the trainer's own state (epoch and
    iteration), so a resumed run continues where the last saved epoch ended. Only the newest checkpoint is kept
    (``<save_dir>/checkpoint_epoch=N.pt``); it is written by MONAI's ``CheckpointSaver`` (via ignite's atomic save).

    Args:
        save_dir: checkpoint folder.
        model, optimizer, lr_scheduler: objects whose ``state_dict`` is saved (the scheduler is optional).
        interval: save every ``interval`` epochs.
        resume: at start, load the newest checkpoint from ``save_dir`` if there is one. Without it, the ``*.pt``
            files an earlier training left in ``save_dir`` are moved to ``save_dir/previous/<UTC time>/`` first.
    """

    def __init__(self, save_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any = None,
                 interval: int = 1, resume: bool = False) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.save_dir = Path(save_dir)
        self.objects = {"model": model, "optimizer": optimizer}
        if lr_scheduler is not None:
            self.objects["lr_scheduler"] = lr_scheduler
        self.interval = interval
        self.resume = resume

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

        save_dict = {**self.objects, "trainer": engine}
        if not self.resume:
            self._archive_previous()
        if self.resume:
            path = self.latest()
            if path is None:
                logger.warning("resume requested but no checkpoint in %s; training starts from scratch", self.save_dir)
            else:
                logger.info("resuming from %s", path)
                CheckpointLoader(load_path=str(path), load_dict=save_dict, map_location="cpu").attach(engine)
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
