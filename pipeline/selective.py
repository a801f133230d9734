"""DIP-assisted selective segmentation: samples from clicks, the VM-Net trainer, per-image baselines, evaluation.

A selective sample is one 2D axial slice of a CT volume with a target object (the left lung of a Learn2Reg-style
case, or one liver lesion of a LiTS case), user clicks inside it, and the maps the variational model needs:

* ``intensity``: the slice windowed to [0, 1] (``f``);
* ``polygon``: the marker polygon ``M`` (1 inside the polygon of the clicks);
* ``geodesic``: ``D_G``, the normalised geodesic distance from ``M`` (:class:`transforms.GeodesicDistance`);
* ``fitting``: ``Φ(f, c1)`` with ``c1`` the mean of ``f`` inside ``M`` (:class:`transforms.ChanVeseFitting`);
* ``edge``: ``g = 1/(1 + ι|∇f|²)`` (:class:`transforms.EdgeIndicator`);
* ``label``: the target object (used for evaluation only: every method here is trained without labels).

Methods (``METHODS``): ``m1`` .. ``m4`` train a VM-Net on a few images and then predict new images with fixed
weights (``m3``/``m4`` pair it with a DIP-Net during training); ``tv``, ``elastica`` and ``dip`` optimise each test
image on its own (:mod:`pipeline.baselines` and :func:`dip_segment`). All of them minimise variants of
``λ∫Φu + θ∫D_G u`` (+ a regulariser), and the segmentation is ``{u > 0.5}``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from scipy import ndimage
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "PER_IMAGE_METHODS",
    "TRAINED_METHODS",
    "PaddedInferer",
    "SelectiveSlices",
    "SelectiveTrainer",
    "SliceStackInferer",
    "TrainingBatch",
    "dice_jaccard",
    "dip_segment",
    "evaluate_masks",
    "loader_samples",
    "overlay_callback",
    "predict_mask",
    "prepare_selective_batch",
    "refine_entries",
    "run_per_image_method",
    "run_tracked",
    "save_overlay",
    "segment_volume",
    "split_selective",
]

TRAINED_METHODS = ("m1", "m2", "m3", "m4")
PER_IMAGE_METHODS = ("tv", "elastica", "dip")
METHODS = TRAINED_METHODS + PER_IMAGE_METHODS
GUIDANCE_KEYS = {"polygon": "polygon", "geodesic": "geodesic"}
MAP_KEYS = ("intensity", "polygon", "geodesic", "fitting", "edge", "label")


# ----------------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------------


def split_selective(datalist: Sequence[Mapping[str, Any]], num_train: int = 2, num_val: int = 2,
                    num_test: int | None = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Deterministic case split for selective segmentation: ``num_train`` / ``num_val`` / the rest (or ``num_test``).

    The cases are shuffled with ``numpy.random.default_rng(seed)``; each part keeps the datalist order.

    Raises:
        ValueError: when the datalist has fewer cases than the parts ask for.
    """
    n = len(datalist)
    rest = n - num_train - num_val
    n_test = rest if num_test is None else int(num_test)
    if num_train < 1 or num_val < 0 or n_test < 1 or n_test > rest:
        raise ValueError(f"cannot split {n} case(s) into {num_train} train / {num_val} val / "
                         f"{'the rest' if num_test is None else num_test} test (need at least one test case)")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"train": order[:num_train], "val": order[num_train:num_train + num_val],
             "test": order[num_train + num_val:num_train + num_val + n_test]}
    return {name: [dict(datalist[i]) for i in sorted(idx)] for name, idx in parts.items()}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _window(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"intensity window must be (low, high) with high > low, got {tuple(window)}")
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


class SelectiveSlices:
    """Turn a datalist of labelled CT volumes into 2D selective-segmentation samples with simulated clicks.

    Per case: the volume and its label are loaded and reoriented to RAS; the target is ``label == target_label``;
    the axial slice whose largest connected target region is biggest is chosen, and that region is the object to
    segment (one lesion of a slice with several, the left lung). Clicks are simulated inside it by
    :class:`transforms.RandClickMarkersd` (``num_clicks`` in an inclusive range, at least ``min_distance`` pixels
    from the boundary), seeded per case by ``(seed, case position)``; then the maps listed in the module docstring
    are computed. Maps are float32 tensors of shape ``(1, H, W)``.

    Args:
        target_label: label value of the object (1 = left lung in the lung layout, 2 = lesion in LiTS).
        window: HU window mapped to [0, 1].
        num_clicks: number of clicks, an int or an inclusive range.
        min_distance: minimum distance of a click to the object boundary, in pixels.
        seed: click seed.
        geodesic: keyword arguments of :class:`transforms.GeodesicDistance` (``epsilon``, ``beta``, ``p``,
            ``theta``).
        iota: edge-indicator parameter ``ι``.
        lambda3: weight of the hat term in ``Φ``.
        progress: show a progress bar.
    """

    def __init__(self, target_label: int = 1, window: Sequence[float] = (-1000.0, 200.0),
                 num_clicks: int | Sequence[int] = (4, 8), min_distance: float = 3.0, seed: int = 0,
                 geodesic: Mapping[str, Any] | None = None, iota: float = 1000.0, lambda3: float = 1.0,
                 progress: bool = True) -> None:
        from transforms import ChanVeseFitting, EdgeIndicator, GeodesicDistance

        self.target_label = target_label
        self.window = tuple(float(w) for w in window)
        _window(np.zeros(1), self.window)
        self.num_clicks = num_clicks
        self.min_distance = float(min_distance)
        self.seed = int(seed)
        self.geodesic = GeodesicDistance(**dict(geodesic or {}))
        self.edge = EdgeIndicator(iota=iota)
        self.fitting = ChanVeseFitting(lambda3=lambda3)
        self.progress = progress

    # ---------------------------------------------------------------------------------------------- public
    def __call__(self, datalist: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        samples = []
        for position, entry in enumerate(tqdm(datalist, desc="selective samples", unit="case",
                                              disable=not self.progress)):
            samples.append(self.from_volume(entry, position))
        return samples

    def volume_slices(self, datalist: Sequence[Mapping[str, Any]], stride: int = 1,
                      min_area: int = 20) -> list[dict[str, Any]]:
        """Samples from every ``stride``-th axial slice of each case whose largest target region has ``min_area`` px.

        The object of each slice is its largest connected target region, as in :meth:`from_volume`; clicks are
        simulated per slice, seeded by ``(seed, case position, slice)``. Used where more labelled slices of the same
        cases help (the refinement stage's training and validation samples).

        Raises:
            ValueError: ``stride`` or ``min_area`` below 1, or a case without any slice large enough (names it).
        """
        if int(stride) < 1 or int(min_area) < 1:
            raise ValueError(f"stride and min_area must be >= 1, got {stride} and {min_area}")
        samples = []
        for position, entry in enumerate(tqdm(datalist, desc="selective slices", unit="case",
                                              disable=not self.progress)):
            image, target, case = self._read(entry)
            found = 0
            for z in np.flatnonzero(target.any(axis=(0, 1)))[::int(stride)]:
                obj = _largest_component(target[:, :, z])
                if int(obj.sum()) < int(min_area):
                    continue
                rng_seed = int(np.random.default_rng([self.seed, position, int(z)]).integers(2**31 - 1))
                samples.append(self.from_slice(image[:, :, z], obj, case=case, slice_index=int(z), seed=rng_seed))
                found += 1
            if not found:
                raise ValueError(f"{entry['label']}: no axial slice has a target region of {min_area} pixels or more")
        return samples

    def from_volume(self, entry: Mapping[str, Any], position: int = 0) -> dict[str, Any]:
        """One sample from a datalist entry ``{"image", "label"[, "case"]}`` (clicks seeded by ``position``)."""
        image, target, case = self._read(entry)
        if not target.any():
            raise ValueError(f"{entry['label']}: no voxel has the target label {self.target_label}")
        best, best_area = 0, -1
        for z in np.flatnonzero(target.any(axis=(0, 1))):
            area = int(_largest_component(target[:, :, z]).sum())
            if area > best_area:
                best, best_area = int(z), area
        obj = _largest_component(target[:, :, best])
        rng_seed = int(np.random.default_rng([self.seed, position]).integers(2**31 - 1))
        return self.from_slice(image[:, :, best], obj, case=case, slice_index=best, seed=rng_seed)

    def _read(self, entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, target mask, case name)`` of a datalist entry, both volumes reoriented to RAS.

        Raises:
            ValueError: naming the files, when the volumes are not 3D or their shapes differ.
        """
        from monai.transforms import LoadImage, Orientation

        load = LoadImage(image_only=True, ensure_channel_first=True)
        orient = Orientation(axcodes="RAS")
        image = orient(load(entry["image"]))
        label = orient(load(entry["label"]))
        if image.ndim != 4 or tuple(image.shape[1:]) != tuple(label.shape[1:]):
            raise ValueError(f"{entry['label']}: label shape {tuple(label.shape[1:])} does not match the image "
                             f"{entry['image']} shape {tuple(image.shape[1:])} (3D volumes expected)")
        case = str(entry.get("case", Path(str(entry["image"])).name.split(".")[0]))
        return np.asarray(image[0]), np.asarray(label[0]) == self.target_label, case

    def from_slice(self, hu: np.ndarray, obj: np.ndarray | None = None, points: np.ndarray | None = None,
                   case: str = "case", slice_index: int = 0, seed: int = 0) -> dict[str, Any]:
        """A sample from a 2D HU slice and either the object mask (clicks simulated) or given click ``points``.

        Raises:
            ValueError: for a non-2D slice, non-finite values, or neither/empty ``obj`` and ``points``.
        """
        from transforms import RandClickMarkersd, polygon_mask

        hu = np.asarray(hu)
        if hu.ndim != 2:
            raise ValueError(f"{case}: a 2D slice is expected, got shape {hu.shape}")
        if not np.isfinite(hu).all():
            raise ValueError(f"{case}: the slice has NaN or infinite values")
        f = _window(hu, self.window)
        if points is None:
            if obj is None or not np.any(obj):
                raise ValueError(f"{case}: no object to click in and no click points given")
            clicker = RandClickMarkersd(keys="label", label_value=1, num_clicks=self.num_clicks,
                                        min_distance=self.min_distance, order="angle")
            clicker.set_random_state(seed)
            out = clicker({"label": obj.astype(np.uint8)[None]})
            points = np.asarray(out["label_markers_points"], dtype=np.int64)
        points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
        polygon = polygon_mask(points, f.shape)
        maps = {
            "intensity": f,
            "polygon": polygon.astype(np.float32),
            "geodesic": np.asarray(self.geodesic(f, polygon), dtype=np.float32),
            "fitting": np.asarray(self.fitting(f, polygon), dtype=np.float32),
            "edge": np.asarray(self.edge(f), dtype=np.float32),
            "label": (np.zeros_like(f) if obj is None else np.asarray(obj, dtype=np.float32)),
        }
        sample: dict[str, Any] = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in maps.items()}
        sample.update(case=case, slice=int(slice_index), points=json.dumps(points.tolist()),
                      has_label=obj is not None)
        return sample


def loader_samples(samples: Sequence[Mapping[str, Any]], guidance: str) -> list[dict[str, Any]]:
    """Samples with the network input ``input = (f, G)`` (2 channels) and an ``index`` per sample.

    ``guidance``: ``"polygon"`` (G = M) or ``"geodesic"`` (G = D_G).
    """
    if guidance not in GUIDANCE_KEYS:
        raise ValueError(f"guidance must be one of {sorted(GUIDANCE_KEYS)}, got {guidance!r}")
    out = []
    for i, s in enumerate(samples):
        item = {k: s[k] for k in MAP_KEYS}
        item.update(input=torch.cat([s["intensity"], s[GUIDANCE_KEYS[guidance]]], dim=0), index=i,
                    case=s["case"], slice=s["slice"], points=s["points"])
        out.append(item)
    return out


def refine_entries(samples: Sequence[Mapping[str, Any]], guidance: str) -> list[dict[str, Any]]:
    """Selective samples as one-slice volumes for :class:`pipeline.refine.RefinementWorkflow`.

    Each entry has ``image`` = the network input ``(f, G)`` as ``(2, H, W, 1)``, ``label`` ``(1, H, W, 1)``, a
    ``case`` name ``<case>_z<slice>`` and the click ``points`` (part of the base-mask cache key).
    """
    return [{"case": f"{s['case']}_z{s['slice']}", "image": s["input"][..., None], "label": s["label"][..., None],
             "points": s["points"]} for s in loader_samples(samples, guidance)]


class SliceStackInferer:
    """Apply a 2D network slice by slice to ``(B, C, H, W, D)`` inputs, padding each as :class:`PaddedInferer` does."""

    def __init__(self, divisible: int = 16) -> None:
        self.padded = PaddedInferer(divisible)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor]) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W, D) inputs, got shape {tuple(inputs.shape)}")
        return torch.stack([self.padded(inputs[..., z], network) for z in range(inputs.shape[-1])], dim=-1)


def _pad_amounts(spatial: Sequence[int], target: Sequence[int]) -> list[int]:
    pads: list[int] = []
    for size, want in zip(reversed(list(spatial)), reversed(list(target))):
        extra = int(want) - int(size)
        pads += [extra // 2, extra - extra // 2]
    return pads


def _divisible_shape(shapes: Sequence[Sequence[int]], divisible: int) -> tuple[int, ...]:
    biggest = np.max(np.asarray(shapes), axis=0)
    return tuple(int(math.ceil(s / divisible) * divisible) for s in biggest)


_PAD_VALUES = {"polygon": 0.0, "label": 0.0, "geodesic": 1.0, "edge": 1.0}


def _pad_map(key: str, t: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    pads = _pad_amounts(t.shape[-2:], target)
    if not any(pads):
        return t
    if key in ("intensity", "input"):
        return F.pad(t[None], pads, mode="replicate")[0]
    if key == "fitting":  # outside the image counts as background: the largest fitting cost
        return F.pad(t, pads, value=float(t.max()))
    return F.pad(t, pads, value=_PAD_VALUES.get(key, 0.0))


class TrainingBatch:
    """The whole training set as one batch (one optimiser step per epoch, as in the selective training).

    The samples (from :func:`loader_samples`) are padded to a common size divisible by ``divisible``: intensity
    by replication, ``D_G`` and ``g`` with 1, ``Φ`` with its maximum, masks with 0, so the padding is background
    for every term of the loss. Iterating yields the batch once.
    """

    def __init__(self, samples: Sequence[Mapping[str, Any]], divisible: int = 16) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.shape = _divisible_shape([s["input"].shape[-2:] for s in samples], divisible)
        keys = ("input",) + MAP_KEYS
        self.batch = {k: torch.stack([_pad_map(k, s[k], self.shape) for s in samples]) for k in keys}
        self.batch["index"] = torch.as_tensor([int(s["index"]) for s in samples])
        self.batch["case"] = [s["case"] for s in samples]

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield self.batch


def prepare_selective_batch(batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False,
                            **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for MONAI evaluators: ``(input, label)`` of a selective batch on ``device``."""
    return (batchdata["input"].to(device=device, non_blocking=non_blocking),
            batchdata["label"].to(device=device, non_blocking=non_blocking))


class PaddedInferer:
    """Run a network on inputs padded (replicate) to a size divisible by ``divisible``, and crop the output back."""

    def __init__(self, divisible: int = 16) -> None:
        self.divisible = int(divisible)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        target = _divisible_shape([spatial], self.divisible)
        pads = _pad_amounts(spatial, target)
        x = F.pad(inputs, pads, mode="replicate") if any(pads) else inputs
        out = network(x, *args, **kwargs)
        if any(pads):
            index = [slice(None), slice(None)]
            for axis, size in enumerate(spatial):
                lo = pads[2 * (len(spatial) - 1 - axis)]
                index.append(slice(lo, lo + size))
            out = out[tuple(index)]
        return out


# ----------------------------------------------------------------------------------------------------------------
# Training (M1 - M4)
# ----------------------------------------------------------------------------------------------------------------


class SelectiveTrainer(SupervisedTrainer):
    """Trainer of the VM-Net (M1, M2) or the VM-Net + DIP-Net pair (M3, M4) without labels.

    ``network`` is a :class:`networks.SelectivePair`. Each iteration takes the whole training set (a
    :class:`TrainingBatch`, so one iteration = one epoch and the DIP-Net's input gets a fresh perturbation each
    epoch) and computes

    * with a DIP-Net: ``loss_function(u_vm, u_dip, fitting, geodesic)`` (:class:`losses.DIPSelectiveLoss`, eq. 2);
    * without: ``loss_function(u_vm, fitting, geodesic, edge)`` (:class:`losses.SelectiveLoss`, eq. 3).

    With ``flip_augmentation``, each epoch flips every training sample at random along each image axis (the
    VM-Net input and the maps ``Φ``, ``D_G``, ``g`` alike, and the DIP output by the same flips before the
    Hadamard product), so the VM-Net cannot learn where the object lies in the two training images, only how the
    clicks, the image and the guidance relate. Off by default (the paper does not augment).

    The iteration output carries ``pred`` = ``u_vm`` and the loss components (``fitting``, ``geodesic``,
    ``regulariser`` or ``coupling``) for logging. Everything else is MONAI's ``SupervisedTrainer``.
    """

    component_names = ("fitting", "geodesic", "regulariser", "coupling")
    augmented_keys = ("input", "fitting", "geodesic", "edge")

    def __init__(self, *args: Any, flip_augmentation: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flip_augmentation = bool(flip_augmentation)

    @staticmethod
    def _flip(t: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Flip sample ``b`` of ``t`` (B, C, H, W) along H where ``flags[b, 0]`` and along W where ``flags[b, 1]``."""
        out = []
        for b in range(t.shape[0]):
            dims = [axis + 2 for axis in range(2) if bool(flags[b, axis])]
            out.append(torch.flip(t[b:b + 1], dims) if dims else t[b:b + 1])
        return torch.cat(out, dim=0)

    def _iteration(self, engine: SelectiveTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        batch = {k: (v.to(device=device, non_blocking=nb) if isinstance(v, torch.Tensor) else v)
                 for k, v in batchdata.items()}
        pair = engine.network
        engine.state.output = {Keys.IMAGE: batch["input"], Keys.LABEL: batch["label"]}
        pair.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        flags = None
        if engine.flip_augmentation:  # same random flips of the VM-Net input, the maps and the DIP output
            flags = torch.randint(0, 2, (batch["input"].shape[0], 2), dtype=torch.bool)
            batch.update({k: engine._flip(batch[k], flags) for k in engine.augmented_keys})
        out = pair(batch["input"], batch["index"] if pair.dip_net is not None else None)
        if flags is not None and out["u_dip"] is not None:
            out["u_dip"] = engine._flip(out["u_dip"], flags)
        engine.state.output[Keys.PRED] = out["u_vm"] if flags is None else engine._flip(out["u_vm"], flags)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        if pair.dip_net is not None:
            loss = engine.loss_function(out["u_vm"], out["u_dip"], batch["fitting"], batch["geodesic"])
        else:
            loss = engine.loss_function(out["u_vm"], batch["fitting"], batch["geodesic"], batch["edge"])
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        for name in self.component_names:
            value = getattr(engine.loss_function, f"last_{name}", None)
            if value is not None:
                engine.state.output[name] = float(value)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


# ----------------------------------------------------------------------------------------------------------------
# Metrics, reports, overlays
# ----------------------------------------------------------------------------------------------------------------


def dice_jaccard(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Dice and Jaccard (``|A∩B|/|A∪B|``) of two binary masks; both 1.0 when both masks are empty."""
    a = np.asarray(pred).astype(bool)
    b = np.asarray(label).astype(bool)
    inter, total, union = float((a & b).sum()), float(a.sum() + b.sum()), float((a | b).sum())
    if union == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / union


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


# ----------------------------------------------------------------------------------------------------------------
# Per-image methods: TV, Euler elastica, DIP-like
# ----------------------------------------------------------------------------------------------------------------


def dip_segment(sample: Mapping[str, Any], epochs: Sequence[int] | int = 300, lam: float = 2.0,
                theta: float = 30.0, features: int = 32, levels: int = 4, learning_rate: float = 1e-3,
                lr_decay: float = 1e-4, seed: int = 0, divisible: int = 16,
                device: str | torch.device = "cpu") -> dict[int, np.ndarray]:
    """DIP-like per-image model: an untrained DIP-Net ``φ_Θ(z)`` minimising ``λ∫Φu + θ∫D_G u`` for one image.

    Adam with ``lr_t = lr / (1 + lr_decay·t)`` (the Keras ``decay`` of the DIP code); the noise input gets a fresh
    N(0, 0.01²) perturbation each step. Early stopping: the masks ``{u > 0.5}`` after each epoch count in
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
    net = DIPNet(num_images=1, spatial_size=batch["input"].shape[-2:], features=features, levels=levels,
                 seed=seed).to(device)
    loss_fn = SelectiveLoss(mu=0.0, lam=lam, theta=theta)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1.0 + lr_decay * t))
    fitting, geodesic = batch["fitting"].to(device), batch["geodesic"].to(device)
    index = torch.zeros(1, dtype=torch.long, device=device)
    pads = _pad_amounts(sample["intensity"].shape[-2:], batch["input"].shape[-2:])
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
    from pipeline import baselines

    fitting = np.asarray(sample["fitting"][0], dtype=np.float64)
    geodesic = np.asarray(sample["geodesic"][0], dtype=np.float64)
    lam, theta = float(params["lam"]), float(params["theta"])
    if method == "dip":
        return dip_segment(sample, epochs=params["epochs_grid"], lam=lam, theta=theta,
                           features=int(params["features"]), levels=int(params.get("levels", 4)),
                           learning_rate=float(params["learning_rate"]), lr_decay=float(params["lr_decay"]),
                           seed=int(params["seed"]))
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
    :class:`pipeline.tracking.MLflowTracker`) when given.

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


# ----------------------------------------------------------------------------------------------------------------
# Inference on a volume with a markers file
# ----------------------------------------------------------------------------------------------------------------


def segment_volume(image_path: str | Path, markers_path: str | Path, predict: Callable[[Mapping[str, Any]], np.ndarray],
                   slicer: SelectiveSlices, markers_space: str | None = None) -> tuple[np.ndarray, Any]:
    """Segment the object marked in ``markers_path`` on a CT volume; returns ``(mask, nibabel image)``.

    The markers (CSV or 3D Slicer ``.mrk.json``, voxel or RAS/LPS coordinates, :func:`transforms.read_markers`)
    are grouped by axial slice of the RAS-reoriented volume; every slice holding clicks is segmented by
    ``predict(sample)`` (a 2D sample from :meth:`SelectiveSlices.from_slice`); the mask is written back in the
    input's own voxel order, so it has the input's shape and affine.

    Raises:
        ValueError: naming the file, for a volume that is not 3D, has non-finite values, or markers outside it.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    from transforms import read_markers

    try:
        img = nib.load(str(image_path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise ValueError(f"{image_path}: cannot read the image ({type(err).__name__}: {err})") from err
    if data.ndim != 3:
        raise ValueError(f"{image_path}: a 3D volume is expected, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{image_path}: the volume has NaN or infinite voxels")
    points = read_markers(markers_path, image_affine=img.affine, space=markers_space, spatial_shape=data.shape)
    if points.shape[1] != 3:
        raise ValueError(f"{markers_path}: 3D marker coordinates are expected for the volume {image_path}")
    clicks = np.zeros(data.shape, dtype=np.uint8)
    clicks[tuple(points.T)] = 1
    native = io_orientation(img.affine)
    to_ras = ornt_transform(native, axcodes2ornt("RAS"))
    data_ras, clicks_ras = apply_orientation(data, to_ras), apply_orientation(clicks, to_ras)
    mask_ras = np.zeros(data_ras.shape, dtype=np.uint8)
    for z in np.flatnonzero(clicks_ras.any(axis=(0, 1))):
        pts = np.argwhere(clicks_ras[:, :, z] > 0)
        sample = slicer.from_slice(data_ras[:, :, z], points=pts, case=Path(str(image_path)).name, slice_index=int(z))
        mask_ras[:, :, z] = np.asarray(predict(sample), dtype=bool)
    mask = apply_orientation(mask_ras, ornt_transform(axcodes2ornt("RAS"), native)).astype(np.uint8)
    return np.ascontiguousarray(mask), img


def vm_predictor(network: torch.nn.Module, ckpt_path: str | Path, guidance: str, divisible: int = 16,
                 device: str | torch.device = "cpu") -> Callable[[Mapping[str, Any]], np.ndarray]:
    """``predict(sample)`` for :func:`segment_volume`: the trained VM-Net (weights from ``ckpt_path``) on ``(f, G)``."""
    from pipeline.paths import require_file

    state = torch.load(require_file(ckpt_path, "trained VM-Net checkpoint"), map_location=device, weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    network.to(device).eval()

    def _predict(sample: Mapping[str, Any]) -> np.ndarray:
        return predict_mask(network, loader_samples([sample], guidance)[0], divisible, device)

    return _predict


def _markers_for(image: str, markers: str | Path) -> Path:
    """The markers file of ``image``: ``markers`` itself, or ``<markers>/<stem>.csv|.mrk.json|.json``."""
    from pipeline.inference import _stem

    path = Path(markers).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        stem = _stem(Path(image))
        for ext in (".csv", ".mrk.json", ".json"):
            if (path / f"{stem}{ext}").is_file():
                return path / f"{stem}{ext}"
        raise FileNotFoundError(f"no markers file for {image} in {path} (expected {stem}.csv or {stem}.mrk.json)")
    raise FileNotFoundError(f"markers {path} does not exist: pass --markers <file or folder>")


def infer(input_path: str | Path, markers: str | Path, output_dir: str | Path,
          predict: Callable[[Mapping[str, Any]], np.ndarray], slicer: SelectiveSlices, postfix: str = "selective",
          markers_space: str | None = None, overwrite: bool = False) -> list[Path]:
    """Segment every volume of ``input_path`` (a NIfTI file or folder) from its markers; write ``<stem>_<postfix>``.

    ``markers`` is one markers file (for a single volume) or a folder with ``<stem>.csv`` / ``<stem>.mrk.json`` per
    volume. Masks (uint8, 1 = object) have the input's shape and affine and are written atomically; existing masks
    are refused before any work unless ``overwrite``.

    Returns:
        The written mask paths.
    """
    from pipeline.data._writing import atomic_write, nifti_image
    from pipeline.inference import list_volumes, mask_path, plan_outputs

    if markers is None or str(markers) == "":
        raise ValueError("no markers given: pass --markers <CSV / .mrk.json file, or a folder of them>")
    datalist = plan_outputs(list_volumes(input_path), output_dir, postfix, overwrite=overwrite)
    if len(datalist) > 1 and Path(markers).is_file():
        raise ValueError(f"{len(datalist)} volumes in {input_path} but one markers file {markers}: "
                         "pass a folder with one markers file per volume")
    written = []
    for entry in tqdm(datalist, desc="selective inference", unit="volume"):
        mask, img = segment_volume(entry["image"], _markers_for(entry["image"], markers), predict, slicer,
                                   markers_space=markers_space)
        target = mask_path(entry["image"], output_dir, postfix)
        out = nifti_image(mask, img.affine, f"varseg selective mask of {Path(entry['image']).name}")
        atomic_write(target.parent, target.name, lambda p, out=out: out.to_filename(str(p)))
        logger.info("%s: %d voxels in %d slice(s) -> %s", entry["case"], int(mask.sum()),
                    int(mask.any(axis=(0, 1)).sum()), target)
        written.append(target)
    return written
