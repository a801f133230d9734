"""Scores, reports and overlays of selective masks, and MLflow-tracked runs of the selective methods."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.selective.padding import PaddedInferer

__all__ = ["evaluate_masks", "overlay_callback", "predict_mask", "run_tracked", "save_overlay"]


def evaluate_masks(samples: Sequence[Mapping[str, Any]], masks: Sequence[np.ndarray], csv_path: str | Path | None,
                   prefix: str = "test", extra: Mapping[str, Sequence[Any]] | None = None) -> dict[str, float]:
    """Per-case Dice/Jaccard of ``masks`` against the samples' labels, a CSV with a mean/std footer, and the summary.

    Returns:
        ``{f"{prefix}_dice", f"{prefix}_dice_std", f"{prefix}_jaccard", f"{prefix}_jaccard_std"}`` (population std).
    """
    rows = []
    for i, (s, m) in enumerate(zip(samples, masks)):
        d, j = dice_jaccard(m, np.asarray(s["label"][0]))
        row = {"case": s["case"], "slice": s["slice"], f"{prefix}_dice": d, f"{prefix}_jaccard": j}
        for key, values in (extra or {}).items():
            row[key] = values[i]
        rows.append(row)
    dice = np.array([r[f"{prefix}_dice"] for r in rows])
    jac = np.array([r[f"{prefix}_jaccard"] for r in rows])
    summary = {f"{prefix}_dice": float(dice.mean()), f"{prefix}_dice_std": float(dice.std()),
               f"{prefix}_jaccard": float(jac.mean()), f"{prefix}_jaccard_std": float(jac.std())}
    if csv_path is not None:
        path = Path(csv_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = list(rows[0]) if rows else ["case"]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow({"case": "mean", f"{prefix}_dice": summary[f"{prefix}_dice"],
                             f"{prefix}_jaccard": summary[f"{prefix}_jaccard"]})
            writer.writerow({"case": "std", f"{prefix}_dice": summary[f"{prefix}_dice_std"],
                             f"{prefix}_jaccard": summary[f"{prefix}_jaccard_std"]})
        os.replace(tmp, path)
    return summary


def save_overlay(sample: Mapping[str, Any], mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """PNG of one sample: image with the marker polygon, ground truth, and the predicted mask (contours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.asarray(sample["intensity"][0]).T  # RAS array (x, y) shown with x horizontal
    label = np.asarray(sample["label"][0]).T
    polygon = np.asarray(sample["polygon"][0]).T
    pred = np.asarray(mask).astype(float).T
    points = np.asarray(json.loads(sample["points"]))
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax, (name, overlay, colour) in zip(axes, (("image + clicks", polygon, "yellow"),
                                                  ("ground truth", label, "lime"),
                                                  ("prediction", pred, "red"))):
        ax.imshow(f, cmap="gray", origin="lower", vmin=0, vmax=1)
        if overlay.any():
            ax.contour(overlay, levels=[0.5], colors=colour, linewidths=1.0)
        if name == "image + clicks" and len(points):
            ax.plot(points[:, 0], points[:, 1], "o", color="cyan", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    d, j = dice_jaccard(mask, label.T)
    fig.suptitle(f"{title} {sample['case']} slice {sample['slice']}: Dice {d:.3f}, Jaccard {j:.3f}".strip(),
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def predict_mask(network: torch.nn.Module, sample: Mapping[str, Any], divisible: int = 16,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """``{u_VM > 0.5}`` of a trained VM-Net for one loader sample (input padded to ``divisible`` and cropped back)."""
    network.eval()
    with torch.no_grad():
        u = PaddedInferer(divisible)(sample["input"][None].to(device), network)
    return u[0, 0].cpu().numpy() > 0.5


def overlay_callback(network: torch.nn.Module, samples: Sequence[Mapping[str, Any]], path: str | Path, title: str,
                     divisible: int = 16, device: str | torch.device = "cpu", case: int = 0) -> Callable[[Any], None]:
    """A tracker ``artifact_callback`` that saves and logs the overlay PNG of loader sample ``case``."""

    def _callback(tracker: Any) -> None:
        if not samples:
            return
        mask = predict_mask(network, samples[case], divisible, device)
        tracker.log_artifact(save_overlay(samples[case], mask, path, title=title))

    return _callback


def run_tracked(tracker: Any, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` inside an MLflow run of ``tracker``: FINISHED on success, FAILED on error, KILLED on Ctrl-C."""
    tracker.start_run()
    try:
        result = function(*args, tracker=tracker, **kwargs)
    except KeyboardInterrupt:
        tracker.end_run("KILLED")
        raise
    except Exception as err:
        tracker.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        tracker.end_run("FAILED")
        raise
    tracker.end_run("FINISHED")
    return result
