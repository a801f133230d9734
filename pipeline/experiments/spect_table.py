"""The bone SPECT mode table: train and evaluate Modes 1-4 of the ``spect`` bundle plus an Otsu baseline.

Runs, in order, ``train.json`` (Mode 1) and ``train.json + methods/modeN.json`` (Modes 2-4; 2 and 3 fine-tune the
Mode-1 checkpoint), each followed by ``evaluate.json`` on the test split, then a per-slice Otsu threshold of the same
scaled reconstruction slices; writes ``mode_table.md`` and ``mode_table.csv`` (test Dice / Jaccard mean ± std over
cases) to ``--out`` and logs them with the metrics as an MLflow run (tag ``method = table``) in ``varseg-spect``.

Command line (any further ``--key value`` pairs are passed to every bundle run, e.g. ``--iterations 2``)::

    python -m pipeline.experiments.spect_table [--out DIR] [--modes 1 2 3 4] [--skip-train] [--max_epochs N] [--key
    value ...]
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.paths import REPO_ROOT, bundle_root
from pipeline.training.tracking import MLflowTracker, make_run_name

logger = logging.getLogger(__name__)

CONFIGS = REPO_ROOT / "bundles" / "spect" / "configs"
PAPER = {"mode1": 0.593, "mode2": 0.661, "mode3": 0.732, "mode4": 0.856}
DESCRIPTION = {"otsu": "Otsu threshold per slice (no training)", "mode1": "ACWE only, no labels",
               "mode2": "Mode 1 + fine-tune on 10 labelled slices", "mode3": "Mode 1 + fine-tune on 80 labelled slices",
               "mode4": "ACWE + 0.4 label loss, 1/3 of the cases labelled"}


def _configs(mode: int, evaluate: bool) -> str:
    files = [str(CONFIGS / "train.json")]
    if mode != 1:
        files.append(str(CONFIGS / "methods" / f"mode{mode}.json"))
    if evaluate:
        files.append(str(CONFIGS / "evaluate.json"))
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def _run_bundle(mode: int, evaluate: bool, overrides: Sequence[str]) -> float:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", _configs(mode, evaluate), *overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - start


def _override(overrides: Sequence[str], key: str) -> str | None:
    for i, item in enumerate(overrides[:-1]):
        if item == f"--{key}":
            return overrides[i + 1]
    return None


def _read_per_case(path: Path) -> dict[str, list[float]]:
    rows = [r for r in csv.DictReader(path.open()) if r["case"] not in ("mean", "std")]
    return {"dice": [float(r["test_dice"]) for r in rows], "jaccard": [float(r["test_jaccard"]) for r in rows]}


def otsu_baseline(overrides: Sequence[str] = ()) -> dict[str, list[float]]:
    """Per-case volume Dice / Jaccard of a per-slice Otsu threshold of the test split (the bundle's preprocessing)."""
    import torch
    from monai.bundle import ConfigParser
    from skimage.filters import threshold_otsu

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for i in range(0, len(overrides) - 1, 2):
        key, value = overrides[i].lstrip("-"), overrides[i + 1]
        try:
            import json

            value = json.loads(value)
        except ValueError:
            pass
        parser[key] = value
    parser["validate#data"] = "$@split['test']"
    dataset = parser.get_parsed_content("validate#dataset")
    dice, jaccard = [], []
    for item in dataset:
        image = torch.as_tensor(item["image"])[0].numpy()
        label = torch.as_tensor(item["label"])[0].numpy() > 0
        pred = np.zeros_like(label)
        for z in range(image.shape[-1]):
            sl = image[..., z]
            if float(sl.max()) > float(sl.min()):
                pred[..., z] = sl > threshold_otsu(sl)
        inter, total = float((pred & label).sum()), float(pred.sum() + label.sum())
        union = float((pred | label).sum())
        dice.append(2 * inter / total if total else 1.0)
        jaccard.append(inter / union if union else 1.0)
    return {"dice": dice, "jaccard": jaccard}


def write_table(results: dict[str, dict[str, list[float]]], out: Path, times: dict[str, float]) -> tuple[Path, Path]:
    """Write ``mode_table.csv`` and ``mode_table.md`` (mean ± population std over test cases)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, values in results.items():
        d, j = np.asarray(values["dice"]), np.asarray(values["jaccard"])
        rows.append({"method": name, "description": DESCRIPTION.get(name, ""), "cases": len(d),
                     "dice_mean": d.mean(), "dice_std": d.std(), "jaccard_mean": j.mean(), "jaccard_std": j.std(),
                     "paper_dice": PAPER.get(name, ""), "seconds": round(times.get(name, 0.0), 1)})
    csv_path, md_path = out / "mode_table.csv", out / "mode_table.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    lines = ["| method | description | test Dice (mean ± std) | test Jaccard (mean ± std) | paper Dice | train+eval s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        paper = f"{r['paper_dice']:.3f}" if r["paper_dice"] != "" else "–"
        lines.append(f"| {r['method']} | {r['description']} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | "
                     f"{r['jaccard_mean']:.3f} ± {r['jaccard_std']:.3f} | {paper} | {r['seconds']:.0f} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.experiments.spect_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default bundles/spect/eval/table)")
    parser.add_argument("--modes", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing checkpoints only")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out) if args.out else Path(_override(overrides, "bundle_root") or bundle_root("spect")) / "eval" / "table"
    results: dict[str, dict[str, list[float]]] = {}
    times: dict[str, float] = {}
    start = time.time()
    results["otsu"] = otsu_baseline(overrides)
    times["otsu"] = time.time() - start
    output_root = _override(overrides, "output_dir")
    for mode in sorted(args.modes):
        name = f"mode{mode}"
        seconds = 0.0 if args.skip_train else _run_bundle(mode, False, overrides)
        seconds += _run_bundle(mode, True, overrides)
        times[name] = seconds
        eval_dir = Path(output_root) if output_root else Path(bundle_root("spect")) / "eval" / name
        results[name] = _read_per_case(eval_dir / "per_case_test_metrics.csv")
        logger.info("%s: test Dice %.3f (%.0f s)", name, np.mean(results[name]["dice"]), seconds)
    csv_path, md_path = write_table(results, out, times)
    print(md_path.read_text())
    tracker = MLflowTracker("varseg-spect", run_name=make_run_name("spect", "table"), bundle="spect",
                            params={"modes": args.modes, "skip_train": args.skip_train, "overrides": " ".join(overrides)},
                            tags={"method": "table", "workflow": "table"}, log_config=False,
                            artifacts=[str(csv_path), str(md_path)])
    tracker.start_run()
    metrics = {}
    for name, values in results.items():
        metrics[f"{name}_test_dice"] = float(np.mean(values["dice"]))
        metrics[f"{name}_test_dice_std"] = float(np.std(values["dice"]))
    tracker.log_metrics(metrics)
    tracker.end_run("FINISHED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
