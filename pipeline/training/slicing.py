"""2.5D training samples: :class:`SliceDataset` turns a datalist of volumes into 2D samples of ``k`` adjacent
slices per input channel (the centre slice's label as target), with the per-case ``labelled`` flag carried along.

The way back, a 2D network run over every slice of a volume, is
:class:`pipeline.inference.inferers.AdjacentSliceInferer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from torch.utils.data import Dataset

from transforms.slices import adjacent_slice_indices, plain_tensor

logger = logging.getLogger(__name__)

__all__ = ["SliceDataset", "case_name"]


class SliceDataset(Dataset):
    """2D samples of adjacent slices drawn from cached 3D volumes.

    Volumes are loaded once through ``volume_transform`` (e.g. load, orient, HU window) and kept in memory as
    channel-first ``(C, H, W, D)`` tensors; each item is one slice position ``z`` of one volume::

        {"image": (C·k, H, W), "label": (1, H, W), "labelled": bool, "case": str, "slice": int}

    with channels ordered channel-major (``c0@z-1, c0@z, c0@z+1, c1@z-1, ...``) and edge slices replicated, as
    :class:`transforms.StackAdjacentSlices` does. ``slice_transform`` (2D augmentation) is applied per item.

    Args:
        data: datalist of dicts with ``image_key`` and (optionally) ``label_key`` and ``labelled_key``.
        volume_transform: transform applied once per volume (cached).
        num_slices: ``k``, odd number of adjacent slices per input channel.
        slice_transform: optional transform applied to each 2D sample (e.g. random flips/rotations).
        image_key, label_key, labelled_key: dict keys.
        default_labelled: labelled flag for cases whose dict has no ``labelled_key``.
        slice_stride: keep every ``slice_stride``-th slice position (1 = all).
        cache_num_workers: workers for loading the volumes.
        progress: show a progress bar while caching the volumes.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], volume_transform: Callable | None, num_slices: int = 3,
                 slice_transform: Callable | None = None, image_key: str = "image", label_key: str = "label",
                 labelled_key: str = "labelled", default_labelled: bool = True, slice_stride: int = 1,
                 cache_num_workers: int = 0, progress: bool = True) -> None:
        if num_slices < 1 or num_slices % 2 == 0:
            raise ValueError(f"num_slices must be a positive odd number, got {num_slices}")
        if slice_stride < 1:
            raise ValueError(f"slice_stride must be >= 1, got {slice_stride}")
        if len(data) == 0:
            raise ValueError("SliceDataset got an empty datalist")
        self.num_slices = num_slices
        self.slice_transform = slice_transform
        self.image_key, self.label_key, self.labelled_key = image_key, label_key, labelled_key
        self.volumes = CacheDataset(
            list(data), transform=volume_transform, cache_rate=1.0, num_workers=cache_num_workers, progress=progress
        )
        self.index: list[tuple[int, int]] = []
        self.labelled: list[bool] = []
        self.cases: list[str] = []
        for i, item in enumerate(data):
            vol = self.volumes[i]
            image = vol[image_key]
            if image.ndim != 4:
                raise ValueError(
                    f"case {case_name(item, image_key)}: expected a channel-first 3D image (C, H, W, D) after the "
                    f"volume transform, got shape {tuple(image.shape)}"
                )
            depth = int(image.shape[-1])
            self.index.extend((i, z) for z in range(0, depth, slice_stride))
            self.labelled.append(bool(item.get(labelled_key, default_labelled)))
            self.cases.append(case_name(item, image_key))
        logger.info(
            "SliceDataset: %d volumes (%d labelled), %d slice samples", len(data), sum(self.labelled), len(self.index)
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        vol_idx, z = self.index[idx]
        vol = self.volumes[vol_idx]
        image = plain_tensor(vol[self.image_key])
        depth = int(image.shape[-1])
        zs = torch.as_tensor(adjacent_slice_indices(depth, self.num_slices, [z])[0], dtype=torch.long)
        stacked = image.index_select(-1, zs).permute(0, 3, 1, 2).reshape(-1, *image.shape[1:3])
        sample: dict[str, Any] = {
            self.image_key: stacked.float().contiguous(),
            self.labelled_key: self.labelled[vol_idx],
            "case": self.cases[vol_idx],
            "slice": z,
        }
        if self.label_key in vol and vol[self.label_key] is not None:
            label = plain_tensor(vol[self.label_key])
            sample[self.label_key] = label[..., z].float().contiguous()
        else:
            sample[self.label_key] = torch.zeros((1, *image.shape[1:3]))
            sample[self.labelled_key] = False
        if self.slice_transform is not None:
            sample = self.slice_transform(sample)
        return sample

    def labelled_fraction(self) -> float:
        """Fraction of the samples that come from labelled cases."""
        return float(np.mean([self.labelled[v] for v, _ in self.index])) if self.index else 0.0


def case_name(item: Mapping[str, Any], image_key: str) -> str:
    """The case name of a datalist item: its ``case``, else its image path, else ``?``."""
    if "case" in item:
        return str(item["case"])
    value = item.get(image_key, "?")
    return str(value) if isinstance(value, str) else "?"
