"""
User markers (clicks) of the selective segmentation model and the marker polygon mask ``M``.

The selective model is told which object to segment by a few clicks inside it. This module turns clicks into
the two masks the model uses:

- the *marker mask*: the clicked voxels themselves (:py:class:`AddClickMarkers`, :py:func:`click_mask`);
- the *marker polygon* ``M``: 1 inside the polygon formed by the clicks, boundary included
  (:py:class:`PolygonMask`, :py:func:`polygon_mask`); ``c1`` of the fitting term is the mean intensity inside
  ``M`` and ``M`` seeds the geodesic distance (see :py:mod:`transforms.guidance`).

Clicks come from three sources, each a dictionary transform that writes both masks and records the voxel
points it used under ``f"{marker_key}_points"`` (a ``(k, ndim)`` int64 array), so that a run can be replayed
with :py:class:`AddClickMarkersd`:

- explicit voxel points stored in the data (:py:class:`AddClickMarkersd`);
- simulated clicks inside a target label, away from its boundary, seeded (:py:class:`RandClickMarkersd`);
- a markers file, CSV or 3D Slicer ``.mrk.json``, in voxel or physical coordinates (:py:func:`read_markers`,
  :py:class:`LoadMarkersd`).

Shape convention: reference images and labels are 2D ``(H, W)`` or 3D ``(H, W, D)``, optionally with a leading
channel. Voxel points are ``(k, ndim)`` arrays of indices along the spatial axes, in array order (``i`` along
``H``, ``j`` along ``W``, ``k`` along ``D``). The array transforms read the number of spatial dimensions from the
points (``ndim == image.ndim`` means no channel, ``ndim == image.ndim - 1`` a leading channel); the dictionary
transforms that find their own points read a 3D array whose first axis has size 1 as a channel-first 2D image,
as :py:mod:`transforms.guidance` does. Masks have the reference's shape (a channel of size 1 when the reference
has a channel), dtype ``uint8`` by default, and keep the reference's metadata when it is a MetaTensor (while
MONAI's meta tracking is on).

Polygon in 3D: when all clicks share one slice along some axis (the usual case of clicking on one slice), ``M``
is the 2D polygon in that slice (non-convex allowed, as in 2D); otherwise ``M`` is the 3D convex hull of the
clicks (voxel centres inside or on the hull, ``scipy.spatial.Delaunay``), where the click order plays no role.
Clicks that span no area (fewer than 3, or collinear) or no volume give the straight segments joining them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import look_up_option
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_data_type, convert_to_dst_type, convert_to_tensor
from scipy.ndimage import distance_transform_edt
from scipy.spatial import Delaunay, QhullError
from skimage.draw import line_nd, polygon

from .guidance import output_keys_for

__all__ = [
    "click_mask",
    "polygon_mask",
    "read_markers",
    "AddClickMarkers",
    "PolygonMask",
    "AddClickMarkersd",
    "AddClickMarkersD",
    "AddClickMarkersDict",
    "RandClickMarkersd",
    "RandClickMarkersD",
    "RandClickMarkersDict",
    "LoadMarkersd",
    "LoadMarkersD",
    "LoadMarkersDict",
]

_ORDERS = ("angle", "given")
_SPACES = ("voxel", "RAS", "LPS")
# Voxel centres this close to a facet of the 3D convex hull count as on the hull (boundary included).
_HULL_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------------- helpers
def _as_points(points: Any, name: str = "points") -> np.ndarray:
    """Return ``points`` as a ``(k, ndim)`` int64 array with k >= 1 and ndim in (2, 3)."""
    arr = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if arr.ndim == 1 and arr.size in (2, 3):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] not in (2, 3):
        raise ValueError(
            f"{name} must be a (k, 2) or (k, 3) array of voxel indices with k >= 1, got shape {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must be integer voxel indices, got {arr.tolist()}.")
    return arr.astype(np.int64)


def _check_inside(points: np.ndarray, shape: tuple[int, ...], source: str = "") -> None:
    """Raise a ValueError naming the first point outside an image of spatial ``shape`` (and ``source``)."""
    if points.shape[1] != len(shape):
        raise ValueError(f"points have {points.shape[1]} coordinates but the image has spatial shape {shape}.")
    outside = ((points < 0) | (points >= np.asarray(shape))).any(axis=1)
    if outside.any():
        where = f" in {source}" if source else ""
        raise ValueError(
            f"marker {points[outside][0].tolist()}{where} lies outside the image of spatial shape {shape} "
            f"({int(outside.sum())} of {len(points)} points outside)."
        )


def _split_channel(shape: Sequence[int], ndim: int) -> tuple[tuple[int, ...], bool]:
    """Return ``(spatial shape, has channel)`` of ``shape`` for points with ``ndim`` coordinates."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == ndim:
        return shape, False
    if len(shape) == ndim + 1:
        return shape[1:], True
    raise ValueError(f"points with {ndim} coordinates do not fit an image of shape {shape} (expected {ndim}D "
                     f"spatial, optionally with a leading channel).")


def _label_spatial(shape: Sequence[int], name: str) -> tuple[tuple[int, ...], bool]:
    """Return ``(spatial shape, has channel)`` of a label ``([1,] H, W[, D])`` (a leading 1 is a channel)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[0] != 1):
        return shape, False
    if len(shape) in (3, 4) and shape[0] == 1:
        return shape[1:], True
    raise ValueError(f"{name} must be 2D or 3D with at most a leading channel of size 1, got shape {shape}.")


def _source(img: Any, key: Hashable | None = None) -> str:
    """Describe where ``img`` comes from: the data key and the MetaTensor's file name when known."""
    parts = [f"key {key!r}"] if key is not None else []
    if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
        parts.append(f"file '{img.meta['filename_or_obj']}'")
    return ", ".join(parts)


def _to_output(mask: np.ndarray, ref: NdarrayOrTensor, has_channel: bool, dtype: DtypeLike | torch.dtype) -> Any:
    """Return ``mask`` (spatial) as a tensor shaped like ``ref`` (channel of 1), with ``ref``'s metadata."""
    ref_t = convert_to_tensor(ref, track_meta=get_track_meta())
    out = mask[None] if has_channel else mask
    return convert_to_dst_type(out, dst=ref_t, dtype=dtype)[0]


# ----------------------------------------------------------------------------------------- mask functions
def click_mask(points: Any, shape: Sequence[int]) -> np.ndarray:
    """
    Boolean mask of spatial ``shape`` with the voxels ``points`` set.

    Args:
        points: ``(k, ndim)`` integer voxel indices, ``ndim == len(shape)``.
        shape: spatial shape of the image.

    Raises:
        ValueError: when a point lies outside the image (the message names the point and the shape).
    """
    pts, shape = _as_points(points), tuple(int(s) for s in shape)
    _check_inside(pts, shape)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(pts.T)] = True
    return mask


def _order_by_angle(points: np.ndarray) -> np.ndarray:
    """Return 2D ``points`` sorted by their angle around the centroid (ties keep the given order)."""
    centred = points - points.mean(axis=0)
    angles = np.arctan2(centred[:, 1], centred[:, 0])
    return points[np.argsort(angles, kind="stable")]


def _draw_segments(mask: np.ndarray, points: np.ndarray, closed: bool) -> None:
    """Set the voxels of the straight segments joining consecutive ``points`` (closing the loop if asked)."""
    ends = np.roll(points, -1, axis=0) if closed else points[1:]
    for start, end in zip(points, ends):
        mask[line_nd(start, end, endpoint=True)] = True


def _polygon_2d(points: np.ndarray, shape: tuple[int, int], order: str) -> np.ndarray:
    """Filled polygon of 2D ``points`` (boundary included) in an array of ``shape``."""
    mask = np.zeros(shape, dtype=bool)
    vertices = _order_by_angle(points) if order == "angle" else points
    if len(vertices) >= 3:
        mask[polygon(vertices[:, 0], vertices[:, 1], shape)] = True
    _draw_segments(mask, vertices, closed=len(vertices) >= 3)
    mask[tuple(points.T)] = True
    return mask


def _hull_3d(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Voxels inside or on the convex hull of 3D ``points``; None when the points span no volume."""
    unique = np.unique(points, axis=0)
    if len(unique) < 4:
        return None
    try:
        hull = Delaunay(unique.astype(np.float64))
    except QhullError:  # coplanar or collinear clicks
        return None
    lo, hi = unique.min(axis=0), unique.max(axis=0)
    rows, cols = np.meshgrid(np.arange(lo[1], hi[1] + 1), np.arange(lo[2], hi[2] + 1), indexing="ij")
    plane = np.stack([np.zeros(rows.size), rows.ravel(), cols.ravel()], axis=1)
    mask = np.zeros(shape, dtype=bool)
    for i in range(int(lo[0]), int(hi[0]) + 1):  # one slice at a time keeps memory bounded on large volumes
        plane[:, 0] = i
        inside = hull.find_simplex(plane, tol=_HULL_TOLERANCE) >= 0
        mask[i, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = inside.reshape(rows.shape)
    return mask


def polygon_mask(points: Any, shape: Sequence[int], order: str = "angle") -> np.ndarray:
    """
    Marker polygon ``M``: boolean mask of the polygon formed by the clicks, boundary included.

    2D: the polygon with the clicks as vertices, rasterised with :py:func:`skimage.draw.polygon` (voxel centres
    inside) plus its edges (:py:func:`skimage.draw.line_nd`), so the boundary is always included. Non-convex
    polygons are allowed: with ``order="given"`` the vertices are joined in the given order; with
    ``order="angle"`` (default) they are first sorted by their angle around the centroid, which gives a simple
    (star-shaped) polygon for clicks in any order. 3D: the 2D polygon in the slice when all clicks share one
    slice along some axis, else the convex hull of the clicks (see the module docstring). Clicks that span no
    area or volume give the segments joining them (a single click gives itself).

    Args:
        points: ``(k, ndim)`` integer voxel indices, ``ndim == len(shape)`` (2 or 3).
        shape: spatial shape of the image.
        order: ``"angle"`` or ``"given"``. Defaults to ``"angle"``.

    Raises:
        ValueError: for an unknown ``order`` or a point outside the image.
    """
    order = look_up_option(order, _ORDERS)
    pts, shape = _as_points(points), tuple(int(s) for s in shape)
    _check_inside(pts, shape)
    if len(shape) == 2:
        return _polygon_2d(pts, shape, order)
    for axis in range(3):
        if np.all(pts[:, axis] == pts[0, axis]):  # all clicks in one slice: the 2D polygon there
            others = [a for a in range(3) if a != axis]
            mask = np.zeros(shape, dtype=bool)
            index = [slice(None)] * 3
            index[axis] = int(pts[0, axis])
            mask[tuple(index)] = _polygon_2d(pts[:, others], tuple(shape[a] for a in others), order)
            return mask
    hull = _hull_3d(pts, shape)
    if hull is None:  # collinear, or coplanar on an oblique plane
        hull = np.zeros(shape, dtype=bool)
        _draw_segments(hull, _order_by_angle_3d(pts), closed=len(pts) >= 3)
    hull[tuple(pts.T)] = True
    return hull


def _order_by_angle_3d(points: np.ndarray) -> np.ndarray:
    """Sort 3D ``points`` by angle around their centroid in their best-fitting plane (for degenerate hulls)."""
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    planar = centred @ vt[:2].T
    return points[np.argsort(np.arctan2(planar[:, 1], planar[:, 0]), kind="stable")]


# -------------------------------------------------------------------------------------- array transforms
class AddClickMarkers(Transform):
    """
    Marker mask of explicit voxel clicks: 1 at each clicked voxel, 0 elsewhere.

    Called on a reference image (or label) only for its shape and metadata; the output has the reference's shape
    (a channel of size 1 when the reference has a leading channel).

    Args:
        points: ``(k, ndim)`` integer voxel indices of the clicks (ndim 2 or 3), in array axis order.
        dtype: output dtype. Defaults to ``torch.uint8``.

    Raises:
        ValueError: when ``points`` is not a ``(k, 2)``/``(k, 3)`` integer array; at call time, when a point lies
            outside the image (naming the point and the shape) or the reference does not have ``ndim`` spatial
            dimensions.

    Example:
        >>> AddClickMarkers([[0, 1], [2, 2]])(torch.zeros(3, 3)).tolist()
        [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, points: Any, dtype: DtypeLike | torch.dtype = torch.uint8) -> None:
        self.points = _as_points(points)
        self.dtype = dtype

    def _mask(self, spatial: tuple[int, ...]) -> np.ndarray:
        return click_mask(self.points, spatial)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the mask for the reference ``img`` (shape ``([C,] H, W[, D])``)."""
        spatial, has_channel = _split_channel(img.shape, self.points.shape[1])
        return _to_output(self._mask(spatial), img, has_channel, self.dtype)


class PolygonMask(AddClickMarkers):
    """
    Marker polygon mask ``M`` of explicit voxel clicks (see :py:func:`polygon_mask`), boundary included.

    Args:
        points: ``(k, ndim)`` integer voxel indices of the clicks (ndim 2 or 3), in array axis order.
        order: ``"angle"`` (sort the clicks by angle around their centroid) or ``"given"`` (join them in the
            given order, for non-convex polygons). Defaults to ``"angle"``.
        dtype: output dtype. Defaults to ``torch.uint8``.

    Raises:
        ValueError: as :py:class:`AddClickMarkers`, and for an unknown ``order``.
    """

    def __init__(self, points: Any, order: str = "angle", dtype: DtypeLike | torch.dtype = torch.uint8) -> None:
        super().__init__(points, dtype)
        self.order = look_up_option(order, _ORDERS)

    def _mask(self, spatial: tuple[int, ...]) -> np.ndarray:
        return polygon_mask(self.points, spatial, self.order)


# --------------------------------------------------------------------------------------- dictionary twins
class _MarkerWriter(MapTransform):
    """Shared output logic: marker mask, polygon mask and recorded points per key."""

    backend = AddClickMarkers.backend

    def __init__(self, keys: KeysCollection, marker_keys: KeysCollection | None, polygon_keys: KeysCollection | None,
                 order: str, dtype: DtypeLike | torch.dtype, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.marker_keys = output_keys_for(self.keys, marker_keys, "markers")
        self.polygon_keys = output_keys_for(self.keys, polygon_keys, "polygon")
        self.order = look_up_option(order, _ORDERS)
        self.dtype = dtype

    def _write(self, d: dict, ref: NdarrayOrTensor, points: np.ndarray, marker_key: Hashable, polygon_key: Hashable,
               source: str) -> None:
        """Write both masks of ``points`` on ``ref`` and record the points under ``f"{marker_key}_points"``."""
        spatial, _ = _split_channel(ref.shape, points.shape[1])
        _check_inside(points, spatial, source)
        d[marker_key] = AddClickMarkers(points, self.dtype)(ref)
        d[polygon_key] = PolygonMask(points, self.order, self.dtype)(ref)
        d[f"{marker_key}_points"] = points.copy()


class AddClickMarkersd(_MarkerWriter):
    """
    Dictionary-based wrapper of :py:class:`AddClickMarkers` and :py:class:`PolygonMask`.

    For every key (a reference image or label), reads voxel points from ``data[points_key]`` and writes the
    marker mask to the matching marker key (default ``f"{key}_markers"``), the polygon ``M`` to the matching
    polygon key (default ``f"{key}_polygon"``) and the points to ``f"{marker_key}_points"``. Feeding back the
    points recorded by :py:class:`RandClickMarkersd` or :py:class:`LoadMarkersd` replays their masks.

    Args:
        keys: keys of the reference images. See also: monai.transforms.MapTransform
        points_key: key of the ``(k, ndim)`` voxel points, shared by all keys.
        marker_keys: where to write the marker masks, one per key; None for ``f"{key}_markers"``.
        polygon_keys: where to write the polygon masks, one per key; None for ``f"{key}_polygon"``.
        order: vertex order of the polygon, ``"angle"`` or ``"given"``. Defaults to ``"angle"``.
        dtype: output dtype. Defaults to ``torch.uint8``.
        allow_missing_keys: don't raise exception if key is missing.

    Raises:
        ValueError: for bad output keys or ``order``; at call time, for bad points or a point outside the image.
        KeyError: at call time, when ``points_key`` is missing from the data.
    """

    def __init__(self, keys: KeysCollection, points_key: Hashable, marker_keys: KeysCollection | None = None,
                 polygon_keys: KeysCollection | None = None, order: str = "angle",
                 dtype: DtypeLike | torch.dtype = torch.uint8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, marker_keys, polygon_keys, order, dtype, allow_missing_keys)
        self.points_key = points_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.points_key not in d:
            raise KeyError(f"points key {self.points_key!r} not found in the data; available keys: {list(d)}.")
        points = _as_points(d[self.points_key], f"data[{self.points_key!r}]")
        for key, marker_key, polygon_key in self.key_iterator(d, self.marker_keys, self.polygon_keys):
            self._write(d, d[key], points, marker_key, polygon_key, _source(d[key], key))
        return d


class RandClickMarkersd(RandomizableTransform, _MarkerWriter):
    """
    Simulate user clicks inside a target label, away from its boundary, and write the marker masks.

    For every key (a label map), draws ``k`` distinct voxels among those with ``label == label_value`` whose
    Euclidean distance to the object's boundary (``scipy.ndimage.distance_transform_edt`` of the object mask,
    in voxels, with voxels outside the array counted as background so the image border is a boundary too) is at
    least ``min_distance``. If no voxel is that deep (a thin object) the clicks are drawn among the ``k``
    deepest voxels instead (all voxels tied with the ``k``-th deepest), with a warning; an object of fewer than
    ``k`` voxels gets one click per voxel, also with a warning. The clicks are then applied by the deterministic
    :py:class:`AddClickMarkers` and :py:class:`PolygonMask` (see :py:class:`AddClickMarkersd` for the output
    keys), and the drawn points are recorded under ``f"{marker_key}_points"`` for replay.

    Sampling uses ``self.R`` only (``set_random_state`` seeds it); each key gets its own draw, in key order.
    The polygon may leave a non-convex object even though every click is inside it.

    Args:
        keys: keys of the label maps. See also: monai.transforms.MapTransform
        label_value: value of the target object in the label (e.g. 1 for the left lung). Defaults to 1.
        num_clicks: number of clicks, an int or an inclusive ``(low, high)`` range drawn uniformly per call.
            Defaults to ``(4, 8)``.
        min_distance: minimum distance of a click to the object's boundary, in voxels (>= 0). Defaults to 3.
        marker_keys, polygon_keys, order, dtype, allow_missing_keys: as :py:class:`AddClickMarkersd`.

    Raises:
        ValueError: for bad ``num_clicks``, ``min_distance``, output keys or ``order``; at call time, when the
            label has no voxel of ``label_value`` (naming the key and file) or is not 2D/3D.
    """

    backend = AddClickMarkers.backend

    def __init__(self, keys: KeysCollection, label_value: float = 1, num_clicks: int | Sequence[int] = (4, 8),
                 min_distance: float = 3.0, marker_keys: KeysCollection | None = None,
                 polygon_keys: KeysCollection | None = None, order: str = "angle",
                 dtype: DtypeLike | torch.dtype = torch.uint8, allow_missing_keys: bool = False) -> None:
        _MarkerWriter.__init__(self, keys, marker_keys, polygon_keys, order, dtype, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.label_value = label_value
        self.num_clicks = _parse_num_clicks(num_clicks)
        if not (math.isfinite(min_distance) and min_distance >= 0):
            raise ValueError(f"min_distance must be a finite number >= 0 (voxels), got {min_distance}.")
        self.min_distance = float(min_distance)
        self._points: np.ndarray | None = None

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandClickMarkersd:
        """Seed ``self.R`` (the only source of randomness of the clicks); returns self."""
        RandomizableTransform.set_random_state(self, seed, state)
        return self

    def randomize(self, data: np.ndarray) -> None:  # type: ignore[override]
        """Draw the clicks inside the boolean object mask ``data`` (spatial) into ``self._points``."""
        k = int(self.R.randint(self.num_clicks[0], self.num_clicks[1] + 1))
        depth = distance_transform_edt(np.pad(data, 1))[(slice(1, -1),) * data.ndim]
        candidates = depth >= max(self.min_distance, 1.0)  # depth >= 1 on every object voxel
        if candidates.sum() < k:
            n_object = int(data.sum())
            if n_object < k:
                warnings.warn(f"the object has only {n_object} voxels, fewer than the {k} clicks asked: "
                              f"one click per voxel.", stacklevel=3)
                k = n_object
            kth_depth = np.sort(depth[data])[::-1][k - 1]
            warnings.warn(
                f"only {int(candidates.sum())} voxels lie at least min_distance={self.min_distance:g} voxels from "
                f"the object's boundary (deepest {depth.max():g}), fewer than the {k} clicks: drawing among the "
                f"deepest voxels (depth >= {kth_depth:g}) instead.",
                stacklevel=3,
            )
            candidates = data & (depth >= kth_depth)
        flat = np.flatnonzero(candidates)
        chosen = self.R.choice(len(flat), size=k, replace=False)
        self._points = np.stack(np.unravel_index(flat[np.sort(chosen)], data.shape), axis=1).astype(np.int64)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, marker_key, polygon_key in self.key_iterator(d, self.marker_keys, self.polygon_keys):
            label = d[key]
            spatial, _ = _label_spatial(label.shape, f"label {key!r}")
            obj = np.asarray(convert_data_type(label, np.ndarray)[0]).reshape(spatial) == self.label_value
            if not obj.any():
                raise ValueError(
                    f"label ({_source(label, key)}) has no voxel of label_value={self.label_value}: "
                    f"cannot place clicks inside an empty object."
                )
            self.randomize(obj)
            self._write(d, label, self._points, marker_key, polygon_key, _source(label, key))
        return d


def _parse_num_clicks(num_clicks: int | Sequence[int]) -> tuple[int, int]:
    """Return ``num_clicks`` as an inclusive ``(low, high)`` range with 1 <= low <= high."""
    if isinstance(num_clicks, (int, np.integer)):
        values: tuple = (num_clicks, num_clicks)
    else:
        values = tuple(num_clicks) if isinstance(num_clicks, (Sequence, np.ndarray)) else (num_clicks,)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"num_clicks must be an int or an inclusive (low, high) pair of ints, got {num_clicks!r}.")
    low, high = int(values[0]), int(values[1])
    if not 1 <= low <= high:
        raise ValueError(f"num_clicks needs 1 <= low <= high, got {num_clicks!r}.")
    return low, high


# ------------------------------------------------------------------------------------------- markers files
def _read_csv(path: str) -> tuple[np.ndarray, str]:
    """Return ``(points, columns)`` of a CSV with header ``i,j[,k]`` (voxel) or ``x,y,z`` (coordinates)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(row for row in f if row.strip() and not row.lstrip().startswith("#")))
    if not rows:
        raise ValueError(f"markers file '{path}' is empty; expected a header i,j[,k] or x,y,z and one row per point.")
    header = [h.strip().lower() for h in rows[0]]
    for columns in (("i", "j", "k"), ("x", "y", "z"), ("i", "j")):
        if set(columns) <= set(header) and not (columns == ("i", "j") and "k" in header):
            break
    else:
        raise ValueError(f"markers file '{path}' needs a header with columns i,j[,k] (voxel indices) or x,y,z, "
                         f"got header {rows[0]}.")
    idx = [header.index(c) for c in columns]
    try:
        points = np.array([[float(row[i]) for i in idx] for row in rows[1:]], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"markers file '{path}' has a row that is not numeric in columns {columns}: {err}.") from err
    return points.reshape(-1, len(columns)), "ijk" if columns[0] == "i" else "xyz"


def _read_slicer(path: str) -> tuple[np.ndarray, str]:
    """Return ``(points, coordinate system)`` of a 3D Slicer markups ``.mrk.json`` file."""
    with open(path) as f:
        content = json.load(f)
    points, systems = [], set()
    for markup in content.get("markups", []):
        systems.add(str(markup.get("coordinateSystem", "LPS")).upper())
        points += [cp["position"] for cp in markup.get("controlPoints", []) if "position" in cp]
    if len(systems) > 1 or not systems <= {"LPS", "RAS"}:
        raise ValueError(f"markers file '{path}' has coordinateSystem {sorted(systems)}; expected one of LPS or RAS.")
    return np.asarray(points, dtype=np.float64).reshape(-1, 3), systems.pop() if systems else "LPS"


def _read_points(path: str, space: str | None) -> tuple[np.ndarray, str]:
    """The points of a markers file and their coordinate space (checked against the requested ``space``)."""
    if path.lower().endswith(".json"):
        points, file_space = _read_slicer(path)
        if space is not None and space != file_space:
            raise ValueError(f"markers file '{path}' is in {file_space} coordinates, but space={space!r} was asked.")
        return points, file_space
    if not path.lower().endswith(".csv"):
        raise ValueError(f"markers file '{path}' must be a .csv or a 3D Slicer .mrk.json file.")
    points, columns = _read_csv(path)
    if columns == "ijk":
        if space not in (None, "voxel"):
            raise ValueError(f"markers file '{path}' has i,j,k voxel columns, but space={space!r} was asked.")
        return points, "voxel"
    if space is None:
        raise ValueError(f"markers file '{path}' has x,y,z columns: pass space='voxel', 'RAS' or 'LPS'.")
    return points, space


def read_markers(path: str | os.PathLike, image_affine: Any = None, space: str | None = None,
                 spatial_shape: Sequence[int] | None = None, image_space: str = "RAS") -> np.ndarray:
    """
    Read marker points from a CSV or 3D Slicer ``.mrk.json`` file as voxel indices.

    File formats:

    - CSV with a header row (blank lines and lines starting with ``#`` are skipped, extra columns ignored):
      columns ``i,j,k`` (or ``i,j`` for a 2D image) are voxel indices in array axis order; columns ``x,y,z`` are
      coordinates in ``space``, which must then be given: ``"voxel"`` (indices again), ``"RAS"`` or ``"LPS"``
      (physical, millimetres).
    - 3D Slicer markups (``.json``, e.g. ``.mrk.json``): every ``markups[].controlPoints[].position``, in the
      markup's ``coordinateSystem`` (``"LPS"`` or ``"RAS"``; LPS when absent, Slicer's default). ``space``, when
      given, must match it.

    Physical points are mapped to voxels with the inverse of ``image_affine`` (voxel → world, in
    ``image_space``; NIfTI and MONAI's default loaders give RAS affines). LPS and RAS differ by the sign of x and
    y. Indices are rounded to the nearest voxel.

    Args:
        path: markers file.
        image_affine: ``4 × 4`` voxel-to-world affine of the image; needed for physical coordinates.
        space: coordinate space of the CSV ``x,y,z`` columns, ``"voxel"``, ``"RAS"`` or ``"LPS"``; None reads the
            Slicer file's own system. Defaults to None.
        spatial_shape: spatial shape of the image; when given, points outside it raise. Defaults to None.
        image_space: world space of ``image_affine``, ``"RAS"`` or ``"LPS"``. Defaults to ``"RAS"``.

    Returns:
        ``(k, 3)`` int64 voxel indices (``(k, 2)`` for an ``i,j`` CSV).

    Raises:
        ValueError: for an unsupported file, header or coordinate system, physical points without an affine,
            or a point outside ``spatial_shape`` (naming the file and the point).
    """
    path = os.fspath(path)
    if space is not None:
        space = look_up_option(space, _SPACES)
    image_space = look_up_option(image_space, _SPACES[1:])
    points, space = _read_points(path, space)
    if len(points) == 0:
        raise ValueError(f"markers file '{path}' contains no point.")
    if space != "voxel":
        points = _world_to_voxel(points, image_affine, space, image_space, path)
    voxels = np.rint(points).astype(np.int64)
    if spatial_shape is not None:
        _check_inside(voxels, tuple(int(s) for s in spatial_shape), f"markers file '{path}'")
    return voxels


def _world_to_voxel(points: np.ndarray, affine: Any, space: str, image_space: str, path: str) -> np.ndarray:
    """Map physical ``points`` in ``space`` to continuous voxel indices with the inverse of ``affine``."""
    if affine is None:
        raise ValueError(f"markers file '{path}' has {space} coordinates: an image affine is needed to map them.")
    affine = np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"image_affine must be a 4 x 4 voxel-to-world matrix, got shape {affine.shape}.")
    if space != image_space:
        points = points * np.array([-1.0, -1.0, 1.0])
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    return (np.linalg.inv(affine) @ homogeneous.T).T[:, :3]


class LoadMarkersd(_MarkerWriter):
    """
    Read a markers file named in the data and write the marker mask and polygon on each image.

    For every key (an image, ideally a MetaTensor from ``LoadImaged``), reads the file at
    ``data[markers_key]`` with :py:func:`read_markers`, using the image's affine (``meta["affine"]``) and
    world space (``meta["space"]``, RAS when absent) for physical coordinates, and writes the marker mask,
    polygon and points like :py:class:`AddClickMarkersd`. For a 2D image, 3-coordinate points must lie in
    slice 0 of the third axis (which is dropped). Physical coordinates need a MetaTensor image.

    Args:
        keys: keys of the images. See also: monai.transforms.MapTransform
        markers_key: key holding the markers file path. Defaults to ``"markers"``.
        space: coordinate space of CSV ``x,y,z`` columns (see :py:func:`read_markers`). Defaults to None.
        marker_keys, polygon_keys, order, dtype, allow_missing_keys: as :py:class:`AddClickMarkersd`.

    Raises:
        ValueError: as :py:func:`read_markers`, naming the file and the point outside the image.
        KeyError: at call time, when ``markers_key`` is missing from the data.
    """

    def __init__(self, keys: KeysCollection, markers_key: Hashable = "markers", space: str | None = None,
                 marker_keys: KeysCollection | None = None, polygon_keys: KeysCollection | None = None,
                 order: str = "angle", dtype: DtypeLike | torch.dtype = torch.uint8,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, marker_keys, polygon_keys, order, dtype, allow_missing_keys)
        self.markers_key = markers_key
        self.space = None if space is None else look_up_option(space, _SPACES)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.markers_key not in d:
            raise KeyError(f"markers key {self.markers_key!r} not found in the data; available keys: {list(d)}.")
        path = os.fspath(d[self.markers_key])
        for key, marker_key, polygon_key in self.key_iterator(d, self.marker_keys, self.polygon_keys):
            img = d[key]
            spatial, _ = _label_spatial(img.shape, f"image {key!r}")
            affine, image_space = None, "RAS"
            if isinstance(img, MetaTensor):
                affine = _affine_4x4(img.affine)
                image_space = str(img.meta.get("space", "RAS")).upper()
            points = read_markers(path, affine, self.space, image_space=image_space)
            if len(spatial) == 2 and points.shape[1] == 3:
                if np.any(points[:, 2] != 0):
                    bad = points[points[:, 2] != 0][0].tolist()
                    raise ValueError(f"marker {bad} in markers file '{path}' lies outside the 2D image of spatial "
                                     f"shape {spatial} (third index must be 0).")
                points = points[:, :2]
            _check_inside(points, spatial, f"markers file '{path}'")
            self._write(d, img, points, marker_key, polygon_key, f"markers file '{path}'")
        return d


def _affine_4x4(affine: Any) -> np.ndarray:
    """Return a MetaTensor affine as 4 × 4 (a 2D ``3 × 3`` affine is embedded with an identity third axis)."""
    a = np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=np.float64)
    if a.shape == (3, 3):
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = a[:2, :2], a[:2, 2]
        return full
    return a


AddClickMarkersD = AddClickMarkersDict = AddClickMarkersd
RandClickMarkersD = RandClickMarkersDict = RandClickMarkersd
LoadMarkersD = LoadMarkersDict = LoadMarkersd
