"""
Multi-modal MR inputs for 2.5D networks: per-modality normalisation inside the brain and modality-major stacking of
adjacent slices (BraTS: 4 modalities x 3 slices = 12 channels, as in Kim & Ye 2020).

:py:class:`NormalizeModalities` z-scores each modality over the brain; :py:class:`StackModalitySlices` turns the
``(M, H, W, D)`` volume (one channel per modality) into the ``(M*k, H, W)`` input of one centre slice, and
:py:func:`complete_tumour_slice` gives that slice's target (complete tumour, ``label > 0``). The dictionary twins
:py:class:`NormalizeModalitiesd` and :py:class:`StackModalitySlicesd` do the same on a data dict.

Normalisation. MR intensities have no physical unit: their scale changes with scanner, protocol and gain, so there is
no fixed window as in CT. Each modality is therefore standardised on its own, ``(x - mean) / std`` with mean and
standard deviation taken over the brain only: skull-stripped BraTS volumes are mostly zero background, which would
otherwise dominate both statistics. This is the normalisation of the real BraTS sample in the shared data (the
DeepMedic ``*_subtrMeanDivStd`` files) and of common BraTS pipelines (MONAI's ``NormalizeIntensity(nonzero=True,
channel_wise=True)``, nnU-Net's MR scheme), so synthetic and real inputs share one scale. Such already z-scored
inputs are passed with ``already_normalized=True`` and only clipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

from .slices import StackAdjacentSlices, check_num_slices, spatial_axis

__all__ = [
    "BRATS_MODALITIES",
    "complete_tumour_slice",
    "modality_channel_names",
    "NormalizeModalities",
    "NormalizeModalitiesd",
    "NormalizeModalitiesD",
    "NormalizeModalitiesDict",
    "StackModalitySlices",
    "StackModalitySlicesd",
    "StackModalitySlicesD",
    "StackModalitySlicesDict",
]

#: The four BraTS modalities in their usual order.
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


def _check_modalities(modalities: Sequence[str] | None) -> tuple[str, ...] | None:
    """``modalities`` as a tuple of distinct names (None stays None: any number of channels)."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        raise TypeError(f"modalities must be a sequence of names such as ('flair', 't1ce'), got the string "
                        f"{modalities!r}.")
    names = tuple(str(m) for m in modalities)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modalities must be a non-empty sequence of distinct names, got {list(modalities)}.")
    return names


def _check_count(num_channels: int, modalities: tuple[str, ...] | None, what: str = "input") -> None:
    """Raise when the channel count differs from the number of modalities."""
    if modalities is not None and num_channels != len(modalities):
        raise ValueError(f"{what} has {num_channels} channel(s) but {len(modalities)} modalities are expected "
                         f"({', '.join(modalities)}): give one channel per modality, in that order.")


def _as_modality_volume(img: NdarrayOrTensor | Sequence[NdarrayOrTensor]) -> NdarrayOrTensor:
    """An ``(M, H, W, D)`` array from itself or from a list of M volumes shaped ``(H, W, D)`` or ``(1, H, W, D)``."""
    if isinstance(img, (np.ndarray, torch.Tensor)):
        return img
    volumes = list(img)
    if not volumes:
        raise ValueError("got an empty list of modality volumes.")
    volumes = [v[0] if v.ndim == 4 and v.shape[0] == 1 else v for v in volumes]
    shapes = {tuple(v.shape) for v in volumes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"modality volumes must all be (H, W, D) or (1, H, W, D) of one shape, got "
                         f"{[tuple(v.shape) for v in img]}.")
    if any(isinstance(v, torch.Tensor) for v in volumes):
        first = next(v for v in volumes if isinstance(v, torch.Tensor))
        return torch.stack([torch.as_tensor(v, device=first.device) for v in volumes])
    return np.stack([np.asarray(v) for v in volumes])


def modality_channel_names(modalities: Sequence[str], num_slices: int = 3) -> list[str]:
    """
    Names of the channels made by :py:class:`StackModalitySlices`, in order (modality-major).

    Example:
        >>> modality_channel_names(("flair", "t1ce"))
        ['flair@z-1', 'flair@z', 'flair@z+1', 't1ce@z-1', 't1ce@z', 't1ce@z+1']
    """
    k = check_num_slices(num_slices)
    offsets = [o - k // 2 for o in range(k)]
    return [f"{m}@z{o:+d}" if o else f"{m}@z" for m in modalities for o in offsets]


def _label_volume(label: NdarrayOrTensor) -> NdarrayOrTensor:
    """A label volume as ``(1, H, W, D)`` (plain tensor for a MetaTensor)."""
    if isinstance(label, MetaTensor):
        label = label.as_tensor()
    if label.ndim == 3:
        label = label[None]
    if label.ndim != 4 or label.shape[0] != 1:
        raise ValueError(f"label must be (1, H, W, D) or (H, W, D), got shape {tuple(label.shape)}.")
    return label


def complete_tumour_slice(label: NdarrayOrTensor, index: int, axis: int = -1) -> NdarrayOrTensor:
    """
    Complete-tumour mask (``label > 0``) of one slice of a label volume, shape ``(1, H, W)`` (for ``axis=-1``).

    Every BraTS label convention counts: 1, 2, 3, 4 (necrosis, oedema, non-enhancing, enhancing) all belong to the
    complete tumour (whole tumour).

    Args:
        label: label volume, ``(1, H, W, D)`` or ``(H, W, D)``.
        index: slice index along ``axis`` (negative counts from the end).
        axis: spatial axis, channel excluded (as in :py:class:`StackModalitySlices`). Defaults to -1.

    Returns:
        A float32 array / tensor of 0 and 1 of the input's kind (a plain tensor for a MetaTensor).

    Raises:
        ValueError: when ``label`` is not ``(1, H, W, D)`` or ``(H, W, D)`` or ``index`` is outside the volume.
    """
    label = _label_volume(label)
    spatial = spatial_axis(axis)
    depth = label.shape[spatial + 1]
    if not -depth <= int(index) < depth:
        raise ValueError(f"slice index {index} is outside the volume (depth {depth} along axis {axis}).")
    centre = label.select(spatial + 1, int(index)) if isinstance(label, torch.Tensor) else np.take(
        label, int(index), axis=spatial + 1)
    mask = centre > 0
    return mask.to(torch.float32) if isinstance(mask, torch.Tensor) else mask.astype(np.float32)


class StackModalitySlices(Transform):
    """
    2.5D input of one centre slice from a multi-modal volume: ``k`` adjacent slices of every modality.

    The input is ``(M, H, W, D)``, one channel per modality (as ``LoadImaged`` gives for a BraTS datalist entry whose
    ``"image"`` lists one file per modality), or a list of M volumes ``(H, W, D)`` / ``(1, H, W, D)``. For a centre
    slice ``z`` along D (``axis=-1``) the output is ``(M*k, H, W)`` in **modality-major** order:

        ``[m0@z-1, m0@z, m0@z+1, m1@z-1, m1@z, m1@z+1, ...]``  (k = 3; see :py:func:`modality_channel_names`)

    so 4 BraTS modalities give 12 channels and FLAIR + T1ce give 6. Neighbours beyond the volume are replaced by the
    edge slice (``z-1`` of ``z = 0`` is slice 0, ``z+1`` of ``z = D-1`` is slice ``D-1``). Without a centre slice
    (``index=None`` here and at construction) every slice is stacked, giving ``(D, M*k, H, W)`` exactly as
    :py:class:`transforms.StackAdjacentSlices` does.

    Numpy input gives a numpy array, torch input a tensor of the same dtype and device; a MetaTensor's 3D geometry
    does not describe a 2D sample, so its metadata is dropped (plain tensor), as in ``StackAdjacentSlices``.

    Args:
        modalities: names of the M input channels, in order (default the 4 BraTS modalities); the channel count is
            checked against it. None accepts any number of channels.
        num_slices: slices ``k`` per modality, odd and >= 1. Defaults to 3.
        axis: spatial axis to slice along, channel excluded (0, 1, 2 or -3..-1). Defaults to -1.
        index: default centre slice (negative counts from the end); None stacks every slice.

    Raises:
        ValueError: for an even or non-positive ``num_slices``, an invalid ``axis`` or repeated modality names.

    Example:
        >>> import torch
        >>> StackModalitySlices(("flair", "t1ce"))(torch.zeros(2, 8, 8, 5), index=0).shape
        torch.Size([6, 8, 8])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, modalities: Sequence[str] | None = BRATS_MODALITIES, num_slices: int = 3, axis: int = -1,
                 index: int | None = None) -> None:
        self.modalities = _check_modalities(modalities)
        self.num_slices = check_num_slices(num_slices)
        self.axis = spatial_axis(axis)
        self.index = None if index is None else int(index)

    @property
    def channel_names(self) -> list[str] | None:
        """Output channel names (None when the modalities are not named)."""
        return None if self.modalities is None else modality_channel_names(self.modalities, self.num_slices)

    def __call__(self, img: NdarrayOrTensor | Sequence[NdarrayOrTensor], index: int | None = None) -> NdarrayOrTensor:
        """
        Stack the neighbours of centre slice ``index`` of every modality.

        Args:
            img: ``(M, H, W, D)`` volume or a list of M modality volumes.
            index: centre slice overriding the one given at construction; None (both) stacks every slice.

        Raises:
            ValueError: when the input is not ``(M, H, W, D)``, M differs from the number of modalities, or
                ``index`` is outside the volume.
        """
        volume = _as_modality_volume(img)
        if volume.ndim != 4:
            raise ValueError(f"expected a modality-first 3D volume (M, H, W, D), got shape {tuple(volume.shape)}.")
        _check_count(volume.shape[0], self.modalities)
        index = self.index if index is None else int(index)
        stacker = StackAdjacentSlices(self.num_slices, axis=self.axis, slices=None if index is None else [index])
        stacked = stacker(volume)
        return stacked if index is None else stacked[0]


class NormalizeModalities(Transform):
    """
    Per-modality z-score inside the brain: ``(x_m - mean_m) / std_m`` over the brain-mask voxels of each channel.

    The brain mask is the given ``mask`` (``> 0.5``, so the DeepMedic float mask of values ~0.99999997 works) or, by
    default, the voxels where **any** modality is > 0 (skull-stripped BraTS volumes are exactly 0 outside the brain).
    Voxels outside the mask are set to ``background`` (0, the brain mean). Statistics use the population standard
    deviation in float64. See the module docstring for why this normalisation is used.

    With ``already_normalized=True`` the input is taken to be z-scored already (like the DeepMedic copy of BraTS
    2015 in the shared data): values are left untouched except for clipping, the mask is not used and the
    background keeps its value (about -3.6 in that sample: the z-score of 0).

    Args:
        modalities: names of the M channels, in order (default the 4 BraTS modalities); the channel count is checked
            against it. None accepts any number of channels.
        already_normalized: only clip (input already z-scored). Defaults to False.
        clip: clip the output to ``[-clip, clip]`` (a number) or ``[lo, hi]`` (a pair); None disables it. The default
            10 keeps bright tumour (enhancing rim up to ~9-14 standard deviations in the real sample is cut only at
            its extreme voxels) and removes outliers.
        background: value written outside the brain mask in the z-score path. Defaults to 0.
        dtype: output dtype. Defaults to float32.

    Raises:
        ValueError: for an invalid ``clip`` or repeated modality names.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((2, 4, 4, 1), np.float32); x[:, 1:3, 1:3] = [[[[1.0]], [[3.0]]], [[[2.0]], [[4.0]]]]
        >>> NormalizeModalities(modalities=None)(x)[0, 1:3, 1:3, 0]
        array([[-1., -1.],
               [ 1.,  1.]], dtype=float32)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, modalities: Sequence[str] | None = BRATS_MODALITIES, already_normalized: bool = False,
                 clip: float | Sequence[float] | None = 10.0, background: float = 0.0,
                 dtype: torch.dtype | np.dtype | type = np.float32) -> None:
        self.modalities = _check_modalities(modalities)
        self.already_normalized = bool(already_normalized)
        self.clip = self._check_clip(clip)
        self.background = float(background)
        self.dtype = dtype

    @staticmethod
    def _check_clip(clip: float | Sequence[float] | None) -> tuple[float, float] | None:
        """``clip`` as ``(lo, hi)`` with ``lo < hi``, or None."""
        if clip is None:
            return None
        bounds = (-abs(float(clip)), abs(float(clip))) if np.isscalar(clip) else tuple(float(c) for c in clip)
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise ValueError(f"clip must be a positive number or a pair (lo, hi) with lo < hi, got {clip!r}.")
        return bounds[0], bounds[1]

    def _brain_mask(self, x: torch.Tensor, mask: NdarrayOrTensor | None) -> torch.Tensor:
        """Boolean ``spatial`` mask: ``mask > 0.5`` or any channel > 0."""
        if mask is None:
            return (x > 0).any(dim=0)
        m = convert_to_tensor(mask, track_meta=False, device=x.device)
        if m.ndim == x.ndim and m.shape[0] == 1:
            m = m[0]
        if tuple(m.shape) != tuple(x.shape[1:]):
            raise ValueError(f"mask must have the image's spatial shape {tuple(x.shape[1:])} (optionally with one "
                             f"leading channel), got shape {tuple(m.shape)}.")
        return m > 0.5

    def __call__(self, img: NdarrayOrTensor | Sequence[NdarrayOrTensor], mask: NdarrayOrTensor | None = None,
                 source: str | None = None) -> NdarrayOrTensor:
        """
        Normalise ``img`` (``(M, *spatial)`` or a list of M modality volumes).

        Args:
            img: channel-first multi-modal image, one channel per modality.
            mask: brain mask of the spatial shape (optionally ``(1, *spatial)``); default: any modality > 0.
            source: description of the image for messages (e.g. the key and file name).

        Raises:
            ValueError: when the channel count differs from the number of modalities or the mask shape does not fit.
        """
        volume = _as_modality_volume(img)
        where = f" ({source})" if source else ""
        _check_count(volume.shape[0], self.modalities, f"image{where}")
        x = convert_to_tensor(volume, track_meta=False, dtype=torch.float32)
        if not self.already_normalized:
            x = self._zscore(x, self._brain_mask(x, mask), where)
        if self.clip is not None:
            x = x.clamp(self.clip[0], self.clip[1])
        return convert_to_dst_type(x, dst=volume, dtype=self.dtype)[0]

    def _zscore(self, x: torch.Tensor, brain: torch.Tensor, where: str) -> torch.Tensor:
        """Per-channel z-score over ``brain``; ``background`` elsewhere."""
        out = torch.full_like(x, self.background)
        if not bool(brain.any()):
            warnings.warn(f"image{where} has an empty brain mask: every voxel is set to {self.background:g}.",
                          stacklevel=3)
            return out
        for m in range(x.shape[0]):
            values = x[m][brain].to(torch.float64)
            mean, std = values.mean(), values.std(unbiased=False)
            if float(std) == 0.0:
                name = self.modalities[m] if self.modalities else f"channel {m}"
                warnings.warn(f"image{where}: {name} is constant inside the brain mask; only its mean is removed.",
                              stacklevel=3)
                std = torch.ones_like(std)
            out[m][brain] = ((values - mean) / std).to(x.dtype)
        return out


class StackModalitySlicesd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`StackModalitySlices`, with the centre slice's target.

    The centre slice is read from ``data[slice_key]`` when ``slice_key`` is given (e.g. a datalist expanded to one
    entry per slice), else it is ``index``; when both are None every slice is stacked. With ``label_key``, the
    complete-tumour mask of the centre slice(s) (``label > 0``, see :py:func:`complete_tumour_slice`) is written to
    ``target_key``: ``(1, H, W)`` for one slice, ``(D, 1, H, W)`` for all.

    Args:
        keys: keys of the modality volumes ``(M, H, W, D)`` (or lists of M volumes). See also:
            monai.transforms.MapTransform
        modalities: names of the M channels, in order. Defaults to the 4 BraTS modalities.
        num_slices: slices per modality, odd and >= 1. Defaults to 3.
        axis: spatial axis to slice along, channel excluded. Defaults to -1.
        index: fixed centre slice; None with no ``slice_key`` stacks every slice.
        slice_key: key holding the centre slice index per sample; takes precedence over ``index``.
        label_key: key of the label volume ``(1, H, W, D)`` or ``(H, W, D)``; None makes no target.
        target_key: key the target is written to. Defaults to ``label_key`` (replacing the volume).
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = StackModalitySlices.backend

    def __init__(self, keys: KeysCollection, modalities: Sequence[str] | None = BRATS_MODALITIES,
                 num_slices: int = 3, axis: int = -1, index: int | None = None, slice_key: str | None = None,
                 label_key: str | None = None, target_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = StackModalitySlices(modalities, num_slices, axis, index)
        self.slice_key = slice_key
        self.label_key = label_key
        self.target_key = target_key if target_key is not None else label_key

    def _index(self, d: Mapping[Hashable, object]) -> int | None:
        """Centre slice of this sample."""
        if self.slice_key is None:
            return self.stacker.index
        if self.slice_key not in d:
            raise KeyError(f"slice_key '{self.slice_key}' is not in the data (keys: {list(d)}).")
        value = d[self.slice_key]
        return int(value.item() if hasattr(value, "item") else value)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        index = self._index(d)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key], index=index)
        if self.label_key is not None and (self.label_key in d or not self.allow_missing_keys):
            label = d[self.label_key]
            if index is not None:
                d[self.target_key] = complete_tumour_slice(label, index, self.stacker.axis)
            else:
                depth = _label_volume(label).shape[self.stacker.axis + 1]
                slices = [complete_tumour_slice(label, z, self.stacker.axis) for z in range(depth)]
                d[self.target_key] = torch.stack(slices) if isinstance(slices[0], torch.Tensor) else np.stack(slices)
        return d


class NormalizeModalitiesd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`NormalizeModalities`.

    Args:
        keys: keys of the multi-modal images. See also: monai.transforms.MapTransform
        modalities: names of the M channels, in order. Defaults to the 4 BraTS modalities.
        mask_key: key of a brain mask (e.g. the DeepMedic ``"mask"`` from :func:`pipeline.io.layouts.index_brats`);
            None uses "any modality > 0".
        already_normalized: only clip (input already z-scored). Defaults to False.
        clip: clip bound(s), see :py:class:`NormalizeModalities`. Defaults to 10.
        background: value outside the mask in the z-score path. Defaults to 0.
        dtype: output dtype. Defaults to float32.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = NormalizeModalities.backend

    def __init__(self, keys: KeysCollection, modalities: Sequence[str] | None = BRATS_MODALITIES,
                 mask_key: str | None = None, already_normalized: bool = False,
                 clip: float | Sequence[float] | None = 10.0, background: float = 0.0,
                 dtype: torch.dtype | np.dtype | type = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.normalizer = NormalizeModalities(modalities, already_normalized, clip, background, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        mask = None
        if self.mask_key is not None and not self.normalizer.already_normalized:
            if self.mask_key not in d:
                raise KeyError(f"mask_key '{self.mask_key}' is not in the data (keys: {list(d)}).")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            source = f"key '{key}'"
            if isinstance(d[key], MetaTensor) and d[key].meta.get("filename_or_obj"):
                source += f", file '{d[key].meta['filename_or_obj']}'"
            d[key] = self.normalizer(d[key], mask=mask, source=source)
        return d


StackModalitySlicesD = StackModalitySlicesDict = StackModalitySlicesd
NormalizeModalitiesD = NormalizeModalitiesDict = NormalizeModalitiesd
