"""Fine-tuning helpers of the bone SPECT bundle (Chen & Frey 2020 modes 1-4).

* :func:`unlabelled` - copies of a datalist with ``labelled = False`` on every case (Mode 1).
* :func:`prepare_finetune` - load an initial checkpoint into a network and freeze its first block(s) (Modes 2, 3).
* :class:`LabelledSlices` - the first ``n`` slice samples of a :class:`pipeline.training.slicing.SliceDataset`
  whose label contains foreground, all flagged labelled (Modes 2, 3: 10 or 80 labelled slices).

The data list is :func:`pipeline.data.spect.spect_datalist`; the fine-tuning loss of Modes 2 and 3 is
:class:`losses.LabelOnlyLoss`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.io.files import load_weights

logger = logging.getLogger(__name__)

__all__ = ["LabelledSlices", "freeze_blocks", "prepare_finetune", "trainable_parameters", "unlabelled"]


def unlabelled(datalist: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the dicts with ``"labelled": False`` (the unsupervised Mode 1 sees no label)."""
    return [{**entry, "labelled": False} for entry in datalist]


def _eval_only_train(module: nn.Module):
    def train(mode: bool = True) -> nn.Module:
        return nn.Module.train(module, False)

    return train


def freeze_blocks(network: nn.Module, num_blocks: int = 1) -> nn.Module:
    """Freeze ``network.blocks[:num_blocks]``: no gradients and batch-norm statistics kept (always in eval mode).

    As Keras' ``trainable = False`` in the authors' ``fine_tune.py``, the frozen blocks' batch-norm layers use
    and keep their running statistics, so the frozen part of the state dict does not change during fine-tuning.
    """
    for block in list(network.blocks)[: int(num_blocks)]:
        block.requires_grad_(False)
        block.train = _eval_only_train(block)  # type: ignore[method-assign]
        block.eval()
    return network


def prepare_finetune(network: nn.Module, init_ckpt: str | Path | None, frozen_blocks: int = 1,
                     map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``init_ckpt`` (when given) into ``network`` and freeze its first ``frozen_blocks`` blocks."""
    if init_ckpt:
        load_weights(network, init_ckpt, map_location, hint="train Mode 1 first (or set --init_ckpt)")
        logger.info("loaded initial weights from %s", init_ckpt)
    return freeze_blocks(network, frozen_blocks)


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Parameters that require gradients (for the optimiser of a partly frozen network)."""
    return [p for p in network.parameters() if p.requires_grad]


class LabelledSlices(Dataset):
    """The first ``num_slices`` samples of a slice dataset whose label has foreground, flagged labelled.

    Samples are taken in the dataset's order (case order of the datalist, then slice position), as the authors
    took the first slices of their training set. ``order="spread"`` instead takes them evenly spaced over all
    foreground slices (all training cases contribute).

    Args:
        dataset: a :class:`pipeline.training.slicing.SliceDataset` of the training split (its labels are read).
        num_slices: number of labelled slices.
        order: ``"first"`` or ``"spread"``.
        min_foreground: minimum number of foreground pixels for a slice to count as labelled.
    """

    def __init__(self, dataset: Any, num_slices: int, order: str = "first", min_foreground: int = 1) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        if order not in ("first", "spread"):
            raise ValueError(f"order must be 'first' or 'spread', got {order!r}")
        self.dataset = dataset
        candidates = []
        for i, (vol_idx, z) in enumerate(dataset.index):
            label = dataset.volumes[vol_idx][dataset.label_key]
            if label is not None and int((torch.as_tensor(label)[..., z] > 0).sum()) >= min_foreground:
                candidates.append(i)
        if not candidates:
            raise ValueError("no training slice has foreground: cannot pick labelled slices")
        if len(candidates) < num_slices:
            logger.warning("only %d foreground slices, fewer than the %d requested", len(candidates), num_slices)
        if order == "first" or len(candidates) <= num_slices:
            self.indices = candidates[:num_slices]
        else:
            picks = np.linspace(0, len(candidates) - 1, num_slices).round().astype(int)
            self.indices = [candidates[k] for k in picks]
        logger.info("LabelledSlices: %d labelled slices (%s) out of %d foreground slices", len(self.indices), order,
                    len(candidates))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = dict(self.dataset[self.indices[idx]])
        sample[self.dataset.labelled_key] = True
        return sample
