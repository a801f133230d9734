"""The refinement table (Rebelo, Fernandes & Cardoso, Tables II and III) for one bundle, from one command.

Runs, in order: the bundle's base training (``train.json``) when its checkpoint is missing (or with
``--train-base``), then one refinement training per variant (``train.json`` + ``refine.json``, see
:mod:`pipeline.refine.engine`): ``noq`` (λ = 0, no quality regulariser) and ``q`` (the config's λ > 0), optionally
``q-warm`` / ``q-scratch`` (trained on their own refined outputs). Each is its own MLflow run in ``varseg-<bundle>``.
Then writes ``refine_table.md`` and ``refine_table.csv`` to ``bundles/<bundle>/eval/refine/`` (test Dice mean ± std
over cases after 0, 1, 2 steps, after the ``k`` chosen on validation, with the early stop on predicted quality, and
the oracle best ``k``; Pearson r of predicted quality against true Dice on the held-out cases) and logs them as one
more MLflow run (tag ``method = refine-table``).

Command line (further ``--key value`` pairs go to every bundle run, e.g. ``--refine_epochs 5``)::

    python -m pipeline.experiments.refine_table lits [--variants noq q] [--train-base] [--out DIR]
    python -m pipeline.experiments.refine_table spect
    python -m pipeline.experiments.refine_table brats
    python -m pipeline.experiments.refine_table lung
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
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

BUNDLES = ("lits", "spect", "brats", "lung")
TARGETS = {"lits": "lesion class", "spect": "bone", "brats": "complete tumour",
           "lung": "left lung, one clicked slice per case"}
VALIDATION = {"lung": "clicked slices of the validation cases"}
VARIANTS = {
    "noq": (["--quality_weight", "0"], "no quality output (λ = 0)"),
    "q": ([], "quality output (λ from refine.json)"),
    "q-warm": (["--self_training", "warm"], "quality output, then trained on its own outputs (warm)"),
    "q-scratch": (["--self_training", "scratch"], "quality output, retrained on its own outputs (scratch)"),
}
# Rebelo et al. Table II (Dice × 100): 0x / no quality 1x, 2x / quality 1x, 2x, for orientation only
PAPER_TABLE_II = {
    "PH2": (83.21, 89.10, 89.14, 90.40, 90.41), "ISBI 2017": (71.30, 80.53, 79.89, 81.13, 81.18),
    "Teeth-UCV": (80.50, 83.21, 83.62, 83.84, 84.83), "Breast-Aesthetics": (92.81, 93.01, 92.77, 94.11, 93.98),
    "Cervix-HUC": (76.85, 79.10, 78.46, 79.60, 79.65), "Cervix-MobileODT": (87.17, 87.98, 87.90, 88.26, 88.37),
}


def config_files(bundle: str, refine: bool) -> list[str]:
    """Config files of the bundle's base training (``refine=False``) or of its refinement stage."""
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    files = [configs / "train.json"] + ([configs / "refine.json"] if refine else [])
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: bundle '{bundle}' has no refinement stage")
    return [str(f) for f in files]


def resolve(bundle: str, overrides: Sequence[str], *names: str) -> list[Any]:
    """Values of config ``names`` in the merged refinement config with ``overrides`` (e.g. ``base_ckpt``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(bundle, refine=True))
    parser.update(_override_dict(overrides))
    return [parser.get_parsed_content(name) for name in names]


def _fmt(mean: float, std: float | None = None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _r(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.2f}"


def format_table(bundle: str, summaries: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, float]) -> str:
    """Markdown: test Dice per number of steps and variant, then the quality-prediction correlations."""
    first = next(iter(summaries.values()))
    n_test, n_val = first["num_test_cases"], first["num_val_cases"]
    lines = [
        "| variant | 0× (base) | 1× | 2× | Val(k) | Val(k) + early stop | Best(k) (oracle) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        d, sd = s["test_dice_per_k"], s["test_dice_std_per_k"]
        k, k_es, best = s["k_val"], s["k_val_early_stop"], s["best_k"]
        es_steps = s["test_early_stop_steps"]
        lines.append(
            f"| {name}: {VARIANTS.get(name, ([], name))[1]} | {_fmt(d[0], sd[0])} | {_fmt(d[1], sd[1])} | "
            f"{_fmt(d[2], sd[2])} | {_fmt(d[k], sd[k])} (k={k}) | {_fmt(s['test_dice_valk_early_stop'])} "
            f"(k≤{k_es}, steps {min(es_steps)}–{max(es_steps)}) | {_fmt(d[best])} (k={best}) | "
            f"{seconds.get(name, float('nan')):.0f} |")
    validation = VALIDATION.get(bundle, "validation cases")
    lines += ["", f"Test Dice, mean ± population std over {n_test} held-out test cases (volume Dice of the "
                  f"{TARGETS.get(bundle, bundle)}); k chosen on {n_val} {validation} among "
                  f"0..{first['max_iterations']}."]
    for name, s in summaries.items():
        if "early_stop_recommended" in s:
            choice = (f"k ≤ {s['k_val_early_stop']} with the early stop" if s["early_stop_recommended"] else
                      f"k = {s['k_val']} without the early stop (it did worse on validation)")
            lines.append(f"Batch inference with this {name} model (`varseg infer {bundle} --refine`) uses {choice}.")
    lines += ["",
              "| variant | r, cases, base masks (n) | r, cases, all k | r, slices, base masks (n) | "
              "r, slices, synthesised masks (n) | mean abs. error, cases, base masks |",
              "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {_r(s['pearson_r_cases_0x'])} ({s['num_test_cases']}) | {_r(s['pearson_r_cases_all_k'])} | "
            f"{_r(s['pearson_r_slices_0x'])} ({s['num_slices_0x']}) | {_r(s['pearson_r_slices_synthetic'])} "
            f"({s['num_slices_synthetic']}) | {s['quality_mae_cases_0x']:.3f} |")
    lines += ["", "Pearson r of the predicted quality against the true Dice of the same mask on held-out test cases: "
                  "per case (volume quality from the per-slice predictions), per slice with foreground in the base "
                  "mask "
                  "or the label, and per slice for labels degraded by the training augmentation. λ = 0 leaves the "
                  "quality head untrained, so its r is a control."]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, summaries: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, float]) -> None:
    """One row per variant: Dice per step, chosen k, early stop, oracle, correlations, wall time."""
    kmax = max(s["max_iterations"] for s in summaries.values())
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["variant", *[f"dice_{k}x" for k in range(kmax + 1)],
                         *[f"dice_std_{k}x" for k in range(kmax + 1)],
                         "k_val", "dice_valk", "k_val_early_stop", "dice_valk_early_stop", "best_k", "dice_bestk",
                         "pearson_r_cases_0x", "pearson_r_cases_all_k", "pearson_r_slices_0x", "num_slices_0x",
                         "pearson_r_slices_synthetic", "num_slices_synthetic", "quality_mae_cases_0x",
                         "num_test_cases", "wall_seconds"])
        for name, s in summaries.items():
            d, sd = s["test_dice_per_k"], s["test_dice_std_per_k"]
            writer.writerow([name, *[f"{v:.4f}" for v in d], *[f"{v:.4f}" for v in sd], s["k_val"],
                             f"{s['test_dice_valk']:.4f}", s["k_val_early_stop"],
                             f"{s['test_dice_valk_early_stop']:.4f}",
                             s["best_k"], f"{s['test_dice_bestk']:.4f}", f"{s['pearson_r_cases_0x']:.4f}",
                             f"{s['pearson_r_cases_all_k']:.4f}", f"{s['pearson_r_slices_0x']:.4f}", s["num_slices_0x"],
                             f"{s['pearson_r_slices_synthetic']:.4f}", s["num_slices_synthetic"],
                             f"{s['quality_mae_cases_0x']:.4f}", s["num_test_cases"],
                             f"{seconds.get(name, float('nan')):.1f}"])


def _run_variants(bundle: str, variants: Sequence[str], overrides: Sequence[str],
                  seconds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Train and evaluate every refinement variant; their ``summary.json`` contents (wall seconds into ``seconds``)."""
    summaries: dict[str, dict[str, Any]] = {}
    for name in variants:
        variant_overrides = [*overrides, *VARIANTS[name][0]]
        logger.info("%s: refinement variant %s", bundle, name)
        seconds[name] = _run_bundle(config_files(bundle, refine=True), variant_overrides)
        (output_dir,) = resolve(bundle, variant_overrides, "refine_output_dir")
        summary_file = Path(output_dir) / "summary.json"
        if not summary_file.is_file():
            raise FileNotFoundError(f"{summary_file} not found: the {name} refinement run wrote no summary")
        summaries[name] = json.loads(summary_file.read_text())
        logger.info("%s %s: test Dice 0x %.3f -> k=%d %.3f (%.0f s)", bundle, name, summaries[name]["test_dice_0x"],
                    summaries[name]["k_val"], summaries[name]["test_dice_valk"], seconds[name])
    return summaries


def _track_table(bundle: str, summaries: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, float], out: Path,
                 params: Mapping[str, Any]) -> None:
    """One MLflow run tagged ``method=refine-table``: every variant's test figures, the table files."""
    tracker = MLflowTracker(f"varseg-{bundle}", run_name=make_run_name(bundle, "refine-table"), bundle=bundle,
                            params=dict(params), tags={"method": "refine-table", "workflow": "table"}, log_config=False)
    tracker.start_run()
    metrics: dict[str, float] = {f"{k}_seconds": v for k, v in seconds.items()}
    for name, s in summaries.items():
        for key in ("test_dice_0x", "test_dice_1x", "test_dice_2x", "test_dice_valk", "test_dice_valk_early_stop",
                    "test_dice_bestk", "k_val", "pearson_r_cases_0x", "pearson_r_slices_0x",
                    "pearson_r_slices_synthetic"):
            metrics[f"{name}_{key}"] = float(s[key])
    tracker.log_metrics(metrics)
    for path in (out / "refine_table.md", out / "refine_table.csv"):
        tracker.log_artifact(path)
    tracker.end_run("FINISHED")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.experiments.refine_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", choices=BUNDLES, help="bundle whose base model is refined")
    parser.add_argument("--variants", nargs="+", default=["noq", "q"], choices=list(VARIANTS))
    parser.add_argument("--train-base", action="store_true", help="train the base model even if its checkpoint exists")
    parser.add_argument("--no-train-base", action="store_true",
                        help="never train the base model: fail (naming the command) when its checkpoint is missing")
    parser.add_argument("--out", default=None, help="table folder (default bundles/<bundle>/eval/refine)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    if len(overrides) % 2:
        parser.error(f"bundle overrides must be --key value pairs, got {overrides}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    seconds: dict[str, float] = {}
    base_ckpt, base_hint, bundle_root = resolve(args.bundle, overrides, "base_ckpt", "base_hint", "bundle_root")
    if args.train_base or not Path(base_ckpt).is_file():
        if args.no_train_base:
            print(f"error: base model {base_ckpt} not found; train it first with: {base_hint}", file=sys.stderr)
            return 2
        logger.info("%s: training the base model (%s)", args.bundle,
                    "asked" if args.train_base else f"{base_ckpt} missing")
        seconds["base"] = _run_bundle(config_files(args.bundle, refine=False), overrides)
        logger.info("%s: base model trained in %.0f s", args.bundle, seconds["base"])
    summaries = _run_variants(args.bundle, args.variants, overrides, seconds)
    seconds["total"] = time.time() - start
    out = Path(args.out) if args.out else Path(bundle_root) / "eval" / "refine"
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(args.bundle, summaries, seconds)
    footer = (f"\nWall time of the whole command: {seconds['total'] / 60:.1f} min"
              + (f" (base training {seconds['base'] / 60:.1f} min)" if "base" in seconds else " (base model existed)")
              + f"; measured {time.strftime('%Y-%m-%d', time.gmtime())}.\n")
    (out / "refine_table.md").write_text(table + footer)
    write_csv(out / "refine_table.csv", summaries, seconds)
    _track_table(args.bundle, summaries, seconds, out, {"variants": args.variants, "train_base": "base" in seconds,
                                                        "overrides": " ".join(overrides) or "none"})
    print(table + footer)
    print(f"table: {out / 'refine_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
