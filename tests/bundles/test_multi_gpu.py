"""Multi-process training: each bundle's ``multi_gpu_train.json`` under ``torchrun`` with two CPU processes.

On CPU the overlay picks the gloo backend, so the distributed code path (DistributedDataParallel, DistributedSampler,
metrics gathered over ranks, rank-0-only handlers) runs here exactly as it does with NCCL on GPUs. Each case trains
one epoch on tiny synthetic data and checks that the two processes created exactly one MLflow run (rank 0's), that
the run finished with metrics, and that the saved checkpoint loads into the plain, single-process network.
About 30 s per bundle on 2 CPU cores.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.entities import ViewType
from monai.bundle import ConfigParser

from pipeline.data.brats import generate_brats_phantoms
from pipeline.data.lits import generate_lits_phantoms
from pipeline.data.lung import generate_lung_phantoms
from pipeline.data.spect import generate_spect_phantoms

from bundle_utils import isolated_env

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


@dataclass
class Setup:
    """What one bundle's case runs: config files before the overlay, command-line overrides, where the model goes."""

    configs: list[str]
    overrides: list[str]
    ckpt_dir: Path
    network_overrides: dict[str, Any]
    num_val: int = 2


def _lits(root: Path) -> Setup:
    generate_lits_phantoms(root / "data", num_cases=6, shape=(64, 64, 8), seed=0, progress=False)
    overrides = ["--synthetic_dir", str(root / "data"), "--synthetic_cases", "6", "--synthetic_shape", "[64,64,8]",
                 "--val_fraction", "0.25", "--ckpt_dir", str(root / "models"), "--output_dir", str(root / "eval"),
                 "--features", "4", "--batch_size", "4"]
    return Setup(["train.json"], overrides, root / "models", {"features": 4})


def _spect(root: Path) -> Setup:
    generate_spect_phantoms(root / "data", num_cases=6, shape=(32, 32, 8), seed=0, progress=False)
    overrides = ["--synthetic_dir", str(root / "data"), "--synthetic_cases", "6", "--synthetic_shape", "[32,32,8]",
                 "--val_fraction", "0.34", "--models_root", str(root / "models"), "--output_dir", str(root / "eval"),
                 "--features", "4", "--batch_size", "8"]
    return Setup(["train.json"], overrides, root / "models" / "mode1", {"features": 4})


def _lung(root: Path) -> Setup:
    generate_lung_phantoms(root / "data", num_cases=5, shape=(64, 64, 12), seed=0, progress=False)
    overrides = ["--synthetic_dir", str(root / "data"), "--synthetic_cases", "5", "--synthetic_shape", "[64,64,12]",
                 "--num_train", "2", "--num_val", "2", "--num_test", "1", "--models_root", str(root / "models"),
                 "--output_dir", str(root / "eval"), "--features", "8", "--levels", "2", "--val_interval", "1"]
    return Setup(["train.json", "methods/m4.json"], overrides, root / "models" / "m4", {"features": 8, "levels": 2})


def _brats(root: Path) -> Setup:
    generate_brats_phantoms(root / "data", num_cases=6, shape=(32, 32, 8), seed=0, progress=False)
    overrides = ["--synthetic_dir", str(root / "data"), "--synthetic_cases", "6", "--synthetic_shape", "[32,32,8]",
                 "--val_fraction", "0.25", "--ckpt_dir", str(root / "models"), "--output_dir", str(root / "eval"),
                 "--features", "4", "--batch_size", "4"]
    return Setup(["train.json"], overrides, root / "models", {"features": 4})


SETUPS: dict[str, Callable[[Path], Setup]] = {"lits": _lits, "spect": _spect, "lung": _lung, "brats": _brats}


def _network_def(config_files: list[str], overrides: dict[str, Any]) -> torch.nn.Module:
    """The bundle's single-process ``network_def`` with the given overrides."""
    parser = ConfigParser()
    parser.read_config(config_files)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(SETUPS))
def test_torchrun_two_processes_log_one_run_and_save_a_plain_checkpoint(bundle: str, tmp_path: Path) -> None:
    setup = SETUPS[bundle](tmp_path)
    configs = [str(REPO / "bundles" / bundle / "configs" / name) for name in setup.configs]
    overlay = str(REPO / "bundles" / bundle / "configs" / "multi_gpu_train.json")
    env = isolated_env(tmp_path)  # sqlite:///<tmp_path>/mlruns/mlflow.db, artifacts next to it
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "--config_file", repr(configs + [overlay]), *setup.overrides,
           "--num_threads", "1", "--max_epochs", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    assert len(runs) == 1, f"expected one MLflow run (rank 0), found {[r.info.run_name for r in runs]}"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"{bundle}-train-")
    assert run.data.params["world_size"] == "2"
    assert "train_loss" in run.data.metrics and "val_dice_std" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [1] and 0.0 <= history[0].value <= 1.0

    # validation was split over the ranks and gathered: the per-case CSV (rank 0) has every validation case
    rows = (tmp_path / "eval" / "per_case_val_metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + setup.num_val + 2, rows  # header, one row per case, mean and std

    # the checkpoints hold the bare network (no DistributedDataParallel "module." prefix) and load into the plain,
    # single-process network_def
    assert sorted(p.name for p in setup.ckpt_dir.glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    best = torch.load(setup.ckpt_dir / "model.pt", map_location="cpu", weights_only=True)
    assert best and not any(k.startswith("module.") for k in best)
    _network_def(configs, setup.network_overrides).load_state_dict(best, strict=True)
    resumable = torch.load(setup.ckpt_dir / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") or ".module." in k for k in resumable["model"])
