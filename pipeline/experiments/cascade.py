"""The LiTS liver → lesion cascade (Kim & Ye, IEEE TIP 2020, §IV-B2; METHODS A-MS-8) as one command.

Per labelled fraction, four bundle workflows run in this process, each its own MLflow run in the experiment
``varseg-lits-cascade`` (configs merged after ``bundles/lits/configs/train.json``):

1. **liver, train** (``cascade/common.json``, ``cascade/liver.json``): a 2-class liver network (labels {1, 2} → 1),
   semi-supervised (cross-entropy on the labelled cases + β·Mumford–Shah on all);
2. **liver, evaluate** (+ ``evaluate.json``, ``cascade/liver_evaluate.json``): writes the predicted liver mask of
   every case (:func:`write_masks`) and scores the test cases' liver Dice;
3. **lesion, train** (``cascade/common.json``, ``cascade/lesion.json``): a 2-class lesion network (label 2 → 1)
   whose input is the CT restricted to the (dilated) liver region: the *predicted* liver for unlabelled,
   validation and test cases, the ground-truth liver for labelled training cases (``gt_liver_for_labelled``);
4. **lesion, evaluate** (+ ``evaluate.json``, ``cascade/lesion_evaluate.json``): the final lesion mask is the
   stage-2 lesion inside the predicted liver region; lesion Dice / Jaccard of the test cases, masks written.

Optionally (``cascade_single_stage`` or ``--single-stage``) the single-stage LiTS bundle is trained and evaluated
with the same labelled cases for comparison. Then ``cascade_table.md`` / ``cascade_table.csv`` (one row per fraction)
are written and logged as one more MLflow run (tag ``workflow = table``).

Command line (further ``--key value`` pairs override every bundle run, e.g. ``--lesion_max_epochs 5``)::

    python -m pipeline.experiments.cascade [--fractions 1/23 1/10 1/3] [--single-stage | --no-single-stage] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.metrics import mask_scores
from pipeline.experiments.bundle_runs import override_dict as _override_dict
from pipeline.io.files import atomic_write, load_weights, nifti_image
from pipeline.paths import REPO_ROOT

logger = logging.getLogger(__name__)

CONFIGS = REPO_ROOT / "bundles" / "lits" / "configs"
CASCADE = CONFIGS / "cascade"
EXPERIMENT = "varseg-lits-cascade"

__all__ = ["mask_file", "with_liver_masks", "write_masks", "config_files", "run_workflow", "run_cascade", "main"]


# ----------------------------------------------------------------------------------------------------------------
# Used by the cascade configs
# ----------------------------------------------------------------------------------------------------------------


def mask_file(mask_dir: str | Path, case: str, postfix: str) -> Path:
    """The mask file of ``case`` in ``mask_dir``: ``<mask_dir>/<case>_<postfix>.nii.gz``."""
    return Path(mask_dir) / f"{case}_{postfix}.nii.gz"


def with_liver_masks(cases: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                     mask_dir: str | Path, key: str = "liver", postfix: str = "liver",
                     from_label: bool = False) -> Any:
    """Copies of the case dicts with ``key`` naming each case's liver mask file.

    The mask is the predicted one, ``<mask_dir>/<case>_<postfix>.nii.gz`` (written by the liver stage's evaluation),
    except for labelled cases when ``from_label`` is set: they use their own label file (any non-zero label, liver
    or lesion, is inside the liver region).

    Args:
        cases: a datalist, or a dict of datalists (a split), with ``"case"`` and ``"label"`` entries.
        mask_dir: folder of the predicted liver masks.
        key: key that receives the mask file.
        postfix: file name postfix of the predicted masks.
        from_label: use the label file of cases with ``"labelled": True``.

    Returns:
        The same structure with copied dicts.

    Raises:
        FileNotFoundError: when predicted masks are missing; the message names them and the workflow that writes them.
    """
    if isinstance(cases, Mapping):
        return {name: with_liver_masks(part, mask_dir, key, postfix, from_label) for name, part in cases.items()}
    out, missing = [], []
    for case in cases:
        entry = dict(case)
        if from_label and entry.get("labelled"):
            entry[key] = entry["label"]
        else:
            path = mask_file(mask_dir, str(entry["case"]), postfix)
            missing += [] if path.is_file() else [path]
            entry[key] = str(path)
        out.append(entry)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} predicted liver mask(s) missing, e.g. {missing[0]}: run the liver stage's evaluation "
            "first (configs train.json, cascade/common.json, cascade/liver.json, evaluate.json, "
            "cascade/liver_evaluate.json with the same labelled_fraction), or python -m pipeline.experiments.cascade"
        )
    return out


def write_masks(network: torch.nn.Module, ckpt_path: str | Path, cases: Sequence[Mapping[str, Any]],
                transform: Callable[[dict], dict], inferer: Callable, out_dir: str | Path, postfix: str,
                channel: int = 1, device: torch.device | str = "cpu", restrict: Callable[[dict], dict] | None = None,
                image_key: str = "image", label_key: str = "label", csv_name: str = "masks.csv") -> list[dict]:
    """Segment ``cases`` with a trained 2.5D network and save the mask of class ``channel`` per case.

    Each case goes through ``transform`` (the stage's volume transform: load, orient, window, ...), the network
    through ``inferer``; the mask is ``argmax == channel``, after ``restrict`` (a dictionary transform applied to
    ``{"pred": class map, ...case}``, e.g. the lesion stage's liver-region restriction) when given. Masks are
    written as ``<out_dir>/<case>_<postfix>.nii.gz`` (uint8, the transformed image's affine, i.e. RAS voxel order)
    and ``<out_dir>/<csv_name>`` lists per case the mask's voxels and, where the case has a label, its Dice
    against ``label == channel``.

    Returns:
        The CSV rows.
    """
    load_weights(network, ckpt_path, device, hint="train this cascade stage first")
    rows = []
    start = time.time()
    with torch.no_grad():
        for i, case in enumerate(cases):
            data = transform(dict(case))
            image = data[image_key]
            logits = inferer(image.unsqueeze(0).to(device), network)[0]
            data["pred"] = torch.argmax(logits, dim=0, keepdim=True).float().cpu()
            if restrict is not None:
                data = restrict(data)
            mask = (data["pred"].detach().cpu().numpy() == channel)[0]
            name = str(case.get("case", f"case_{i}"))
            path = mask_file(out_dir, name, postfix)
            affine = np.asarray(image.affine, dtype=np.float64)
            image_out = nifti_image(mask.astype(np.uint8), affine)
            atomic_write(path.parent, path.name, lambda p, img=image_out: img.to_filename(str(p)))
            row = {"case": name, "voxels": int(mask.sum()), "dice": ""}
            if data.get(label_key) is not None:
                truth = data[label_key].detach().cpu().numpy()[0] == channel
                row["dice"] = f"{mask_scores(mask, truth, empty=float('nan'))['dice']:.4f}"
            rows.append(row)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / csv_name).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "voxels", "dice"])
        writer.writeheader()
        writer.writerows(rows)
    logger.info("%d %s masks written to %s (%.0f s)", len(rows), postfix, out, time.time() - start)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def config_files(stage: str, evaluate: bool) -> list[str]:
    """Config files (merged in order) of one workflow: ``stage`` is ``liver``, ``lesion`` or ``single``."""
    if stage not in ("liver", "lesion", "single"):
        raise ValueError(f"stage must be 'liver', 'lesion' or 'single', got {stage!r}")
    files = [CONFIGS / "train.json"]
    if stage != "single":
        files += [CASCADE / "common.json", CASCADE / f"{stage}.json"]
    if evaluate:
        files.append(CONFIGS / "evaluate.json")
        if stage != "single":
            files.append(CASCADE / f"{stage}_evaluate.json")
    return [str(f) for f in files]


class _SubfolderNotice(logging.Filter):
    """Drops MONAI's warning that config files lie outside ``configs/`` (the cascade overlays are in a subfolder)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Not all config files are in" not in record.getMessage()


def run_workflow(files: Sequence[str], overrides: Mapping[str, Any]) -> float:
    """Run one bundle workflow in this process, as ``python -m monai.bundle run`` does; returns the wall seconds.

    ``metadata.json`` and ``logging.conf`` are taken from ``bundles/lits/configs``.
    """
    from monai.bundle import ConfigWorkflow

    notice = logging.getLogger("monai.bundle.workflows")
    if not any(isinstance(f, _SubfolderNotice) for f in notice.filters):
        notice.addFilter(_SubfolderNotice())
    start = time.time()
    workflow = ConfigWorkflow(config_file=list(files), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), **dict(overrides))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    del workflow
    gc.collect()
    return time.time() - start


def _parser(files: Sequence[str], overrides: Mapping[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    return parser


def _read_metrics(path: Path, names: Sequence[str]) -> dict[str, list[float]]:
    """Per-case values of ``names`` from a ``PerCaseMetrics`` CSV (``mean``/``std`` footer rows left out)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the evaluation did not write its per-case metrics")
    rows = [r for r in csv.DictReader(path.open()) if r["case"] not in ("mean", "std")]
    for name in names:
        if rows and name not in rows[0]:
            raise KeyError(f"{path} has no column '{name}' (columns: {list(rows[0])})")
    return {name: [float(r[name]) for r in rows] for name in names}


def _stamp(step: str, fraction: str, done: int, total: int, started: float) -> None:
    logger.info("[%d/%d] %s, labelled fraction %s (%.0f s elapsed)", done + 1, total, step, fraction,
                time.time() - started)


def run_cascade(fractions: Sequence[str], overrides: Mapping[str, Any], single_stage: bool,
                single_stage_epochs: int, out: Path | None = None) -> list[dict[str, Any]]:
    """Train and evaluate both stages (and the single-stage bundle if asked) per fraction; one result per fraction.

    With ``out``, the table (:func:`write_table`) is rewritten after each fraction, so an interrupted command leaves
    the rows of the fractions it finished.
    """
    steps = [("liver", False), ("liver", True), ("lesion", False), ("lesion", True)]
    if single_stage:
        steps += [("single", False), ("single", True)]
    total, started, results = len(steps) * len(fractions), time.time(), []
    for f_index, fraction in enumerate(fractions):
        fraction_start = time.time()
        per_fraction = {**overrides, "labelled_fraction": fraction}
        liver = _parser(config_files("liver", False), per_fraction)
        tag = liver.get_parsed_content("fraction_tag")
        single_overrides = {**per_fraction, "experiment_name": liver.get_parsed_content("experiment_name"),
                            "max_epochs": single_stage_epochs,
                            "ckpt_dir": f"{liver.get_parsed_content('cascade_models')}/{tag}/single",
                            "output_dir": f"{liver.get_parsed_content('cascade_root')}/{tag}/single"}
        seconds = {}
        for s_index, (stage, evaluate) in enumerate(steps):
            label = f"{stage} {'evaluate' if evaluate else 'train'}"
            _stamp(label, fraction, f_index * len(steps) + s_index, total, started)
            seconds[label] = run_workflow(config_files(stage, evaluate),
                                          single_overrides if stage == "single" else per_fraction)
        lesion = _parser(config_files("lesion", False), per_fraction)
        train_list = liver.get_parsed_content("train_list")
        result = {
            "fraction": fraction, "tag": tag, "num_train": len(train_list),
            "num_labelled": sum(bool(d["labelled"]) for d in train_list),
            "liver": _read_metrics(Path(liver.get_parsed_content("output_dir")) / "per_case_test_metrics.csv",
                                   ["test_dice_liver", "test_jaccard_liver"]),
            "lesion": _read_metrics(Path(lesion.get_parsed_content("output_dir")) / "per_case_test_metrics.csv",
                                    ["test_dice", "test_jaccard"]),
            "single": (_read_metrics(Path(single_overrides["output_dir"]) / "per_case_test_metrics.csv",
                                     ["test_dice", "test_jaccard"]) if single_stage else None),
            "seconds": time.time() - fraction_start, "step_seconds": seconds,
            "epochs": {"liver": int(liver.get_parsed_content("max_epochs")),
                       "lesion": int(lesion.get_parsed_content("max_epochs"))},
        }
        results.append(result)
        if out is not None:
            write_table(results, out)
        logger.info("fraction %s: %d of %d training cases labelled; test liver Dice %.3f, cascade lesion Dice %.3f"
                    "%s (%.0f s)", fraction, result["num_labelled"], result["num_train"],
                    np.mean(result["liver"]["test_dice_liver"]), np.mean(result["lesion"]["test_dice"]),
                    f", single-stage {np.mean(result['single']['test_dice']):.3f}" if single_stage else "",
                    result["seconds"])
    return results


def _ms(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table, one row per labelled fraction (test cases, mean ± population std over cases)."""
    single = any(r["single"] is not None for r in results)
    head = ["labelled fraction", "labelled cases", "liver Dice (stage 1)", "lesion Dice (cascade)",
            "lesion Jaccard (cascade)"]
    head += ["lesion Dice (single stage)", "lesion Jaccard (single stage)"] if single else []
    lines = ["| " + " | ".join(head + ["wall s"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in results:
        cells = [r["fraction"], f"{r['num_labelled']} of {r['num_train']}", _ms(r["liver"]["test_dice_liver"]),
                 _ms(r["lesion"]["test_dice"]), _ms(r["lesion"]["test_jaccard"])]
        if single:
            cells += [_ms(r["single"]["test_dice"]), _ms(r["single"]["test_jaccard"])] if r["single"] else ["", ""]
        lines.append("| " + " | ".join(cells + [f"{r['seconds']:.0f}"]) + " |")
    n = len(results[0]["lesion"]["test_dice"]) if results else 0
    lines += ["", f"Test cases: {n}; mean ± population std over cases."]
    return "\n".join(lines) + "\n"


def write_table(results: Sequence[Mapping[str, Any]], out: Path) -> tuple[Path, Path]:
    """``cascade_table.md`` and ``cascade_table.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "cascade_table.md", out / "cascade_table.csv"
    md.write_text(format_table(results))
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["labelled_fraction", "num_labelled", "num_train", "liver_dice_mean", "liver_dice_std",
                         "lesion_dice_mean", "lesion_dice_std", "lesion_jaccard_mean", "lesion_jaccard_std",
                         "single_dice_mean", "single_dice_std", "single_jaccard_mean", "single_jaccard_std",
                         "liver_epochs", "lesion_epochs", "wall_seconds"])
        for r in results:
            single = r["single"]
            stats = [r["liver"]["test_dice_liver"], r["lesion"]["test_dice"], r["lesion"]["test_jaccard"]]
            stats += [single["test_dice"], single["test_jaccard"]] if single else []
            cells = [f"{f(v):.4f}" for v in stats for f in (np.mean, np.std)]
            cells += [] if single else ["", "", "", ""]
            writer.writerow([r["fraction"], r["num_labelled"], r["num_train"], *cells, r["epochs"]["liver"],
                             r["epochs"]["lesion"], f"{r['seconds']:.1f}"])
    return md, csv_path


def log_table(results: Sequence[Mapping[str, Any]], files: Sequence[Path], params: Mapping[str, Any],
              experiment: str = EXPERIMENT) -> str:
    """One MLflow run (tag ``workflow = table``) with per-fraction metrics and the table files; returns its id."""
    from pipeline.training.tracking import MLflowTracker, make_run_name

    tracker = MLflowTracker(experiment, run_name=make_run_name("lits", "cascade-table"), bundle="lits",
                            params=params, tags={"method": "cascade", "workflow": "table"}, log_config=False)
    run_id = tracker.start_run()
    for r in results:
        metrics = {"liver_dice": r["liver"]["test_dice_liver"], "lesion_dice": r["lesion"]["test_dice"],
                   "lesion_jaccard": r["lesion"]["test_jaccard"]}
        if r["single"]:
            metrics.update(single_dice=r["single"]["test_dice"], single_jaccard=r["single"]["test_jaccard"])
        values = {f"{r['tag']}_{k}": float(np.mean(v)) for k, v in metrics.items()}
        values.update({f"{r['tag']}_{k}_std": float(np.std(v)) for k, v in metrics.items()})
        values[f"{r['tag']}_num_labelled"] = r["num_labelled"]
        values[f"{r['tag']}_wall_seconds"] = r["seconds"]
        values.update({f"{r['tag']}_seconds_{k.replace(' ', '_')}": v for k, v in r["step_seconds"].items()})
        tracker.log_metrics(values)
    for path in files:
        tracker.log_artifact(path)
    tracker.end_run("FINISHED")
    return run_id


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.experiments.cascade") -> int:
    """Command-line entry point (``python -m pipeline.experiments.cascade``, ``varseg cascade``); returns the exit
    status."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="Any other --key value pair overrides every bundle run, e.g. --lesion_max_epochs 5 or "
               "--liver_dilation '[2,2,0]' (see bundles/lits/configs/cascade/common.json).")
    parser.add_argument("--fractions", nargs="+", default=None,
                        help="labelled fractions (default: cascade_fractions of cascade/common.json)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--single-stage", dest="single_stage", action="store_true", default=None,
                       help="also train and evaluate the single-stage LiTS bundle per fraction")
    group.add_argument("--no-single-stage", dest="single_stage", action="store_false")
    parser.add_argument("--out", default=None, help="table folder (default <cascade_root>, bundles/lits/eval/cascade)")
    args, rest = parser.parse_known_args(argv)
    if len(rest) % 2 or any(not k.startswith("--") for k in rest[::2]):
        parser.error(f"bundle overrides must be --key value pairs, got {rest}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = _override_dict(rest)
    settings = _parser([str(CONFIGS / "train.json"), str(CASCADE / "common.json")], overrides)
    fractions = [str(f) for f in (args.fractions or settings.get_parsed_content("cascade_fractions"))]
    single = args.single_stage
    if single is None:
        single = bool(settings.get_parsed_content("cascade_single_stage"))
    single_epochs = int(settings.get_parsed_content("single_stage_max_epochs"))
    out = Path(args.out) if args.out else Path(settings.get_parsed_content("cascade_root"))
    started = time.time()
    results = run_cascade(fractions, overrides, single, single_epochs, out)
    files = write_table(results, out)
    params = {"fractions": fractions, "single_stage": single,
              "overrides": json.dumps(overrides) if overrides else "none",
              "liver_max_epochs": results[0]["epochs"]["liver"], "lesion_max_epochs": results[0]["epochs"]["lesion"],
              "single_stage_max_epochs": single_epochs if single else "none",
              "liver_dilation": settings.get_parsed_content("liver_dilation"),
              "gt_liver_for_labelled": settings.get_parsed_content("gt_liver_for_labelled"),
              "wall_seconds": round(time.time() - started, 1)}
    log_table(results, files, params, experiment=settings.get_parsed_content("experiment_name"))
    print(files[0].read_text())
    print(f"table: {files[0]} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
