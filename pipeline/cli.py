"""``varseg`` command line: look at tracked runs and open the MLflow UI.

Bundles themselves run through ``python -m monai.bundle run --config_file bundles/<name>/configs/<workflow>.json``.

    varseg runs [--experiment varseg-lits] [--last 5]   # the runs, their metrics, UI command, chart/compare links
    varseg ui [--port 5000]                             # serve the MLflow UI on 127.0.0.1
    varseg make-data {lits,lung,spect,brats} OUT_DIR [--num-cases N] ...  # write synthetic phantoms in a dataset's layout
    varseg infer {lits,lung,spect} --input PATH [--output DIR] ...  # batch inference (see python -m
    pipeline.inference.cli)
    varseg cascade [--fractions 1/23 1/10 1/3] ...  # LiTS liver -> lesion cascade table (python -m
    pipeline.experiments.cascade)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.parse
from typing import Any

from pipeline.training import tracking

_SHOWN_METRICS = ("val_dice", "val_jaccard", "test_dice", "test_dice_std", "test_jaccard", "train_loss")
_UI_URL = "http://127.0.0.1:5000"


def compare_links(experiment_id: str, run_ids: list[str], base_url: str = _UI_URL) -> dict[str, str]:
    """MLflow 3 UI links: the experiment's chart view (``charts``) and, for two or more runs, their ``compare`` page."""
    links = {"charts": f"{base_url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"}
    if len(run_ids) >= 2:
        runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")))
        experiments = urllib.parse.quote(json.dumps([experiment_id], separators=(",", ":")))
        links["compare"] = f"{base_url}/#/compare-runs?runs={runs}&experiments={experiments}"
    return links


def _print_experiment(client: Any, exp: Any, last: int) -> None:
    """The newest ``last`` runs of one experiment: status, shown metrics, the val_dice history, UI links."""
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=last)
    print(f"\nexperiment '{exp.name}' (id {exp.experiment_id}), newest {len(runs)} run(s):")
    for run in runs:
        metrics = run.data.metrics
        shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in _SHOWN_METRICS if k in metrics)
        print(f"  {run.info.run_name}  [{run.info.status}]  id={run.info.run_id}  {shown}")
        if "val_dice" in metrics:
            history = client.get_metric_history(run.info.run_id, "val_dice")
            print(f"    val_dice per epoch ({len(history)} values): "
                  + " ".join(f"{m.value:.3f}" for m in sorted(history, key=lambda m: m.step)))
    with_dice = [run.info.run_id for run in runs if "val_dice" in run.data.metrics][:2]
    for name, url in compare_links(exp.experiment_id, with_dice).items():
        print(f"  {name}: {url}" + ("  (the newest two runs with val_dice)" if name == "compare" else ""))


def _runs(args: argparse.Namespace) -> int:
    import mlflow

    uri = tracking.tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    if args.experiment:
        experiments = [e for e in experiments if e.name == args.experiment]
        if not experiments:
            print(f"no experiment named {args.experiment!r} in {uri}", file=sys.stderr)
            return 1
    print(f"MLflow store: {uri}")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"artifacts:    {tracking.artifact_location()}")
    for exp in experiments:
        _print_experiment(client, exp, args.last)
    print(f"\nopen the UI:  {tracking.ui_command()}")
    print("then browse http://127.0.0.1:5000 (pick runs and press 'Compare' to see val_dice side by side)")
    return 0


def _ui(args: argparse.Namespace) -> int:
    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port",
           str(args.port)]
    print(" ".join(cmd))
    return subprocess.call(cmd)


def _make_data(args: argparse.Namespace) -> int:
    from pipeline.data import brats, lits, lung, spect

    generators = {"lits": lits.main, "lung": lung.main, "spect": spect.main, "brats": brats.main}
    return int(generators[args.dataset](args.rest))


def _infer(args: argparse.Namespace) -> int:
    from pipeline.inference import cli

    return int(cli.main(args.rest, prog="varseg infer"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["infer"]:  # every other argument belongs to the batch command (its own --help included)
        from pipeline.inference import cli

        return int(cli.main(argv[1:], prog="varseg infer"))
    if argv[:1] == ["cascade"]:  # likewise for the cascade command
        from pipeline.experiments import cascade

        return int(cascade.main(argv[1:], prog="varseg cascade"))
    parser = argparse.ArgumentParser(prog="varseg", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_runs = sub.add_parser("runs", help="list tracked runs and print the command that opens the MLflow UI")
    p_runs.add_argument("--experiment", default=None, help="experiment name, e.g. varseg-lits (default: all)")
    p_runs.add_argument("--last", type=int, default=5, help="newest runs per experiment to show")
    p_runs.set_defaults(func=_runs)
    p_ui = sub.add_parser("ui", help="serve the MLflow UI for mlruns/ on 127.0.0.1")
    p_ui.add_argument("--port", type=int, default=5000)
    p_ui.set_defaults(func=_ui)
    p_data = sub.add_parser("make-data", help="write synthetic phantoms in a dataset's on-disk layout",
                            add_help=False)
    p_data.add_argument("dataset", choices=["lits", "lung", "spect", "brats"], help="which dataset layout")
    p_data.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the generator (try --help)")
    p_data.set_defaults(func=_make_data)
    p_infer = sub.add_parser("infer", help="batch inference with a bundle: masks, a per-case CSV, resumable",
                             add_help=False)
    p_infer.add_argument("rest", nargs=argparse.REMAINDER, help="<bundle> --input PATH ... (try --help)")
    p_infer.set_defaults(func=_infer)
    p_cascade = sub.add_parser("cascade", add_help=False,
                               help="LiTS liver -> lesion cascade: train, evaluate, table per labelled fraction")
    p_cascade.add_argument("rest", nargs=argparse.REMAINDER, help="--fractions ... and bundle overrides (try --help)")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
