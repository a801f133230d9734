"""Training of the refinement network (Rebelo, Fernandes & Cardoso) through MONAI's engine.

* :class:`RefineTrainer` is a ``SupervisedTrainer`` whose network takes an image slice *and* a mask and returns the
  refined mask's logits and the predicted quality (Dice) of the mask it was given
  (:class:`networks.QualityUNet`); its loss is :class:`losses.QualityRegularisedDiceLoss`
  (``loss(logits, label, quality=..., input_mask=...)``). Batches are padded to a multiple of the network's divisor.
* :class:`RefinementRounds` (a handler of that trainer) validates every epoch (Dice after one refinement step on the
  validation cases), keeps the weights of the best epoch, and runs the paper's training on the network's own outputs
  ("Scratch" / "Warm"): after the first ``max_epochs``, up to ``rounds`` times, the refined outputs of the training
  base masks are added as fixed-mask samples and the network is retrained from a fresh initialisation
  (``"scratch"``, ``max_epochs`` again) or trained on from its best weights (``"warm"``, ``round_epochs``). The trainer
  runs all rounds as one sequence of epochs, so checkpoints, ``--resume true`` (same MLflow run continued) and the
  per-epoch metrics work as for every bundle training: :class:`pipeline.training.handlers.TrainingCheckpoint` saves
  this handler's state (round, best weights, added samples) with the rest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from pipeline.evaluation.metrics import dice_jaccard
from pipeline.refine.data import RefineCase, RefineSliceDataset
from pipeline.refine.iteration import iterate_refinement, pad_to_multiple, refine_forward, volume_quality

logger = logging.getLogger(__name__)

__all__ = ["SELF_TRAINING", "RefineTrainer", "RefinementRounds", "seeded_network"]

SELF_TRAINING = ("none", "scratch", "warm")
TRAIN_TERMS = ("loss", "dice_loss", "quality_mse")


def seeded_network(factory: Callable[[], torch.nn.Module], seed: int,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
    """``factory()`` on ``device`` after ``torch.manual_seed(seed)``: the same initial weights for the same seed."""
    torch.manual_seed(seed)
    return factory().to(torch.device(device))


class RefineTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` for ``network(image, mask) -> (logits, quality)``.

    Each batch is ``{"image": (B, C, H, W), "mask": (B, 1, H, W), "label": (B, 1, H, W)}``
    (:class:`pipeline.refine.data.RefineSliceDataset`); images are padded by replication, masks and labels by zeros
    to a multiple of ``divisor``. The iteration output carries the loss and, when the loss has a ``terms`` method,
    its Dice loss and quality error; their sample-weighted means over the epoch so far are
    ``engine.state.metrics["train_<name>"]`` (``loss``, ``dice_loss``, ``quality_mse``).

    The saved trainer state stores ``iteration = epoch · epoch_length`` (the epoch length grows when own outputs are
    added), so a resumed training restarts at the saved epoch boundary.

    Args:
        divisor: pad height and width to a multiple of this (``2**(levels - 1)`` of the network).
        progress: show a progress bar per epoch (ignite's ``ProgressBar``; it does not touch the data loader, so the
            shuffling is the same with and without it).
        kwargs: everything ``monai.engines.SupervisedTrainer`` accepts.
    """

    def __init__(self, *args: Any, divisor: int = 8, progress: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
        self.divisor = int(divisor)
        self._sums: dict[str, float] = {}
        self.add_event_handler(Events.EPOCH_STARTED, self._reset_sums)
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(self, output_transform=lambda out: {"loss": float(out[Keys.LOSS])})

    def _reset_sums(self, engine: Engine) -> None:
        self._sums = {name: 0.0 for name in (*TRAIN_TERMS, "samples")}

    def _accumulate(self, values: Mapping[str, float], batch_size: int) -> None:
        """Add a batch's terms to the epoch sums; the running means are ``state.metrics["train_<name>"]``."""
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * batch_size
        self._sums["samples"] = self._sums.get("samples", 0.0) + batch_size
        n = self._sums["samples"]
        self.state.metrics.update({f"train_{name}": self._sums[name] / n for name in TRAIN_TERMS if name in self._sums})

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["iteration"] = int(self.state.epoch) * int(self.state.epoch_length)
        return state

    def _iteration(self, engine: RefineTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb, d = engine.state.device, engine.non_blocking, engine.divisor
        x, m, y = (batchdata[k].to(device=device, non_blocking=nb) for k in (Keys.IMAGE, "mask", Keys.LABEL))
        x, m, y = pad_to_multiple(x, d, "replicate"), pad_to_multiple(m, d, "constant"), pad_to_multiple(y, d, "constant")
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y}
        engine.network.train()
        logits, quality = engine.network(x, m)
        engine.state.output[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(logits, y, quality=quality, input_mask=m)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        values = {"loss": float(loss.detach())}
        if hasattr(engine.loss_function, "terms"):
            with torch.no_grad():
                terms = engine.loss_function.terms(logits, y, quality, m)
            values.update(dice_loss=float(terms["dice_loss"].mean()), quality_mse=float(terms["quality_error"].mean()))
            engine.state.output.update(dice_loss=values["dice_loss"], quality_mse=values["quality_mse"])
        engine._accumulate(values, x.shape[0])
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class RefinementRounds:
    """Validation, best weights and own-output rounds of a :class:`RefineTrainer` (attach before the tracker and
    the :class:`pipeline.training.handlers.TrainingCheckpoint`, which saves :meth:`state_dict`).

    At the end of every epoch: the mean Dice after one refinement step on ``val_cases`` and the mean
    ``|predicted − true|`` quality of their base masks become ``val_dice_1x`` and ``val_quality_abs_error_0x`` in
    ``engine.state.metrics``; the weights of the best ``val_dice_1x`` of the current round are kept. At the end of a
    round that is not the last, the best weights are restored, their refined outputs (``round`` steps from the base
    mask) of every training slice are added to ``dataset``, the optimiser state is reset and, for ``"scratch"``, the
    network is re-initialised with ``seed + round``. A new training starts from the weights of ``seed`` (with the
    global torch generator reseeded, so the shuffling that follows does not depend on what the configuration
    instantiated before). When the training completes, the network holds the best weights of the last round.

    Args:
        dataset: the trainer's :class:`pipeline.refine.data.RefineSliceDataset`.
        val_cases: validation :class:`pipeline.refine.data.RefineCase` s.
        network_factory: returns a fresh network (the initial weights and ``"scratch"`` rounds).
        self_training: ``"none"``, ``"scratch"`` or ``"warm"``.
        max_epochs: epochs of the first training (and of every ``"scratch"`` round).
        rounds: rounds of adding own outputs (the paper: up to 2; ignored with ``"none"``).
        round_epochs: epochs per ``"warm"`` round.
        num_slices: adjacent slices per image channel.
        seed: seed of the initial weights and of the ``"scratch"`` re-initialisations (``seed + round``).
        slice_batch_size: slices per forward pass at validation.
        divisor: pad slices to a multiple of this.
    """

    def __init__(self, dataset: RefineSliceDataset, val_cases: Sequence[RefineCase],
                 network_factory: Callable[[], torch.nn.Module], self_training: str = "none", max_epochs: int = 1,
                 rounds: int = 1, round_epochs: int = 1, num_slices: int = 1, seed: int = 0,
                 slice_batch_size: int = 32, divisor: int = 8) -> None:
        if self_training not in SELF_TRAINING:
            raise ValueError(f"self_training must be one of {SELF_TRAINING}, got {self_training!r}")
        for name, value in (("max_epochs", max_epochs), ("round_epochs", round_epochs), ("num_slices", num_slices)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not val_cases:
            raise ValueError("RefinementRounds needs at least one validation case")
        self.dataset, self.val_cases, self.network_factory = dataset, list(val_cases), network_factory
        self.self_training, self.num_slices, self.seed = self_training, int(num_slices), int(seed)
        self.slice_batch_size, self.divisor = int(slice_batch_size), int(divisor)
        num_rounds = int(rounds) if self_training != "none" else 0
        per_round = int(max_epochs) if self_training == "scratch" else int(round_epochs)
        self.round_ends = list(np.cumsum([int(max_epochs)] + [per_round] * num_rounds))
        self.round = 0
        self.best, self.best_state = -1.0, None

    @property
    def total_epochs(self) -> int:
        """Epochs of all rounds together: the trainer's ``max_epochs``."""
        return int(self.round_ends[-1])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.restore_best)

    def started(self, engine: Engine) -> None:
        """A new training (epoch 0) starts from the weights of ``seed``, whatever was drawn before; attached before
        the checkpoint loader, which then replaces them on a resume."""
        if engine.state.epoch == 0:
            self._initialise(engine.network, self.seed)

    def _initialise(self, network: torch.nn.Module, seed: int) -> None:
        fresh = seeded_network(self.network_factory, seed, next(network.parameters()).device)
        network.load_state_dict(fresh.state_dict())

    # ------------------------------------------------------------------------------------------------ validation
    def validate(self, network: torch.nn.Module) -> tuple[float, float]:
        """Mean Dice after one step and mean |predicted − true| quality of the base masks, over the validation."""
        network.eval()
        device = next(network.parameters()).device
        dice, error = [], []
        for case in self.val_cases:
            base = RefineCase.as_slices(case.base)
            with torch.no_grad():  # one pass: the refined mask and the predicted quality of the base mask
                refined, q = refine_forward(network, case.slices(self.num_slices).to(device), base,
                                            self.slice_batch_size, self.divisor)
            dice.append(dice_jaccard(refined[:, 0].permute(1, 2, 0).numpy(), case.label.numpy())[0])
            predicted = volume_quality(q, base.numpy(), refined.numpy())
            error.append(abs(predicted - dice_jaccard(case.base.numpy(), case.label.numpy())[0]))
        return float(np.mean(dice)), float(np.mean(error))

    def epoch_completed(self, engine: Engine) -> None:
        val_dice, val_error = self.validate(engine.network)
        engine.state.metrics.update(val_dice_1x=val_dice, val_quality_abs_error_0x=val_error)
        m = engine.state.metrics
        logger.info("%s epoch %d: loss %.4f (dice %.4f, quality mse %.4f), val Dice 1x %.4f, val |q err| %.3f",
                    self._round_name(), engine.state.epoch, m.get("train_loss", float("nan")),
                    m.get("train_dice_loss", float("nan")), m.get("train_quality_mse", float("nan")), val_dice,
                    val_error)
        if val_dice > self.best:
            self.best = val_dice
            self.best_state = {k: v.detach().clone() for k, v in engine.network.state_dict().items()}
        if engine.state.epoch == self.round_ends[self.round] and self.round + 1 < len(self.round_ends):
            self._next_round(engine)

    def _round_name(self) -> str:
        return "train" if self.round == 0 else f"{self.self_training} round {self.round}"

    def _next_round(self, engine: Engine) -> None:
        network = engine.network
        self.restore_best(engine)
        self.round += 1
        self.dataset.add_masks(self.own_outputs(network, self.round))
        if self.self_training == "scratch":
            self._initialise(network, self.seed + self.round)
        engine.optimizer.state = defaultdict(dict)  # a fresh optimiser for the new round
        engine.state.epoch_length = len(engine.data_loader)
        self.best, self.best_state = -1.0, None
        logger.info("%s: %d own-output samples added, %d training slices", self._round_name(), self.dataset.num_own,
                    len(self.dataset))

    def own_outputs(self, network: torch.nn.Module, steps: int) -> list[tuple[int, int, torch.Tensor]]:
        """Refined outputs (``steps`` steps from the base mask) of every training slice, as fixed-mask samples."""
        network.eval()
        device = next(network.parameters()).device
        stride = self.dataset.slice_stride
        entries = []
        for i, case in enumerate(self.dataset.cases):
            trace = iterate_refinement(network, case.slices(self.num_slices).to(device), RefineCase.as_slices(case.base),
                                       steps, batch_size=self.slice_batch_size, divisor=self.divisor)
            final = trace.masks[-1]
            entries.extend((i, z, final[z]) for z in range(0, case.image.shape[-1], stride))
        return entries

    def restore_best(self, engine: Engine) -> None:
        """Load the best weights of the current round into the trainer's network."""
        if self.best_state is not None:
            engine.network.load_state_dict(self.best_state)

    # ------------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        own = self.dataset.own_masks()
        state: dict[str, Any] = {"round": self.round, "best": self.best, "round_ends": list(map(int, self.round_ends)),
                                 "own_cases": torch.tensor([i for i, _, _ in own], dtype=torch.int64),
                                 "own_slices": torch.tensor([z for _, z, _ in own], dtype=torch.int64),
                                 "own_masks": [m for _, _, m in own]}
        if self.best_state is not None:
            state["best_state"] = self.best_state
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["round_ends"]) != list(map(int, self.round_ends)):
            raise ValueError(f"the checkpoint's rounds end at epochs {list(state['round_ends'])}, this training's at "
                             f"{list(map(int, self.round_ends))}: resume with the same self_training settings")
        self.round, self.best = int(state["round"]), float(state["best"])
        self.best_state = state.get("best_state")
        self.dataset.clear_masks()
        self.dataset.add_masks(list(zip(state["own_cases"].tolist(), state["own_slices"].tolist(),
                                        state["own_masks"])))

