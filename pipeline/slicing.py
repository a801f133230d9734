"""2.5D data flow: volumes in, adjacent-slice samples for a 2D network out, and back.

* :class:`SliceDataset` turns a datalist of volumes into 2D samples of ``k`` adjacent slices per input channel
  (the centre slice's label as target), with the per-case ``labelled`` flag carried along.
* :class:`AdjacentSliceInferer` runs a 2D network over every slice of a volume and reassembles the per-slice
  outputs into a volume, so evaluation, metrics and saved masks work on whole volumes in their own geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, MetaTensor
from monai.inferers import Inferer
from torch.utils.data import Dataset

from transforms.slices import adjacent_slice_indices

logger = logging.getLogger(__name__)

__all__ = ["SliceDataset", "AdjacentSliceInferer"]


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

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        volume_transform: Callable | None,
        num_slices: int = 3,
        slice_transform: Callable | None = None,
        image_key: str = "image",
        label_key: str = "label",
        labelled_key: str = "labelled",
        default_labelled: bool = True,
        slice_stride: int = 1,
        cache_num_workers: int = 0,
        progress: bool = True,
    ) -> None:
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
                    f"case {_case_name(item, image_key)}: expected a channel-first 3D image (C, H, W, D) after the "
                    f"volume transform, got shape {tuple(image.shape)}"
                )
            depth = int(image.shape[-1])
            self.index.extend((i, z) for z in range(0, depth, slice_stride))
            self.labelled.append(bool(item.get(labelled_key, default_labelled)))
            self.cases.append(_case_name(item, image_key))
        logger.info(
            "SliceDataset: %d volumes (%d labelled), %d slice samples", len(data), sum(self.labelled), len(self.index)
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        vol_idx, z = self.index[idx]
        vol = self.volumes[vol_idx]
        image = _plain(vol[self.image_key])
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
            label = _plain(vol[self.label_key])
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


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor view of an array/tensor/MetaTensor (slicing MetaTensors per sample is needlessly slow)."""
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return torch.as_tensor(x)


def _case_name(item: Mapping[str, Any], image_key: str) -> str:
    if "case" in item:
        return str(item["case"])
    value = item.get(image_key, "?")
    return str(value) if isinstance(value, str) else "?"


class AdjacentSliceInferer(Inferer):
    """Run a 2D network over every slice of a volume (2.5D) and reassemble the outputs into a volume.

    Input ``(B, C, H, W, D)`` (slices along the last axis); each slice ``z`` is fed as ``C·k`` channels (channel-
    major, edge slices replicated); the outputs ``(D, N, H, W)`` are reassembled into ``(B, N, H, W, D)``. H and W
    are padded (replicate) to a multiple of ``divisible`` for the network and cropped back.

    Args:
        num_slices: ``k`` adjacent slices per channel (odd).
        batch_size: slices per forward pass.
        divisible: pad H and W to a multiple of this (16 for a 4-pool U-Net; 1 disables).
        activation: optional callable applied to each batch of 2D outputs (e.g. softmax).
        progress: show a progress bar over slice batches.
        channels_last: run the network on channels-last (NHWC) inputs, converting a module network to that memory
            format once (faster convolutions on CPUs; same results up to float rounding). Defaults to False.
        autocast_dtype: ``"bfloat16"`` (or ``"float16"`` on a GPU) runs the network under ``torch.autocast`` with
            that dtype and returns float32 outputs (about 2× faster on CPUs with AVX512-BF16 or AMX; argmax masks
            change on a few boundary voxels, see ``bench/inference.py``); None keeps float32. Defaults to None.
        compile: run a module network through ``torch.compile`` (Inductor; fuses the element-wise layers around the
            convolutions, and with Inductor's ``freezing`` folds batch norms into the weights: about 2× on the SPECT
            RCNN on a CPU, see ``bench/inference.py``). Inference only: the weights are frozen into the compiled
            graph when it is built, so load the checkpoint before the first call (a new network object is compiled
            afresh). The first batch pays a one-off compilation (10-20 s on a CPU, cached on disk by PyTorch); every
            batch is padded to ``batch_size`` slices so that one compiled shape serves the whole volume. Needs a C++
            compiler on a CPU; on any compilation error it logs a warning and runs eagerly. Defaults to False.
    """

    def __init__(
        self,
        num_slices: int = 3,
        batch_size: int = 16,
        divisible: int = 16,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
        channels_last: bool = False,
        autocast_dtype: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {autocast_dtype!r}")
        self.channels_last = bool(channels_last)
        self.autocast_dtype = None if autocast_dtype is None else getattr(torch, autocast_dtype)
        if num_slices < 1 or num_slices % 2 == 0:
            raise ValueError(f"num_slices must be a positive odd number, got {num_slices}")
        if batch_size < 1 or divisible < 1:
            raise ValueError(f"batch_size and divisible must be >= 1, got {batch_size} and {divisible}")
        self.num_slices = num_slices
        self.batch_size = batch_size
        self.divisible = divisible
        self.activation = activation
        self.progress = progress
        self.compile = bool(compile)
        self._compiled: dict[int, Callable] = {}  # id(network) -> compiled module (or the network after a failure)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.ndim != 5:
            raise ValueError(f"AdjacentSliceInferer expects (B, C, H, W, D) volumes, got shape {tuple(inputs.shape)}")
        outputs = [self._infer_volume(_plain(vol), network, *args, **kwargs) for vol in inputs]
        return torch.stack(outputs, dim=0)

    def _infer_volume(self, vol: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        c, h, w, d = vol.shape
        ph, pw = (-h) % self.divisible, (-w) % self.divisible
        idx = torch.as_tensor(adjacent_slice_indices(d, self.num_slices), dtype=torch.long, device=vol.device)
        starts = range(0, d, self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="slices", unit="batch", leave=False)
        out: torch.Tensor | None = None  # (N, H, W, D), filled batch by batch: no list of chunks, no final copy
        for s in starts:
            zs = idx[s : s + self.batch_size]  # (b, k)
            x = vol[..., zs.reshape(-1)].reshape(c, h, w, zs.shape[0], self.num_slices)
            x = x.permute(3, 0, 4, 1, 2).reshape(zs.shape[0], c * self.num_slices, h, w)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            b = x.shape[0]
            if self.compile and b < self.batch_size:  # one compiled shape: pad the last batch with its last slice
                x = torch.cat([x, x[-1:].expand(self.batch_size - b, *x.shape[1:])], dim=0)
            y = self._forward(network, x, *args, **kwargs)[:b]
            if self.activation is not None:
                y = self.activation(y)
            if out is None:
                out = torch.empty((y.shape[1], h, w, d), dtype=y.dtype, device=y.device)
            out[..., s : s + b] = y[..., :h, :w].permute(1, 2, 3, 0)
        assert out is not None  # d >= 1
        return out

    def _compiled_network(self, network: Callable) -> Callable:
        """``torch.compile(network)``, built once per network (the network itself when compilation is off)."""
        if not self.compile or not isinstance(network, torch.nn.Module):
            return network
        key = id(network)
        if key not in self._compiled:
            self._compiled.clear()  # one network at a time: do not keep compiled copies of old ones alive
            self._compiled[key] = torch.compile(network, options={"freezing": True})
        return self._compiled[key]

    def _call(self, network: Callable, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        compiled = self._compiled_network(network)
        if compiled is network:
            return network(x, *args, **kwargs)
        try:
            return compiled(x, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a compiler failure must not stop inference
            logger.warning("torch.compile of %s failed (%s: %s); running eagerly", type(network).__name__,
                           type(err).__name__, " ".join(str(err).split())[:300])
            self._compiled[id(network)] = network
            return network(x, *args, **kwargs)

    def _forward(self, network: Callable, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One network call with the optional channels-last layout, autocast and compilation; float32 out."""
        if not self.channels_last and self.autocast_dtype is None:
            return self._call(network, x, *args, **kwargs)
        if self.channels_last:
            if isinstance(network, torch.nn.Module):
                network.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            y = self._call(network, x, *args, **kwargs)
        return y.float().contiguous()
