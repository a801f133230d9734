"""Training engines beyond MONAI's ``SupervisedTrainer``.

* :class:`SemiSupervisedTrainer` trains with a loss that sees the image and an explicit per-sample ``labelled``
  flag, e.g. :class:`losses.SemiSupervisedMumfordShahLoss` (cross-entropy on labelled samples + β·Mumford–Shah on
  all).
* :class:`SelectiveTrainer` trains the VM-Net (and its DIP-Net) of the selective methods M1–M4 without labels, on
  the whole training set as one :class:`pipeline.selective.padding.TrainingBatch`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["SelectiveTrainer", "SemiSupervisedTrainer", "prepare_selective_batch"]


class SemiSupervisedTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` whose loss is called as ``loss(pred, image, label, labelled)``.

    Each batch is a dict with ``image_key``, ``label_key`` and ``labelled_key`` (a bool per sample). Unlabelled
    samples still need a label tensor of the right shape (any content: the loss ignores it); this keeps batches
    collatable. Everything else (handlers, metrics, optimiser, ``amp`` on CUDA, ``inferer``) is MONAI's.

    Besides ``image``, ``label``, ``pred`` and ``loss``, ``engine.state.output`` carries the loss components the
    loss exposes as ``last_<name>`` attributes listed in ``component_names`` (e.g. ``ce`` and ``ms``) for logging.

    Args:
        labelled_key: batch key of the per-sample labelled flag.
        image_key: batch key of the network input.
        label_key: batch key of the target.
        component_names: loss attributes ``last_<name>`` copied to the iteration output.
        kwargs: everything ``monai.engines.SupervisedTrainer`` accepts.
    """

    def __init__(self, *args: Any, labelled_key: str = "labelled", image_key: str = Keys.IMAGE,
                 label_key: str = Keys.LABEL, component_names: Sequence[str] = ("ce", "ms"), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labelled_key = labelled_key
        self.image_key = image_key
        self.label_key = label_key
        self.component_names = tuple(component_names)

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        for key in (self.image_key, self.label_key, self.labelled_key):
            if key not in batchdata:
                raise KeyError(f"batch has no '{key}' entry (keys: {sorted(batchdata)})")
        device, nb = engine.state.device, engine.non_blocking
        inputs = batchdata[self.image_key].to(device=device, non_blocking=nb)
        targets = batchdata[self.label_key].to(device=device, non_blocking=nb)
        labelled = torch.as_tensor(batchdata[self.labelled_key], dtype=torch.bool).reshape(-1).to(device)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        def _forward_loss() -> None:
            pred = engine.inferer(inputs, engine.network)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(pred, inputs, targets, labelled)
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _forward_loss()
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            _forward_loss()
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        loss_fn: Callable = engine.loss_function
        for name in self.component_names:
            value = getattr(loss_fn, f"last_{name}", None)
            if value is not None:
                engine.state.output[name] = float(value)
        engine.state.output["num_labelled"] = int(labelled.sum())
        # MONAI decollates the output on MODEL_COMPLETED, so everything is recorded before it fires
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def prepare_selective_batch(batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False,
                            **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepare_batch`` for MONAI evaluators: ``(input, label)`` of a selective batch on ``device``."""
    return (batchdata["input"].to(device=device, non_blocking=non_blocking),
            batchdata["label"].to(device=device, non_blocking=non_blocking))


class SelectiveTrainer(SupervisedTrainer):
    """Trainer of the VM-Net (M1, M2) or the VM-Net + DIP-Net pair (M3, M4) without labels.

    ``network`` is a :class:`networks.SelectivePair`. Each iteration takes the whole training set (a
    :class:`TrainingBatch`, so one iteration = one epoch and the DIP-Net's input gets a fresh perturbation each
    epoch) and computes

    * with a DIP-Net: ``loss_function(u_vm, u_dip, fitting, geodesic)`` (:class:`losses.DIPSelectiveLoss`, eq. 2);
    * without: ``loss_function(u_vm, fitting, geodesic, edge)`` (:class:`losses.SelectiveLoss`, eq. 3).

    With ``flip_augmentation``, each epoch flips every training sample at random along each image axis (the
    VM-Net input and the maps ``Φ``, ``D_G``, ``g`` alike, and the DIP output by the same flips before the
    Hadamard product), so the VM-Net cannot learn where the object lies in the two training images, only how the
    clicks, the image and the guidance relate. Off by default (the paper does not augment).

    The iteration output carries ``pred`` = ``u_vm`` and the loss components (``fitting``, ``geodesic``,
    ``regulariser`` or ``coupling``) for logging. Everything else is MONAI's ``SupervisedTrainer``.
    """

    component_names = ("fitting", "geodesic", "regulariser", "coupling")
    augmented_keys = ("input", "fitting", "geodesic", "edge")

    def __init__(self, *args: Any, flip_augmentation: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flip_augmentation = bool(flip_augmentation)

    @staticmethod
    def _flip(t: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Flip sample ``b`` of ``t`` (B, C, H, W) along H where ``flags[b, 0]`` and along W where ``flags[b, 1]``."""
        out = []
        for b in range(t.shape[0]):
            dims = [axis + 2 for axis in range(2) if bool(flags[b, axis])]
            out.append(torch.flip(t[b:b + 1], dims) if dims else t[b:b + 1])
        return torch.cat(out, dim=0)

    def _iteration(self, engine: SelectiveTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        batch = {k: (v.to(device=device, non_blocking=nb) if isinstance(v, torch.Tensor) else v)
                 for k, v in batchdata.items()}
        pair = engine.network
        engine.state.output = {Keys.IMAGE: batch["input"], Keys.LABEL: batch["label"]}
        pair.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        flags = None
        if engine.flip_augmentation:  # same random flips of the VM-Net input, the maps and the DIP output
            flags = torch.randint(0, 2, (batch["input"].shape[0], 2), dtype=torch.bool)
            batch.update({k: engine._flip(batch[k], flags) for k in engine.augmented_keys})
        out = pair(batch["input"], batch["index"] if pair.dip_net is not None else None)
        if flags is not None and out["u_dip"] is not None:
            out["u_dip"] = engine._flip(out["u_dip"], flags)
        engine.state.output[Keys.PRED] = out["u_vm"] if flags is None else engine._flip(out["u_vm"], flags)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        if pair.dip_net is not None:
            loss = engine.loss_function(out["u_vm"], out["u_dip"], batch["fitting"], batch["geodesic"])
        else:
            loss = engine.loss_function(out["u_vm"], batch["fitting"], batch["geodesic"], batch["edge"])
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        for name in self.component_names:
            value = getattr(engine.loss_function, f"last_{name}", None)
            if value is not None:
                engine.state.output[name] = float(value)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
