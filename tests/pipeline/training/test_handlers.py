"""Tests of the bundle handlers: PerCaseMetrics (per-case std + CSV) and TrainingCheckpoint (save / resume, with the
best-validation model)."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, MeanDice, ValidationHandler

from pipeline.training.handlers import OverlaySaver, PerCaseMetrics, RandomStates, TrainingCheckpoint, checkpoint_epoch


# ----------------------------------------------------------------------------------------------- PerCaseMetrics
def _engine_with_details(details: dict, metrics: dict | None = None) -> Engine:
    """A do-nothing ignite Engine whose epoch end sets ``state.metric_details`` (and metrics) like MONAI's handlers."""
    engine = Engine(lambda e, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set_details(e: Engine) -> None:
        e.state.metric_details = details
        e.state.metrics.update(metrics or {})

    return engine


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


PER_CLASS = torch.tensor([[0.8, 0.6], [math.nan, math.nan], [0.5, math.nan], [1.0, 0.9]], dtype=torch.float64)
PER_CASE = [0.7, math.nan, 0.5, 0.95]  # nanmean over classes


def test_std_is_population_std_over_non_nan_cases(tmp_path: Path) -> None:
    engine = _engine_with_details({"dice": PER_CLASS}, {"dice": float(np.nanmean(PER_CASE))})
    handler = PerCaseMetrics(["dice"], save_dir=tmp_path)
    handler.attach(engine)
    batches = [[{"case": "a"}, {"case": "b"}], [{"case": "c"}, {"case": "d"}]]
    engine.run(batches, max_epochs=1)
    finite = [v for v in PER_CASE if not math.isnan(v)]
    assert engine.state.metrics["dice_std"] == pytest.approx(np.std(finite))  # ddof=0
    assert engine.state.metrics["dice_std"] != pytest.approx(np.std(finite, ddof=1))
    assert [r["case"] for r in handler.last_rows] == ["a", "b", "c", "d"]
    got = [r["dice"] for r in handler.last_rows]
    assert math.isnan(got[1])
    np.testing.assert_allclose([got[i] for i in (0, 2, 3)], [0.7, 0.5, 0.95])


def test_csv_rows_and_footer(tmp_path: Path) -> None:
    mean = float(np.nanmean(PER_CASE))
    details = {"dice": PER_CLASS, "iou": torch.tensor([0.5, 0.25, math.nan, 1.0])}
    engine = _engine_with_details(details, {"dice": mean, "iou": 0.5833333})
    handler = PerCaseMetrics(["dice", "iou"], save_dir=tmp_path / "reports", filename="cases.csv")
    handler.attach(engine)
    engine.run([[{"case": "a"}, {"case": "b"}, {"case": "c"}], [{"case": "d"}]], max_epochs=1)

    path = tmp_path / "reports" / "cases.csv"
    assert handler.csv_path == path and path.is_file()
    assert not list((tmp_path / "reports").glob("*.tmp"))
    rows = _read_csv(path)
    assert list(rows[0].keys()) == ["case", "dice", "iou"]
    assert [r["case"] for r in rows] == ["a", "b", "c", "d", "mean", "std"]
    assert rows[0]["dice"] == "0.700000" and rows[0]["iou"] == "0.500000"
    assert rows[1]["dice"] == "nan" and rows[2]["iou"] == "nan"
    assert float(rows[4]["dice"]) == pytest.approx(mean, abs=1e-6)
    assert float(rows[4]["iou"]) == pytest.approx(0.5833333, abs=1e-6)
    assert float(rows[5]["dice"]) == pytest.approx(np.std([0.7, 0.5, 0.95]), abs=1e-6)
    assert float(rows[5]["iou"]) == pytest.approx(np.std([0.5, 0.25, 1.0]), abs=1e-6)


def test_csv_mean_empty_when_metric_mean_missing(tmp_path: Path) -> None:
    engine = _engine_with_details({"dice": torch.tensor([0.2, 0.4])})
    PerCaseMetrics(["dice"], save_dir=tmp_path).attach(engine)
    engine.run([[{"case": "a"}, {"case": "b"}]], max_epochs=1)
    rows = _read_csv(tmp_path / "per_case_metrics.csv")
    assert rows[-2] == {"case": "mean", "dice": ""}
    assert float(rows[-1]["dice"]) == pytest.approx(0.1)


def test_case_names_from_metatensor_meta() -> None:
    def item(name: str | None) -> dict:
        meta = {"filename_or_obj": name} if name is not None else {}
        return {"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta=meta)}

    engine = _engine_with_details({"dice": torch.arange(6, dtype=torch.float64) / 10})
    handler = PerCaseMetrics(["dice"])
    handler.attach(engine)
    batches = [
        [item("/data/ct/volume-12.nii.gz"), item("relative/liver_3.nii")],
        [item("/x/y/scan.mha"), item("/x/noext"), item(None)],
        {"image": MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": "/single/dict.nii.gz"})},
    ]
    engine.run(batches, max_epochs=1)
    assert [r["case"] for r in handler.last_rows] == ["volume-12", "liver_3", "scan", "noext", "case_4", "dict"]
    assert handler.csv_path is None


def test_case_key_wins_over_meta_and_fallback_names() -> None:
    engine = _engine_with_details({"dice": torch.tensor([0.1, 0.2, 0.3, 0.4])})
    handler = PerCaseMetrics(["dice"])
    handler.attach(engine)
    meta_image = MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/a/b.nii.gz"})
    engine.run([[{"case": "explicit", "image": meta_image}, {"image": torch.zeros(1, 2, 2)}, "not-a-dict"]],
               max_epochs=1)
    # 4 values but 3 collected names: the last one gets a generated name
    assert [r["case"] for r in handler.last_rows] == ["explicit", "case_1", "case_2", "case_3"]


def test_cases_reset_each_epoch(tmp_path: Path) -> None:
    engine = _engine_with_details({"dice": torch.tensor([0.5, 0.7])})
    handler = PerCaseMetrics(["dice"], save_dir=tmp_path)
    handler.attach(engine)
    engine.run([[{"case": "a"}], [{"case": "b"}]], max_epochs=3)
    assert [r["case"] for r in handler.last_rows] == ["a", "b"]
    assert [r["case"] for r in _read_csv(tmp_path / "per_case_metrics.csv")] == ["a", "b", "mean", "std"]


def test_missing_details_are_skipped(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    engine = _engine_with_details({"dice": torch.tensor([0.5])})
    handler = PerCaseMetrics(["dice", "hausdorff"], save_dir=tmp_path)
    handler.attach(engine)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        engine.run([[{"case": "a"}]], max_epochs=1)
    assert "hausdorff" in caplog.text
    assert "hausdorff_std" not in engine.state.metrics
    assert engine.state.metrics["dice_std"] == 0.0
    assert list(_read_csv(tmp_path / "per_case_metrics.csv")[0].keys()) == ["case", "dice"]


def test_all_nan_gives_nan_std_and_no_details_no_csv(tmp_path: Path) -> None:
    engine = _engine_with_details({"dice": torch.tensor([math.nan, math.nan])})
    PerCaseMetrics(["dice"]).attach(engine)
    engine.run([[{"case": "a"}, {"case": "b"}]], max_epochs=1)
    assert math.isnan(engine.state.metrics["dice_std"])

    plain = Engine(lambda e, b: None)  # no metric_details at all
    handler = PerCaseMetrics(["dice"], save_dir=tmp_path / "none")
    handler.attach(plain)
    plain.run([[{"case": "a"}]], max_epochs=1)
    assert handler.last_rows == [] and not (tmp_path / "none").exists()


def test_with_monai_evaluator_and_mean_dice(tmp_path: Path) -> None:
    """End to end with MONAI's MeanDice (save_details) on a SupervisedEvaluator: names from the 'case' key."""
    label = torch.zeros(1, 4, 4)
    label[0, :2] = 1
    preds = {"full": label.clone(), "half": label.clone(), "empty": torch.zeros(1, 4, 4)}
    preds["half"][0, 0] = 0
    data = [{"case": name, "image": pred, "label": label.clone()} for name, pred in preds.items()]
    handler = PerCaseMetrics(["val_dice"], save_dir=tmp_path)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=2), network=torch.nn.Identity(),
        key_val_metric={"val_dice": MeanDice(include_background=True, output_transform=lambda o: (
            [x["pred"] for x in o], [x["label"] for x in o]))},
        val_handlers=[handler],
    )
    evaluator.run()
    dice = [1.0, 2 * 4 / (4 + 8), 0.0]
    assert [r["case"] for r in handler.last_rows] == ["full", "half", "empty"]
    np.testing.assert_allclose([r["val_dice"] for r in handler.last_rows], dice, atol=1e-5)
    assert evaluator.state.metrics["val_dice_std"] == pytest.approx(np.std(dice), abs=1e-5)
    rows = _read_csv(tmp_path / "per_case_metrics.csv")
    assert float(rows[-2]["val_dice"]) == pytest.approx(np.mean(dice), abs=1e-5)


# ----------------------------------------------------------------------------------------------- TrainingCheckpoint
NUM_SAMPLES, BATCH = 4, 2
ITERS_PER_EPOCH = NUM_SAMPLES // BATCH


def _data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(1, 4, 4, generator=g), "label": torch.randn(1, 4, 4, generator=g)}
            for _ in range(NUM_SAMPLES)]


def _trainer(save_dir: Path, max_epochs: int, resume: bool = False, seed: int = 0, scheduler: bool = False):
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=DataLoader(_data(), batch_size=BATCH),
        network=net, optimizer=opt, loss_function=torch.nn.MSELoss(),
    )
    if sched is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    checkpoint = TrainingCheckpoint(save_dir, net, opt, lr_scheduler=sched, resume=resume)
    checkpoint.attach(trainer)
    return trainer, net, opt, sched, checkpoint


def test_checkpoint_written_with_all_entries(tmp_path: Path) -> None:
    trainer, net, opt, _, checkpoint = _trainer(tmp_path, max_epochs=3)
    trainer.run()
    path = tmp_path / "checkpoint_epoch=3.pt"
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=3.pt"]  # n_saved=1
    assert checkpoint.latest() == path
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "trainer", "rng"}  # no tracker: no "mlflow" entry
    # ignite's Engine.state_dict keeps the iteration (the epoch follows from epoch_length)
    assert state["trainer"]["iteration"] == 3 * ITERS_PER_EPOCH
    assert state["trainer"]["epoch_length"] == ITERS_PER_EPOCH and state["trainer"]["max_epochs"] == 3
    for k, v in net.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0)
    assert state["optimizer"]["state"]  # momentum buffers present


def test_checkpoint_includes_lr_scheduler(tmp_path: Path) -> None:
    trainer, *_ = _trainer(tmp_path, max_epochs=2, scheduler=True)
    trainer.run()
    state = torch.load(tmp_path / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "trainer", "lr_scheduler", "rng"}
    assert state["lr_scheduler"]["last_epoch"] == 2


def test_checkpoint_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        TrainingCheckpoint(tmp_path, torch.nn.Linear(1, 1), None, interval=0)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=3, network=net, optimizer=opt,
                                train_data_loader=DataLoader(_data(), batch_size=BATCH),
                                loss_function=torch.nn.MSELoss())
    seen = []
    TrainingCheckpoint(tmp_path, net, opt, interval=2).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(sorted(p.name for p in tmp_path.glob("*"))))
    trainer.run()
    assert seen == [[], ["checkpoint_epoch=2.pt"], ["checkpoint_epoch=2.pt"]]


def test_latest_picks_highest_epoch(tmp_path: Path) -> None:
    checkpoint = TrainingCheckpoint(tmp_path / "missing", torch.nn.Linear(1, 1), None)
    assert checkpoint.latest() is None
    checkpoint = TrainingCheckpoint(tmp_path, torch.nn.Linear(1, 1), None)
    assert checkpoint.latest() is None
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt",
                 "checkpoint_epoch=best.pt", "checkpoint_final_iteration=99.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"")
    assert checkpoint.latest() == tmp_path / "checkpoint_epoch=10.pt"  # numeric, not lexicographic


def test_resume_continues_from_saved_epoch(tmp_path: Path) -> None:
    first, first_net, *_ = _trainer(tmp_path, max_epochs=3, seed=0)
    first.run()
    saved = torch.load(tmp_path / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)

    second, net, opt, _, _ = _trainer(tmp_path, max_epochs=5, resume=True, seed=123)
    assert not torch.equal(net.weight, first_net.weight)  # a fresh, differently initialised model
    record: dict[str, list] = {"start_epoch": [], "start_iteration": [], "weights": [], "epochs": [], "iters": []}

    @second.on(Events.STARTED)  # registered after the checkpoint loader: sees the restored state
    def _after_load(engine: Engine) -> None:
        record["start_epoch"].append(engine.state.epoch)
        record["start_iteration"].append(engine.state.iteration)
        record["weights"].append({k: v.clone() for k, v in net.state_dict().items()})

    second.add_event_handler(Events.EPOCH_STARTED, lambda e: record["epochs"].append(e.state.epoch))
    second.add_event_handler(Events.ITERATION_COMPLETED, lambda e: record["iters"].append(e.state.iteration))
    second.run()

    assert record["start_epoch"] == [3] and record["start_iteration"] == [3 * ITERS_PER_EPOCH]
    for k, v in record["weights"][0].items():
        torch.testing.assert_close(v, saved["model"][k], rtol=0, atol=0)
    assert opt.state_dict()["state"]  # optimizer state restored and used
    assert record["epochs"] == [4, 5]
    assert len(record["iters"]) == 2 * ITERS_PER_EPOCH
    assert record["iters"] == list(range(3 * ITERS_PER_EPOCH + 1, 5 * ITERS_PER_EPOCH + 1))
    assert second.state.epoch == 5
    assert (tmp_path / "checkpoint_epoch=5.pt").is_file()
    assert TrainingCheckpoint(tmp_path, net, opt).latest() == tmp_path / "checkpoint_epoch=5.pt"


def test_resume_matches_uninterrupted_training(tmp_path: Path) -> None:
    """3 epochs + resume to 5 gives the same weights as 5 epochs in one go (model, momentum and epoch restored)."""
    straight, straight_net, *_ = _trainer(tmp_path / "straight", max_epochs=5)
    straight.run()
    first, *_ = _trainer(tmp_path / "resumed", max_epochs=3)
    first.run()
    second, resumed_net, *_ = _trainer(tmp_path / "resumed", max_epochs=5, resume=True, seed=7)
    second.run()
    for k, v in straight_net.state_dict().items():
        torch.testing.assert_close(resumed_net.state_dict()[k], v)


def test_resume_without_checkpoint_starts_from_scratch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer, *_ = _trainer(tmp_path, max_epochs=2, resume=True)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        trainer.run()
    assert "no checkpoint" in caplog.text
    assert epochs == [1, 2]
    assert (tmp_path / "checkpoint_epoch=2.pt").is_file()


def test_new_training_archives_previous_checkpoints(tmp_path):
    """A non-resumed training moves an earlier training's files aside instead of deleting or mixing with them."""
    import torch
    from ignite.engine import Engine

    from pipeline.training.handlers import TrainingCheckpoint

    (tmp_path / "checkpoint_epoch=20.pt").write_bytes(b"old")
    (tmp_path / "model.pt").write_bytes(b"old best")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = Engine(lambda e, b: None)
    handler = TrainingCheckpoint(tmp_path, model, opt, interval=1, resume=False)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=2)
    archived = list((tmp_path / "previous").glob("*/*.pt"))
    assert sorted(p.name for p in archived) == ["checkpoint_epoch=20.pt", "model.pt"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]


# ----------------------------------------------------------------------------------------------- random states
def _augmented_loader(seed: int = 0, generator: bool = False) -> DataLoader:
    from monai.data import Dataset
    from monai.transforms import Compose, RandFlipd, RandGaussianNoised

    torch.manual_seed(seed)
    transform = Compose([RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                         RandGaussianNoised(keys="image", prob=1.0, std=0.1)])
    kwargs = {"generator": torch.Generator().manual_seed(seed)} if generator else {}
    return DataLoader(Dataset(_data(), transform=transform), batch_size=BATCH, shuffle=True, **kwargs)


def _epoch_images(loader: DataLoader) -> torch.Tensor:
    return torch.cat([batch["image"] for batch in loader])


@pytest.mark.parametrize("generator", [False, True])
def test_random_states_round_trip(generator: bool) -> None:
    loader = _augmented_loader(generator=generator)
    states = RandomStates(loader)
    found = states.generators()
    assert sum(isinstance(g, np.random.RandomState) for g in found) >= 3  # Compose, its transforms (and theirs)
    assert any(isinstance(g, torch.Generator) for g in found) == generator
    _epoch_images(loader)  # move every generator away from its seed
    saved = states.state_dict()
    first = _epoch_images(loader)
    assert not torch.equal(first, _epoch_images(loader))  # shuffling and noise change every epoch
    states.load_state_dict(saved)
    torch.testing.assert_close(_epoch_images(loader), first, rtol=0, atol=0)

    # the states survive a weights-only checkpoint file, and a fresh loader built from the same config follows them
    other = _augmented_loader(seed=5, generator=generator)
    fresh = RandomStates(other)
    buffer = __import__("io").BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(_epoch_images(other), first, rtol=0, atol=0)


def test_random_states_of_a_different_pipeline_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    saved = RandomStates(_augmented_loader()).state_dict()
    plain = DataLoader(_data(), batch_size=BATCH, shuffle=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        RandomStates(plain).load_state_dict(saved)  # global states restored, transform states skipped
    assert "random generator" in caplog.text
    torch.testing.assert_close(torch.get_rng_state(), saved["torch"])


def test_random_states_follow_an_engine_loader() -> None:
    loader = _augmented_loader()
    trainer, *_ = _trainer(Path("unused"), max_epochs=1)
    trainer.data_loader = loader
    assert RandomStates(trainer).generators() == RandomStates(loader).generators()


def test_checkpoint_epoch() -> None:
    assert checkpoint_epoch({"iteration": 12, "epoch_length": 4, "max_epochs": 9}) == 3
    assert checkpoint_epoch({"epoch": 5, "epoch_length": 4, "max_epochs": 9}) == 5


def _shuffled_trainer(save_dir: Path, max_epochs: int, resume: bool = False, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=max_epochs, network=net, optimizer=opt,
                                train_data_loader=_augmented_loader(seed), loss_function=torch.nn.MSELoss())
    checkpoint = TrainingCheckpoint(save_dir, net, opt, resume=resume, **kwargs)
    checkpoint.attach(trainer)
    return trainer, net, checkpoint


def test_resume_with_shuffling_and_augmentation_matches_uninterrupted(tmp_path: Path) -> None:
    """The random generators are part of the checkpoint: shuffled, augmented training resumes exactly."""
    straight, straight_net, _ = _shuffled_trainer(tmp_path / "straight", max_epochs=5)
    straight.run()
    _shuffled_trainer(tmp_path / "resumed", max_epochs=3)[0].run()
    second, net, checkpoint = _shuffled_trainer(tmp_path / "resumed", max_epochs=5, resume=True, seed=3)
    second.run()
    assert checkpoint.resumed_epoch == 3 and checkpoint.resumed_run_id is None
    for k, v in straight_net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)


def test_resume_from_a_checkpoint_without_random_states(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _shuffled_trainer(tmp_path, max_epochs=2, save_rng=False)[0].run()
    assert "rng" not in torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        trainer, *_ = _shuffled_trainer(tmp_path, max_epochs=3, resume=True)
        trainer.run()
    assert "no random generator states" in caplog.text
    assert trainer.state.epoch == 3


class _StubTracker:
    """What TrainingCheckpoint and OverlaySaver use of an MLflowTracker."""

    def __init__(self, store_dir: Path, run_id: str = "run-1", trainer: Any = None) -> None:
        self.run_id, self.run_name, self.experiment_name, self.store_dir = run_id, "name-1", "exp", store_dir
        self.trainer = trainer
        self.callbacks: list = []
        self.resumed: list[tuple[str, int]] = []
        self.logged: list[tuple[Path, str | None]] = []

    def add_end_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def resume_run(self, run_id: str, epoch: int) -> None:
        self.resumed.append((run_id, epoch))

    def log_artifact(self, path, artifact_path=None) -> None:
        path = Path(path)
        self.logged.append((path.name, artifact_path, path.read_bytes()))


def test_checkpoint_names_the_run_and_resume_hands_it_to_the_tracker(tmp_path: Path) -> None:
    tracker = _StubTracker(tmp_path / "mlruns")
    trainer, net, _ = _shuffled_trainer(tmp_path / "ckpt", max_epochs=2, tracker=tracker)
    trainer.run()
    state = torch.load(tmp_path / "ckpt" / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["mlflow"]["run_id"] == "run-1" and state["mlflow"]["run_name"] == "name-1"
    assert state["mlflow"]["experiment_name"] == "exp" and state["mlflow"]["tracking_uri"].startswith("sqlite:///")
    # the end-of-run callback logs the final weights
    (callback,) = tracker.callbacks
    callback(tracker)
    ((name, folder, payload),) = tracker.logged
    assert (name, folder) == ("final_model.pt", "model")
    weights = torch.load(__import__("io").BytesIO(payload), weights_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)

    again = _StubTracker(tmp_path / "mlruns", run_id=None)
    _, _, checkpoint = _shuffled_trainer(tmp_path / "ckpt", max_epochs=4, resume=True, tracker=again)
    assert again.resumed == [("run-1", 2)]  # at attach time, before the trainer (and the tracker) start
    assert checkpoint.resumed_run_id == "run-1"
    fresh = _StubTracker(tmp_path / "mlruns")
    _shuffled_trainer(tmp_path / "ckpt", max_epochs=4, resume=False, tracker=fresh)
    assert fresh.resumed == []  # without resume: never a continued run


# ----------------------------------------------------------------------------------------------- best validation
class _ScriptedScore(Metric):
    """A key metric whose value is scripted per trainer epoch (the evaluator runs at the trainer's epoch)."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores, self.engine = scores, None
        super().__init__()

    def reset(self) -> None:
        pass

    def update(self, output: Any) -> None:
        pass

    def compute(self) -> float:
        return self.scores[self.engine.state.epoch]


SCORES = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.95, 5: 0.7}


def _validated_trainer(save_dir: Path, max_epochs: int, resume: bool = False, seed: int = 0, best: bool = True):
    """A training validated every epoch with scripted scores, whose key-metric CheckpointSaver writes model.pt."""
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    score = _ScriptedScore(SCORES)
    best_saver = CheckpointSaver(save_dir=str(save_dir), save_dict={"model": net}, save_key_metric=True,
                                 key_metric_filename="model.pt")
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(_data()[:2], batch_size=2),
                                    network=net, key_val_metric={"val_dice": score}, val_handlers=[best_saver])
    score.engine = evaluator
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=DataLoader(_data(), batch_size=BATCH),
        network=net, optimizer=opt, loss_function=torch.nn.MSELoss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    kwargs = {"best_saver": best_saver, "evaluator": evaluator} if best else {}
    TrainingCheckpoint(save_dir, net, opt, resume=resume, **kwargs).attach(trainer)
    record: dict[str, dict] = {"weights": {}, "model_pt": {}, "best": {}}

    @trainer.on(Events.EPOCH_COMPLETED)  # after the validation of the epoch
    def _record(engine: Engine) -> None:
        epoch = engine.state.epoch
        record["weights"][epoch] = {k: v.clone() for k, v in net.state_dict().items()}
        record["model_pt"][epoch] = torch.load(save_dir / "model.pt", map_location="cpu", weights_only=True)
        record["best"][epoch] = (evaluator.state.best_metric, evaluator.state.best_metric_epoch)

    return trainer, record


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_validation_model_survives_a_resume(tmp_path: Path) -> None:
    """Scores 0.5, 0.9, [stop], 0.6, 0.95, 0.7: after the resume the worse 0.6 epoch keeps the 0.9 epoch's model.pt
    and the best score; the better 0.95 epoch replaces them."""
    first, before = _validated_trainer(tmp_path, max_epochs=2)
    first.run()
    assert _same(before["model_pt"][2], before["weights"][2]) and not _same(before["weights"][1], before["weights"][2])
    state = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)["best_validation"]
    assert state == {"saved": [[0.9, "model_key_metric=0.9000.pt"]], "best_metric": 0.9, "best_metric_epoch": 2}

    second, after = _validated_trainer(tmp_path, max_epochs=5, resume=True, seed=1)
    second.run()
    assert sorted(after["model_pt"]) == [3, 4, 5]
    assert _same(after["model_pt"][3], before["weights"][2])  # 0.6 < 0.9: not overwritten
    assert not _same(after["weights"][3], before["weights"][2])
    assert after["best"][3] == (0.9, 2)
    assert _same(after["model_pt"][4], after["weights"][4]) and after["best"][4] == (0.95, 4)  # better: replaced
    assert _same(after["model_pt"][5], after["weights"][4]) and after["best"][5] == (0.95, 4)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=5.pt", "model.pt"]


def test_resume_from_a_checkpoint_without_best_validation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An older checkpoint (no best score) still resumes, with a warning; the next validation then saves model.pt."""
    first, before = _validated_trainer(tmp_path, max_epochs=2, best=False)
    first.run()
    assert "best_validation" not in torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        second, after = _validated_trainer(tmp_path, max_epochs=3, resume=True)
        second.run()
    assert "best score before the resume is unknown" in caplog.text
    assert second.state.epoch == 3 and _same(after["model_pt"][3], after["weights"][3]) and after["best"][3] == (0.6, 3)


def test_resume_with_the_best_model_file_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _validated_trainer(tmp_path, max_epochs=2)[0].run()
    (tmp_path / "model.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.training.handlers"):
        second, after = _validated_trainer(tmp_path, max_epochs=3, resume=True)
        second.run()
    assert "not found" in caplog.text
    assert _same(after["model_pt"][3], after["weights"][3])  # saved again, not a crash on removing the old file
    with pytest.raises(ValueError, match="save_key_metric"):
        TrainingCheckpoint(tmp_path, torch.nn.Linear(1, 1), None, best_saver=CheckpointSaver(str(tmp_path), {"m": torch.nn.Linear(1, 1)}))


# ----------------------------------------------------------------------------------------------- overlays
class _FakeTrainer:
    def __init__(self, max_epochs: int) -> None:
        self.state = type("State", (), {"epoch": 0, "max_epochs": max_epochs})()


def _overlay_evaluator() -> Engine:
    """An evaluator whose output is its batch's image, label and prediction (as MONAI's, decollated)."""

    def step(engine: Engine, batch: list[dict]) -> list[dict]:
        return [{k: item[k] for k in ("image", "label", "pred")} for item in batch]

    return Engine(step)


def _volume_item(case: str) -> dict:
    label = torch.zeros(3, 16, 16, 6)
    label[0] = 1
    label[:, 4:10, 4:10, 2:5] = torch.tensor([0.0, 1.0, 0.0])[:, None, None, None]
    label[:, 6:8, 6:8, 3] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    return {"case": case, "image": torch.rand(1, 16, 16, 6), "label": label, "pred": label.clone()}


def test_overlays_every_interval_and_at_the_end(tmp_path: Path) -> None:
    trainer = _FakeTrainer(max_epochs=5)
    tracker = _StubTracker(tmp_path, trainer=trainer)
    saver = OverlaySaver(tmp_path / "eval", tracker=tracker, interval=2, num_cases=2, num_slices=3)
    evaluator = _overlay_evaluator()
    saver.attach(evaluator)
    data = [[_volume_item("a"), _volume_item("b")], [_volume_item("c")]]
    for epoch in range(1, 6):
        trainer.state.epoch = epoch
        evaluator.run(data, max_epochs=1)
    folders = sorted(p.name for p in (tmp_path / "eval" / "overlays").iterdir())
    assert folders == ["epoch=0002", "epoch=0004", "epoch=0005"]
    assert sorted(p.name for p in (tmp_path / "eval" / "overlays" / "epoch=0004").iterdir()) == ["a.png", "b.png"]
    assert [(name, folder) for name, folder, _ in tracker.logged] == [
        (f"{c}.png", f"overlays/epoch={e:04d}") for e in (2, 4, 5) for c in ("a", "b")]
    assert all(payload[:8] == b"\x89PNG\r\n\x1a\n" for _, _, payload in tracker.logged)


def test_overlays_of_2d_cases_and_of_a_lone_evaluator(tmp_path: Path) -> None:
    item = {"case": "slice/7", "image": torch.rand(2, 12, 12), "label": (torch.rand(1, 12, 12) > 0.5).float(),
            "pred": torch.zeros(1, 12, 12)}
    saver = OverlaySaver(tmp_path, num_cases=1)
    evaluator = _overlay_evaluator()
    saver.attach(evaluator)
    evaluator.run([[item, item]], max_epochs=1)
    assert saver.written == [tmp_path / "overlays" / "slice_7.png"]
    with pytest.raises(ValueError):
        OverlaySaver(tmp_path, interval=-1)
