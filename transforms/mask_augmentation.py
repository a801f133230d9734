"""Degrade a binary mask to synthesise an imperfect segmentation with a known quality.

The iterative refinement network (Rebelo, Fernandes & Cardoso, after Fernandes et al. 2018) learns from pairs of an
image and an *imperfect* mask whose Dice against the ground truth is known. These transforms make such masks from a
ground-truth mask: elastic deformation, erosion / dilation, noise (random blobs whose voxels are flipped),
rotation, flips and shifts. They act on the mask only (the dictionary twins touch only their ``keys``, so the image
stays as it is) and always return a binary mask of the input's type, dtype and shape.

Masks are channel-first ``(C, spatial...)`` with 2 or 3 spatial axes; values above 0.5 are foreground. Rotation and
flips act about the foreground's centroid, so the degraded object stays where the true one is (a flip of the whole
array would move a small object far away, which is a trivially bad mask rather than an imperfect one).

Every random transform draws its parameters from ``self.R`` in :meth:`randomize` (``set_random_state`` seeds it), keeps
them in :attr:`last_params` so that a call can be replayed, and applies them deterministically; a dictionary twin
draws once and applies the same parameters to every key. :class:`RandImperfectMask` chains all six with one
probability each.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_data_type, convert_to_dst_type
from scipy import ndimage

__all__ = [
    "RandMaskElastic", "RandMaskElasticd", "RandMaskElasticD", "RandMaskElasticDict",
    "RandMaskMorphology", "RandMaskMorphologyd", "RandMaskMorphologyD", "RandMaskMorphologyDict",
    "RandMaskNoise", "RandMaskNoised", "RandMaskNoiseD", "RandMaskNoiseDict",
    "RandMaskRotate", "RandMaskRotated", "RandMaskRotateD", "RandMaskRotateDict",
    "RandMaskFlip", "RandMaskFlipd", "RandMaskFlipD", "RandMaskFlipDict",
    "RandMaskShift", "RandMaskShiftd", "RandMaskShiftD", "RandMaskShiftDict",
    "RandImperfectMask", "RandImperfectMaskd", "RandImperfectMaskD", "RandImperfectMaskDict",
]


def _range(value: float | Sequence[float], name: str, minimum: float = 0.0) -> tuple[float, float]:
    """``value`` or ``(low, high)`` as an ordered pair ``>= minimum``; ValueError naming ``name`` otherwise."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or not all(np.isfinite(float(v)) for v in pair):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
    low, high = float(pair[0]), float(pair[1])
    if low > high or low < minimum:
        raise ValueError(f"{name} must satisfy {minimum:g} <= low <= high, got {value!r}")
    return low, high


def _binary(mask: NdarrayOrTensor) -> np.ndarray:
    """Channel-first mask as a boolean numpy array ``(C, spatial...)`` (foreground: > 0.5)."""
    arr = convert_data_type(mask, np.ndarray)[0]
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a channel-first 2D or 3D mask (C, H, W[, D]), got shape {tuple(arr.shape)}")
    return np.asarray(arr) > 0.5


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Centroid of the foreground (the array centre when empty), in voxel coordinates."""
    points = np.argwhere(mask)
    if len(points) == 0:
        return (np.asarray(mask.shape, dtype=float) - 1) / 2
    return points.mean(axis=0)


def _ball(shape: Sequence[int], centre: Sequence[float], radius: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return dist2 <= radius**2


class _RandMask(RandomizableTransform):
    """Shared mechanics: threshold, per-channel application, parameter record, output of the input's type."""

    backend = [TransformBackends.NUMPY]

    def __init__(self, prob: float = 1.0) -> None:
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob!r}")
        RandomizableTransform.__init__(self, prob=float(prob))
        self.last_params: dict[str, Any] | None = None

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def randomize(self, data: np.ndarray) -> None:  # type: ignore[override]
        """Decide whether to apply (``prob``) and draw the parameters for the spatial boolean mask ``data``."""
        super().randomize(None)
        self.last_params = self._draw(data) if self._do_transform else None

    def apply(self, mask: np.ndarray, params: Mapping[str, Any] | None) -> np.ndarray:
        """Apply ``params`` (None: identity) to a boolean ``(C, spatial...)`` array, channel by channel."""
        if params is None:
            return mask
        return np.stack([self._apply(channel, params) for channel in mask]).astype(bool)

    def __call__(self, mask: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Degraded binary mask of the same type, dtype and shape as ``mask``.

        Args:
            mask: channel-first ``(C, H, W[, D])`` mask (numpy, torch or MetaTensor).
            randomize: draw new parameters (False re-applies :attr:`last_params`, e.g. to a second key).
        """
        binary = _binary(mask)
        if randomize:
            self.randomize(binary.any(axis=0))
        out = self.apply(binary, self.last_params if self._do_transform else None)
        return convert_to_dst_type(out.astype(np.float32), dst=mask)[0]


class RandMaskElastic(_RandMask):
    """Elastic deformation: a smooth random displacement field (Gaussian-filtered white noise, scaled so its largest
    component is ``magnitude`` voxels), mask resampled linearly and thresholded at 0.5.

    Args:
        prob: probability of applying.
        sigma: smoothness of the field in voxels, a number or a ``(low, high)`` range drawn per call.
        magnitude: largest displacement in voxels, a number or a ``(low, high)`` range drawn per call.
    """

    def __init__(self, prob: float = 1.0, sigma: float | Sequence[float] = (3.0, 6.0),
                 magnitude: float | Sequence[float] = (1.0, 4.0)) -> None:
        super().__init__(prob)
        self.sigma = _range(sigma, "sigma", minimum=1e-3)
        self.magnitude = _range(magnitude, "magnitude")

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        return {"sigma": float(self.R.uniform(*self.sigma)), "magnitude": float(self.R.uniform(*self.magnitude)),
                "seed": int(self.R.randint(0, 2**31 - 1))}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        rng = np.random.default_rng(params["seed"])
        fields = [ndimage.gaussian_filter(rng.standard_normal(mask.shape), params["sigma"]) for _ in mask.shape]
        peak = max(float(np.abs(f).max()) for f in fields) or 1.0
        grid = np.meshgrid(*[np.arange(s, dtype=float) for s in mask.shape], indexing="ij")
        coords = [g + f * (params["magnitude"] / peak) for g, f in zip(grid, fields)]
        return ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="constant", cval=0.0) > 0.5


class RandMaskMorphology(_RandMask):
    """Erosion or dilation by a ball of integer radius (exact Euclidean ball, via a distance transform).

    Args:
        prob: probability of applying.
        radius: ball radius in voxels, an int or an inclusive ``(low, high)`` range.
        operations: operations to draw from, among ``"erode"`` and ``"dilate"``.
    """

    def __init__(self, prob: float = 1.0, radius: int | Sequence[int] = (1, 2),
                 operations: Sequence[str] = ("erode", "dilate")) -> None:
        super().__init__(prob)
        low, high = _range(radius, "radius", minimum=1.0)
        self.radius = (int(low), int(high))
        ops = (operations,) if isinstance(operations, str) else tuple(operations)
        if not ops or any(op not in ("erode", "dilate") for op in ops):
            raise ValueError(f"operations must be a non-empty subset of ('erode', 'dilate'), got {operations!r}")
        self.operations = ops

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        return {"operation": self.operations[int(self.R.randint(len(self.operations)))],
                "radius": int(self.R.randint(self.radius[0], self.radius[1] + 1))}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        if params["operation"] == "dilate":
            return ndimage.distance_transform_edt(~mask) <= params["radius"] if mask.any() else mask
        return ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim] > params["radius"]


class RandMaskNoise(_RandMask):
    """Noise: a few random balls whose voxels are flipped (background becomes foreground and vice versa).

    Args:
        prob: probability of applying.
        num_blobs: number of balls, an int or an inclusive ``(low, high)`` range.
        radius: ball radius in voxels, a number or a ``(low, high)`` range (drawn per ball).
        boundary_fraction: chance that a ball is centred on a voxel of the foreground's boundary (errors near the
            object, like a segmenter's); otherwise the centre is uniform over the array.
    """

    def __init__(self, prob: float = 1.0, num_blobs: int | Sequence[int] = (1, 3),
                 radius: float | Sequence[float] = (1.0, 4.0), boundary_fraction: float = 0.5) -> None:
        super().__init__(prob)
        low, high = _range(num_blobs, "num_blobs", minimum=1.0)
        self.num_blobs = (int(low), int(high))
        self.radius = _range(radius, "radius", minimum=0.5)
        if not 0.0 <= float(boundary_fraction) <= 1.0:
            raise ValueError(f"boundary_fraction must be in [0, 1], got {boundary_fraction!r}")
        self.boundary_fraction = float(boundary_fraction)

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        boundary = np.argwhere(mask & ~ndimage.binary_erosion(mask)) if mask.any() else np.zeros((0, mask.ndim))
        blobs = []
        for _ in range(int(self.R.randint(self.num_blobs[0], self.num_blobs[1] + 1))):
            if len(boundary) and self.R.uniform() < self.boundary_fraction:
                centre = boundary[int(self.R.randint(len(boundary)))].astype(float)
            else:
                centre = np.array([self.R.uniform(0, s) for s in mask.shape])
            blobs.append(([float(c) for c in centre], float(self.R.uniform(*self.radius))))
        return {"blobs": blobs}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        flip = np.zeros(mask.shape, dtype=bool)
        for centre, radius in params["blobs"]:
            flip |= _ball(mask.shape, centre, radius)
        return mask ^ flip


class RandMaskRotate(_RandMask):
    """Rotation about the foreground's centroid in the plane of two spatial axes (nearest-neighbour).

    Args:
        prob: probability of applying.
        max_angle: largest absolute angle in degrees (drawn uniformly in ``[-max_angle, max_angle]``).
        axes: the two spatial axes of the rotation plane.
    """

    def __init__(self, prob: float = 1.0, max_angle: float = 20.0, axes: Sequence[int] = (0, 1)) -> None:
        super().__init__(prob)
        if not (np.isfinite(float(max_angle)) and float(max_angle) >= 0):
            raise ValueError(f"max_angle must be a finite number >= 0 (degrees), got {max_angle!r}")
        if len(tuple(axes)) != 2 or len(set(axes)) != 2:
            raise ValueError(f"axes must name two different spatial axes, got {axes!r}")
        self.max_angle, self.axes = float(max_angle), tuple(int(a) for a in axes)

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        if max(self.axes) >= mask.ndim:
            raise ValueError(f"axes {self.axes} do not exist in a {mask.ndim}D mask")
        return {"angle": float(self.R.uniform(-self.max_angle, self.max_angle)),
                "centre": [float(c) for c in _centroid(mask)]}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        theta = np.deg2rad(params["angle"])
        matrix = np.eye(mask.ndim)
        a, b = self.axes
        cos, sin = np.cos(theta), np.sin(theta)
        matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = cos, -sin, sin, cos
        centre = np.asarray(params["centre"])
        offset = centre - matrix @ centre
        return ndimage.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0, cval=0) > 0


class RandMaskFlip(_RandMask):
    """Mirror the mask about its foreground centroid along one spatial axis (the rest of the array is unchanged in
    position: the flipped object keeps its centroid).

    Args:
        prob: probability of applying.
        spatial_axes: axes to draw the flip axis from (None: every spatial axis).
    """

    def __init__(self, prob: float = 1.0, spatial_axes: Sequence[int] | None = None) -> None:
        super().__init__(prob)
        self.spatial_axes = None if spatial_axes is None else tuple(int(a) for a in spatial_axes)
        if self.spatial_axes is not None and not self.spatial_axes:
            raise ValueError("spatial_axes must name at least one axis (or be None for all)")

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        axes = self.spatial_axes if self.spatial_axes is not None else tuple(range(mask.ndim))
        if max(axes) >= mask.ndim:
            raise ValueError(f"spatial_axes {axes} do not exist in a {mask.ndim}D mask")
        return {"axis": int(axes[int(self.R.randint(len(axes)))]), "centre": [float(c) for c in _centroid(mask)]}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        axis = params["axis"]
        size = mask.shape[axis]
        shift = int(round(2 * params["centre"][axis] - (size - 1)))  # x -> 2c - x = (size - 1 - x) + shift
        return _shift(np.flip(mask, axis=axis), [shift if i == axis else 0 for i in range(mask.ndim)])


def _shift(mask: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """Integer shift with zero fill (what leaves the array is lost)."""
    out = np.zeros_like(mask)
    src, dst = [], []
    for size, off in zip(mask.shape, offsets):
        if abs(off) >= size:
            return out
        src.append(slice(max(0, -off), size - max(0, off)))
        dst.append(slice(max(0, off), size - max(0, -off)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


class RandMaskShift(_RandMask):
    """Integer translation with zero fill.

    Args:
        prob: probability of applying.
        max_shift: largest absolute shift in voxels, one number for every axis or one per spatial axis.
    """

    def __init__(self, prob: float = 1.0, max_shift: int | Sequence[int] = 3) -> None:
        super().__init__(prob)
        values = (max_shift,) if np.isscalar(max_shift) else tuple(max_shift)
        if not values or any(int(v) != v or int(v) < 0 for v in values):
            raise ValueError(f"max_shift must be non-negative integers, got {max_shift!r}")
        self.max_shift = tuple(int(v) for v in values)

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        limits = self.max_shift * mask.ndim if len(self.max_shift) == 1 else self.max_shift
        if len(limits) != mask.ndim:
            raise ValueError(f"max_shift has {len(self.max_shift)} values for a {mask.ndim}D mask")
        return {"offsets": [int(self.R.randint(-m, m + 1)) for m in limits]}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        return _shift(mask, params["offsets"])


class RandImperfectMask(_RandMask):
    """Synthesise an imperfect base mask: the six degradations in a fixed order, each with its own probability.

    Order: morphology, elastic, rotation, flip, shift, noise. ``last_params`` lists what was applied as
    ``{"steps": [(name, params), ...]}``.

    Args:
        prob: probability of degrading at all.
        morphology_prob, elastic_prob, rotate_prob, flip_prob, shift_prob, noise_prob: probability of each step.
        morphology, elastic, rotate, flip, shift, noise: keyword arguments of :class:`RandMaskMorphology`,
            :class:`RandMaskElastic`, :class:`RandMaskRotate`, :class:`RandMaskFlip`, :class:`RandMaskShift` and
            :class:`RandMaskNoise` (their ``prob`` is the step's probability above).
    """

    def __init__(self, prob: float = 1.0, morphology_prob: float = 0.5, elastic_prob: float = 0.5,
                 rotate_prob: float = 0.3, flip_prob: float = 0.1, shift_prob: float = 0.3, noise_prob: float = 0.3,
                 morphology: Mapping[str, Any] | None = None, elastic: Mapping[str, Any] | None = None,
                 rotate: Mapping[str, Any] | None = None, flip: Mapping[str, Any] | None = None,
                 shift: Mapping[str, Any] | None = None, noise: Mapping[str, Any] | None = None) -> None:
        super().__init__(prob)
        self.steps: list[tuple[str, _RandMask]] = [
            ("morphology", RandMaskMorphology(morphology_prob, **dict(morphology or {}))),
            ("elastic", RandMaskElastic(elastic_prob, **dict(elastic or {}))),
            ("rotate", RandMaskRotate(rotate_prob, **dict(rotate or {}))),
            ("flip", RandMaskFlip(flip_prob, **dict(flip or {}))),
            ("shift", RandMaskShift(shift_prob, **dict(shift or {}))),
            ("noise", RandMaskNoise(noise_prob, **dict(noise or {}))),
        ]
        self.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> RandImperfectMask:
        """Seed ``self.R``; every step draws from the same generator, in order."""
        super().set_random_state(seed, state)
        for _, step in getattr(self, "steps", []):
            step.R = self.R
        return self

    def _draw(self, mask: np.ndarray) -> dict[str, Any]:
        steps, current = [], mask
        for name, step in self.steps:  # later steps draw on the already degraded mask (centroids, boundaries)
            step.randomize(current)
            if step._do_transform:
                steps.append((name, step.last_params))
                current = step.apply(current[None], step.last_params)[0]
        return {"steps": steps}

    def _apply(self, mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
        by_name = dict(self.steps)
        for name, step_params in params["steps"]:
            mask = by_name[name]._apply(mask, step_params)
        return mask


class _RandMaskDict(RandomizableTransform, MapTransform):
    """Dictionary twin mechanics: one draw (from the first key present) applied to every key."""

    backend = _RandMask.backend

    def __init__(self, keys: KeysCollection, transform: _RandMask, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _RandMaskDict:
        """Seed the twin and the array transform it wraps (one generator)."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    @property
    def last_params(self) -> dict[str, Any] | None:
        """Parameters of the last draw (None: not applied)."""
        return self.transform.last_params

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=first)
            first = False
        return d


class RandMaskElasticd(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskElastic` (same arguments plus ``keys``, ``allow_missing_keys``)."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, sigma: float | Sequence[float] = (3.0, 6.0),
                 magnitude: float | Sequence[float] = (1.0, 4.0), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskElastic(prob, sigma, magnitude), allow_missing_keys)


class RandMaskMorphologyd(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskMorphology`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, radius: int | Sequence[int] = (1, 2),
                 operations: Sequence[str] = ("erode", "dilate"), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskMorphology(prob, radius, operations), allow_missing_keys)


class RandMaskNoised(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskNoise`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, num_blobs: int | Sequence[int] = (1, 3),
                 radius: float | Sequence[float] = (1.0, 4.0), boundary_fraction: float = 0.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskNoise(prob, num_blobs, radius, boundary_fraction), allow_missing_keys)


class RandMaskRotated(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskRotate`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, max_angle: float = 20.0,
                 axes: Sequence[int] = (0, 1), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskRotate(prob, max_angle, axes), allow_missing_keys)


class RandMaskFlipd(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskFlip`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, spatial_axes: Sequence[int] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskFlip(prob, spatial_axes), allow_missing_keys)


class RandMaskShiftd(_RandMaskDict):
    """Dictionary twin of :class:`RandMaskShift`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, max_shift: int | Sequence[int] = 3,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandMaskShift(prob, max_shift), allow_missing_keys)


class RandImperfectMaskd(_RandMaskDict):
    """Dictionary twin of :class:`RandImperfectMask` (same arguments plus ``keys``, ``allow_missing_keys``)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, RandImperfectMask(**kwargs), allow_missing_keys)


RandMaskElasticD = RandMaskElasticDict = RandMaskElasticd
RandMaskMorphologyD = RandMaskMorphologyDict = RandMaskMorphologyd
RandMaskNoiseD = RandMaskNoiseDict = RandMaskNoised
RandMaskRotateD = RandMaskRotateDict = RandMaskRotated
RandMaskFlipD = RandMaskFlipDict = RandMaskFlipd
RandMaskShiftD = RandMaskShiftDict = RandMaskShiftd
RandImperfectMaskD = RandImperfectMaskDict = RandImperfectMaskd
