"""The seven-method selective-segmentation table (paper Tables 1 and 2) for the lung bundle or the LiTS selective mode.

Runs, in order: ``m1`` .. ``m4`` (train on 2 images with ``methods/mN.json``, then evaluate the best-validation
checkpoint on the test images with ``evaluate.json``) and the per-image ``tv``, ``elastica`` and ``dip`` methods
(``methods/<name>.json``: setting chosen on the validation images, then applied to each test image). A trained
method whose config lists several ``restart_seeds`` is trained once per seed and the restart with the best
validation Dice is kept (:func:`train_with_restarts`). Each step is
its own MLflow run in the dataset's experiment (``varseg-lung`` or ``varseg-lits-selective``). Then writes
``selective_table.md`` and ``selective_table.csv`` (test Dice / Jaccard mean ± std per method, next to the paper's
values) and gathers the overlay PNG of each method for the first test image, all logged as one more MLflow run
(tag ``method = table``).

Command line (further ``--key value`` pairs go to every bundle run, e.g. ``--max_epochs 100``; ``--output_dir`` is set
per method to ``<eval-root>/<method>``)::

    python -m pipeline.experiments.selective_table lung [--methods m1 m2 m3 m4 tv elastica dip] [--out DIR]
    [--skip-train]
    python -m pipeline.experiments.selective_table lits
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.experiments.bundle_runs import override_dict as _override_dict
from pipeline.experiments.bundle_runs import run_bundle as _run_bundle
from pipeline.paths import REPO_ROOT
from pipeline.selective.samples import METHODS, TRAINED_METHODS
from pipeline.training.tracking import MLflowTracker, make_run_name

logger = logging.getLogger(__name__)

LUNG_CONFIGS = REPO_ROOT / "bundles" / "lung" / "configs"
LITS_SELECTIVE = REPO_ROOT / "bundles" / "lits" / "configs" / "selective.json"

# Burrows, Chen, Torella (2021), Table 1 (lung, 16 test images) and Table 2 (LiTS lesions, 27 test images):
# (Dice mean, Dice std, Jaccard mean, Jaccard std)
PAPER = {
    "lung": {"m1": (0.902, 0.047, 0.825, 0.077), "m2": (0.935, 0.048, 0.882, 0.082),
             "m3": (0.971, 0.021, 0.944, 0.038), "m4": (0.976, 0.024, 0.953, 0.044),
             "tv": (0.960, 0.031, 0.925, 0.052), "elastica": (0.963, 0.015, 0.929, 0.027),
             "dip": (0.916, 0.143, 0.830, 0.168)},
    "lits": {"m1": (0.841, 0.137, 0.745, 0.174), "m2": (0.767, 0.224, 0.665, 0.241),
             "m3": (0.879, 0.071, 0.790, 0.112), "m4": (0.868, 0.080, 0.774, 0.116),
             "tv": (0.862, 0.090, 0.768, 0.129), "elastica": (0.864, 0.075, 0.770, 0.122),
             "dip": (0.840, 0.132, 0.743, 0.165)},
}
NAMES = {"m1": "M1", "m2": "M2", "m3": "M3", "m4": "M4", "tv": "TV", "elastica": "Elastica", "dip": "DIP"}
DESCRIPTION = {"m1": "VM-Net, G = M, eq. (3) with TV", "m2": "VM-Net, G = M, eq. (3) with μ = 0",
               "m3": "VM-Net + DIP-Net, G = M, eq. (2)", "m4": "VM-Net + DIP-Net, G = D_G, eq. (2)",
               "tv": "per image: TV model (4), ADMM", "elastica": "per image: Euler-elastica model (4), ADMM",
               "dip": "per image: DIP-like model (4), early stopping"}


def config_files(dataset: str, method: str, evaluate: bool) -> list[str]:
    """Config files (merged in order) of one method run of ``dataset`` (``lung`` or ``lits``)."""
    files = [str(LUNG_CONFIGS / "train.json")]
    if dataset == "lits":
        files.append(str(LITS_SELECTIVE))
    files.append(str(LUNG_CONFIGS / "methods" / f"{method}.json"))
    if evaluate:
        files.append(str(LUNG_CONFIGS / "evaluate.json"))
    return files


def _parser(files: Sequence[str], overrides: Sequence[str]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(_override_dict(overrides))
    return parser


def validation_dice(files: Sequence[str], overrides: Sequence[str], ckpt_path: str | Path) -> float:
    """Mean Dice of the VM-Net checkpoint ``ckpt_path`` on the validation images of the merged config."""
    from pipeline.evaluation.metrics import dice_jaccard
    from pipeline.io.files import load_weights
    from pipeline.selective.evaluation import predict_mask
    from pipeline.selective.samples import loader_samples

    parser = _parser(files, overrides)
    network = parser.get_parsed_content("network_def")
    load_weights(network, ckpt_path)
    samples = loader_samples(parser.get_parsed_content("slicer")(parser.get_parsed_content("split")["val"]),
                             parser.get_parsed_content("guidance"))
    divisible = int(parser.get_parsed_content("divisible"))
    return float(np.mean([dice_jaccard(predict_mask(network, s, divisible), s["label"][0] > 0.5)[0]
                          for s in samples]))


def train_with_restarts(dataset: str, method: str, overrides: Sequence[str], root: Path) -> None:
    """Train ``method`` once per seed of its ``restart_seeds`` and keep the restart with the best validation Dice.

    Each restart trains with ``--seed s`` (network initialisation, DIP noise, batch order; the split and the clicks
    have their own seeds) into ``<ckpt_dir>/restart_<s>``; its best-validation checkpoint is scored on the validation
    images, the winner is copied to ``<ckpt_dir>/model.pt`` and ``<root>/<method>/restarts.csv`` lists all of them.
    With a single seed this is one plain training run.
    """
    files = config_files(dataset, method, evaluate=False)
    parser = _parser(files, overrides)
    seeds = [int(s) for s in parser.get_parsed_content("restart_seeds")]
    if len(seeds) <= 1:
        _run_bundle(files, [*overrides, *(["--seed", str(seeds[0])] if seeds else [])])
        return
    ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
    rows = []
    for seed in seeds:
        folder = ckpt_dir / f"restart_{seed}"
        logger.info("%s: restart with seed %d", method, seed)
        seconds = _run_bundle(files, [*overrides, "--seed", str(seed), "--ckpt_dir", str(folder),
                                      "--output_dir", str(root / method / f"restart_{seed}")])
        rows.append((seed, validation_dice(files, overrides, folder / "model.pt"), seconds))
        logger.info("%s: seed %d validation Dice %.3f", method, seed, rows[-1][1])
    best = max(rows, key=lambda r: r[1])
    shutil.copy2(ckpt_dir / f"restart_{best[0]}" / "model.pt", ckpt_dir / "model.pt")
    (root / method).mkdir(parents=True, exist_ok=True)
    with (root / method / "restarts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seed", "val_dice", "train_seconds", "selected"])
        writer.writerows([(s, f"{d:.4f}", f"{t:.1f}", int(s == best[0])) for s, d, t in rows])
    logger.info("%s: kept seed %d (validation Dice %.3f)", method, best[0], best[1])


def _read_test(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the method's evaluation did not write its per-case metrics")
    rows = [r for r in csv.DictReader(path.open()) if r["case"] not in ("mean", "std")]
    return {"dice": [float(r["test_dice"]) for r in rows], "jaccard": [float(r["test_jaccard"]) for r in rows]}


def _bundle_root(dataset: str) -> Path:
    return REPO_ROOT / "bundles" / ("lung" if dataset == "lung" else "lits")


def eval_root(dataset: str) -> Path:
    """Default folder of the method outputs of ``dataset``: ``bundles/lung/eval`` or ``bundles/lits/eval/selective``."""
    root = _bundle_root(dataset) / "eval"
    return root if dataset == "lung" else root / "selective"


def format_table(dataset: str, results: dict[str, dict[str, list[float]]], seconds: dict[str, float]) -> str:
    """Markdown table: measured test Dice / Jaccard (mean ± std) per method next to the paper's."""
    n = max((len(r["dice"]) for r in results.values()), default=0)
    lines = [
        f"| Method | Description | Dice (measured) | Jaccard (measured) | Dice (paper) | Jaccard (paper) | Wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, res in results.items():
        d, j = np.asarray(res["dice"]), np.asarray(res["jaccard"])
        p = PAPER[dataset][method]
        lines.append(f"| {NAMES[method]} | {DESCRIPTION[method]} | {d.mean():.3f} ± {d.std():.3f} | "
                     f"{j.mean():.3f} ± {j.std():.3f} | {p[0]:.3f} ± {p[1]:.3f} | {p[2]:.3f} ± {p[3]:.3f} | "
                     f"{seconds.get(method, float('nan')):.0f} |")
    order = sorted(results, key=lambda m: -float(np.mean(results[m]["dice"])))
    paper_order = sorted(results, key=lambda m: -PAPER[dataset][m][0])
    lines += ["", f"Test images: {n}. Ranking by measured Dice: {' > '.join(NAMES[m] for m in order)}; "
                  f"paper: {' > '.join(NAMES[m] for m in paper_order)}."]
    return "\n".join(lines) + "\n"


def _run_methods(dataset: str, methods: Sequence[str], overrides: Sequence[str], root: Path,
                 skip_train: bool) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Train (M1-M4, unless ``skip_train``) and evaluate every method; per-case test scores and wall seconds."""
    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        start = time.time()
        method_overrides = [*overrides, "--output_dir", str(root / method)]
        if method in TRAINED_METHODS:
            if not skip_train:
                logger.info("%s: training", method)
                train_with_restarts(dataset, method, method_overrides, root)
            logger.info("%s: evaluating on the test images", method)
            _run_bundle(config_files(dataset, method, evaluate=True), method_overrides)
        else:
            logger.info("%s: validation, then each test image", method)
            _run_bundle(config_files(dataset, method, evaluate=False), method_overrides)
        seconds[method] = time.time() - start
        results[method] = _read_test(root / method / "per_case_test_metrics.csv")
        logger.info("%s: test Dice %.3f ± %.3f (%.0f s)", method, np.mean(results[method]["dice"]),
                    np.std(results[method]["dice"]), seconds[method])
    return results, seconds


def _write_table(dataset: str, results: Mapping[str, Mapping[str, list[float]]], seconds: Mapping[str, float],
                 root: Path, out: Path) -> str:
    """``selective_table.md`` / ``.csv`` and the overlays in ``out``; returns the Markdown table."""
    table = format_table(dataset, results, seconds)
    (out / "selective_table.md").write_text(table)
    with (out / "selective_table.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "dice_mean", "dice_std", "jaccard_mean", "jaccard_std", "paper_dice_mean",
                         "paper_dice_std", "paper_jaccard_mean", "paper_jaccard_std", "wall_seconds"])
        for method, res in results.items():
            d, j = np.asarray(res["dice"]), np.asarray(res["jaccard"])
            writer.writerow([method, f"{d.mean():.4f}", f"{d.std():.4f}", f"{j.mean():.4f}", f"{j.std():.4f}",
                             *PAPER[dataset][method], f"{seconds[method]:.1f}"])
    (out / "overlays").mkdir(exist_ok=True)
    for method in results:
        png = root / method / f"overlay_{method}.png"
        if png.is_file():
            shutil.copy2(png, out / "overlays" / png.name)
    return table


def _track_table(dataset: str, results: Mapping[str, Mapping[str, list[float]]], out: Path,
                 params: Mapping[str, Any]) -> None:
    """One MLflow run tagged ``method=table`` with every method's test scores and the table files."""
    bundle = "lung" if dataset == "lung" else "lits"
    experiment = "varseg-lung" if dataset == "lung" else "varseg-lits-selective"
    tracker = MLflowTracker(experiment, run_name=make_run_name(bundle, "table", dataset), bundle=bundle,
                            params=dict(params), tags={"method": "table", "workflow": "table"}, log_config=False)
    tracker.start_run()
    for method, res in results.items():
        tracker.log_metrics({f"{method}_test_dice": float(np.mean(res["dice"])),
                             f"{method}_test_dice_std": float(np.std(res["dice"])),
                             f"{method}_test_jaccard": float(np.mean(res["jaccard"])),
                             f"{method}_test_jaccard_std": float(np.std(res["jaccard"]))})
    for path in (out / "selective_table.md", out / "selective_table.csv", out / "overlays"):
        tracker.log_artifact(path)
    tracker.end_run("FINISHED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.experiments.selective_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["lung", "lits"], help="lung bundle or the LiTS bundle's selective mode")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--eval-root", default=None, help="folder of the per-method outputs (default bundles/lung/eval "
                                                          "or bundles/lits/eval/selective)")
    parser.add_argument("--out", default=None, help="table folder (default <eval-root>/table)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing M1-M4 checkpoints only")
    args, overrides = parser.parse_known_args(argv)
    if len(overrides) % 2:
        parser.error(f"bundle overrides must be --key value pairs, got {overrides}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.eval_root) if args.eval_root else eval_root(args.dataset)
    out = Path(args.out) if args.out else root / "table"
    out.mkdir(parents=True, exist_ok=True)
    results, seconds = _run_methods(args.dataset, args.methods, overrides, root, args.skip_train)
    table = _write_table(args.dataset, results, seconds, root, out)
    _track_table(args.dataset, results, out, {"methods": args.methods, "overrides": " ".join(overrides) or "none",
                                              "skip_train": args.skip_train})
    print(table)
    print(f"table: {out / 'selective_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
