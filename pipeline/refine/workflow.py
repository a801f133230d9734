"""Quality-regularised iterative refinement (Rebelo, Fernandes & Cardoso) as a stage after a bundle's base model.

A :class:`networks.QualityUNet` takes an image slice plus a mask and returns a refined mask and the predicted quality
(Dice) of the mask it was given. This module trains it and applies it:

* **Data.** Per case: the bundle's preprocessed volume, the binary target (e.g. the LiTS lesion class, SPECT bone)
  and the *base mask*, predicted by the bundle's own trained model (its ``network_def`` and checkpoint, run through
  the bundle's validation inferer). Base masks are cached per checkpoint (SHA-256 prefix) and case.
* **Training** (:meth:`RefinementWorkflow.train`). Slices of the training cases; each sample's input mask is the
  base mask (probability ``base_mask_prob``) or the ground truth degraded by :class:`transforms.RandImperfectMaskd`,
  so the quality target ``q* = Dice(input mask, label)`` covers good and bad masks. Loss
  :class:`losses.QualityRegularisedDiceLoss` (λ = 0: no quality regulariser). The checkpoint with the best
  validation Dice after one refinement step is kept.
* **Own outputs** (``self_training``, the paper's "Scratch" / "Warm"). Up to ``self_training_rounds`` times the
  network's refined outputs of the training base masks are added as extra training inputs, then the network is
  retrained from a fresh initialisation (``"scratch"``) or trained on from its weights (``"warm"``).
* **Inference** (:func:`iterate_refinement`). The output is fed back as the next mask ``k`` times; with
  ``early_stop`` a case stops as soon as the predicted quality of the new mask does not rise by more than
  ``min_delta`` over the previous one, and the previous mask is kept. ``k`` is chosen on the validation split.
* **Per-case quality.** The network predicts one quality per slice; a case's quality is their weighted mean with
  weights ``|mask_z| + |refined_z|``. Volume Dice is exactly the mean of slice Dices weighted by ``|A_z| + |B_z|``;
  the refined mask stands in for the unknown label ``B``.

Outputs (``output_dir``): ``per_case_val.csv`` and ``per_case_test.csv`` (Dice and predicted quality of every case
after 0..K steps, the chosen ``k`` and early-stop results), ``k_selection.csv``, ``summary.json``; ``ckpt_dir``:
``model.pt`` (weights plus the chosen ``k``). Everything is one MLflow run (params, per-epoch metrics, final
metrics, the CSVs and the checkpoint as artifacts).
"""


from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.io.files import sha256_prefix
from pipeline.refine.iteration import choose_k, iterate_refinement, pad_to_multiple, pearson_r, refine_forward
from pipeline.refine.iteration import slice_dice, stack_slices, stop_step, volume_quality
from transforms.slices import plain_tensor

logger = logging.getLogger(__name__)

__all__ = ["SELF_TRAINING", "RefineCase", "RefineSliceDataset", "RefinementWorkflow"]

SELF_TRAINING = ("none", "scratch", "warm")


@dataclass
class RefineCase:
    """One case: preprocessed image, binary target and base-model mask.

    Attributes:
        case: case name.
        image: ``(C, H, W, D)`` float32.
        label: ``(H, W, D)`` boolean target.
        base: ``(H, W, D)`` boolean base-model mask.
    """

    case: str
    image: torch.Tensor
    label: torch.Tensor
    base: torch.Tensor

    def slices(self, num_slices: int) -> torch.Tensor:
        """The network image input of every slice, ``(D, C·k, H, W)``."""
        return stack_slices(self.image, num_slices)

    @staticmethod
    def as_slices(volume_mask: torch.Tensor) -> torch.Tensor:
        """``(H, W, D)`` mask → ``(D, 1, H, W)``."""
        return volume_mask.permute(2, 0, 1).unsqueeze(1)


class RefineSliceDataset(Dataset):
    """Training samples ``{"image": (C·k, H, W), "mask": (1, H, W), "label": (1, H, W)}`` from :class:`RefineCase` s.

    Each item's input mask is the case's base-model mask (probability ``base_mask_prob``) or the label degraded by
    ``mask_transform`` (a dictionary transform on the key ``"mask"``, e.g. :class:`transforms.RandImperfectMaskd`);
    items added with :meth:`add_masks` (refined outputs, for training on the network's own outputs) use their fixed
    mask. The choice is drawn from a generator seeded with ``seed``.

    Args:
        cases: the training cases.
        num_slices: adjacent slices per image channel.
        mask_transform: degrades ``{"mask": label}``; None keeps the label (a perfect mask).
        base_mask_prob: chance of taking the base mask.
        slice_stride: keep every ``slice_stride``-th slice.
        seed: seed of the base / synthesised choice and of ``mask_transform`` (``set_random_state``).
    """

    def __init__(self, cases: Sequence[RefineCase], num_slices: int, mask_transform: Callable | None = None,
                 base_mask_prob: float = 0.5, slice_stride: int = 1, seed: int = 0) -> None:
        if not cases:
            raise ValueError("RefineSliceDataset needs at least one case (no labelled training case?)")
        if not 0.0 <= base_mask_prob <= 1.0:
            raise ValueError(f"base_mask_prob must be in [0, 1], got {base_mask_prob}")
        if slice_stride < 1:
            raise ValueError(f"slice_stride must be >= 1, got {slice_stride}")
        self.cases = list(cases)
        self.num_slices = num_slices
        self.mask_transform = mask_transform
        self.base_mask_prob = float(base_mask_prob)
        self.rng = np.random.RandomState(seed)
        if mask_transform is not None and hasattr(mask_transform, "set_random_state"):
            mask_transform.set_random_state(seed)
        self._stacked = [c.slices(num_slices) for c in self.cases]
        self.index: list[tuple[int, int, torch.Tensor | None]] = [
            (i, z, None) for i, c in enumerate(self.cases) for z in range(0, c.image.shape[-1], slice_stride)]
        self.num_own = 0

    def add_masks(self, entries: Sequence[tuple[int, int, torch.Tensor]]) -> None:
        """Add fixed-mask samples ``(case index, slice, mask (1, H, W))``."""
        self.index.extend((i, z, m.bool()) for i, z, m in entries)
        self.num_own += len(entries)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i, z, fixed = self.index[idx]
        case = self.cases[i]
        label = case.label[..., z][None].float()
        if fixed is not None:
            mask = fixed.float()
        elif self.rng.uniform() < self.base_mask_prob:
            mask = case.base[..., z][None].float()
        elif self.mask_transform is not None:
            mask = torch.as_tensor(self.mask_transform({"mask": label.clone()})["mask"]).float()
        else:
            mask = label.clone()
        return {"image": self._stacked[i][z], "mask": mask, "label": label}


def _cache_key(name: str, entry: Mapping[str, Any]) -> str:
    """Base-mask cache key: case name, clicks if any, image path, size and modification time (changes recompute)."""
    image = entry.get("image")
    parts = [name]
    if entry.get("points") is not None:  # selective samples: the clicks shape the base mask
        parts.append(f"points={entry['points']}")
    for path in image if isinstance(image, (list, tuple)) else [image]:
        if not isinstance(path, (str, Path)):  # in-memory data: the name alone
            continue
        p = Path(path)
        stat = p.stat() if p.exists() else None
        parts.append(f"{p}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}")
    return "|".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# The workflow
# ----------------------------------------------------------------------------------------------------------------


class RefinementWorkflow:
    """Train the refinement network of a bundle, choose ``k`` on validation, evaluate on test, track it all.

    Built by ``bundles/<name>/configs/refine.json`` (merged after the bundle's ``train.json``), which supplies the
    bundle's own data split, preprocessing, base network and checkpoint; every hyperparameter comes from there.

    Args:
        bundle: bundle name (MLflow tag, messages).
        variant: name of this refinement model (``q``, ``noq``, ``q-warm``, ...): folder and run name part.
        train_data, val_data, test_data: datalists (training: the cases whose labels the refinement may use).
        volume_transform: the bundle's volume preprocessing (load, orient, intensity; image and label keys).
        base_network: the bundle's network (``network_def``).
        base_ckpt: its trained checkpoint.
        base_hint: the command that trains it (shown when the checkpoint is missing).
        base_inferer: ``inferer(image (1, C, H, W, D), network) -> output (1, N, H, W, D)``.
        base_mask: ``base_mask(output (N, H, W, D)) -> (H, W, D)`` boolean base mask.
        target: ``target(label (1, H, W, D)) -> (H, W, D)`` boolean refinement target.
        network_factory: returns a fresh :class:`networks.QualityUNet`.
        loss: ``loss(logits, label, quality=..., input_mask=...)`` with a ``terms`` method
            (:class:`losses.QualityRegularisedDiceLoss`).
        optimizer_factory: ``optimizer_factory(parameters) -> torch.optim.Optimizer``.
        mask_augmentation: dictionary transform degrading ``"mask"`` (training inputs, and the synthesised masks
            of the held-out quality check).
        num_slices: adjacent slices per image channel (the bundle's).
        base_mask_prob: chance that a training input is the base mask rather than a degraded label.
        slice_stride: every ``slice_stride``-th slice of a training case is a sample.
        batch_size: training batch size.
        max_epochs: training epochs.
        max_iterations: largest ``k`` tried on validation.
        early_stop_delta: ``min_delta`` of the early stop.
        self_training: ``"none"``, ``"scratch"`` or ``"warm"``.
        self_training_rounds: rounds of adding own outputs (the paper: up to 2).
        self_training_epochs: epochs per ``"warm"`` round (``"scratch"`` retrains ``max_epochs``).
        ckpt_dir: where ``model.pt`` goes.
        output_dir: where the CSVs and ``summary.json`` go.
        cache_dir: where base masks are cached.
        tracker: :class:`pipeline.training.tracking.MLflowTracker` (or None).
        seed: seed of the network initialisation, sample choice and augmentation.
        device: torch device.
        slice_batch_size: slices per forward pass at inference.
        divisor: pad slices to a multiple of this (``2**(levels - 1)`` of the network).
        progress: show progress bars.
    """

    def __init__(self, *, bundle: str, variant: str, train_data: Sequence[Mapping[str, Any]],
                 val_data: Sequence[Mapping[str, Any]], test_data: Sequence[Mapping[str, Any]],
                 volume_transform: Callable, base_network: torch.nn.Module, base_ckpt: str | Path, base_hint: str,
                 base_inferer: Callable, base_mask: Callable[[torch.Tensor], torch.Tensor],
                 target: Callable[[torch.Tensor], torch.Tensor], network_factory: Callable[[], torch.nn.Module],
                 loss: Any, optimizer_factory: Callable[[Any], torch.optim.Optimizer],
                 mask_augmentation: Callable | None, num_slices: int, base_mask_prob: float, slice_stride: int,
                 batch_size: int, max_epochs: int, max_iterations: int, early_stop_delta: float, self_training: str,
                 self_training_rounds: int, self_training_epochs: int, ckpt_dir: str | Path, output_dir: str | Path,
                 cache_dir: str | Path, tracker: Any = None, seed: int = 0, device: str | torch.device = "cpu",
                 slice_batch_size: int = 32, divisor: int = 8, progress: bool = True) -> None:
        if self_training not in SELF_TRAINING:
            raise ValueError(f"self_training must be one of {SELF_TRAINING}, got {self_training!r}")
        for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size), ("num_slices", num_slices)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(max_iterations) < 2:
            raise ValueError(f"max_iterations must be >= 2 (the table reports 1 and 2 steps), got {max_iterations}")
        if not train_data or not val_data or not test_data:
            raise ValueError(f"bundle {bundle}: refinement needs training (labelled), validation and test cases, got "
                             f"{len(train_data)} / {len(val_data)} / {len(test_data)}")
        self.bundle, self.variant = bundle, variant
        self.data = {"train": list(train_data), "val": list(val_data), "test": list(test_data)}
        self.volume_transform = volume_transform
        self.base_network, self.base_ckpt, self.base_hint = base_network, Path(base_ckpt), base_hint
        self.base_inferer, self.base_mask, self.target = base_inferer, base_mask, target
        self.network_factory, self.loss, self.optimizer_factory = network_factory, loss, optimizer_factory
        self.mask_augmentation = mask_augmentation
        self.num_slices, self.base_mask_prob = int(num_slices), float(base_mask_prob)
        self.slice_stride = int(slice_stride)
        self.batch_size, self.max_epochs = int(batch_size), int(max_epochs)
        self.max_iterations, self.early_stop_delta = int(max_iterations), float(early_stop_delta)
        self.self_training, self.self_training_rounds = self_training, int(self_training_rounds)
        self.self_training_epochs = int(self_training_epochs)
        self.ckpt_dir, self.output_dir, self.cache_dir = Path(ckpt_dir), Path(output_dir), Path(cache_dir)
        self.tracker, self.seed, self.device = tracker, int(seed), torch.device(device)
        self.slice_batch_size, self.divisor, self.progress = int(slice_batch_size), int(divisor), progress
        self.network: torch.nn.Module | None = None
        self._epoch = 0

    # ------------------------------------------------------------------------------------------------ data
    def check_base(self) -> None:
        """Raise ``FileNotFoundError`` naming the missing base checkpoint and the command that trains it."""
        if not self.base_ckpt.is_file():
            raise FileNotFoundError(f"base model {self.base_ckpt} not found: the {self.bundle} refinement starts from "
                                    f"the bundle's own trained model; train it first with: {self.base_hint}")

    def load_cases(self) -> dict[str, list[RefineCase]]:
        """Preprocess every case and predict (or read from the cache) its base mask."""
        from pipeline.io.files import load_weights

        self.check_base()
        sha = sha256_prefix(self.base_ckpt)
        cache_file = self.cache_dir / f"base_masks_{sha}.pt"
        cache: dict[str, torch.Tensor] = {}
        if cache_file.is_file():
            cache = torch.load(cache_file, map_location="cpu", weights_only=True)
        loaded = False
        out: dict[str, list[RefineCase]] = {}
        for split, entries in self.data.items():
            cases = []
            for entry in _progress(entries, f"{split} cases", self.progress):
                item = self.volume_transform(dict(entry))
                image = plain_tensor(item["image"]).float()
                if image.ndim != 4:
                    raise ValueError(f"case {entry.get('case')}: expected a (C, H, W, D) image after the bundle's "
                                     f"preprocessing, got {tuple(image.shape)}")
                label = plain_tensor(self.target(torch.as_tensor(item["label"]))).bool().cpu()
                name = str(entry.get("case") or Path(str(entry.get("image"))).name)
                key = _cache_key(name, entry)
                if key not in cache:
                    if not loaded:
                        load_weights(self.base_network, self.base_ckpt, self.device)
                        loaded = True
                    with torch.no_grad():
                        output = self.base_inferer(image[None].to(self.device), self.base_network)[0]
                    cache[key] = plain_tensor(self.base_mask(output)).bool().cpu()
                base = cache[key]
                if base.shape != label.shape:
                    raise ValueError(f"case {name}: base mask {tuple(base.shape)} and target {tuple(label.shape)} "
                                     "differ in shape (does base_mask return (H, W, D)?)")
                cases.append(RefineCase(name, image.contiguous(), label, base))
            out[split] = cases
        if loaded:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save(cache, cache_file)
            logger.info("base masks of %d cases cached in %s", len(cache), cache_file)
        return out

    # ------------------------------------------------------------------------------------------------ training
    def _new_network(self, offset: int = 0) -> torch.nn.Module:
        torch.manual_seed(self.seed + offset)
        return self.network_factory().to(self.device)

    def _log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}, step)

    def validation_dice(self, network: torch.nn.Module, cases: Sequence[RefineCase]) -> tuple[float, float]:
        """Mean Dice after one step and mean |predicted − true| quality of the base masks, over ``cases``."""
        network.eval()
        dice, error = [], []
        for case in cases:
            base = RefineCase.as_slices(case.base)
            with torch.no_grad():  # one pass: the refined mask and the predicted quality of the base mask
                refined, q = refine_forward(network, case.slices(self.num_slices).to(self.device), base,
                                      self.slice_batch_size, self.divisor)
            dice.append(dice_jaccard(refined[:, 0].permute(1, 2, 0).numpy(), case.label.numpy())[0])
            predicted = volume_quality(q, base.numpy(), refined.numpy())
            error.append(abs(predicted - dice_jaccard(case.base.numpy(), case.label.numpy())[0]))
        return float(np.mean(dice)), float(np.mean(error))

    def train(self, network: torch.nn.Module, dataset: RefineSliceDataset, epochs: int,
              val_cases: Sequence[RefineCase], tag: str) -> tuple[torch.nn.Module, float]:
        """Train ``network`` for ``epochs``; returns it with the weights of the best validation Dice (one step)."""
        optimizer = self.optimizer_factory(network.parameters())
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=0,
                            drop_last=len(dataset) > self.batch_size)  # no batch of one for batch norm
        best, best_state = -1.0, None
        for epoch in range(1, epochs + 1):
            network.train()
            sums = {"loss": 0.0, "dice_loss": 0.0, "quality_mse": 0.0}
            n = 0
            for batch in _progress(loader, f"{tag} epoch {epoch}/{epochs}", self.progress, leave=False):
                x, m, y = (batch[k].to(self.device) for k in ("image", "mask", "label"))
                x, m, y = pad_to_multiple(x, self.divisor, "replicate"), pad_to_multiple(m, self.divisor, "constant"), \
                    pad_to_multiple(y, self.divisor, "constant")
                logits, quality = network(x, m)
                loss = self.loss(logits, y, quality=quality, input_mask=m)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    terms = self.loss.terms(logits, y, quality, m)
                b = x.shape[0]
                sums["loss"] += float(loss.detach()) * b
                sums["dice_loss"] += float(terms["dice_loss"].mean()) * b
                sums["quality_mse"] += float(terms["quality_error"].mean()) * b
                n += b
            val_dice, val_q_error = self.validation_dice(network, val_cases)
            self._epoch += 1
            metrics = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
            metrics.update(val_dice_1x=val_dice, val_quality_abs_error_0x=val_q_error)
            self._log(metrics, self._epoch)
            logger.info("%s epoch %d: loss %.4f (dice %.4f, quality mse %.4f), val Dice 1x %.4f, val |q err| %.3f",
                        tag, epoch, metrics["train_loss"], metrics["train_dice_loss"], metrics["train_quality_mse"],
                        val_dice, val_q_error)
            if val_dice > best:
                best = val_dice
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        if best_state is not None:
            network.load_state_dict(best_state)
        return network, best

    def own_outputs(self, network: torch.nn.Module, dataset: RefineSliceDataset, steps: int) -> list[tuple]:
        """Refined outputs (``steps`` steps from the base mask) of every training slice, as fixed-mask samples."""
        network.eval()
        entries = []
        for i, case in enumerate(dataset.cases):
            trace = iterate_refinement(network, case.slices(self.num_slices).to(self.device),
                                       RefineCase.as_slices(case.base), steps, batch_size=self.slice_batch_size,
                                       divisor=self.divisor)
            final = trace.masks[-1]
            entries.extend((i, z, final[z]) for z in range(0, case.image.shape[-1], self.slice_stride))
        return entries

    # ------------------------------------------------------------------------------------------------ evaluation
    def traces(self, network: torch.nn.Module, cases: Sequence[RefineCase]) -> list[dict[str, Any]]:
        """Per case: Dice and predicted quality after 0..max_iterations steps, slice-level values at 0 steps."""
        network.eval()
        rows = []
        for case in _progress(cases, "refining", self.progress, leave=False):
            x = case.slices(self.num_slices).to(self.device)
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
        predicted, true = [], []
        for case in cases:
            labels = RefineCase.as_slices(case.label).float()
            keep = [z for z in range(labels.shape[0]) if labels[z].any()]
            if not keep:
                continue
            masks = torch.stack([torch.as_tensor(self.mask_augmentation({"mask": labels[z]})["mask"]) for z in keep])
            x = case.slices(self.num_slices)[keep].to(self.device)
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
            "pearson_r_slices_0x": pearson_r(slice_q, slice_d), "num_slices_0x": int(len(slice_q)),
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

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Load the cases, train (with own-output rounds if asked), choose k, evaluate, write and log everything."""
        start = time.time()
        self.check_base()
        if self.tracker is not None:
            self.tracker.start_run()
        status = "FAILED"
        try:
            cases = self.load_cases()
            if self.mask_augmentation is not None and hasattr(self.mask_augmentation, "set_random_state"):
                self.mask_augmentation.set_random_state(self.seed)
            dataset = RefineSliceDataset(cases["train"], self.num_slices, self.mask_augmentation, self.base_mask_prob,
                                         self.slice_stride, self.seed)
            logger.info("%s refinement '%s': %d training slices from %d cases, %d val, %d test cases", self.bundle,
                        self.variant, len(dataset), len(cases["train"]), len(cases["val"]), len(cases["test"]))
            network, best = self.train(self._new_network(), dataset, self.max_epochs, cases["val"], "train")
            for round_ in range(1, self.self_training_rounds + 1 if self.self_training != "none" else 1):
                dataset.add_masks(self.own_outputs(network, dataset, round_))
                if self.self_training == "scratch":
                    network, best = self.train(self._new_network(round_), dataset, self.max_epochs, cases["val"],
                                               f"scratch round {round_}")
                else:
                    network, best = self.train(network, dataset, self.self_training_epochs, cases["val"],
                                               f"warm round {round_}")
            self.network = network
            val_rows, test_rows = self.traces(network, cases["val"]), self.traces(network, cases["test"])
            summary = self.summarise(val_rows, test_rows, self.synthetic_quality(network, cases["test"]))
            summary.update(best_val_dice_1x=best, num_train_slices=len(dataset), num_own_output_samples=dataset.num_own,
                           wall_seconds=round(time.time() - start, 1))
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": network.state_dict(), "k": summary["k_val"],
                        "k_early_stop": summary["k_val_early_stop"],
                        "early_stop": summary["early_stop_recommended"],
                        "early_stop_delta": self.early_stop_delta, "num_slices": self.num_slices,
                        "variant": self.variant}, self.ckpt_dir / "model.pt")
            paths = self.write_outputs(val_rows, test_rows, summary)
            if self.tracker is not None:
                self._log({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))
                           and not isinstance(v, bool)}, self._epoch)
                for path in [*paths, self.ckpt_dir / "model.pt"]:
                    self.tracker.log_artifact(path)
            logger.info("%s '%s': test Dice 0x %.4f, 1x %.4f, 2x %.4f, k=%d %.4f; r(cases) %.3f, r(slices) %.3f",
                        self.bundle, self.variant, summary["test_dice_0x"], summary["test_dice_1x"],
                        summary["test_dice_2x"], summary["k_val"], summary["test_dice_valk"],
                        summary["pearson_r_cases_0x"], summary["pearson_r_slices_0x"])
            status = "FINISHED"
            return summary
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if self.tracker is not None:
                self.tracker.end_run(status)


def _progress(iterable: Any, desc: str, enabled: bool, leave: bool = True) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=leave, dynamic_ncols=True)
