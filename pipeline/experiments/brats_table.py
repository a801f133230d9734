"""BraTS result tables: the β sweep (Kim & Ye Table V) and the unsupervised bias-field comparison.

``sweep``: trains the BraTS bundle (semi-supervised, 1/4 of the training cases labelled, CE + β·L_MS) once per
``β_paper`` value (β = 0 first), evaluates each best-validation checkpoint on the held-out test cases, and writes
``beta_sweep.md`` / ``beta_sweep.csv`` (complete-tumour Dice, precision, recall and IoU, mean ± std over the test
cases, like the paper's Tables IV/V) next to the paper's Table V. ``β_paper`` is the weight of the authors' summed
loss; the bundle works with mean reductions, so the weight it applies is ``β = β_paper · B·N·C·P`` (batch, classes,
input channels, pixels per slice), listed in the table too.

``bias``: trains the unsupervised mode twice on bias-corrupted phantoms (``methods/unsup_plain.json``: the plain
Mumford–Shah loss; ``methods/unsup_bias.json``: the bias-field variant, eqs. 19–20), with no labels at all, and
compares the test Dice of the class the label-free rule calls tumour (see ``pipeline.unsupervised``).

Every training and evaluation is its own MLflow run in the experiment ``varseg-brats``; the table is one more run
(tag ``method = table``) with the files as artifacts. Further ``--key value`` pairs go to every bundle run. Wall and CPU seconds (user + system of the bundle subprocesses) are listed per row: on a machine
shared with other work the wall time grows while the CPU time stays about the same.

Command line::

    python -m pipeline.experiments.brats_table sweep [--betas 0 1e-7 1e-6 1e-5] [--out DIR] [--models DIR]
    [--skip-train]
                                         [--key value ...]
    python -m pipeline.experiments.brats_table bias [--methods unsup_plain unsup_bias] [--out DIR] [--models DIR]
    [--skip-train]
                                        [--key value ...]
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.experiments.bundle_runs import override_dict as _override_dict
from pipeline.experiments.bundle_runs import run_bundle as _run_bundle
from pipeline.paths import REPO_ROOT
from pipeline.training.tracking import MLflowTracker, make_run_name

logger = logging.getLogger(__name__)

CONFIGS = REPO_ROOT / "bundles" / "brats" / "configs"
EVAL_ROOT = REPO_ROOT / "bundles" / "brats" / "eval"
MODELS_ROOT = REPO_ROOT / "bundles" / "brats" / "models"
EXPERIMENT = "varseg-brats"
DEFAULT_BETAS = (0.0, 1e-7, 1e-6, 1e-5)
METRICS = ("dice", "precision", "recall", "jaccard")

# Kim & Ye (2020), Table V: BRATS 2015, 1/4 labelled, β sweep (the β values were lost in the paper's text; the rows
# are in the paper's order, β = 0 first): (Dice, precision, recall, IoU)
PAPER_TABLE_V = [(0.867, 0.927, 0.813, 0.764), (0.873, 0.901, 0.847, 0.775), (0.878, 0.886, 0.872, 0.783),
                 (0.880, 0.904, 0.858, 0.786), (0.877, 0.915, 0.842, 0.780)]


def read_test_metrics(path: str | Path) -> dict[str, list[float]]:
    """Per-case test metrics of an evaluation CSV (``per_case_test_metrics.csv``), NaN kept (empty predictions)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the evaluation did not write its per-case metrics")
    rows = [r for r in csv.DictReader(path.open()) if r["case"] not in ("mean", "std")]
    if not rows:
        raise ValueError(f"{path} holds no per-case rows")
    out: dict[str, list[float]] = {}
    for name in METRICS:
        column = f"test_{name}"
        if column in rows[0]:
            out[name] = [float(r[column]) if r[column] not in ("", "nan") else float("nan") for r in rows]
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return (float(arr.mean()), float(arr.std())) if arr.size else (float("nan"), float("nan"))


def _cell(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f} ± {std:.3f}"


def beta_label(beta_paper: float) -> str:
    """Folder-safe name of a ``β_paper`` value (``0``, ``1e-06``)."""
    return "0" if float(beta_paper) == 0.0 else format(float(beta_paper), ".0e").replace("+", "")


def _mean_beta(overrides: Mapping[str, Any], beta_paper: float) -> float:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    parser.update(dict(overrides))
    parser["beta_paper"] = float(beta_paper)
    return float(parser.get_parsed_content("beta"))


def format_sweep(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown β-sweep table, measured rows then the paper's Table V rows."""
    lines = ["| β_paper | β (mean reduction) | Dice | Precision | Recall | IoU | Wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["metrics"]
        lines.append(f"| {row['beta_paper']:g} | {row['beta']:.3g} | " + " | ".join(_cell(m[k]) for k in METRICS)
                     + f" | {row['seconds']:.0f} | {row.get('cpu_seconds', float('nan')):.0f} |")
    n = max(len(r["metrics"]["dice"]) for r in rows)
    best = max(rows, key=lambda r: _mean_std(r["metrics"]["dice"])[0])
    zero = next((r for r in rows if r["beta_paper"] == 0.0), None)
    lines += ["", f"Measured on {n} synthetic test cases (mean ± population std over cases; precision leaves out cases "
                  "with an empty prediction). Best Dice at β_paper = "
                  f"{best['beta_paper']:g}" + (
                      f" ({_mean_std(best['metrics']['dice'])[0] - _mean_std(zero['metrics']['dice'])[0]:+.3f} "
                      "against β = 0)." if zero is not None else ".")]
    lines += ["", "Paper, Table V (BRATS 2015, 249 training scans, 1/4 labelled; β values not given in the text):", "",
              "| row | Dice | Precision | Recall | IoU |", "|---|---|---|---|---|"]
    for i, (d, p, r, j) in enumerate(PAPER_TABLE_V):
        lines.append(f"| {'β = 0' if i == 0 else f'β > 0 ({i})'} | {d:.3f} | {p:.3f} | {r:.3f} | {j:.3f} |")
    return "\n".join(lines) + "\n"


def format_bias(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the unsupervised comparison."""
    lines = ["| loss | Dice | Precision | Recall | IoU | Wall s | CPU s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["metrics"]
        lines.append(f"| {row['name']} | " + " | ".join(_cell(m[k]) for k in METRICS)
                     + f" | {row['seconds']:.0f} | {row.get('cpu_seconds', float('nan')):.0f} |")
    n = max(len(r["metrics"]["dice"]) for r in rows)
    lines += ["", f"Unsupervised (no labels in training), {n} bias-corrupted synthetic test cases, mean ± std over cases."]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], key_columns: Sequence[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*key_columns, *(f"{k}_{s}" for k in METRICS for s in ("mean", "std")), "wall_seconds",
                         "cpu_seconds"])
        for row in rows:
            stats = [f"{v:.4f}" for k in METRICS for v in _mean_std(row["metrics"][k])]
            writer.writerow([*(row[c] for c in key_columns), *stats, f"{row['seconds']:.1f}",
                             f"{row.get('cpu_seconds', float('nan')):.1f}"])


def _log_table(kind: str, rows: Sequence[Mapping[str, Any]], files: Sequence[Path], params: Mapping[str, Any],
               prefix_of: Any) -> None:
    tracker = MLflowTracker(EXPERIMENT, run_name=make_run_name("brats", "table", kind), bundle="brats",
                            params=dict(params), tags={"method": "table", "workflow": "table", "table": kind},
                            log_config=False)
    tracker.start_run()
    for row in rows:
        prefix = prefix_of(row)
        metrics = {}
        for k in METRICS:
            mean, std = _mean_std(row["metrics"][k])
            metrics[f"{prefix}_test_{k}"] = mean
            metrics[f"{prefix}_test_{k}_std"] = std
        tracker.log_metrics(metrics)
    for path in files:
        tracker.log_artifact(path)
    tracker.end_run("FINISHED")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _train_and_evaluate(files: Sequence[str], overrides: Sequence[str], skip_train: bool) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of the training and test-evaluation subprocesses."""
    start, cpu = time.time(), _children_cpu_seconds()
    if not skip_train:
        _run_bundle(files, overrides)
    _run_bundle([*files, str(CONFIGS / "evaluate.json")], overrides)
    return time.time() - start, _children_cpu_seconds() - cpu


def run_sweep(betas: Sequence[float], out: Path, overrides: Sequence[str], skip_train: bool = False,
              models: Path = MODELS_ROOT) -> str:
    """Train + evaluate once per ``β_paper``; write and return the Markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    extra = _override_dict(overrides)
    rows = []
    for beta_paper in betas:
        name = beta_label(beta_paper)
        run_overrides = [*overrides, "--beta_paper", repr(float(beta_paper)),
                         "--ckpt_dir", str(models / "sweep" / f"beta_{name}"),
                         "--output_dir", str(out / f"beta_{name}")]
        logger.info("β_paper = %g: training and test evaluation", beta_paper)
        seconds, cpu = _train_and_evaluate([str(CONFIGS / "train.json")], run_overrides, skip_train)
        metrics = read_test_metrics(out / f"beta_{name}" / "per_case_test_metrics.csv")
        rows.append({"beta_paper": float(beta_paper), "beta": _mean_beta(extra, beta_paper), "metrics": metrics,
                     "seconds": seconds, "cpu_seconds": cpu})
        logger.info("β_paper = %g: test Dice %s (%.0f s)", beta_paper, _cell(metrics["dice"]), seconds)
    table = format_sweep(rows)
    (out / "beta_sweep.md").write_text(table)
    _write_csv(out / "beta_sweep.csv", rows, ["beta_paper", "beta"])
    _log_table("beta-sweep", rows, [out / "beta_sweep.md", out / "beta_sweep.csv"],
               {"betas": [float(b) for b in betas], "overrides": " ".join(overrides) or "none",
                "skip_train": skip_train}, lambda r: f"beta_{beta_label(r['beta_paper'])}")
    return table


BIAS_METHODS = (("plain Mumford–Shah", "unsup_plain"), ("bias-field Mumford–Shah (eqs. 19–20)", "unsup_bias"))


def run_bias(out: Path, overrides: Sequence[str], skip_train: bool = False, models: Path = MODELS_ROOT,
             methods: Sequence[str] | None = None) -> str:
    """Train + evaluate the unsupervised modes (``methods``, default both); write and return the Markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, method in BIAS_METHODS:
        if methods is not None and method not in methods:
            continue
        files = [str(CONFIGS / "train.json"), str(CONFIGS / "methods" / f"{method}.json")]
        run_overrides = [*overrides, "--ckpt_dir", str(models / method), "--output_dir", str(out / method)]
        logger.info("%s: training and test evaluation", method)
        seconds, cpu = _train_and_evaluate(files, run_overrides, skip_train)
        metrics = read_test_metrics(out / method / "per_case_test_metrics.csv")
        rows.append({"name": name, "method": method, "metrics": metrics, "seconds": seconds, "cpu_seconds": cpu})
        logger.info("%s: test Dice %s (%.0f s)", method, _cell(metrics["dice"]), seconds)
    table = format_bias(rows)
    (out / "bias_comparison.md").write_text(table)
    _write_csv(out / "bias_comparison.csv", rows, ["method"])
    _log_table("bias", rows, [out / "bias_comparison.md", out / "bias_comparison.csv"],
               {"methods": [m for _, m in BIAS_METHODS], "overrides": " ".join(overrides) or "none",
                "skip_train": skip_train}, lambda r: r["method"])
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.experiments.brats_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["sweep", "bias"], help="β sweep (Table V) or unsupervised bias comparison")
    parser.add_argument("--betas", nargs="+", type=float, default=list(DEFAULT_BETAS),
                        help="β_paper values of the sweep (default: 0 1e-7 1e-6 1e-5)")
    parser.add_argument("--methods", nargs="+", default=None, choices=[m for _, m in BIAS_METHODS],
                        help="bias: which unsupervised modes to run (default both)")
    parser.add_argument("--out", default=None, help="output folder (default bundles/brats/eval/<sweep|bias>)")
    parser.add_argument("--models", default=str(MODELS_ROOT),
                        help="checkpoint folder (default bundles/brats/models; sweep/beta_<β>/ and unsup_*/ inside)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing checkpoints only")
    args, overrides = parser.parse_known_args(argv)
    if len(overrides) % 2 or any(not k.startswith("--") for k in overrides[::2]):
        parser.error(f"bundle overrides must be --key value pairs, got {overrides}")
    if any(b < 0 for b in args.betas):
        parser.error(f"β values must be >= 0, got {args.betas}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    out = Path(args.out) if args.out else EVAL_ROOT / args.table
    if args.table == "sweep":
        table = run_sweep(args.betas, out, overrides, args.skip_train, Path(args.models))
        name = "beta_sweep.md"
    else:
        table = run_bias(out, overrides, args.skip_train, Path(args.models), args.methods)
        name = "bias_comparison.md"
    print(table)
    print(f"table: {out / name} ({time.time() - start:.0f} s wall, {_children_cpu_seconds():.0f} s CPU of the bundle "
          "runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
