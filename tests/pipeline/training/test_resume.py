"""Resuming a training continues the same MLflow run and ends with an uninterrupted run's metric history.

End to end on a tiny LiTS config (8 synthetic 32×32×8 phantoms, 4 features, 4 epochs, a checkpoint every epoch):

* run A trains 4 epochs in one go;
* run B is the same command, SIGKILLed by a config override right after the validation of epoch 3 was logged,
  i.e. after the checkpoint of epoch 2 and *before* that of epoch 3, so the store holds metric points (step 3) that
  the resumed process computes again; ``--resume true`` then finishes it.

B ends FINISHED under its first run id, with each step 1..4 logged once, and with A's values: the checkpoint carries
the random generator states (loader shuffling, augmentation), so on CPU with one thread the resumed epochs repeat A's
computation exactly (compared with a tight tolerance, not bit equality, only to be robust to float formatting).

An in-process test covers a crash (exception, run FAILED) with a checkpoint every 2 epochs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from pipeline.data.lits import generate_lits_phantoms
from pipeline.training.handlers import TrainingCheckpoint
from pipeline.training.tracking import MLflowTracker

REPO = Path(__file__).resolve().parents[3]
TRAIN = str(REPO / "bundles" / "lits" / "configs" / "train.json")
EPOCHS = 4
KEYS = ("train_loss", "lr", "val_dice", "val_dice_std", "val_jaccard", "val_dice_liver", "val_jaccard_liver")

# instantiate the trainer first (as the plain config does: the order decides which random numbers each object
# draws), then SIGKILL the process once the tracker logged the validation of epoch 3, before its checkpoint
KILL_AFTER_EPOCH_3 = {
    "run": [
        "$@train#trainer",
        "$@validate#evaluator.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED, lambda e: "
        "os.kill(os.getpid(), 9) if @train#trainer.state.epoch == 3 else None)",
        "$@train#trainer.run()",
    ]
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    generate_lits_phantoms(data / "lits_synthetic", num_cases=8, shape=(32, 32, 8), seed=0, progress=False)
    env = {k: v for k, v in os.environ.items() if k != "VARSEG_MLRUNS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", VARSEG_DATA=str(data), PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    (root / "kill.json").write_text(json.dumps(KILL_AFTER_EPOCH_3))
    common = ["--synthetic_cases", "8", "--synthetic_shape", "[32,32,8]", "--features", "4", "--batch_size", "4",
              "--slice_stride", "1", "--learning_rate", "0.01", "--max_epochs", str(EPOCHS),
              "--checkpoint_interval", "1", "--overlay_interval", "2", "--num_threads", "1", "--seed", "0"]
    return {"root": root, "env": env, "common": common, "uri": env["MLFLOW_TRACKING_URI"]}


def _train(ws: dict, name: str, *extra: str, config: str = TRAIN) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *ws["common"],
           "--ckpt_dir", str(ws["root"] / name / "models"), "--output_dir", str(ws["root"] / name / "eval"), *extra]
    return subprocess.run(cmd, cwd=REPO, env=ws["env"], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=600)


def _client(ws: dict) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=ws["uri"])


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _train_runs(ws: dict) -> list:
    client = _client(ws)
    exp = client.get_experiment_by_name("varseg-lits")
    return client.search_runs([exp.experiment_id], filter_string="tags.workflow = 'train'",
                              order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def straight(workspace: dict) -> str:
    proc = _train(workspace, "a")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = _train_runs(workspace)
    return run.info.run_id


@pytest.fixture(scope="module")
def resumed(workspace: dict, straight: str) -> dict:
    killed = _train(workspace, "b", config=f"['{TRAIN}','{workspace['root'] / 'kill.json'}']")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (killed.returncode, killed.stderr[-4000:])
    client = _client(workspace)
    (run,) = [r for r in _train_runs(workspace) if r.info.run_id != straight]
    at_kill = {
        "status": run.info.status,
        "checkpoints": sorted(p.name for p in (workspace["root"] / "b" / "models").glob("checkpoint_epoch=*.pt")),
        "val_dice_steps": [s for s, _ in _history(client, run.info.run_id, "val_dice")],
    }
    proc = _train(workspace, "b", "--resume", "true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"run_id": run.info.run_id, "at_kill": at_kill}


def test_killed_run_stopped_between_logging_and_checkpoint(resumed: dict) -> None:
    # SIGKILL runs no clean-up: the run stays RUNNING; epoch 3 was logged but only epoch 2 was checkpointed
    assert resumed["at_kill"] == {"status": "RUNNING", "checkpoints": ["checkpoint_epoch=2.pt"],
                                  "val_dice_steps": [1, 2, 3]}


def test_resume_finishes_the_same_run(workspace: dict, straight: str, resumed: dict) -> None:
    runs = _train_runs(workspace)
    assert [r.info.run_id for r in runs] == [straight, resumed["run_id"]]  # no third run
    run = _client(workspace).get_run(resumed["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["resume_count"] == "1" and tags["resumed_from_epoch"] == "2"
    (entry,) = json.loads(tags["resume_history"])
    assert entry["epoch"] == 2 and entry["previous_status"] == "RUNNING" and entry["removed_points"] > 0
    # params are those of the first start; what changed on resume is a tag
    assert run.data.params["resume"] == "false" and tags["resume.param.resume"] == "true"
    assert (workspace["root"] / "b" / "models" / "checkpoint_epoch=4.pt").is_file()


def test_history_has_every_step_once_and_equals_the_uninterrupted_run(workspace: dict, straight: str,
                                                                      resumed: dict) -> None:
    client = _client(workspace)
    for key in KEYS:
        a = _history(client, straight, key)
        b = _history(client, resumed["run_id"], key)
        assert [s for s, _ in a] == list(range(1, EPOCHS + 1)), key
        assert [s for s, _ in b] == list(range(1, EPOCHS + 1)), key  # no duplicate, no gap
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=1e-7, err_msg=key)
    assert max(v for _, v in _history(client, straight, "val_dice")) > 0.1  # a history worth comparing
    latest_a = client.get_run(straight).data.metrics
    latest_b = client.get_run(resumed["run_id"]).data.metrics
    assert set(latest_a) == set(latest_b)
    for key, value in latest_a.items():
        assert latest_b[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_both_runs_log_the_complete_artifacts(workspace: dict, straight: str, resumed: dict) -> None:
    client = _client(workspace)
    for run_id in (straight, resumed["run_id"]):
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"config", "overlays", "model", "model.pt", "per_case_val_metrics.csv"} <= top
        overlays = {a.path for a in client.list_artifacts(run_id, "overlays")}
        assert overlays == {"overlays/epoch=0002", "overlays/epoch=0004"}  # every 2 epochs and the last
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/final_model.pt"]
        params = client.get_run(run_id).data.params
        for key in ("learning_rate", "ce_class_weights", "tv_weight", "beta", "features", "network", "optimizer",
                    "loss", "labelled_fraction", "dataset_dir", "synthetic_cases", "synthetic_shape",
                    "num_train_cases", "seed", "version.monai", "version.torch", "version.varseg", "git_commit"):
            assert key in params, key
    configs = {a.path for a in client.list_artifacts(resumed["run_id"], "config")}
    assert configs == {"config/merged_config.json", "config/resume_epoch=2"}


def test_best_validation_model_equals_the_uninterrupted_runs(workspace: dict, straight: str, resumed: dict) -> None:
    """The key-metric CheckpointSaver's best score is in the checkpoint: the resumed run keeps the model.pt (and the
    best score and epoch) an uninterrupted run ends with."""
    best_step, best = max(_history(_client(workspace), straight, "val_dice"), key=lambda point: point[1])
    models = {name: workspace["root"] / name / "models" for name in ("a", "b")}
    for folder in models.values():
        state = torch.load(folder / f"checkpoint_epoch={EPOCHS}.pt", weights_only=True)["best_validation"]
        assert state["best_metric_epoch"] == best_step and state["best_metric"] == pytest.approx(best, rel=1e-6)
        assert [p for p, _ in state["saved"]] == [pytest.approx(best, rel=1e-6)]
    a, b = (torch.load(folder / "model.pt", weights_only=True) for folder in models.values())
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------- in process
class _FailAt(torch.nn.Module):
    """MSE loss raising RuntimeError on call ``at`` (None: never)."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise RuntimeError("crash in epoch 4")
        return torch.nn.functional.mse_loss(pred, target)


def _training(tracker: MLflowTracker, ckpt: Path, resume: bool, fail_at: int | None = None):
    """A shuffled 1-layer training validated each epoch, checkpointed every 2 epochs; val_dice depends on the
    weights, so a resume that restored anything wrongly changes it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.randn(1, 4, 4, generator=g), "label": torch.randn(1, 4, 4, generator=g)}
            for _ in range(8)]
    net = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data[:2], batch_size=2),
                                    network=net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=6, train_data_loader=DataLoader(data, batch_size=2, shuffle=True),
        network=net, optimizer=opt, loss_function=_FailAt(fail_at),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    evaluator.add_event_handler(Events.EPOCH_COMPLETED,
                                lambda e: e.state.metrics.update(val_dice=float(net.weight.detach().sum())))
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda e: e.state.metrics.update(train_loss=float(e.state.output[0]["loss"])))
    tracker.attach(trainer)
    tracker.attach(evaluator)
    TrainingCheckpoint(ckpt, net, opt, interval=2, resume=resume, tracker=tracker).attach(trainer)
    return trainer


def test_crash_then_resume_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    straight = MLflowTracker("exp", bundle="unit")
    _training(straight, tmp_path / "a", resume=False).run()

    # 4 iterations per epoch: call 15 is in epoch 4, after epoch 3 was logged; the last checkpoint is epoch 2
    crashed = MLflowTracker("exp", bundle="unit")
    with pytest.raises(RuntimeError, match="crash in epoch 4"):
        _training(crashed, tmp_path / "b", resume=False, fail_at=15).run()
    run = client.get_run(crashed.run_id)
    assert run.info.status == "FAILED" and "crash in epoch 4" in run.data.tags["error"]
    assert [s for s, _ in _history(client, crashed.run_id, "val_dice")] == [1, 2, 3]

    again = MLflowTracker("exp", bundle="unit")
    _training(again, tmp_path / "b", resume=True).run()
    assert again.run_id == crashed.run_id and again.resumed_from_epoch == 2
    run = client.get_run(crashed.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    (entry,) = json.loads(run.data.tags["resume_history"])
    assert entry["previous_status"] == "FAILED" and "crash in epoch 4" in entry["previous_error"]
    assert entry["removed_points"] == 3  # val_dice, train_loss and lr of epoch 3
    for key in ("val_dice", "train_loss", "lr"):
        a, b = _history(client, straight.run_id, key), _history(client, crashed.run_id, key)
        assert [s for s, _ in b] == [1, 2, 3, 4, 5, 6], key
        np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, err_msg=key)
    assert client.get_run(crashed.run_id).data.metrics["val_dice"] == pytest.approx(
        client.get_run(straight.run_id).data.metrics["val_dice"])

    # a new training in the same folder without resume is a new run, even though a checkpoint is there
    fresh = MLflowTracker("exp", bundle="unit")
    _training(fresh, tmp_path / "b", resume=False).run()
    assert fresh.run_id not in (crashed.run_id, straight.run_id)
    assert client.get_run(fresh.run_id).info.status == "FINISHED"
