"""Selective-segmentation samples from clicks: one 2D slice, its clicks and the maps of the variational model.

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
image on its own (:mod:`pipeline.selective.baselines` and :func:`pipeline.selective.per_image.dip_segment`). All of
them minimise variants of ``λ∫Φu + θ∫D_G u`` (+ a regulariser), and the segmentation is ``{u > 0.5}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from transforms import ChanVeseFitting, EdgeIndicator, GeodesicDistance

__all__ = [
    "GUIDANCE_KEYS",
    "MAP_KEYS",
    "METHODS",
    "PER_IMAGE_METHODS",
    "TRAINED_METHODS",
    "SelectiveSlices",
    "loader_samples",
    "refine_entries",
]


TRAINED_METHODS = ("m1", "m2", "m3", "m4")
PER_IMAGE_METHODS = ("tv", "elastica", "dip")
METHODS = TRAINED_METHODS + PER_IMAGE_METHODS
GUIDANCE_KEYS = {"polygon": "polygon", "geodesic": "geodesic"}
MAP_KEYS = ("intensity", "polygon", "geodesic", "fitting", "edge", "label")


def largest_component(mask: np.ndarray) -> np.ndarray:
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
        geodesic: the :class:`transforms.GeodesicDistance` that maps the marker polygon to ``D_G`` (a ``_target_``
            component of the bundle config); None: its defaults.
        iota: edge-indicator parameter ``ι``.
        lambda3: weight of the hat term in ``Φ``.
        progress: show a progress bar.
    """

    def __init__(self, target_label: int = 1, window: Sequence[float] = (-1000.0, 200.0),
                 num_clicks: int | Sequence[int] = (4, 8), min_distance: float = 3.0, seed: int = 0,
                 geodesic: GeodesicDistance | None = None, iota: float = 1000.0, lambda3: float = 1.0,
                 progress: bool = True) -> None:
        self.target_label = target_label
        self.window = tuple(float(w) for w in window)
        _window(np.zeros(1), self.window)
        self.num_clicks = num_clicks
        self.min_distance = float(min_distance)
        self.seed = int(seed)
        if geodesic is not None and not callable(geodesic):
            raise TypeError(f"geodesic must be a transforms.GeodesicDistance (a _target_ component), got "
                            f"{type(geodesic).__name__}")
        self.geodesic = geodesic if geodesic is not None else GeodesicDistance()
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
                obj = largest_component(target[:, :, z])
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
            area = int(largest_component(target[:, :, z]).sum())
            if area > best_area:
                best, best_area = int(z), area
        obj = largest_component(target[:, :, best])
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
                   case: str = "case", slice_index: int = 0, seed: int = 0,
                   markers: np.ndarray | None = None) -> dict[str, Any]:
        """A sample from a 2D HU slice and either the object mask (clicks simulated), given click ``points`` (their
        polygon is the marker set) or a given marker set ``markers`` (a 2D mask, e.g. the eroded mask of the
        neighbouring slice when a segmentation is propagated through a volume).

        Raises:
            ValueError: for a non-2D slice, non-finite values, an empty or misshaped ``markers``, or neither/empty
                ``obj`` and ``points``.
        """
        from transforms import RandClickMarkersd, polygon_mask

        hu = np.asarray(hu)
        if hu.ndim != 2:
            raise ValueError(f"{case}: a 2D slice is expected, got shape {hu.shape}")
        if not np.isfinite(hu).all():
            raise ValueError(f"{case}: the slice has NaN or infinite values")
        f = _window(hu, self.window)
        if markers is not None:
            markers = np.asarray(markers, dtype=bool)
            if markers.shape != f.shape or not markers.any():
                raise ValueError(f"{case}: the marker set must be a non-empty mask of the slice's shape {f.shape}, "
                                 f"got {markers.shape} with {int(markers.sum())} pixels")
            points = np.argwhere(markers)
        elif points is None:
            if obj is None or not np.any(obj):
                raise ValueError(f"{case}: no object to click in and no click points given")
            clicker = RandClickMarkersd(keys="label", label_value=1, num_clicks=self.num_clicks,
                                        min_distance=self.min_distance, order="angle")
            clicker.set_random_state(seed)
            out = clicker({"label": obj.astype(np.uint8)[None]})
            points = np.asarray(out["label_markers_points"], dtype=np.int64)
        points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
        polygon = markers if markers is not None else polygon_mask(points, f.shape)
        maps = {
            "intensity": f,
            "polygon": polygon.astype(np.float32),
            "geodesic": np.asarray(self.geodesic(f, polygon), dtype=np.float32),
            "fitting": np.asarray(self.fitting(f, polygon), dtype=np.float32),
            "edge": np.asarray(self.edge(f), dtype=np.float32),
            "label": (np.zeros_like(f) if obj is None else np.asarray(obj, dtype=np.float32)),
        }
        sample: dict[str, Any] = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in maps.items()}
        listed = points if markers is None else np.empty((0, 2), dtype=np.int64)  # a marker set has no click list
        sample.update(case=case, slice=int(slice_index), points=json.dumps(listed.tolist()),
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
    """Selective samples as one-slice volumes for the refinement stage (:class:`pipeline.refine.data.BaseMasks`).

    Each entry has ``image`` = the network input ``(f, G)`` as ``(2, H, W, 1)``, ``label`` ``(1, H, W, 1)``, a
    ``case`` name ``<case>_z<slice>`` and the click ``points`` (part of the base-mask cache key).
    """
    return [{"case": f"{s['case']}_z{s['slice']}", "image": s["input"][..., None], "label": s["label"][..., None],
             "points": s["points"]} for s in loader_samples(samples, guidance)]
