"""Per-image selective methods (TV, Euler elastica, DIP-like): each test image is solved on its own, no training.

The tunable setting of each method is chosen on validation images (:func:`run_per_image_method`).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.selective.evaluation import evaluate_masks, save_overlay
from pipeline.selective.padding import TrainingBatch, pad_amounts
from pipeline.selective.samples import PER_IMAGE_METHODS, loader_samples

logger = logging.getLogger(__name__)

__all__ = ["dip_segment", "run_per_image_method"]


def dip_segment(sample: Mapping[str, Any], epochs: Sequence[int] | int = 300, lam: float = 2.0,
                theta: float = 30.0, features: int = 32, levels: int = 4, learning_rate: float = 1e-3,
                lr_decay: float = 1e-4, seed: int = 0, divisible: int = 16, noise_channels: int = 32,
                noise_max: float = 0.1, perturb_std: float = 0.01,
                device: str | torch.device = "cpu") -> dict[int, np.ndarray]:
    """DIP-like per-image model: an untrained DIP-Net ``φ_Θ(z)`` minimising ``λ∫Φu + θ∫D_G u`` for one image.

    Adam with ``lr_t = lr / (1 + lr_decay·t)`` (the Keras ``decay`` of the DIP code); the noise input
    (``noise_channels`` channels, uniform in ``[0, noise_max]``) gets a fresh ``N(0, perturb_std²)`` perturbation each
    step (:class:`networks.DIPNet`). Early stopping: the masks ``{u > 0.5}`` after each epoch count in
    ``epochs`` are returned, so a caller can pick the count on validation images and apply it to test images.

    Returns:
        ``{epoch: mask}`` for every requested epoch count (masks cropped to the sample's size).
    """
    from losses import SelectiveLoss
    from networks import DIPNet

    counts = sorted({int(e) for e in ([epochs] if isinstance(epochs, int) else epochs)})
    if not counts or counts[0] < 1:
        raise ValueError(f"epochs must be positive epoch counts, got {epochs!r}")
    torch.manual_seed(seed)
    item = loader_samples([sample], "polygon")[0]
    batch = TrainingBatch([item], divisible).batch
    net = DIPNet(num_images=1, spatial_size=batch["input"].shape[-2:], noise_channels=noise_channels,
                 noise_max=noise_max, perturb_std=perturb_std, features=features, levels=levels, seed=seed).to(device)
    loss_fn = SelectiveLoss(mu=0.0, lam=lam, theta=theta)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + lr_decay * t))
    fitting, geodesic = batch["fitting"].to(device), batch["geodesic"].to(device)
    index = torch.zeros(1, dtype=torch.long, device=device)
    pads = pad_amounts(sample["intensity"].shape[-2:], batch["input"].shape[-2:])
    h, w = sample["intensity"].shape[-2:]
    crop = (slice(pads[2], pads[2] + h), slice(pads[0], pads[0] + w))
    masks: dict[int, np.ndarray] = {}
    net.train()
    for epoch in range(1, counts[-1] + 1):
        optimizer.zero_grad(set_to_none=True)
        u = net(index)
        loss = loss_fn(u, fitting, geodesic)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if epoch in counts:  # the DIP output is the network's output at this iterate (batch statistics)
            masks[epoch] = (u.detach()[0, 0].cpu().numpy() > 0.5)[crop]
    return masks


def _per_image_masks(method: str, sample: Mapping[str, Any], params: Mapping[str, Any]) -> dict[Any, np.ndarray]:
    """Masks of one per-image method for one sample, keyed by the tunable setting (grid value or epoch count)."""
    from pipeline.selective import baselines

    fitting = np.asarray(sample["fitting"][0], dtype=np.float64)
    geodesic = np.asarray(sample["geodesic"][0], dtype=np.float64)
    lam, theta = float(params["lam"]), float(params["theta"])
    if method == "dip":
        return dip_segment(sample, epochs=params["epochs_grid"], lam=lam, theta=theta,
                           features=int(params["features"]), levels=int(params.get("levels", 4)),
                           learning_rate=float(params["learning_rate"]), lr_decay=float(params["lr_decay"]),
                           seed=int(params["seed"]), noise_channels=int(params["noise_channels"]),
                           noise_max=float(params["noise_max"]), perturb_std=float(params["perturb_std"]))
    out = {}
    for value in params["grid"]:
        if method == "tv":
            res = baselines.tv_segment(fitting, geodesic, lam=lam, theta=theta, mu=float(value),
                                       max_iter=int(params["max_iter"]))
        elif method == "elastica":
            res = baselines.elastica_segment(fitting, geodesic, lam=lam, theta=theta, alpha=float(value[0]),
                                             beta=float(value[1]), max_iter=int(params["max_iter"]))
        else:
            raise ValueError(f"unknown per-image method {method!r}; expected one of {PER_IMAGE_METHODS}")
        out[_grid_key(value)] = res.mask
    return out


def _grid_key(value: Any) -> Any:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)


def run_per_image_method(method: str, val_samples: Sequence[Mapping[str, Any]],
                         test_samples: Sequence[Mapping[str, Any]], params: Mapping[str, Any], output_dir: str | Path,
                         tracker: Any = None, overlay_case: int = 0) -> dict[str, Any]:
    """Validate a per-image method's setting on ``val_samples``, then segment ``test_samples`` with it.

    The tunable setting (``params["grid"]`` of ``mu`` for TV or ``(alpha, beta)`` for elastica; the early-stopping
    epoch count ``params["epochs_grid"]`` for DIP) with the best mean validation Dice is chosen (ties: the first);
    test images are then solved with it. Writes ``per_case_val_metrics.csv`` (every setting),
    ``per_case_test_metrics.csv`` and ``overlay_<method>.png`` (test case ``overlay_case``) to ``output_dir``, and
    logs params, the validation curve, test metrics and artifacts to ``tracker`` (an open
    :class:`pipeline.training.tracking.MLflowTracker`) when given.

    Returns:
        The test summary (``test_dice``, ``test_dice_std``, ``test_jaccard``, ``test_jaccard_std``) plus
        ``chosen`` (the setting) and ``seconds_per_image``.
    """
    if method not in PER_IMAGE_METHODS:
        raise ValueError(f"unknown per-image method {method!r}; expected one of {PER_IMAGE_METHODS}")
    if not val_samples or not test_samples:
        raise ValueError(f"{method}: needs at least one validation and one test sample")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val_scores: dict[Any, list[float]] = {}
    val_rows = []
    for s in tqdm(val_samples, desc=f"{method} validation", unit="image"):
        for key, mask in _per_image_masks(method, s, params).items():
            d, j = dice_jaccard(mask, np.asarray(s["label"][0]))
            val_scores.setdefault(key, []).append(d)
            val_rows.append({"case": s["case"], "setting": json.dumps(key), "val_dice": d, "val_jaccard": j})
    means = {k: float(np.mean(v)) for k, v in val_scores.items()}
    chosen = max(means, key=lambda k: means[k])
    with (out_dir / "per_case_val_metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "setting", "val_dice", "val_jaccard"])
        writer.writeheader()
        writer.writerows(val_rows)
    test_params = dict(params)
    if method == "dip":
        test_params["epochs_grid"] = [chosen]
    else:
        test_params["grid"] = [list(chosen) if isinstance(chosen, tuple) else chosen]
    masks, seconds = [], []
    for s in tqdm(test_samples, desc=f"{method} test", unit="image"):
        start = time.perf_counter()
        masks.append(next(iter(_per_image_masks(method, s, test_params).values())))
        seconds.append(time.perf_counter() - start)
    summary = evaluate_masks(test_samples, masks, out_dir / "per_case_test_metrics.csv",
                             extra={"seconds": [round(t, 3) for t in seconds]})
    overlay = save_overlay(test_samples[overlay_case], masks[overlay_case], out_dir / f"overlay_{method}.png",
                           title=method.upper() if method != "elastica" else "Elastica")
    if tracker is not None:
        tracker.log_params({"chosen_setting": json.dumps(chosen)})
        for step, key in enumerate(sorted(means)):
            tracker.log_metrics({"val_dice": means[key]}, step=int(key) if method == "dip" else step)
        tracker.log_metrics({**summary, "best_val_dice": means[chosen],
                             "seconds_per_image": float(np.mean(seconds))})
        for path in (out_dir / "per_case_val_metrics.csv", out_dir / "per_case_test_metrics.csv", overlay):
            tracker.log_artifact(path)
    logger.info("%s: chosen %s (val Dice %.3f); test Dice %.3f ± %.3f", method, chosen, means[chosen],
                summary["test_dice"], summary["test_dice_std"])
    return {**summary, "chosen": chosen, "seconds_per_image": float(np.mean(seconds))}
