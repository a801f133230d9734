"""
Intensity transforms for CT images in Hounsfield units (HU).

:py:class:`HUWindow` applies a fixed HU window with MONAI's :py:class:`monai.transforms.ScaleIntensityRange` and,
before doing so, refuses images that are plainly not in Hounsfield units (already normalised intensities, values
outside any CT range, raw DICOM stored values without the rescale intercept). :py:class:`HUWindowd` is its
dictionary twin.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from monai.utils import PostFix
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "LITS_WINDOW",
    "check_hounsfield",
    "HUWindow",
    "HUWindowd",
    "HUWindowD",
    "HUWindowDict",
]

#: Abdominal (liver) window used for LiTS: level 76 HU, width 400 HU, as ``(a_min, a_max)``.
LITS_WINDOW: tuple[float, float] = (-124.0, 276.0)

# Plausibility bounds of the HU check. CT scanners write padding outside the field of view as -3024, -2048 or
# -1024 and extended-scale reconstructions reach ~30000+ HU in metal, so anything beyond these is not CT in HU.
_HU_FLOOR = -3100.0
_HU_CEILING = 40000.0
# A value range entirely inside [-_NORMALISED_BOUND, _NORMALISED_BOUND] means [0, 1]-scaled or z-scored input.
_NORMALISED_BOUND = 2.0
# Unsigned 12-bit stored values put air at 0 and water near 1024: all values >= 0 with a median above this.
_STORED_MEDIAN = 500.0
# The median is taken on a regular subsample of at most this many voxels (min and max are exact).
_MEDIAN_SAMPLES = 2**20


def _image_statistics(img: torch.Tensor) -> tuple[float, float, float]:
    """Return ``(min, max, median)`` of ``img``; the median is estimated on a regular subsample."""
    flat = img.reshape(-1) if img.is_floating_point() else img.reshape(-1).to(torch.int64)  # e.g. no uint16 min
    step = max(1, -(-flat.numel() // _MEDIAN_SAMPLES))  # ceil: at most _MEDIAN_SAMPLES voxels
    median = flat[::step].to(torch.float64).median()
    return float(flat.min()), float(flat.max()), float(median)


def _describe_source(img: NdarrayOrTensor) -> str | None:
    """Return the file name stored in a MetaTensor's ``filename_or_obj`` meta entry, if any."""
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return f"file '{filename}'"
    return None


def check_hounsfield(img: NdarrayOrTensor, source: str | None = None) -> None:
    """
    Refuse an image that is plainly not a CT image in Hounsfield units.

    The check looks only at the intensity distribution and never requires air to be present, so liver-centred
    crops of soft tissue (values around -150..300 HU) pass. It raises for:

    - non-finite values (NaN or infinity);
    - values outside any CT range: ``min < -3100`` or ``max > 40000`` (scanner padding is -3024, -2048 or -1024 HU
      and extended-scale metal reaches ~30000 HU, both accepted);
    - already normalised intensities: the whole value range lies within [-2, 2] (e.g. [0, 1] scaling or z-scores);
    - stored DICOM values without the rescale intercept: ``min >= 0`` and the median above +500 (unsigned 12-bit
      storage puts air at 0 and water near 1024). A crop lying entirely within bone or contrast-filled vessels
      can trip this rule; skip the check for such data.

    A constant image is not refused but triggers a warning: a single value cannot tell the units apart (a patch
    of pure air or water is valid HU), and windowing it yields a constant. Values outside the CT range are still
    refused when constant. An empty image is returned unchecked. Min and max are exact; the median is estimated on
    a regular subsample of at most 2**20 voxels, which keeps the check cheap on whole CT volumes.

    Args:
        img: channel-first image, numpy array, torch tensor or MetaTensor, any shape.
        source: description of where the image comes from, used in messages (e.g. ``"key 'image', file 'a.nii'"``).
            Defaults to the MetaTensor's ``filename_or_obj`` when available.

    Raises:
        ValueError: when the image is not in Hounsfield units; the message names the problem, the observed
            min/max/median and ``source``.
    """
    source = source or _describe_source(img)
    where = f" ({source})" if source else ""
    data = convert_to_tensor(img, track_meta=False)
    if data.numel() == 0:
        return
    lo, hi, median = _image_statistics(data)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min and max propagate NaN
        raise ValueError(f"image{where} contains NaN or infinite values; it is not a CT image in Hounsfield units.")
    if lo == hi and _HU_FLOOR <= lo <= _HU_CEILING:
        warnings.warn(
            f"image{where} is constant (value {lo:g}): cannot tell whether it is in Hounsfield units, "
            "and windowing it gives a constant image.",
            stacklevel=2,
        )
        return
    found = _hu_problem(lo, hi, median)
    if found is not None:
        problem, hint = found
        raise ValueError(
            f"image{where} is not in Hounsfield units: {problem} "
            f"(observed min={lo:g}, max={hi:g}, median={median:g}). {hint} Set check_hu=False to skip this check."
        )


def _hu_problem(lo: float, hi: float, median: float) -> tuple[str, str] | None:
    """Return ``(problem, hint)`` when min ``lo``, max ``hi`` and ``median`` rule out Hounsfield units, else None."""
    if lo < _HU_FLOOR or hi > _HU_CEILING:
        return (
            f"values lie outside any CT range [{_HU_FLOOR:g}, {_HU_CEILING:g}] HU",
            "Replace non-standard padding values before windowing.",
        )
    if -_NORMALISED_BOUND <= lo and hi <= _NORMALISED_BOUND:
        return (
            f"the whole value range lies within [{-_NORMALISED_BOUND:g}, {_NORMALISED_BOUND:g}], so it looks already "
            "normalised (e.g. [0, 1] or z-scores)",
            "Window the raw HU image before any normalisation.",
        )
    if lo >= 0 and median > _STORED_MEDIAN:
        return (
            "it looks like stored values without the rescale intercept (expected air ≈ -1000 HU)",
            "Apply DICOM RescaleSlope/RescaleIntercept when converting the scan.",
        )
    return None

class HUWindow(Transform):
    """
    Window a CT image given in Hounsfield units: map ``[a_min, a_max]`` HU linearly to ``[b_min, b_max]``.

    The scaling is MONAI's :py:class:`monai.transforms.ScaleIntensityRange`; this transform adds a plausibility
    check (``check_hu``, see :py:func:`check_hounsfield`) that refuses images which are plainly not in HU, so that
    a window is never silently applied to already normalised data or to raw DICOM stored values.
    The default window is :py:data:`LITS_WINDOW` (level 76 HU, width 400 HU) mapped to [0, 1].

    Inputs of any shape (channel-first) are accepted as numpy arrays, torch tensors or MetaTensors; like
    ``ScaleIntensityRange`` the output is a torch tensor: a MetaTensor keeping the input's metadata while MONAI's
    meta tracking is on (the default), a plain tensor otherwise.

    Args:
        a_min: lower window bound in HU, mapped to ``b_min``. Defaults to -124.
        a_max: upper window bound in HU, mapped to ``b_max``. Defaults to 276.
        b_min: output value of ``a_min``. Defaults to 0.
        b_max: output value of ``a_max``. Defaults to 1.
        clip: whether to clip the output to ``[b_min, b_max]``. Defaults to True.
        check_hu: whether to refuse images that are plainly not in Hounsfield units. Defaults to True.
        dtype: output data type; None keeps the input's. Defaults to float32.

    Raises:
        ValueError: when ``a_min >= a_max``.

    Example:
        >>> import torch
        >>> HUWindow()(torch.tensor([[-1000.0, -124.0, 76.0, 276.0, 1000.0]]))
        metatensor([[0.0000, 0.0000, 0.5000, 1.0000, 1.0000]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, a_min: float = LITS_WINDOW[0], a_max: float = LITS_WINDOW[1], b_min: float = 0.0,
                 b_max: float = 1.0, clip: bool = True, check_hu: bool = True, dtype: DtypeLike = np.float32) -> None:
        if not a_min < a_max:
            raise ValueError(f"HU window needs a_min < a_max, got a_min={a_min}, a_max={a_max}.")
        self.check_hu = check_hu
        self.scaler = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=clip, dtype=dtype)

    def __call__(self, img: NdarrayOrTensor, source: str | None = None) -> NdarrayOrTensor:
        """
        Check (when ``check_hu``) and window ``img``.

        Args:
            img: channel-first CT image in Hounsfield units.
            source: description of the image used in error messages; defaults to the MetaTensor's file name.

        Raises:
            ValueError: when ``check_hu`` is set and ``img`` is not in Hounsfield units.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if self.check_hu:
            check_hounsfield(img, source=source)
        return self.scaler(img)


class HUWindowd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`HUWindow`.

    Refusals name the key and, when available, the file name from the MetaTensor's ``filename_or_obj`` meta
    entry (or from the ``{key}_meta_dict`` entry written by ``LoadImaged(image_only=False)``).

    Args:
        keys: keys of the corresponding items to be transformed. See also: monai.transforms.MapTransform
        a_min, a_max, b_min, b_max, clip, check_hu, dtype: as :py:class:`HUWindow`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = HUWindow.backend

    def __init__(self, keys: KeysCollection, a_min: float = LITS_WINDOW[0], a_max: float = LITS_WINDOW[1],
                 b_min: float = 0.0, b_max: float = 1.0, clip: bool = True, check_hu: bool = True,
                 dtype: DtypeLike = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = HUWindow(a_min, a_max, b_min, b_max, clip=clip, check_hu=check_hu, dtype=dtype)

    def _source(self, data: Mapping[Hashable, NdarrayOrTensor], key: Hashable) -> str:
        """Describe ``data[key]`` for error messages: the key and, when known, the file name."""
        file = _describe_source(data[key])
        meta_dict = data.get(PostFix.meta(str(key)))
        if file is None and isinstance(meta_dict, Mapping) and meta_dict.get("filename_or_obj"):
            file = f"file '{meta_dict['filename_or_obj']}'"
        return f"key '{key}'" + (f", {file}" if file else "")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key], source=self._source(d, key))
        return d


HUWindowD = HUWindowDict = HUWindowd
