"""Label-free naming of unsupervised classes: the class whose region is brightest in one image channel.

An unsupervised segmentation (e.g. a network trained with the Mumford–Shah loss alone) returns ``N`` classes in no
particular order. For targets that are bright in one channel — brain tumour with its oedema on FLAIR, lesions that
take up contrast — the class with the highest mean intensity is the object. :class:`BrightestClass` picks it per
image, from the image and the class probabilities only (no label), and returns a two-channel one-hot mask
(background, object) so the usual metrics apply.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["BrightestClass", "BrightestClassd", "BrightestClassD", "BrightestClassDict"]


class BrightestClass(Transform):
    """One-hot ``(2, *spatial)`` mask of the class whose mean intensity in ``image[channel]`` is highest.

    The mean of class ``n`` is ``Σ_r y_n(r) x(r) / Σ_r y_n(r)`` with ``y`` the class probabilities (softmax of the
    first ``num_classes`` channels of ``pred`` when ``softmax=True``; further channels, e.g. a bias field, are
    ignored). Only voxels inside ``mask`` count when a mask is given (e.g. the brain). The object is then
    ``argmax_n y_n == n*`` with ``n*`` the brightest class.

    Args:
        channel: image channel that defines "bright" (e.g. the centre FLAIR channel).
        num_classes: number of class channels at the front of ``pred``; None takes all channels.
        softmax: apply a softmax over the class channels first (``pred`` holds logits).

    Raises:
        ValueError: invalid ``channel``/``num_classes``, or ``pred`` and ``image`` of different spatial shapes.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel: int = 0, num_classes: int | None = None, softmax: bool = True) -> None:
        if channel < 0:
            raise ValueError(f"channel must be >= 0, got {channel}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.channel = int(channel)
        self.num_classes = num_classes
        self.softmax = bool(softmax)

    def brightest(self, pred: NdarrayOrTensor, image: NdarrayOrTensor,
                  mask: NdarrayOrTensor | None = None) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n*, class means, class probabilities)`` for one image."""
        p = convert_to_tensor(pred, track_meta=False, dtype=torch.float32)
        x = convert_to_tensor(image, track_meta=False, dtype=torch.float32)
        n = p.shape[0] if self.num_classes is None else self.num_classes
        if p.shape[0] < n:
            raise ValueError(f"pred has {p.shape[0]} channels, fewer than num_classes={n}")
        if self.channel >= x.shape[0]:
            raise ValueError(f"channel {self.channel} is out of range for an image with {x.shape[0]} channels")
        if p.shape[1:] != x.shape[1:]:
            raise ValueError(f"pred {tuple(p.shape)} and image {tuple(x.shape)} differ in spatial shape")
        y = torch.softmax(p[:n], dim=0) if self.softmax else p[:n]
        weights = y
        if mask is not None:
            m = convert_to_tensor(mask, track_meta=False, dtype=torch.float32).reshape(x.shape[1:]) > 0.5
            weights = y * m
        mass = weights.reshape(n, -1).sum(dim=1)
        means = (weights.reshape(n, -1) * x[self.channel].reshape(1, -1)).sum(dim=1) / mass.clamp_min(1e-8)
        means = torch.where(mass > 0, means, torch.full_like(means, -torch.inf))
        return int(torch.argmax(means)), means, y

    def __call__(self, pred: NdarrayOrTensor, image: NdarrayOrTensor,
                 mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        best, _, y = self.brightest(pred, image, mask)
        obj = (torch.argmax(y, dim=0) == best).to(torch.float32)
        return convert_to_dst_type(torch.stack([1.0 - obj, obj]), dst=pred)[0]


class BrightestClassd(MapTransform):
    """Dictionary-based wrapper of :py:class:`BrightestClass`: replaces ``keys`` (predictions) by the one-hot mask.

    Args:
        keys: keys of the class predictions.
        image_key: key of the image that defines "bright".
        channel, num_classes, softmax: see :py:class:`BrightestClass`.
        mask_key: optional key of a mask restricting where the class means are taken.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = BrightestClass.backend

    def __init__(self, keys: KeysCollection, image_key: str = "image", channel: int = 0,
                 num_classes: int | None = None, softmax: bool = True, mask_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.mask_key = mask_key
        self.transform = BrightestClass(channel, num_classes, softmax)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"image_key '{self.image_key}' is not in the data (keys: {list(d)})")
        mask = d[self.mask_key] if self.mask_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.image_key], mask)
        return d


BrightestClassD = BrightestClassDict = BrightestClassd
