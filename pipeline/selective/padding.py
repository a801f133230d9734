"""Padding of 2D selective samples to a size the networks accept: the whole training set as one padded batch, and
the inferers that pad a network input and crop its output back."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.selective.samples import MAP_KEYS

__all__ = ["TrainingBatch", "PaddedInferer", "SliceStackInferer"]


class SliceStackInferer:
    """Apply a 2D network slice by slice to ``(B, C, H, W, D)`` inputs, padding each as :class:`PaddedInferer` does."""

    def __init__(self, divisible: int = 16) -> None:
        self.padded = PaddedInferer(divisible)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor]) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W, D) inputs, got shape {tuple(inputs.shape)}")
        return torch.stack([self.padded(inputs[..., z], network) for z in range(inputs.shape[-1])], dim=-1)


def pad_amounts(spatial: Sequence[int], target: Sequence[int]) -> list[int]:
    pads: list[int] = []
    for size, want in zip(reversed(list(spatial)), reversed(list(target))):
        extra = int(want) - int(size)
        pads += [extra // 2, extra - extra // 2]
    return pads


def divisible_shape(shapes: Sequence[Sequence[int]], divisible: int) -> tuple[int, ...]:
    biggest = np.max(np.asarray(shapes), axis=0)
    return tuple(int(math.ceil(s / divisible) * divisible) for s in biggest)


_PAD_VALUES = {"polygon": 0.0, "label": 0.0, "geodesic": 1.0, "edge": 1.0}


def pad_map(key: str, t: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    pads = pad_amounts(t.shape[-2:], target)
    if not any(pads):
        return t
    if key in ("intensity", "input"):
        return F.pad(t[None], pads, mode="replicate")[0]
    if key == "fitting":  # outside the image counts as background: the largest fitting cost
        return F.pad(t, pads, value=float(t.max()))
    return F.pad(t, pads, value=_PAD_VALUES.get(key, 0.0))


class PaddedInferer:
    """Run a network on inputs padded (replicate) to a size divisible by ``divisible``, and crop the output back."""

    def __init__(self, divisible: int = 16) -> None:
        self.divisible = int(divisible)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        target = divisible_shape([spatial], self.divisible)
        pads = pad_amounts(spatial, target)
        x = F.pad(inputs, pads, mode="replicate") if any(pads) else inputs
        out = network(x, *args, **kwargs)
        if any(pads):
            index = [slice(None), slice(None)]
            for axis, size in enumerate(spatial):
                lo = pads[2 * (len(spatial) - 1 - axis)]
                index.append(slice(lo, lo + size))
            out = out[tuple(index)]
        return out


class TrainingBatch:
    """The whole training set as one batch (one optimiser step per epoch, as in the selective training).

    The samples (from :func:`loader_samples`) are padded to a common size divisible by ``divisible``: intensity
    by replication, ``D_G`` and ``g`` with 1, ``Φ`` with its maximum, masks with 0, so the padding is background
    for every term of the loss. Iterating yields the batch once.
    """

    def __init__(self, samples: Sequence[Mapping[str, Any]], divisible: int = 16) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.shape = divisible_shape([s["input"].shape[-2:] for s in samples], divisible)
        keys = ("input",) + MAP_KEYS
        self.batch = {k: torch.stack([pad_map(k, s[k], self.shape) for s in samples]) for k in keys}
        self.batch["index"] = torch.as_tensor([int(s["index"]) for s in samples])
        self.batch["case"] = [s["case"] for s in samples]

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield self.batch
