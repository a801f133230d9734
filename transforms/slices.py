"""
2.5D slice stacking: turn a channel-first 3D volume into a batch of 2D samples made of ``k`` neighbouring slices
per input channel, and reassemble per-slice outputs into a volume.

Axis convention used throughout this module: ``axis`` indexes the **spatial** dimensions only, the channel
dimension excluded. For a ``(C, H, W, D)`` volume, ``axis=0`` slices along H, ``axis=1`` along W and ``axis=2``
(or ``-1``, the default) along D; negative values count from the last spatial dimension.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import moveaxis
from monai.utils import ensure_tuple
from monai.utils.enums import TransformBackends

__all__ = [
    "check_num_slices",
    "plain_tensor",
    "spatial_axis",
    "adjacent_slice_indices",
    "StackAdjacentSlices",
    "UnstackSlices",
    "StackAdjacentSlicesd",
    "StackAdjacentSlicesD",
    "StackAdjacentSlicesDict",
    "UnstackSlicesd",
    "UnstackSlicesD",
    "UnstackSlicesDict",
]


def plain_tensor(x: NdarrayOrTensor) -> torch.Tensor:
    """A plain tensor view of an array, tensor or MetaTensor (metadata dropped; slicing MetaTensors is slow)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def check_num_slices(num_slices: int) -> int:
    """Return ``num_slices`` as an int after checking it is an odd integer >= 1."""
    if isinstance(num_slices, bool) or not isinstance(num_slices, (int, np.integer)):
        raise TypeError(f"num_slices must be an int, got {num_slices!r} of type {type(num_slices).__name__}.")
    if num_slices < 1 or num_slices % 2 == 0:
        raise ValueError(f"num_slices must be odd and >= 1 so that slices are centred, got {num_slices}.")
    return int(num_slices)


def spatial_axis(axis: int) -> int:
    """Return the spatial axis (0, 1 or 2) of a channel-first 3D volume for ``axis`` in [-3, 2]."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis <= 2:
        raise ValueError(f"axis must index one of the 3 spatial dimensions (-3..2, channel excluded), got {axis!r}.")
    return int(axis) % 3


def _slice_positions(slices: Sequence[int] | None, depth: int) -> np.ndarray:
    """Return ``slices`` (all of ``range(depth)`` when None) as int64 indices in [0, depth), negatives wrapped."""
    if slices is None:
        return np.arange(depth, dtype=np.int64)
    positions = np.asarray(ensure_tuple(slices), dtype=np.int64).reshape(-1)
    outside = positions[(positions < -depth) | (positions >= depth)]
    if outside.size:
        raise ValueError(f"slice indices must lie in [-{depth}, {depth - 1}] (depth {depth}), got {outside.tolist()}.")
    return positions % depth


def _per_key(value: int | Sequence[int], keys: tuple[Hashable, ...], name: str) -> tuple[int, ...]:
    """Repeat an int for every key, or check that a sequence has one entry per key."""
    if isinstance(value, (int, np.integer)):
        return (value,) * len(keys)
    values = tuple(value)
    if len(values) != len(keys):
        raise ValueError(f"{name} needs one entry per key {list(keys)}, got {values}.")
    return values


def adjacent_slice_indices(depth: int, num_slices: int, slices: Sequence[int] | None = None) -> np.ndarray:
    """
    Indices of the ``num_slices`` neighbours of each requested slice, clamped to the volume (edges replicated).

    Args:
        depth: number of slices along the slicing axis, >= 1.
        num_slices: neighbourhood size ``k``, odd and >= 1; row ``i`` holds ``z - k//2, ..., z, ..., z + k//2``.
        slices: centre slice indices ``z`` (negative values count from the end); all ``range(depth)`` when None.

    Returns:
        int64 array of shape ``(S, k)`` with S the number of centre slices.

    Raises:
        ValueError: when ``depth < 1``, ``num_slices`` is even or < 1, or a slice index is outside the volume.

    Example:
        >>> adjacent_slice_indices(4, 3)
        array([[0, 0, 1],
               [0, 1, 2],
               [1, 2, 3],
               [2, 3, 3]])
    """
    num_slices = check_num_slices(num_slices)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")
    offsets = np.arange(num_slices, dtype=np.int64) - num_slices // 2
    centres = _slice_positions(slices, depth)
    return np.clip(centres[:, None] + offsets[None, :], 0, depth - 1)


class StackAdjacentSlices(Transform):
    """
    Turn a channel-first 3D volume into 2.5D samples: ``k`` neighbouring slices per input channel.

    A ``(C, H, W, D)`` volume sliced along D (``axis=-1``) becomes ``(S, C*k, H, W)``, where S is the number of
    centre slices (all D by default, or ``len(slices)``). Channels are **channel-major**: for k = 3 they are
    ``[c0@z-1, c0@z, c0@z+1, c1@z-1, c1@z, c1@z+1, ...]``, so 4 BRATS modalities give 12 channels. Neighbours
    beyond the volume are replaced by the edge slice (``z-1`` of slice 0 is slice 0). For ``axis=0`` the output
    is ``(H, C*k, W, D)``, for ``axis=1`` ``(W, C*k, H, D)``: the two remaining spatial dims keep their order.

    The stacking is one gather over an index array (no loop over slices). Numpy input gives a numpy array, torch
    input a torch tensor of the same dtype and device. The output is a batch of 2D samples, so a MetaTensor's
    metadata (affine of the 3D volume) does not apply to it and is dropped: a plain tensor is returned.

    Args:
        num_slices: neighbourhood size ``k`` per channel, odd and >= 1 (1 gives plain 2D slices). Defaults to 3.
        axis: spatial axis to slice along, channel excluded: 0, 1, 2 or -3..-1. Defaults to -1 (last spatial dim).
        slices: centre slice indices to produce (negative values count from the end); all slices when None.

    Raises:
        ValueError: when ``num_slices`` is even or < 1 or ``axis`` is not a spatial axis.

    Example:
        >>> import torch
        >>> StackAdjacentSlices(num_slices=3)(torch.zeros(4, 8, 8, 5)).shape
        torch.Size([5, 12, 8, 8])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_slices: int = 3, axis: int = -1, slices: Sequence[int] | None = None) -> None:
        self.num_slices = check_num_slices(num_slices)
        self.axis = spatial_axis(axis)
        self.slices = None if slices is None else tuple(int(s) for s in ensure_tuple(slices))

    def __call__(self, img: NdarrayOrTensor, slices: Sequence[int] | None = None) -> NdarrayOrTensor:
        """
        Stack the neighbours of each centre slice of ``img`` (shape ``(C, H, W, D)``).

        Args:
            img: channel-first 3D volume.
            slices: centre slice indices overriding the ones given at construction.

        Raises:
            ValueError: when ``img`` is not 4D or a slice index is outside the volume.
        """
        if img.ndim != 4:
            raise ValueError(f"expected a channel-first 3D volume (C, H, W, D), got shape {tuple(img.shape)}.")
        if isinstance(img, MetaTensor):
            img = img.as_tensor()
        volume = moveaxis(img, self.axis + 1, 1)  # (C, Z, A, B)
        index = adjacent_slice_indices(volume.shape[1], self.num_slices, self.slices if slices is None else slices)
        if isinstance(volume, torch.Tensor):
            index = torch.as_tensor(index, device=volume.device)
        stacked = moveaxis(volume[:, index], 1, 0)  # (S, C, k, A, B)
        num_channels, height, width = volume.shape[0], volume.shape[2], volume.shape[3]
        return stacked.reshape((index.shape[0], num_channels * self.num_slices, height, width))


class UnstackSlices(Transform):
    """
    Reassemble per-slice 2D outputs ``(S, N, A, B)`` into a channel-first volume: the inverse of
    :py:class:`StackAdjacentSlices`.

    With ``axis=-1`` and ``S = D`` the result is ``(N, H, W, D)``: slice ``z`` of the volume is the prediction
    made for centre slice ``z``. When the input still holds ``k`` neighbours per channel (channel-major, as made by
    ``StackAdjacentSlices(num_slices=k)``), set ``num_slices=k`` to keep only the centre channel of each group,
    so that ``UnstackSlices(num_slices=k)(StackAdjacentSlices(num_slices=k)(x))`` equals ``x``.
    When only some slices were produced, pass their indices ``slices`` and the volume depth ``num_total``; the
    other slices are filled with ``fill_value``.

    Numpy input gives a numpy array, torch input a torch tensor of the same dtype and device; a MetaTensor's
    per-batch metadata is dropped and the caller restores the volume's geometry (e.g. by copying the source
    image's metadata).

    Args:
        axis: spatial axis the slices were taken along (same convention as ``StackAdjacentSlices``).
            Defaults to -1.
        num_slices: channels per group ``k`` in the input; the centre one of each group is kept. Defaults to 1.
        slices: volume positions of the S input slices (negative values count from the end); when None the
            input covers every slice in order.
        num_total: depth of the output volume along ``axis``; required with ``slices``.
        fill_value: value of the slices not listed in ``slices``. Defaults to 0.

    Raises:
        ValueError: when ``num_slices`` is even or < 1 or ``axis`` is not a spatial axis.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, axis: int = -1, num_slices: int = 1, slices: Sequence[int] | None = None,
                 num_total: int | None = None, fill_value: float = 0.0) -> None:
        self.axis = spatial_axis(axis)
        self.num_slices = check_num_slices(num_slices)
        self.slices = None if slices is None else tuple(int(s) for s in ensure_tuple(slices))
        self.num_total = num_total
        self.fill_value = fill_value

    def _centre_channels(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Keep the centre channel of each channel-major group of ``num_slices`` channels."""
        if img.shape[1] % self.num_slices:
            raise ValueError(
                f"{img.shape[1]} channels cannot be split into groups of num_slices={self.num_slices} neighbours."
            )
        return img[:, self.num_slices // 2 :: self.num_slices]

    def __call__(
        self, img: NdarrayOrTensor, slices: Sequence[int] | None = None, num_total: int | None = None
    ) -> NdarrayOrTensor:
        """
        Reassemble ``img`` of shape ``(S, N, A, B)`` into a volume.

        Args:
            img: per-slice outputs, one 2D sample per centre slice.
            slices: volume positions of the samples, overriding the ones given at construction.
            num_total: output depth, overriding the one given at construction.

        Raises:
            ValueError: when ``img`` is not 4D, ``slices`` and S disagree, ``slices`` repeats a position or lies
                outside the volume, ``slices`` comes without ``num_total``, or S differs from ``num_total``.
        """
        if img.ndim != 4:
            raise ValueError(f"expected per-slice outputs (S, N, H, W), got shape {tuple(img.shape)}.")
        if isinstance(img, MetaTensor):
            img = img.as_tensor()
        img = self._centre_channels(img) if self.num_slices > 1 else img
        slices = self.slices if slices is None else slices
        num_total = self.num_total if num_total is None else num_total
        if slices is not None:
            img = self._place(img, slices, num_total)
        elif num_total is not None and num_total != img.shape[0]:
            raise ValueError(f"got {img.shape[0]} slices but num_total={num_total}; pass their positions as slices.")
        return moveaxis(img, 0, self.axis + 1)

    def _place(self, img: NdarrayOrTensor, slices: Sequence[int], num_total: int | None) -> NdarrayOrTensor:
        """Put the S samples of ``img`` at positions ``slices`` of a ``num_total``-deep stack filled elsewhere."""
        if num_total is None:
            raise ValueError("num_total (the volume depth) is required when slices are given.")
        positions = _slice_positions(slices, num_total)
        if len(positions) != img.shape[0]:
            raise ValueError(f"got {img.shape[0]} slices but {len(positions)} positions in slices={list(slices)}.")
        if len(np.unique(positions)) != len(positions):
            raise ValueError(f"slices must not repeat a position, got {list(slices)} for depth {num_total}.")
        shape = (num_total, *img.shape[1:])
        if isinstance(img, torch.Tensor):
            volume = torch.full(shape, self.fill_value, dtype=img.dtype, device=img.device)
            volume[torch.as_tensor(positions, device=img.device)] = img
        else:
            volume = np.full(shape, self.fill_value, dtype=img.dtype)
            volume[positions] = img
        return volume


class StackAdjacentSlicesd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`StackAdjacentSlices`.

    ``num_slices`` may differ per key, e.g. ``keys=("image", "label"), num_slices=(3, 1)`` stacks 3 neighbours of
    the image but keeps only the centre slice of the label, which becomes ``(S, 1, H, W)``. All keys use the
    same ``axis`` and ``slices``.

    Args:
        keys: keys of the corresponding items to be transformed. See also: monai.transforms.MapTransform
        num_slices: neighbourhood size per key (one int for all keys, or one per key), odd and >= 1.
            Defaults to 3.
        axis: spatial axis to slice along, channel excluded. Defaults to -1.
        slices: centre slice indices to produce; all slices when None.
        allow_missing_keys: don't raise exception if key is missing.

    Raises:
        ValueError: when a sequence ``num_slices`` does not have one entry per key.
    """

    backend = StackAdjacentSlices.backend

    def __init__(self, keys: KeysCollection, num_slices: int | Sequence[int] = 3, axis: int = -1,
                 slices: Sequence[int] | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        per_key = _per_key(num_slices, self.keys, "num_slices")
        self.stackers = tuple(StackAdjacentSlices(k, axis=axis, slices=slices) for k in per_key)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, stacker in self.key_iterator(d, self.stackers):
            d[key] = stacker(d[key])
        return d


class UnstackSlicesd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`UnstackSlices`.

    Args:
        keys: keys of the corresponding items to be transformed. See also: monai.transforms.MapTransform
        axis: spatial axis the slices were taken along, channel excluded. Defaults to -1.
        num_slices: channels per group in the input, one int for all keys or one per key; the centre channel of
            each group is kept. Defaults to 1.
        slices: volume positions of the input slices; every slice in order when None.
        num_total: depth of the output volume; required with ``slices``.
        fill_value: value of the slices not listed in ``slices``. Defaults to 0.
        allow_missing_keys: don't raise exception if key is missing.

    Raises:
        ValueError: when a sequence ``num_slices`` does not have one entry per key.
    """

    backend = UnstackSlices.backend

    def __init__(self, keys: KeysCollection, axis: int = -1, num_slices: int | Sequence[int] = 1,
                 slices: Sequence[int] | None = None, num_total: int | None = None, fill_value: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        per_key = _per_key(num_slices, self.keys, "num_slices")
        self.unstackers = tuple(UnstackSlices(axis, k, slices, num_total, fill_value) for k in per_key)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, unstacker in self.key_iterator(d, self.unstackers):
            d[key] = unstacker(d[key])
        return d


StackAdjacentSlicesD = StackAdjacentSlicesDict = StackAdjacentSlicesd
UnstackSlicesD = UnstackSlicesDict = UnstackSlicesd
