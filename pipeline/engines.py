"""Training engines beyond MONAI's ``SupervisedTrainer``.

:class:`SemiSupervisedTrainer` trains with a loss that sees the image and an explicit per-sample ``labelled`` flag,
e.g. :class:`losses.SemiSupervisedMumfordShahLoss` (cross-entropy on labelled samples + β·Mumford–Shah on all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["SemiSupervisedTrainer"]


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

    def __init__(
        self,
        *args: Any,
        labelled_key: str = "labelled",
        image_key: str = Keys.IMAGE,
        label_key: str = Keys.LABEL,
        component_names: Sequence[str] = ("ce", "ms"),
        **kwargs: Any,
    ) -> None:
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
