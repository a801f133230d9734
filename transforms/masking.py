"""
Restrict an image to a region given by a mask: voxels outside the (optionally dilated) mask get a fill value.

Used by the LiTS liver → lesion cascade, where the lesion network sees the CT only inside the liver (Kim & Ye,
IEEE TIP 2020, §IV-B2): :py:class:`RestrictToMask` takes the image and the mask as arguments,
:py:class:`RestrictToMaskd` reads the mask from another key of the same case (e.g. a predicted liver mask loaded
from file), so every case can bring its own region. The image keeps its shape, dtype and metadata (affine), so
masks computed from it still overlay the original scan.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import PostFix
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "mask_region",
    "RestrictToMask",
    "RestrictToMaskd",
    "RestrictToMaskD",
    "RestrictToMaskDict",
]

_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _check_dilation(dilation: int | Sequence[int]) -> int | tuple[int, ...]:
    """``dilation`` as an int or a tuple of ints, after checking every radius is an int >= 0."""
    scalar = isinstance(dilation, (int, np.integer)) and not isinstance(dilation, bool)
    try:
        values = (dilation,) if scalar else tuple(dilation)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise ValueError(f"dilation must be an int >= 0 or a sequence of them (one per spatial axis), got {dilation!r}")
    return int(values[0]) if scalar else tuple(int(v) for v in values)


def _per_axis(dilation: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """One dilation radius per spatial axis."""
    radius = _check_dilation(dilation)
    if isinstance(radius, int):
        return (radius,) * spatial_dims
    if len(radius) != spatial_dims:
        raise ValueError(f"dilation {radius} has {len(radius)} entries but the mask has {spatial_dims} spatial axes")
    return radius


def mask_region(mask: NdarrayOrTensor, dilation: int | Sequence[int] = 0) -> torch.Tensor:
    """
    The region of a channel-first mask: ``mask > 0``, dilated by a box of radius ``dilation`` voxels per axis.

    Any non-zero label counts as inside, so a label map such as a LiTS segmentation (1 liver, 2 lesion) gives the
    liver including its lesions. The dilation is a maximum filter of size ``2 r + 1`` along each spatial axis
    (``r = 0`` leaves that axis alone, e.g. ``(3, 3, 0)`` dilates in-plane only).

    Args:
        mask: channel-first mask ``(C, *spatial)`` with 1 to 3 spatial axes; numpy array, tensor or MetaTensor.
        dilation: radius in voxels, one int for all spatial axes or one per axis.

    Returns:
        A plain boolean tensor of the mask's shape.

    Raises:
        ValueError: for a mask without channel and spatial axes, more than 3 spatial axes or a bad ``dilation``.
    """
    region = convert_to_tensor(mask, track_meta=False) > 0
    spatial_dims = region.ndim - 1
    if spatial_dims not in _POOLS:
        raise ValueError(f"mask must be channel-first with 1 to 3 spatial axes, got shape {tuple(region.shape)}")
    radius = _per_axis(dilation, spatial_dims)
    if not any(radius):
        return region
    kernel = tuple(2 * r + 1 for r in radius)
    grown = _POOLS[spatial_dims](region.unsqueeze(0).float(), kernel_size=kernel, stride=1, padding=radius)
    return grown[0] > 0.5


class RestrictToMask(Transform):
    """
    Keep an image only inside a mask region; voxels outside get ``fill_value``.

    The region is ``mask > 0``, optionally dilated by ``dilation`` voxels (see :py:func:`mask_region`). The mask
    must have the image's spatial shape and either one channel (applied to every image channel) or as many
    channels as the image. Inputs may be numpy arrays, tensors or MetaTensors; like MONAI's intensity transforms the
    output is a torch tensor of the input's shape and dtype: a MetaTensor keeping the input's metadata (affine, file
    name) while MONAI's meta tracking is on (the default), a plain tensor otherwise.

    Args:
        dilation: box dilation radius of the mask in voxels, one int or one per spatial axis. Defaults to 0.
        fill_value: value of the voxels outside the region. Defaults to 0.

    Raises:
        ValueError: for a bad ``dilation``.

    Example:
        >>> import torch
        >>> RestrictToMask()(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[0, 1, 2, 0]]))
        metatensor([[0., 2., 3., 0.]])
        >>> RestrictToMask(dilation=1)(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[0, 0, 1, 0]]))
        metatensor([[0., 2., 3., 4.]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dilation: int | Sequence[int] = 0, fill_value: float = 0.0) -> None:
        self.dilation = _check_dilation(dilation)
        self.fill_value = float(fill_value)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor, source: str | None = None) -> NdarrayOrTensor:
        """
        Restrict ``img`` to the region of ``mask``.

        Args:
            img: channel-first image ``(C, *spatial)``.
            mask: channel-first mask ``(1 or C, *spatial)``; non-zero = inside.
            source: description of image and mask used in error messages (e.g. keys and file names).

        Raises:
            ValueError: when the mask's spatial shape differs from the image's, or its channels are neither 1 nor C.
        """
        where = f" ({source})" if source else ""
        data = convert_to_tensor(img, track_meta=get_track_meta())
        if tuple(mask.shape[1:]) != tuple(data.shape[1:]) or mask.shape[0] not in (1, data.shape[0]):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the image of shape {tuple(data.shape)}"
                             f"{where}: it needs the image's spatial shape and 1 or {data.shape[0]} channel(s)")
        region = mask_region(mask, self.dilation).to(data.device)
        if not bool(region.any()):
            warnings.warn(f"mask{where} is empty: the whole image is set to {self.fill_value:g}", stacklevel=2)
        out = data.masked_fill(~region.expand(data.shape), self.fill_value)
        return out


class RestrictToMaskd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`RestrictToMask`: restrict ``keys`` to the region of ``data[mask_key]``.

    The mask comes from the same case, e.g. a predicted liver mask loaded with ``LoadImaged`` next to the image, or
    the case's label map (any non-zero label is inside). Errors name the keys and, when known, the files.

    Args:
        keys: keys of the images to restrict. See also: monai.transforms.MapTransform
        mask_key: key of the channel-first mask.
        dilation: box dilation radius of the mask in voxels, one int or one per spatial axis. Defaults to 0.
        fill_value: value of the voxels outside the region. Defaults to 0.
        allow_missing_keys: don't raise exception if an image key is missing (the mask key is always required).

    Raises:
        KeyError: at call time, when the case has no ``mask_key``.
    """

    backend = RestrictToMask.backend

    def __init__(self, keys: KeysCollection, mask_key: Hashable, dilation: int | Sequence[int] = 0,
                 fill_value: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.restrict = RestrictToMask(dilation=dilation, fill_value=fill_value)

    def _describe(self, data: Mapping[Hashable, NdarrayOrTensor], key: Hashable) -> str:
        """``key 'k'`` plus the file name of ``data[key]`` when the metadata has one."""
        meta = getattr(data[key], "meta", None) or data.get(PostFix.meta(str(key)))
        name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        return f"key '{key}'" + (f", file '{name}'" if name else "")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"RestrictToMaskd: the case has no mask key '{self.mask_key}' (keys: {sorted(map(str, d))})")
        for key in self.key_iterator(d):
            source = f"image {self._describe(d, key)}; mask {self._describe(d, self.mask_key)}"
            d[key] = self.restrict(d[key], d[self.mask_key], source=source)
        return d


RestrictToMaskD = RestrictToMaskDict = RestrictToMaskd
