"""Tests of MLflow tracking: store location, run names, params, and MLflowTracker on MONAI engines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import monai
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from pipeline.training import tracking
from pipeline.training.tracking import MLflowTracker, flatten_params, make_run_name, tracking_uri


pytestmark = pytest.mark.usefixtures("fast_sqlite")


@pytest.fixture
def local_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("VARSEG_MLRUNS", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return store


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite store for all tracker tests of this module (creating the MLflow schema takes seconds)."""
    store = tmp_path_factory.mktemp("tracking") / "mlruns"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VARSEG_MLRUNS", str(store))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield store


@pytest.fixture
def store(shared_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # re-assert the environment for this test (a function-level monkeypatch elsewhere restores it anyway)
    monkeypatch.setenv("VARSEG_MLRUNS", str(shared_store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return shared_store


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """A fresh experiment name per test (the store is shared)."""
    return "exp-" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def _runs(name: str) -> list:
    client = _client()
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"experiment {name} not created"
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client().get_metric_history(run_id, key))


# ----------------------------------------------------------------------------------------------- store location
def test_tracking_uri_is_sqlite_under_store(local_store: Path) -> None:
    assert not local_store.exists()
    uri = tracking_uri()
    assert uri == f"sqlite:///{local_store.resolve() / 'mlflow.db'}"
    assert local_store.is_dir()  # created
    assert tracking.default_store_dir() == local_store.resolve()
    assert tracking.artifact_location() == (local_store.resolve() / "artifacts").as_uri()


def test_tracking_uri_explicit_store_dir(local_store: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert tracking_uri(other) == f"sqlite:///{other.resolve() / 'mlflow.db'}"
    assert tracking.artifact_location(other) == (other.resolve() / "artifacts").as_uri()


@pytest.mark.parametrize("env", ["file:///tmp/mlruns", "file:mlruns", "mlruns", "/tmp/some/folder", "./mlruns"])
def test_file_store_uri_refused(local_store: Path, monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    with pytest.raises(ValueError, match="sqlite"):
        tracking_uri()


@pytest.mark.parametrize("env", ["sqlite:////tmp/shared/mlflow.db", "http://127.0.0.1:5000",
                                 " https://mlflow.example "])
def test_env_uri_wins(local_store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert tracking_uri() == env.strip()
    assert tracking_uri(tmp_path / "ignored") == env.strip()
    assert tracking.artifact_location() is None  # the server decides
    assert not local_store.exists()


def test_blank_env_uri_is_ignored(local_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")
    assert tracking_uri().startswith("sqlite:///")


def test_ui_command_binds_localhost(local_store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cmd = tracking.ui_command(port=5123)
    exe, cmd = cmd.split(" ", 1)
    assert Path(exe).name == "mlflow"
    assert cmd.startswith("ui --backend-store-uri sqlite:///")
    assert "--host 127.0.0.1" in cmd and cmd.endswith("--port 5123")
    monkeypatch.chdir(tmp_path)  # store below the working directory: a relative path
    expected = "ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000"
    assert tracking.ui_command().split(" ", 1)[1] == expected


# ----------------------------------------------------------------------------------------------- names, params
def test_make_run_name_parts_and_format() -> None:
    name = make_run_name("lits", "train", None, "", "ms", 1 / 3, 2, "lab1of3")
    assert re.fullmatch(r"lits-train-ms-0\.333-2-lab1of3-\d{8}-\d{6}-[0-9a-f]{4}", name), name
    assert re.fullmatch(r"solo-\d{8}-\d{6}-[0-9a-f]{4}", make_run_name("solo"))


def test_make_run_name_unique_over_many_calls() -> None:
    names = [make_run_name("lits", "train", 0.1) for _ in range(3000)]
    assert len(set(names)) == len(names)
    assert all(n.startswith("lits-train-0.1-") for n in names)


def test_flatten_params() -> None:
    params = {
        "lr": 0.001,
        "epochs": 3,
        "amp": True,
        "name": "ms",
        "nothing": None,
        "loss": {"beta": 0.5, "ms": {"lambda": 1e-3, "order": "l1"}},
        "channels": [16, 32, 64],
        "stages": [{"k": 3}, {"k": 5, "sub": {"x": 1}}],
        "empty_list": [],
        "empty": {},
        "path": Path("/a/b"),
        "long": "x" * 7000,
    }
    flat = flatten_params(params)
    assert flat["lr"] == "0.001" and flat["epochs"] == "3" and flat["amp"] == "true"
    assert flat["name"] == "ms" and flat["nothing"] == "null"
    assert flat["loss.beta"] == "0.5" and flat["loss.ms.lambda"] == "0.001" and flat["loss.ms.order"] == "l1"
    assert json.loads(flat["channels"]) == [16, 32, 64]
    assert flat["stages.0.k"] == "3" and flat["stages.1.k"] == "5" and flat["stages.1.sub.x"] == "1"
    assert flat["empty_list"] == "[]" and "empty" not in flat
    assert flat["path"] == json.dumps("/a/b")
    assert len(flat["long"]) == 6000
    assert all(isinstance(v, str) for v in flat.values())
    assert flatten_params({"a": {"b": 1}}, prefix="cfg.") == {"cfg.a.b": "1"}


# ----------------------------------------------------------------------------------------------- MLflowTracker
class Failing(torch.nn.Module):
    """MSE loss that raises ``exc`` on its ``at``-th call (None: never)."""

    def __init__(self, at: int | None = None, exc: BaseException | None = None) -> None:
        super().__init__()
        self.at, self.exc, self.calls = at, exc, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise self.exc
        return torch.nn.functional.mse_loss(pred, target)


def _engines(tracker: MLflowTracker, max_epochs: int = 3, loss: torch.nn.Module | None = None):
    """A 1-layer trainer validated every epoch by an evaluator whose ``val_dice`` is 0.5 + 0.1 * trainer epoch."""
    torch.manual_seed(0)
    data = [{"image": torch.rand(1, 4, 4), "label": torch.rand(1, 4, 4)} for _ in range(4)]
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=2),
                                    network=net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=DataLoader(data, batch_size=2),
        network=net, optimizer=opt, loss_function=loss or Failing(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    # metric handlers are registered before the tracker, as MONAI's metric handlers are
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_dice=0.5 + 0.1 * trainer.state.epoch)
    )
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: e.state.metrics.update(train_loss=1.0 / e.state.epoch, nan_metric=float("nan")),
    )
    tracker.attach(trainer)
    tracker.attach(evaluator)
    return trainer, evaluator


HPARAMS = {"lr": 0.05, "loss": {"name": "ms", "beta": 0.25}, "channels": [8, 16]}


def test_tracker_logs_one_finished_run(store: Path, experiment: str, tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("hello")
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    callback_calls = []

    def callback(t: MLflowTracker) -> None:
        callback_calls.append(t.run_id)
        t.log_dict({"answer": 42}, "extra/summary.json")

    tracker = MLflowTracker(experiment, bundle="unit", params=HPARAMS, tags={"dataset": "toy"},
                            artifacts=[report, folder, tmp_path / "missing.txt"], artifact_callback=callback)
    trainer, _ = _engines(tracker)
    trainer.run()

    runs = _runs(experiment)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == tracker.run_id and run.info.run_name == tracker.run_name
    assert run.info.run_name.startswith("unit-")
    assert run.info.status == "FINISHED"
    assert run.data.tags["bundle"] == "unit" and run.data.tags["dataset"] == "toy"

    # metrics: validation at the trainer's epochs, trainer metrics and LR per epoch, NaN skipped
    assert _history(run.info.run_id, "val_dice") == [(1, pytest.approx(0.6)), (2, pytest.approx(0.7)),
                                                      (3, pytest.approx(0.8))]
    assert _history(run.info.run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert _history(run.info.run_id, "lr") == [(1, 0.05), (2, 0.05), (3, 0.05)]
    assert "nan_metric" not in run.data.metrics

    # params: the given hyperparameters (flattened) plus versions, git commit and engine lengths
    params = run.data.params
    assert params["lr"] == "0.05" and params["loss.name"] == "ms" and params["loss.beta"] == "0.25"
    assert json.loads(params["channels"]) == [8, 16]
    assert params["version.monai"] == monai.__version__ and params["version.torch"] == torch.__version__
    # (not compared with git_commit() now: others may edit the tree meanwhile and flip "-dirty")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", params["git_commit"]), params["git_commit"]
    assert params["git_commit"] != "unknown"  # the tests run inside the repository
    assert params["engine.max_epochs"] == "3" and params["engine.epoch_length"] == "2"

    # artifacts: in the store's artifacts/ folder
    assert callback_calls == [run.info.run_id]
    exp = _client().get_experiment_by_name(experiment)
    assert exp.artifact_location == (store.resolve() / "artifacts").as_uri()
    assert run.info.artifact_uri.startswith((store.resolve() / "artifacts").as_uri() + "/")
    art_root = Path(run.info.artifact_uri.removeprefix("file://"))
    assert art_root.is_dir() and (store / "artifacts") in art_root.parents
    assert (art_root / "report.txt").read_text() == "hello"
    assert (art_root / "figures" / "a.txt").read_text() == "a"
    assert json.loads((art_root / "extra" / "summary.json").read_text()) == {"answer": 42}
    listed = {a.path for a in _client().list_artifacts(run.info.run_id)}
    assert {"report.txt", "figures", "extra"} <= listed


def test_two_trainings_give_two_runs(store: Path, experiment: str) -> None:
    first, second = MLflowTracker(experiment, params={"seed": 1}), MLflowTracker(experiment, params={"seed": 2})
    _engines(first)[0].run()
    _engines(second)[0].run()
    runs = _runs(experiment)
    assert len(runs) == 2
    assert len({r.info.run_id for r in runs}) == 2 and len({r.info.run_name for r in runs}) == 2
    assert [r.data.params["seed"] for r in runs] == ["1", "2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [s for s, _ in _history(run.info.run_id, "val_dice")] == [1, 2, 3]


def test_same_tracker_run_twice_opens_a_new_run(store: Path, experiment: str) -> None:
    tracker = MLflowTracker(experiment)
    trainer, _ = _engines(tracker, max_epochs=2)
    trainer.run()
    first_id, first_name = tracker.run_id, tracker.run_name
    trainer.run()  # a finished run is never appended to
    runs = _runs(experiment)
    assert len(runs) == 2 and tracker.run_id != first_id and tracker.run_name != first_name
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [s for s, _ in _history(run.info.run_id, "val_dice")] == [1, 2]


def test_exception_marks_run_failed(store: Path, experiment: str) -> None:
    tracker = MLflowTracker(experiment)
    trainer, _ = _engines(tracker, loss=Failing(at=3, exc=RuntimeError("boom in iteration")))
    with pytest.raises(RuntimeError, match="boom in iteration"):
        trainer.run()
    (run,) = _runs(experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom in iteration"
    assert _history(run.info.run_id, "val_dice") == [(1, pytest.approx(0.6))]  # epoch 1 done, epoch 2 failed


def test_exception_in_evaluator_marks_run_failed(store: Path, experiment: str) -> None:
    tracker = MLflowTracker(experiment)
    trainer, evaluator = _engines(tracker)

    @evaluator.on(Events.ITERATION_STARTED)
    def _boom(engine) -> None:
        if trainer.state.epoch == 2:
            raise ValueError("bad validation batch")

    with pytest.raises(ValueError, match="bad validation batch"):
        trainer.run()
    (run,) = _runs(experiment)
    assert run.info.status == "FAILED"
    assert "bad validation batch" in run.data.tags["error"]


def test_keyboard_interrupt_marks_run_killed(store: Path, experiment: str) -> None:
    tracker = MLflowTracker(experiment)
    trainer, _ = _engines(tracker, loss=Failing(at=4, exc=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    (run,) = _runs(experiment)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith("KeyboardInterrupt")


def test_lone_evaluator_owns_the_run(store: Path, experiment: str) -> None:
    torch.manual_seed(0)
    data = [{"image": torch.rand(1, 4, 4), "label": torch.rand(1, 4, 4)} for _ in range(2)]
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=1),
                                    network=torch.nn.Identity())
    evaluator.add_event_handler(Events.EPOCH_COMPLETED,
                                lambda e: e.state.metrics.update(test_dice=0.9, test_dice_std=0.1, other=1.0))
    tracker = MLflowTracker(experiment, params={"split": "test"}, metric_names=["test_dice", "test_dice_std"])
    tracker.attach(evaluator)
    evaluator.run()
    (run,) = _runs(experiment)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"test_dice": 0.9, "test_dice_std": 0.1}
    assert _history(run.info.run_id, "test_dice") == [(0, 0.9)]
    assert run.data.params["split"] == "test"


# ----------------------------------------------------------------------------------------------- continuing a run
def _log_steps(run_id: str, key: str, steps: range, scale: float = 1.0) -> None:
    from mlflow.entities import Metric

    _client().log_batch(run_id, metrics=[Metric(key, scale * s, 1000 + s, s) for s in steps])


def test_truncate_metric_history_deletes_later_steps_and_fixes_latest(store: Path, experiment: str) -> None:
    client = _client()
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    _log_steps(run_id, "loss", range(1, 6))
    _log_steps(run_id, "loss", range(4, 6), scale=10.0)  # duplicates of steps 4, 5 (as a killed process leaves)
    _log_steps(run_id, "late", range(4, 6))
    assert tracking.truncate_metric_history(client, run_id, after_step=3) == 6
    assert _history(run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert _history(run_id, "late") == []
    assert client.get_run(run_id).data.metrics == {"loss": 3.0}  # latest value recomputed, "late" gone
    assert tracking.truncate_metric_history(client, run_id, after_step=3) == 0
    assert tracking.truncate_metric_history(object(), run_id, after_step=3) is None  # not an SQL store


def test_resume_run_continues_the_same_run(store: Path, experiment: str) -> None:
    first = MLflowTracker(experiment, params={"seed": 1, "resume": False})
    first_trainer, _ = _engines(first, loss=Failing(at=5, exc=RuntimeError("died")))
    with pytest.raises(RuntimeError):
        first_trainer.run()  # epochs 1, 2 logged, failed in epoch 3
    assert _client().get_run(first.run_id).info.status == "FAILED"

    again = MLflowTracker(experiment, params={"seed": 1, "resume": True, "new_param": 7})
    again.resume_run(first.run_id, epoch=1)
    trainer, _ = _engines(again)
    trainer.state.epoch, trainer.state.iteration = 1, 2  # as a checkpoint of epoch 1 would restore it
    trainer.run()  # logs steps 2, 3: the failed process's step 2 must not stay next to the new one
    assert again.run_id == first.run_id and again.run_name == first.run_name and again.resumed_from_epoch == 1
    (run,) = _runs(experiment)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(run.info.run_id, "val_dice")] == [1, 2, 3]
    assert [s for s, _ in _history(run.info.run_id, "train_loss")] == [1, 2, 3]
    tags, params = run.data.tags, run.data.params
    assert "error" not in tags and tags["resume_count"] == "1" and tags["resumed_from_epoch"] == "1"
    (entry,) = json.loads(tags["resume_history"])
    assert entry["previous_status"] == "FAILED" and entry["previous_error"] == "RuntimeError: died"
    assert entry["removed_points"] == 3  # val_dice, train_loss, lr of step 2
    assert params["resume"] == "false" and tags["resume.param.resume"] == "true"  # params never change
    assert params["seed"] == "1" and "resume.param.seed" not in tags and params["new_param"] == "7"

    # a second start of the same tracker without resume_run opens a new run again
    trainer.run()
    assert again.run_id != first.run_id and len(_runs(experiment)) == 2


def test_resume_of_a_missing_run_creates_a_new_one(store: Path, experiment: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    tracker = MLflowTracker(experiment)
    tracker.resume_run("0123456789abcdef0123456789abcdef", epoch=2)
    with caplog.at_level("WARNING", logger="pipeline.training.tracking"):
        _engines(tracker)[0].run()
    assert "cannot continue MLflow run" in caplog.text
    (run,) = _runs(experiment)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_run"] == "0123456789abcdef0123456789abcdef"
    assert [s for s, _ in _history(run.info.run_id, "val_dice")] == [1, 2, 3]
    with pytest.raises(ValueError):
        tracker.resume_run("", epoch=1)
