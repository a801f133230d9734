"""Evaluation of a trained refinement network: ``k`` chosen on validation, test Dice per step, quality correlations.

:class:`RefineEvaluation` is a handler of the :class:`pipeline.refine.engine.RefineTrainer`: when the training
completes (the network then holds the best weights of its last round), it

* refines every validation and test case from its base mask ``0..max_iterations`` times
  (:func:`pipeline.refine.iteration.iterate_refinement`) and records the Dice and the predicted quality after each
  step; ``k`` is the step count with the best mean validation Dice, with and without the early stop on predicted
  quality (a case stops as soon as the predicted quality of the new mask does not rise by more than
  ``early_stop_delta``, keeping the previous mask);
* compares the predicted quality with the true Dice per case (the per-slice predictions weighted by
  ``|mask_z| + |refined_z|``: volume Dice is exactly the mean of slice Dices with the weights ``|A_z| + |B_z|``, the
  refined mask standing in for the unknown label), per slice, and on labels degraded by the mask augmentation;
* writes ``per_case_val.csv``, ``per_case_test.csv``, ``k_selection.csv`` and ``summary.json`` to ``output_dir`` and
  ``model.pt`` (weights plus the chosen ``k`` and early-stop choice, read by
  :class:`pipeline.refine.predictors.RefinePredictor`) to ``ckpt_dir``, and logs the summary figures and these files
  to the training's MLflow run (attach it before the tracker, which closes the run).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.refine.data import RefineCase, progress_bar
from pipeline.refine.engine import RefinementRounds
from pipeline.refine.iteration import choose_k, iterate_refinement, pearson_r, refine_forward, slice_dice, stop_step

logger = logging.getLogger(__name__)

__all__ = ["RefineEvaluation"]


class RefineEvaluation:
    """Evaluate the refinement network when its training completes (see the module docstring).

    Args:
        bundle: bundle name (messages).
        variant: name of this refinement model (``q``, ``noq``, ``q-warm``, ...).
        val_cases, test_cases: :class:`pipeline.refine.data.RefineCase` s.
        rounds: the training's :class:`pipeline.refine.engine.RefinementRounds` (best validation Dice, samples).
        mask_augmentation: dictionary transform degrading ``"mask"`` (the synthesised masks of the quality check);
            None skips that check.
        num_slices: adjacent slices per image channel.
        max_iterations: largest ``k`` tried on validation (at least 2: the table reports 1 and 2 steps).
        early_stop_delta: ``min_delta`` of the early stop.
        ckpt_dir: where ``model.pt`` goes.
        output_dir: where the CSVs and ``summary.json`` go.
        tracker: the training's :class:`pipeline.training.tracking.MLflowTracker` (or None).
        seed: seed of the synthesised masks (``seed + 1``).
        slice_batch_size: slices per forward pass.
        divisor: pad slices to a multiple of this.
        progress: show progress bars.
    """

    def __init__(self, bundle: str, variant: str, val_cases: Sequence[RefineCase], test_cases: Sequence[RefineCase],
                 rounds: RefinementRounds, mask_augmentation: Callable | None, num_slices: int, max_iterations: int,
                 early_stop_delta: float, ckpt_dir: str | Path, output_dir: str | Path, tracker: Any = None,
                 seed: int = 0, slice_batch_size: int = 32, divisor: int = 8, progress: bool = True) -> None:
        if int(max_iterations) < 2:
            raise ValueError(f"max_iterations must be >= 2 (the table reports 1 and 2 steps), got {max_iterations}")
        self.bundle, self.variant = bundle, variant
        self.val_cases, self.test_cases, self.rounds = list(val_cases), list(test_cases), rounds
        self.mask_augmentation, self.num_slices = mask_augmentation, int(num_slices)
        self.max_iterations, self.early_stop_delta = int(max_iterations), float(early_stop_delta)
        self.ckpt_dir, self.output_dir, self.tracker = Path(ckpt_dir), Path(output_dir), tracker
        self.seed, self.slice_batch_size, self.divisor = int(seed), int(slice_batch_size), int(divisor)
        self.progress = progress
        self.summary: dict[str, Any] | None = None
        self._start = time.time()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.time()

    def completed(self, engine: Engine) -> None:
        """Restore the best weights, evaluate, write the outputs and log them."""
        self.rounds.restore_best(engine)
        self.summary = self.evaluate(engine.network)
        logger.info("%s '%s': test Dice 0x %.4f, 1x %.4f, 2x %.4f, k=%d %.4f; r(cases) %.3f, r(slices) %.3f",
                    self.bundle, self.variant, self.summary["test_dice_0x"], self.summary["test_dice_1x"],
                    self.summary["test_dice_2x"], self.summary["k_val"], self.summary["test_dice_valk"],
                    self.summary["pearson_r_cases_0x"], self.summary["pearson_r_slices_0x"])

    def evaluate(self, network: torch.nn.Module) -> dict[str, Any]:
        """Traces of the validation and test cases, the summary, the files, the MLflow figures; the summary."""
        val_rows, test_rows = self.traces(network, self.val_cases), self.traces(network, self.test_cases)
        summary = self.summarise(val_rows, test_rows, self.synthetic_quality(network, self.test_cases))
        dataset = self.rounds.dataset
        summary.update(best_val_dice_1x=self.rounds.best, num_train_slices=len(dataset),
                       num_own_output_samples=dataset.num_own, wall_seconds=round(time.time() - self._start, 1))
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        model_file = self.ckpt_dir / "model.pt"
        torch.save({"model": network.state_dict(), "k": summary["k_val"], "k_early_stop": summary["k_val_early_stop"],
                    "early_stop": summary["early_stop_recommended"], "early_stop_delta": self.early_stop_delta,
                    "num_slices": self.num_slices, "variant": self.variant}, model_file)
        paths = self.write_outputs(val_rows, test_rows, summary)
        if self.tracker is not None:
            step = int(self.rounds.total_epochs)
            self.tracker.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))
                                      and not isinstance(v, bool) and np.isfinite(v)}, step)
            for path in [*paths, model_file]:
                self.tracker.log_artifact(path)
        return summary

    def traces(self, network: torch.nn.Module, cases: Sequence[RefineCase]) -> list[dict[str, Any]]:
        """Per case: Dice and predicted quality after 0..max_iterations steps, slice-level values at 0 steps."""
        network.eval()
        device = next(network.parameters()).device
        rows = []
        for case in progress_bar(cases, "refining", self.progress, leave=False):
            x = case.slices(self.num_slices).to(device)
            trace = iterate_refinement(network, x, RefineCase.as_slices(case.base), self.max_iterations,
                                       batch_size=self.slice_batch_size, divisor=self.divisor)
            label = case.label.numpy()
            dice = [dice_jaccard(m[:, 0].permute(1, 2, 0).numpy(), label)[0] for m in trace.masks]
            base_slices = RefineCase.as_slices(case.base)[:, 0].numpy()
            label_slices = RefineCase.as_slices(case.label)[:, 0].numpy()
            rows.append({"case": case.case, "dice": dice, "quality": list(trace.qualities),
                         "slice_quality": trace.slice_qualities[0],
                         "slice_dice": slice_dice(base_slices, label_slices),
                         "slice_nonempty": (base_slices.reshape(len(base_slices), -1).any(1)
                                            | label_slices.reshape(len(label_slices), -1).any(1))})
        return rows

    def synthetic_quality(self, network: torch.nn.Module,
                          cases: Sequence[RefineCase]) -> tuple[list[float], list[float]]:
        """Predicted vs true Dice of degraded labels (``mask_augmentation``, seeded) on slices with foreground."""
        if self.mask_augmentation is None:
            return [], []
        if hasattr(self.mask_augmentation, "set_random_state"):
            self.mask_augmentation.set_random_state(self.seed + 1)
        network.eval()
        device = next(network.parameters()).device
        predicted, true = [], []
        for case in cases:
            labels = RefineCase.as_slices(case.label).float()
            keep = [z for z in range(labels.shape[0]) if labels[z].any()]
            if not keep:
                continue
            masks = torch.stack([torch.as_tensor(self.mask_augmentation({"mask": labels[z]})["mask"]) for z in keep])
            x = case.slices(self.num_slices)[keep].to(device)
            with torch.no_grad():
                _, q = refine_forward(network, x, masks.bool(), self.slice_batch_size, self.divisor)
            predicted.extend(q.tolist())
            true.extend(slice_dice(masks.bool().numpy(), labels[keep].bool().numpy()).tolist())
        return predicted, true

    def summarise(self, val_rows: list[dict], test_rows: list[dict], synthetic: tuple[list, list]) -> dict[str, Any]:
        """k chosen on validation (fixed and with early stop), test Dice per k and quality correlations."""
        kmax = self.max_iterations
        val_dice = np.array([r["dice"] for r in val_rows])
        val_es = np.array([[r["dice"][stop_step(r["quality"], k, self.early_stop_delta)] for k in range(kmax + 1)]
                           for r in val_rows])
        k_val, k_es = choose_k(val_dice.mean(0)), choose_k(val_es.mean(0))
        # the early stop is recommended for inference only where it does at least as well on validation
        early_stop_helps = bool(val_es.mean(0)[k_es] >= val_dice.mean(0)[k_val])
        test_dice = np.array([r["dice"] for r in test_rows])
        es_steps = [stop_step(r["quality"], k_es, self.early_stop_delta) for r in test_rows]
        es_dice = np.array([r["dice"][s] for r, s in zip(test_rows, es_steps)])
        best_k = choose_k(test_dice.mean(0))
        slice_q = np.concatenate([r["slice_quality"][r["slice_nonempty"]] for r in test_rows])
        slice_d = np.concatenate([r["slice_dice"][r["slice_nonempty"]] for r in test_rows])
        summary = {
            "variant": self.variant, "max_iterations": kmax, "k_val": k_val, "k_val_early_stop": k_es,
            "early_stop_recommended": early_stop_helps,
            "val_dice_per_k": val_dice.mean(0).tolist(), "val_dice_early_stop_per_k": val_es.mean(0).tolist(),
            "test_dice_per_k": test_dice.mean(0).tolist(), "test_dice_std_per_k": test_dice.std(0).tolist(),
            "test_dice_0x": float(test_dice[:, 0].mean()), "test_dice_1x": float(test_dice[:, 1].mean()),
            "test_dice_2x": float(test_dice[:, 2].mean()), "test_dice_valk": float(test_dice[:, k_val].mean()),
            "test_dice_valk_std": float(test_dice[:, k_val].std()),
            "test_dice_valk_early_stop": float(es_dice.mean()), "test_early_stop_steps": es_steps,
            "test_dice_bestk": float(test_dice[:, best_k].mean()), "best_k": best_k,
            "num_test_cases": len(test_rows), "num_val_cases": len(val_rows),
            "pearson_r_cases_0x": pearson_r([r["quality"][0] for r in test_rows], test_dice[:, 0]),
            "pearson_r_cases_valk": pearson_r([r["quality"][k_val] for r in test_rows], test_dice[:, k_val]),
            "pearson_r_cases_all_k": pearson_r([q for r in test_rows for q in r["quality"]], test_dice.reshape(-1)),
            "pearson_r_slices_0x": pearson_r(slice_q, slice_d), "num_slices_0x": len(slice_q),
            "pearson_r_slices_synthetic": pearson_r(*synthetic), "num_slices_synthetic": len(synthetic[0]),
            "quality_mae_cases_0x": float(np.mean([abs(r["quality"][0] - r["dice"][0]) for r in test_rows])),
        }
        return summary

    def write_outputs(self, val_rows: list[dict], test_rows: list[dict], summary: Mapping[str, Any]) -> list[Path]:
        """Per-case CSVs (Dice and predicted quality per step), ``k_selection.csv`` and ``summary.json``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        kmax = self.max_iterations
        paths = []
        for split, rows, k_es in (("val", val_rows, summary["k_val_early_stop"]),
                                  ("test", test_rows, summary["k_val_early_stop"])):
            path = self.output_dir / f"per_case_{split}.csv"
            with path.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["case", *[f"dice_{k}x" for k in range(kmax + 1)],
                                 *[f"quality_{k}x" for k in range(kmax + 1)], "k_val", "dice_valk", "quality_valk",
                                 "early_stop_steps", "dice_early_stop", "quality_early_stop"])
                for r in rows:
                    s = stop_step(r["quality"], k_es, self.early_stop_delta)
                    k = summary["k_val"]
                    writer.writerow([r["case"], *[f"{d:.4f}" for d in r["dice"]], *[f"{q:.4f}" for q in r["quality"]],
                                     k, f"{r['dice'][k]:.4f}", f"{r['quality'][k]:.4f}", s, f"{r['dice'][s]:.4f}",
                                     f"{r['quality'][s]:.4f}"])
            paths.append(path)
        path = self.output_dir / "k_selection.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["k", "val_dice", "val_dice_early_stop", "test_dice"])
            for k in range(kmax + 1):
                writer.writerow([k, f"{summary['val_dice_per_k'][k]:.4f}",
                                 f"{summary['val_dice_early_stop_per_k'][k]:.4f}",
                                 f"{summary['test_dice_per_k'][k]:.4f}"])
        paths.append(path)
        path = self.output_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
        paths.append(path)
        return paths

