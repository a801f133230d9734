"""Inferers that run a 2D network over volumes: :class:`AdjacentSliceInferer` (2.5D, ``k`` adjacent slices per
channel) runs every slice of a volume and reassembles the per-slice outputs into a volume, so evaluation, metrics and
saved masks work on whole volumes in their own geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from transforms.slices import adjacent_slice_indices, plain_tensor

logger = logging.getLogger(__name__)

__all__ = ["AdjacentSliceInferer"]


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

    def __init__(self, num_slices: int = 3, batch_size: int = 16, divisible: int = 16,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = False,
                 channels_last: bool = False, autocast_dtype: str | None = None, compile: bool = False) -> None:
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
        outputs = [self._infer_volume(plain_tensor(vol), network, *args, **kwargs) for vol in inputs]
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
