"""Data of the refinement stage: the cases (image, target, base-model mask) and the training slices.

* :class:`BaseMasks` preprocesses every case with the bundle's own volume transform and predicts its *base mask*
  with the bundle's trained model (its ``network_def`` and checkpoint, run through the bundle's validation inferer).
  Base masks are cached per checkpoint (SHA-256 prefix) and case, so the variants of a refinement table and a
  resumed training predict them once.
* :class:`RefineSliceDataset` turns the training cases into slice samples whose input mask is the base mask or the
  label degraded by the mask augmentation; refined outputs of the network can be added as fixed-mask samples
  (training on its own outputs, :class:`pipeline.refine.engine.RefinementRounds`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.io.files import load_weights, sha256_prefix
from pipeline.refine.iteration import stack_slices
from transforms.slices import plain_tensor

logger = logging.getLogger(__name__)

__all__ = ["SPLITS", "BaseMasks", "RefineCase", "RefineSliceDataset", "progress_bar"]

SPLITS = ("train", "val", "test")


@dataclass
class RefineCase:
    """One case: preprocessed image, binary target and base-model mask.

    Attributes:
        case: case name.
        image: ``(C, H, W, D)`` float32.
        label: ``(H, W, D)`` boolean target.
        base: ``(H, W, D)`` boolean base-model mask.
    """

    case: str
    image: torch.Tensor
    label: torch.Tensor
    base: torch.Tensor

    def slices(self, num_slices: int) -> torch.Tensor:
        """The network image input of every slice, ``(D, C·k, H, W)``."""
        return stack_slices(self.image, num_slices)

    @staticmethod
    def as_slices(volume_mask: torch.Tensor) -> torch.Tensor:
        """``(H, W, D)`` mask → ``(D, 1, H, W)``."""
        return volume_mask.permute(2, 0, 1).unsqueeze(1)


class RefineSliceDataset(Dataset):
    """Training samples ``{"image": (C·k, H, W), "mask": (1, H, W), "label": (1, H, W)}`` from :class:`RefineCase` s.

    Each item's input mask is the case's base-model mask (probability ``base_mask_prob``) or the label degraded by
    ``mask_transform`` (a dictionary transform on the key ``"mask"``, e.g. :class:`transforms.RandImperfectMaskd`);
    items added with :meth:`add_masks` (refined outputs, for training on the network's own outputs) use their fixed
    mask. The choice is drawn from a generator seeded with ``seed``.

    Args:
        cases: the training cases.
        num_slices: adjacent slices per image channel.
        mask_transform: degrades ``{"mask": label}``; None keeps the label (a perfect mask).
        base_mask_prob: chance of taking the base mask.
        slice_stride: keep every ``slice_stride``-th slice.
        seed: seed of the base / synthesised choice and of ``mask_transform`` (``set_random_state``).
    """

    def __init__(self, cases: Sequence[RefineCase], num_slices: int, mask_transform: Callable | None = None,
                 base_mask_prob: float = 0.5, slice_stride: int = 1, seed: int = 0) -> None:
        if not cases:
            raise ValueError("RefineSliceDataset needs at least one case (no labelled training case?)")
        if not 0.0 <= base_mask_prob <= 1.0:
            raise ValueError(f"base_mask_prob must be in [0, 1], got {base_mask_prob}")
        if slice_stride < 1:
            raise ValueError(f"slice_stride must be >= 1, got {slice_stride}")
        self.cases = list(cases)
        self.num_slices = num_slices
        self.mask_transform = mask_transform
        self.base_mask_prob = float(base_mask_prob)
        self.slice_stride = int(slice_stride)
        self.rng = np.random.RandomState(seed)
        if mask_transform is not None and hasattr(mask_transform, "set_random_state"):
            mask_transform.set_random_state(seed)
        self._stacked = [c.slices(num_slices) for c in self.cases]
        self.index: list[tuple[int, int, torch.Tensor | None]] = [
            (i, z, None) for i, c in enumerate(self.cases) for z in range(0, c.image.shape[-1], slice_stride)]
        self.num_own = 0

    def add_masks(self, entries: Sequence[tuple[int, int, torch.Tensor]]) -> None:
        """Add fixed-mask samples ``(case index, slice, mask (1, H, W))``."""
        self.index.extend((i, z, m.bool()) for i, z, m in entries)
        self.num_own += len(entries)

    def own_masks(self) -> list[tuple[int, int, torch.Tensor]]:
        """The fixed-mask samples added with :meth:`add_masks`, in order."""
        return [(i, z, m) for i, z, m in self.index if m is not None]

    def clear_masks(self) -> None:
        """Drop the fixed-mask samples (back to the base and synthesised ones)."""
        self.index = [(i, z, m) for i, z, m in self.index if m is None]
        self.num_own = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i, z, fixed = self.index[idx]
        case = self.cases[i]
        label = case.label[..., z][None].float()
        if fixed is not None:
            mask = fixed.float()
        elif self.rng.uniform() < self.base_mask_prob:
            mask = case.base[..., z][None].float()
        elif self.mask_transform is not None:
            mask = torch.as_tensor(self.mask_transform({"mask": label.clone()})["mask"]).float()
        else:
            mask = label.clone()
        return {"image": self._stacked[i][z], "mask": mask, "label": label}


def _cache_key(name: str, entry: Mapping[str, Any]) -> str:
    """Base-mask cache key: case name, clicks if any, image path, size and modification time (changes recompute)."""
    image = entry.get("image")
    parts = [name]
    if entry.get("points") is not None:  # selective samples: the clicks shape the base mask
        parts.append(f"points={entry['points']}")
    for path in image if isinstance(image, (list, tuple)) else [image]:
        if not isinstance(path, (str, Path)):  # in-memory data: the name alone
            continue
        p = Path(path)
        stat = p.stat() if p.exists() else None
        parts.append(f"{p}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}")
    return "|".join(parts)


class BaseMasks:
    """Preprocess the cases of each split and predict (or read from the cache) their base masks.

    Args:
        bundle: bundle name (messages).
        volume_transform: the bundle's volume preprocessing (load, orient, intensity; image and label keys).
        network: the bundle's network (``network_def``).
        ckpt: its trained checkpoint.
        hint: the command that trains it (shown when the checkpoint is missing).
        inferer: ``inferer(image (1, C, H, W, D), network) -> output (1, N, H, W, D)``.
        base_mask: ``base_mask(output (N, H, W, D)) -> (H, W, D)`` boolean base mask.
        target: ``target(label (1, H, W, D)) -> (H, W, D)`` boolean refinement target.
        cache_dir: where base masks are cached (``base_masks_<checkpoint sha>.pt``).
        device: torch device of the base model.
        progress: show progress bars.
    """

    def __init__(self, bundle: str, volume_transform: Callable, network: torch.nn.Module, ckpt: str | Path,
                 hint: str, inferer: Callable, base_mask: Callable[[torch.Tensor], torch.Tensor],
                 target: Callable[[torch.Tensor], torch.Tensor], cache_dir: str | Path,
                 device: str | torch.device = "cpu", progress: bool = True) -> None:
        self.bundle, self.volume_transform = bundle, volume_transform
        self.network, self.ckpt, self.hint = network, Path(ckpt), hint
        self.inferer, self.base_mask, self.target = inferer, base_mask, target
        self.cache_dir, self.device, self.progress = Path(cache_dir), torch.device(device), progress
        self._loaded = False  # checkpoint weights loaded into the network

    def check(self) -> None:
        """Raise ``FileNotFoundError`` naming the missing base checkpoint and the command that trains it."""
        if not self.ckpt.is_file():
            raise FileNotFoundError(f"base model {self.ckpt} not found: the {self.bundle} refinement starts from "
                                    f"the bundle's own trained model; train it first with: {self.hint}")

    def load(self, splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[RefineCase]]:
        """The :class:`RefineCase` s of every split (``train``: the cases whose labels the refinement may use)."""
        self.check()
        if any(not splits.get(name) for name in SPLITS):
            raise ValueError(f"bundle {self.bundle}: refinement needs training (labelled), validation and test cases, "
                             f"got {' / '.join(str(len(splits.get(n) or [])) for n in SPLITS)}")
        cache_file = self.cache_dir / f"base_masks_{sha256_prefix(self.ckpt)}.pt"
        cache: dict[str, torch.Tensor] = {}
        if cache_file.is_file():
            cache = torch.load(cache_file, map_location="cpu", weights_only=True)
        known = len(cache)
        out = {name: [self._case(entry, cache) for entry in progress_bar(splits[name], f"{name} cases", self.progress)]
               for name in SPLITS}
        if len(cache) > known:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save(cache, cache_file)
            logger.info("base masks of %d cases cached in %s", len(cache), cache_file)
        return out

    def _case(self, entry: Mapping[str, Any], cache: dict[str, torch.Tensor]) -> RefineCase:
        item = self.volume_transform(dict(entry))
        image = plain_tensor(item["image"]).float()
        if image.ndim != 4:
            raise ValueError(f"case {entry.get('case')}: expected a (C, H, W, D) image after the bundle's "
                             f"preprocessing, got {tuple(image.shape)}")
        label = plain_tensor(self.target(torch.as_tensor(item["label"]))).bool().cpu()
        name = str(entry.get("case") or Path(str(entry.get("image"))).name)
        key = _cache_key(name, entry)
        if key not in cache:
            if not self._loaded:
                load_weights(self.network, self.ckpt, self.device)
                self._loaded = True
            with torch.no_grad():
                output = self.inferer(image[None].to(self.device), self.network)[0]
            cache[key] = plain_tensor(self.base_mask(output)).bool().cpu()
        base = cache[key]
        if base.shape != label.shape:
            raise ValueError(f"case {name}: base mask {tuple(base.shape)} and target {tuple(label.shape)} "
                             "differ in shape (does base_mask return (H, W, D)?)")
        return RefineCase(name, image.contiguous(), label, base)


def progress_bar(iterable: Any, desc: str, enabled: bool, leave: bool = True) -> Any:
    """``iterable`` with a tqdm progress bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=leave, dynamic_ncols=True)
