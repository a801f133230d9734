"""Clicks to a 3D mask without a trained network: a per-image selective model on every slice of the structure.

A user clicks inside a structure (a liver, a lesion, a lung, a spleen) on one or a few axial slices of a CT.
:class:`ClickSegmentation` segments each clicked slice with a per-image variational model — TV
(:func:`pipeline.selective.baselines.tv_segment`), elastica (:func:`~pipeline.selective.baselines.elastica_segment`)
or the DIP-like model (:func:`pipeline.selective.per_image.dip_segment`) — whose marker set is the polygon of the
clicks, then **propagates slice by slice** towards both ends of the volume: the mask of a slice, eroded, is the
marker set of the next one. The markers give that slice's geodesic distance map ``D_G`` and its fitting constant
``c1`` (the mean intensity inside the markers), exactly as clicks do on a clicked slice. A slice between two clicked
slices is reached from the nearer one below it first and is not solved twice.

Why slice by slice rather than one 3D solve: the models, their weights (λ, θ, μ) and the real-CT measurements behind
them are 2D; a slice solves in well under a second on a crop around the structure, so a volume of a few dozen slices
stays interactive on two CPU cores; and propagation needs no clicks on the slices in between. The cost is that the
structure must be connected from slice to slice (two separate organs need clicks on each).

**Where the structure ends.** The propagation stops, and the slice stays empty, when

* *markers*: the eroded mask of the previous slice keeps fewer than ``min_markers`` pixels whose windowed intensity
  lies within ``intensity_tolerance`` of the reference intensity (the mean inside the masks of the clicked slices):
  the next slice holds no tissue of the clicked kind there;
* *too small*: the solved mask has fewer than ``min_area`` pixels;
* *leak*: it grows to more than ``max_growth`` times the previous slice's area, or fewer than ``min_overlap`` of its
  pixels lie inside the previous slice's mask (it has run into a neighbouring structure).

**Crop.** Each slice is solved on a box around its markers, enlarged by ``crop_margin`` times the markers' extent
(at least ``min_margin`` pixels); when the mask touches a side of the box that is not the image border, the margin
is doubled and the slice solved again, up to the whole slice. Only the connected parts of the mask that hold a
marker are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from pipeline.selective.samples import PER_IMAGE_METHODS, SelectiveSlices

logger = logging.getLogger(__name__)

__all__ = ["ClickSegmentation", "SliceRecord", "SliceSolver", "VolumeResult", "keep_marked", "simulate_clicks"]


class SliceSolver:
    """``solver(sample) -> (H, W) bool mask`` for one per-image method and its settings.

    Args:
        method: ``"tv"``, ``"elastica"`` or ``"dip"``.
        settings: the method's weights: ``lam``, ``theta`` and, for TV, ``mu`` and ``max_iter``; for elastica
            ``alpha``, ``beta``, ``max_iter``; for DIP ``epochs``, ``features``, ``levels``, ``learning_rate``,
            ``lr_decay``, ``seed``, ``noise_channels``, ``noise_max``, ``perturb_std``.

    Raises:
        ValueError: an unknown method or a missing setting (naming it).
    """

    REQUIRED = {"tv": ("lam", "theta", "mu", "max_iter"), "elastica": ("lam", "theta", "alpha", "beta", "max_iter"),
                "dip": ("lam", "theta", "epochs", "features", "levels", "learning_rate", "lr_decay", "seed",
                        "noise_channels", "noise_max", "perturb_std")}

    def __init__(self, method: str, settings: Mapping[str, Any]) -> None:
        if method not in PER_IMAGE_METHODS:
            raise ValueError(f"unknown per-image method {method!r}; expected one of {PER_IMAGE_METHODS}")
        missing = [k for k in self.REQUIRED[method] if k not in settings]
        if missing:
            raise ValueError(f"the {method} settings lack {missing}")
        self.method, self.settings = method, dict(settings)

    def __call__(self, sample: Mapping[str, Any]) -> np.ndarray:
        from pipeline.selective import baselines
        from pipeline.selective.per_image import dip_segment

        s = self.settings
        if self.method == "dip":
            epochs = int(s["epochs"])
            return dip_segment(sample, epochs=epochs, lam=float(s["lam"]), theta=float(s["theta"]),
                               features=int(s["features"]), levels=int(s["levels"]),
                               learning_rate=float(s["learning_rate"]), lr_decay=float(s["lr_decay"]),
                               seed=int(s["seed"]), noise_channels=int(s["noise_channels"]),
                               noise_max=float(s["noise_max"]), perturb_std=float(s["perturb_std"]))[epochs]
        fitting = np.asarray(sample["fitting"][0], dtype=np.float64)
        geodesic = np.asarray(sample["geodesic"][0], dtype=np.float64)
        if self.method == "tv":
            return baselines.tv_segment(fitting, geodesic, lam=float(s["lam"]), theta=float(s["theta"]),
                                        mu=float(s["mu"]), max_iter=int(s["max_iter"])).mask
        return baselines.elastica_segment(fitting, geodesic, lam=float(s["lam"]), theta=float(s["theta"]),
                                          alpha=float(s["alpha"]), beta=float(s["beta"]),
                                          max_iter=int(s["max_iter"])).mask


@dataclass
class SliceRecord:
    """What happened on one axial slice: ``source`` is ``"clicks"`` or ``"propagated from <z>"``; ``stop`` names
    why the propagation ended there (the slice then stays empty)."""

    slice: int
    source: str
    area: int = 0
    seconds: float = 0.0
    crop: tuple[int, int] = (0, 0)
    stop: str = ""


@dataclass
class VolumeResult:
    """The mask (RAS voxel order, like the input) and one :class:`SliceRecord` per solved or stopping slice."""

    mask: np.ndarray
    records: list[SliceRecord] = field(default_factory=list)

    @property
    def slices(self) -> list[int]:
        """The axial slices that hold part of the mask."""
        return sorted(r.slice for r in self.records if r.area > 0)


def keep_marked(mask: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """The connected components (8-connected) of ``mask`` that hold at least one marker pixel."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    keep = np.unique(labels[markers & (labels > 0)])
    return np.isin(labels, keep[keep > 0])


class ClickSegmentation:
    """Segment the clicked structure of a CT volume slice by slice (see the module docstring).

    Args:
        slicer: a :class:`pipeline.selective.samples.SelectiveSlices` (HU window, geodesic, edge and fitting
            settings).
        solver: ``solver(sample) -> (H, W) mask``, e.g. a :class:`SliceSolver` (None where the bundle config builds
            the segmenter for a trained method, which never calls it).
        propagate: segment the whole structure (True) or only the clicked slices (False).
        crop_margin: box margin as a fraction of the markers' extent.
        min_margin: smallest box margin in pixels.
        erosion: the previous mask is eroded by this fraction of its equivalent radius (at least 1 pixel) to give
            the next slice's markers.
        min_markers: fewest marker pixels a propagated slice needs.
        intensity_tolerance: largest distance, in window units (0-1), of a marker pixel's intensity from the
            reference intensity.
        min_area: smallest mask, in pixels, that continues the structure.
        max_growth: largest ratio of a propagated mask's area to the previous slice's.
        min_overlap: smallest fraction of a propagated mask inside the previous slice's mask.
        passes: solves per clicked slice: the first from the polygon of the clicks, each further one from the
            previous mask eroded (plus the clicks inside it), which marks the structure more fully than a polygon of
            a few clicks.
        progress: show a progress bar over the slices.
    """

    def __init__(self, slicer: SelectiveSlices, solver: Callable[[Mapping[str, Any]], np.ndarray],
                 propagate: bool = True, crop_margin: float = 0.5, min_margin: int = 32, erosion: float = 0.2,
                 min_markers: int = 5, intensity_tolerance: float = 0.15, min_area: int = 20,
                 max_growth: float = 1.6, min_overlap: float = 0.5, passes: int = 2, progress: bool = True) -> None:
        for name, value in (("crop_margin", crop_margin), ("erosion", erosion),
                            ("intensity_tolerance", intensity_tolerance), ("min_overlap", min_overlap)):
            if not 0 <= float(value):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if float(max_growth) <= 1:
            raise ValueError(f"max_growth must be > 1, got {max_growth}")
        self.slicer, self.solver, self.propagate = slicer, solver, bool(propagate)
        self.crop_margin, self.min_margin = float(crop_margin), max(1, int(min_margin))
        self.erosion, self.min_markers = float(erosion), max(1, int(min_markers))
        self.intensity_tolerance, self.min_area = float(intensity_tolerance), max(1, int(min_area))
        self.max_growth, self.min_overlap, self.progress = float(max_growth), float(min_overlap), progress
        self.passes = max(1, int(passes))

    # ------------------------------------------------------------------------------------------------ one slice
    def solve_slice(self, hu: np.ndarray, markers: np.ndarray, case: str = "case", z: int = 0) -> tuple[np.ndarray, tuple]:
        """The mask of one HU slice from a marker set, solved on a growing box; also the final box size."""
        h, w = markers.shape
        rows, cols = np.nonzero(markers)
        extent = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
        margin = max(self.min_margin, int(round(self.crop_margin * extent)))
        while True:
            box = (slice(max(0, int(rows.min()) - margin), min(h, int(rows.max()) + 1 + margin)),
                   slice(max(0, int(cols.min()) - margin), min(w, int(cols.max()) + 1 + margin)))
            sample = self.slicer.from_slice(hu[box], markers=markers[box], case=case, slice_index=z)
            mask = keep_marked(np.asarray(self.solver(sample), dtype=bool), markers[box])
            whole = box[0].start == 0 and box[1].start == 0 and box[0].stop == h and box[1].stop == w
            if whole or not _touches_inner_side(mask, box, (h, w)):
                break
            margin *= 2
        out = np.zeros((h, w), dtype=bool)
        out[box] = mask
        return out, (box[0].stop - box[0].start, box[1].stop - box[1].start)

    def next_markers(self, previous: np.ndarray, f: np.ndarray, reference: float) -> np.ndarray:
        """Markers of the next slice: the eroded previous mask, where the intensity matches the reference."""
        radius = max(1, int(round(self.erosion * np.sqrt(previous.sum() / np.pi))))
        core = ndimage.binary_erosion(previous, structure=_disc(radius))
        if not core.any():
            core = previous
        return core & (np.abs(f - reference) <= self.intensity_tolerance)

    # ------------------------------------------------------------------------------------------------ a volume
    def __call__(self, hu: np.ndarray, clicks: np.ndarray, case: str = "case") -> VolumeResult:
        """Segment a ``(H, W, D)`` HU volume (axial slices on the last axis) from a click volume of the same shape.

        Raises:
            ValueError: shapes that differ, no click, or a clicked slice whose structure is empty after solving.
        """
        from transforms import polygon_mask

        if self.solver is None:
            raise ValueError(f"{case}: no per-image solver (the method is not one of {PER_IMAGE_METHODS})")
        hu, clicks = np.asarray(hu, dtype=np.float32), np.asarray(clicks) > 0
        if hu.ndim != 3 or clicks.shape != hu.shape:
            raise ValueError(f"{case}: a 3D volume and a click volume of its shape are needed, got {hu.shape} and "
                             f"{clicks.shape}")
        clicked = [int(z) for z in np.flatnonzero(clicks.any(axis=(0, 1)))]
        if not clicked:
            raise ValueError(f"{case}: no click inside the volume")
        result = VolumeResult(np.zeros(hu.shape, dtype=bool))
        bar = tqdm(total=len(clicked), desc=f"{case} slices", unit="slice", disable=not self.progress, leave=False)
        window = self.slicer.window
        f = np.clip((hu - window[0]) / (window[1] - window[0]), 0.0, 1.0)
        for z in clicked:
            markers = polygon_mask(np.argwhere(clicks[:, :, z]), clicks.shape[:2])
            record = self._solve_into(result, hu[:, :, z], markers, z, "clicks", case)
            for _ in range(self.passes - 1):  # the clicks' mask, eroded, marks the slice better than their polygon
                mask = result.mask[:, :, z]
                if not mask.any():
                    break
                core = self.next_markers(mask, f[:, :, z], float(f[:, :, z][mask].mean())) | (clicks[:, :, z] & mask)
                seconds = record.seconds
                result.records.remove(record)
                record = self._solve_into(result, hu[:, :, z], core, z, "clicks", case)
                record.seconds = round(record.seconds + seconds, 3)
            bar.update()
            if not result.mask[:, :, z].any():
                raise ValueError(f"{case}: the structure clicked on slice {z} is empty after solving (clicks on "
                                 "a boundary or too few of them?)")
        if self.propagate:
            reference = float(np.mean(np.concatenate([f[:, :, z][result.mask[:, :, z]] for z in clicked])))
            for z0 in clicked:
                for step in (1, -1):
                    self._propagate(result, hu, f, reference, z0, step, case, bar)
        bar.close()
        return result

    def _solve_into(self, result: VolumeResult, hu: np.ndarray, markers: np.ndarray, z: int, source: str,
                    case: str) -> SliceRecord:
        start = time.perf_counter()
        mask, crop = self.solve_slice(hu, markers, case, z)
        record = SliceRecord(z, source, int(mask.sum()), round(time.perf_counter() - start, 3), crop)
        result.mask[:, :, z] = mask
        result.records.append(record)
        return record

    def _propagate(self, result: VolumeResult, hu: np.ndarray, f: np.ndarray, reference: float, z0: int, step: int,
                   case: str, bar: Any) -> None:
        """Solve ``z0 + step``, ``z0 + 2·step``, ... from the previous slice's mask until a stop rule holds."""
        done = {r.slice for r in result.records}
        previous, z = result.mask[:, :, z0], z0 + step
        while 0 <= z < hu.shape[2] and z not in done:
            markers = self.next_markers(previous, f[:, :, z], reference)
            if int(markers.sum()) < self.min_markers:
                result.records.append(SliceRecord(z, f"propagated from {z0}", stop="no marker pixel of the "
                                                  "structure's intensity"))
                return
            record = self._solve_into(result, hu[:, :, z], markers, z, f"propagated from {z0}", case)
            bar.total += 1
            bar.update()
            mask, area = result.mask[:, :, z], record.area
            reason = ""
            if area < self.min_area:
                reason = f"too small ({area} px)"
            elif area > self.max_growth * previous.sum():
                reason = f"leak: grew {area / max(previous.sum(), 1):.1f}× over slice {z - step}"
            elif (mask & previous).sum() < self.min_overlap * area:
                reason = f"leak: {(mask & previous).sum() / area:.0%} inside slice {z - step}'s mask"
            if reason:
                result.mask[:, :, z] = False
                record.area, record.stop = 0, reason
                return
            previous, z = mask, z + step
            done.add(z - step)


def _touches_inner_side(mask: np.ndarray, box: Sequence[slice], shape: Sequence[int]) -> bool:
    """Whether ``mask`` (of the box) reaches a side of the box that is not the image border."""
    sides = [(box[0].start > 0, mask[0, :]), (box[0].stop < shape[0], mask[-1, :]),
             (box[1].start > 0, mask[:, 0]), (box[1].stop < shape[1], mask[:, -1])]
    return any(inner and edge.any() for inner, edge in sides)


def _disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


def simulate_clicks(target: np.ndarray, fractions: Sequence[float] = (0.2, 0.5, 0.8), num_clicks: Any = (4, 8),
                    min_distance: float = 10.0, seed: int = 0) -> np.ndarray:
    """Clicks a user might place: on the axial slices at ``fractions`` of the target's slice range, ``num_clicks``
    inside the largest region of each (at least ``min_distance`` pixels from its boundary), seeded per slice.

    Args:
        target: ``(H, W, D)`` boolean mask of the structure (axial slices on the last axis).

    Returns:
        ``uint8`` click volume of the target's shape.

    Raises:
        ValueError: an empty target.
    """
    from pipeline.selective.samples import largest_component
    from transforms import RandClickMarkersd

    slices = np.flatnonzero(np.asarray(target).any(axis=(0, 1)))
    if not len(slices):
        raise ValueError("simulate_clicks: the target is empty")
    clicks = np.zeros(target.shape, np.uint8)
    for n, q in enumerate(fractions):
        z = int(slices[int(round(float(q) * (len(slices) - 1)))])
        clicker = RandClickMarkersd(keys="label", label_value=1, num_clicks=num_clicks, min_distance=min_distance,
                                    order="angle")
        clicker.set_random_state(seed + n)
        region = largest_component(target[:, :, z]).astype(np.uint8)[None]
        points = np.asarray(clicker({"label": region})["label_markers_points"])
        clicks[points[:, 0], points[:, 1], z] = 1
    return clicks
