"""Tests of the ``varseg`` command line: ``runs`` (tracked runs + UI command) and ``ui``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from pipeline import cli
from pipeline.cli import main
from pipeline.training.tracking import MLflowTracker


pytestmark = pytest.mark.usefixtures("fast_sqlite")


@pytest.fixture
def empty_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("VARSEG_MLRUNS", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return store


@pytest.fixture(scope="module")
def _shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli") / "mlruns"


@pytest.fixture
def store(_shared_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One store for the tests that add runs (each uses its own experiments): the schema is created once."""
    monkeypatch.setenv("VARSEG_MLRUNS", str(_shared_store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return _shared_store


def _train_with_tracker(experiment: str, epochs: int = 3) -> MLflowTracker:
    """A tiny trainer + evaluator (val_dice = 0.5 + 0.1 * epoch) tracked by MLflowTracker."""
    torch.manual_seed(0)
    data = [{"image": torch.rand(1, 4, 4), "label": torch.rand(1, 4, 4)} for _ in range(2)]
    net = torch.nn.Conv2d(1, 1, 1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=2),
                                    network=net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=DataLoader(data, batch_size=2), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_dice=0.5 + 0.1 * trainer.state.epoch)
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(train_loss=0.25))
    tracker = MLflowTracker(experiment, bundle="clitest", log_config=False)
    tracker.attach(trainer)
    tracker.attach(evaluator)
    trainer.run()
    return tracker


def test_runs_on_empty_store(empty_store: Path, capsys: pytest.CaptureFixture) -> None:
    store = empty_store
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    db = store.resolve() / "mlflow.db"
    assert f"MLflow store: sqlite:///{db}" in out
    assert f"artifacts:    {(store.resolve() / 'artifacts').as_uri()}" in out
    ui = re.search(r"open the UI:\s+(.*)", out)
    assert ui is not None
    exe, rest = ui.group(1).split(" ", 1)
    assert Path(exe).name == "mlflow" and shutil.which(exe) is not None  # a command that runs as printed
    assert rest == f"ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
    assert "http://127.0.0.1:5000" in out
    assert db.is_file()


def test_runs_lists_tracked_run_with_history(store: Path, capsys: pytest.CaptureFixture) -> None:
    tracker = _train_with_tracker("varseg-cli")
    capsys.readouterr()
    assert main(["runs", "--experiment", "varseg-cli"]) == 0
    out = capsys.readouterr().out
    assert "experiment 'varseg-cli'" in out and "newest 1 run(s)" in out
    line = next(ln for ln in out.splitlines() if tracker.run_name in ln)
    assert "[FINISHED]" in line and f"id={tracker.run_id}" in line
    assert "val_dice=0.8000" in line and "train_loss=0.2500" in line
    assert "val_dice per epoch (3 values): 0.600 0.700 0.800" in out
    assert "Default" not in out  # only the requested experiment
    assert "--host 127.0.0.1" in out


def test_runs_last_and_all_experiments(store: Path, capsys: pytest.CaptureFixture) -> None:
    names = []
    for i in range(3):
        tracker = MLflowTracker("exp-a", run_name=f"run-{i}", log_config=False)
        tracker.start_run()
        tracker.log_metrics({"val_dice": 0.1 * (i + 1)}, step=1)
        tracker.end_run()
        names.append(tracker.run_name)
    other = MLflowTracker("exp-b", run_name="only-b", log_config=False)
    other.start_run()
    other.end_run("FAILED")

    assert main(["runs", "--experiment", "exp-a", "--last", "2"]) == 0
    out = capsys.readouterr().out
    assert "newest 2 run(s)" in out
    assert "run-2" in out and "run-1" in out and "run-0" not in out
    assert out.index("run-2") < out.index("run-1")  # newest first

    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "experiment 'exp-a'" in out and "experiment 'exp-b'" in out
    assert "only-b  [FAILED]" in out


def test_runs_unknown_experiment(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["runs", "--experiment", "does-not-exist"]) == 1
    captured = capsys.readouterr()
    assert "no experiment named 'does-not-exist'" in captured.err
    assert "open the UI" not in captured.out


def test_runs_with_env_tracking_uri(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """MLFLOW_TRACKING_URI (here the shared store's database by its own URI) wins over VARSEG_MLRUNS."""
    _train_with_tracker("varseg-env", epochs=1)
    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    unused = tmp_path / "unused"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VARSEG_MLRUNS", str(unused))
    assert main(["runs", "--experiment", "varseg-env"]) == 0
    out = capsys.readouterr().out
    assert f"MLflow store: {uri}" in out and "artifacts:" not in out
    assert "val_dice per epoch (1 values): 0.600" in out
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000" in out  # the executable ends in mlflow
    assert not unused.exists()


def test_ui_command_binds_localhost(empty_store: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["ui", "--port", "5055"]) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{empty_store.resolve() / 'mlflow.db'}"
    assert " ".join(cmd) in capsys.readouterr().out


def test_bad_arguments_exit() -> None:
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["runs", "--last", "many"])


def test_make_data_writes_brats_phantoms(tmp_path):
    assert main(["make-data", "brats", str(tmp_path), "--num-cases", "1", "--shape", "32", "32", "24"]) == 0
    case = tmp_path / "brats_000"
    assert sorted(p.name for p in case.iterdir()) == [
        f"brats_000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")
    ]


def test_override_keys_known_nested_and_close_matches(tmp_path):
    from pipeline.io.arguments import OverrideError, check_override_keys, config_keys

    config = tmp_path / "c.json"
    config.write_text('{"max_epochs": 2, "train": {"handlers": [{"interval": 1}]}, "features": 4}')
    known = config_keys([config])
    assert {"max_epochs", "train", "train#handlers", "train#handlers#0", "train#handlers#0#interval"} <= known
    check_override_keys(["max_epochs", "train#handlers#0#interval"], known, "bundle x")  # no error
    expected = r"--max_epoch for bundle x \(no config of it defines this key\); closest known: --max_epochs"
    with pytest.raises(OverrideError, match=expected):
        check_override_keys(["max_epoch"], known, "bundle x")
    with pytest.raises(OverrideError, match="closest known: --"):
        check_override_keys(["zzz"], known, "bundle x")
