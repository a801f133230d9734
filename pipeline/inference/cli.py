"""``varseg infer``: segment a file, a folder or a datalist with a bundle from the command line.

    varseg infer <bundle> --input PATH [--layout auto] [--output DIR] [--markers FILE_OR_DIR]
        [--markers-space RAS|LPS] [--window LOW HIGH] [--modalities ...] [--overwrite] [--identify] [--no-mlflow]
        [--refine]
        [--key value ...]

The bundle's ``configs/inference.json`` builds the predictor; every other ``--key value`` pair overrides a setting of
it. A key that no config of the bundle defines is refused with one line naming the closest known keys. The batch
itself (outputs, CSV, failures, privacy, exit codes) is :func:`pipeline.inference.batch.execute`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.inference.batch import BatchError, execute
from pipeline.io.arguments import (
    OneLineArgumentParser,
    OverrideError,
    check_override_keys,
    config_keys,
    one_line,
    parse_overrides,
)

__all__ = ["bundle_config_files", "inference_config_files", "main"]

_PROG = "varseg infer"


def bundle_config_files(bundle: str) -> list[Path]:
    """Every config file of a bundle (``configs/**/*.json`` but ``metadata.json``): where override keys may live."""
    from pipeline.paths import bundle_root

    configs = Path(bundle_root(bundle)) / "configs"
    return sorted(p for p in configs.rglob("*.json") if p.name != "metadata.json")


def inference_config_files(bundle: str, method: Any = None) -> list[str]:
    """The config files of a bundle's inference, merged in order: ``configs/inference.json``, then the method's file
    from ``configs/methods/`` when ``method`` names one that holds settings only. A method file with its own ``run``
    (the lung bundle's per-image methods ``tv``, ``elastica``, ``dip``: their validation/test evaluation) is a
    workflow of its own and is not merged; ``inference.json`` holds what inference needs of those methods.

    Raises:
        BatchError: an unknown bundle, or a bundle without a readable ``configs/inference.json``.
    """
    from pipeline.paths import bundle_root

    try:
        configs = Path(bundle_root(bundle)) / "configs"
    except FileNotFoundError as err:
        raise BatchError(str(err)) from None
    inference = configs / "inference.json"
    if not inference.is_file():
        raise BatchError(f"bundle '{bundle}' has no configs/inference.json")
    method_file = configs / "methods" / f"{method}.json"
    if not method or not method_file.is_file() or "run" in _read_json(method_file):
        return [str(inference)]
    return [str(inference), str(method_file)]


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BatchError(f"{path}: not a readable JSON config ({one_line(err)})") from None
    return content if isinstance(content, dict) else {}


def _build_parser(prog: str = _PROG) -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=prog,
        allow_abbrev=False,  # --out must stay a config override, not an abbreviation of --output
        description="Segment a file, a folder or a datalist with a bundle; masks in the inputs' geometry, a per-case "
                    "CSV, resumable. Exit code 0: all cases done or skipped, 1: some case failed, 2: bad command "
                    "line, missing checkpoint or nothing to do.",
        epilog="Any other --key value pair overrides a setting of the bundle's inference config (e.g. --ckpt_path "
               "m.pt --features 4 --method mode4); a key no config of the bundle defines is refused.")
    parser.add_argument("bundle", help="bundle name (lits, lung, spect, brats)")
    parser.add_argument("--input", required=True, help="a file, a folder, or a JSON datalist")
    parser.add_argument("--layout", default="auto", help="input layout (default: auto)")
    parser.add_argument("--output", default=None, help="mask folder (default: the config's output)")
    parser.add_argument("--markers", default=None, help="markers file, or a folder of <case>.csv / .mrk.json")
    parser.add_argument("--markers-space", default=None, type=str.upper, choices=["RAS", "LPS", "VOXEL"],
                        help="coordinates of CSV x,y,z markers")
    parser.add_argument("--window", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="intensity window mapped to [0, 1], e.g. --window -160 240 for a liver in HU (bundles "
                             "with a 'window' setting; default: the bundle's)")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="modalities to read, in this order (multi-modal layouts; default: the bundle's "
                             "'modalities' setting, if it has one)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing masks")
    parser.add_argument("--identify", action="store_true",
                        help="name DICOM cases after their series instead of a pseudonym")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the batch to MLflow")
    parser.add_argument("--csv-name", default=None, help="per-case CSV name in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--refine", action="store_true",
                        help="refine each mask with the bundle's refinement network (configs/refine_inference.json) "
                             "and write its predicted quality in the CSV's quality column")
    return parser


@dataclass
class _Job:
    """What :func:`execute` needs, read from the merged config and the command line."""

    bundle: str
    output: Any
    postfix: str
    ckpt_path: Any
    ckpt_hint: str
    labels: Any
    csv_name: str
    experiment: str | None
    method: Any
    markers: Any
    modalities: list[str] | None


def _files(args: Any, overrides: Mapping[str, Any]) -> list[str]:
    """Config files for the command: inference (+ method) (+ refinement), after checking the override keys."""
    files = inference_config_files(args.bundle, overrides.get("method"))
    check_override_keys(overrides, config_keys(bundle_config_files(args.bundle)), f"bundle {args.bundle}")
    if args.refine:
        refine = Path(files[0]).with_name("refine_inference.json")
        if not refine.is_file():
            raise BatchError(f"bundle '{args.bundle}' has no refinement stage ({refine} not found)")
        files.append(str(refine))
    return files


def _apply_arguments(config: Any, args: Any, overrides: Mapping[str, Any]) -> None:
    """Set the overrides, then the command-line options that map onto config settings."""
    for key, value in overrides.items():
        config[key] = value
    if args.modalities is not None and "modalities" in config:
        config["modalities"] = list(args.modalities)  # the predictor reads what the indexer returns
    config["input"] = args.input
    if args.output is not None:
        config["output"] = args.output
    config["overwrite"] = bool(args.overwrite)
    config["identify"] = bool(args.identify)
    if args.markers is not None:
        config["markers"] = args.markers
    if args.markers_space is not None:
        config["markers_space"] = "voxel" if args.markers_space == "VOXEL" else args.markers_space
    if args.no_progress and "progress" in config:
        config["progress"] = False
    if args.window is not None:
        if "window" not in config:
            raise BatchError(f"bundle {args.bundle} has no intensity window setting: --window does not apply")
        low, high = args.window
        if not high > low:
            raise BatchError(f"--window needs LOW < HIGH, got {low:g} {high:g}")
        config["window"] = [low, high]


def _read_job(config: Any, args: Any) -> _Job:
    """The settings of the run, parsed from the merged config."""

    def get(key: str, default: Any = None) -> Any:
        return config.get_parsed_content(key) if key in config else default

    if "num_threads" in config:
        import torch

        torch.set_num_threads(int(get("num_threads")))
    return _Job(
        bundle=str(get("bundle", args.bundle)), output=get("output"), postfix=str(get("output_postfix")),
        ckpt_path=get("ckpt_path"), ckpt_hint=str(get("ckpt_hint", "")), labels=get("labels"),
        csv_name=args.csv_name or str(get("csv_name", "cases.csv")),
        experiment=str(get("experiment_name")) if "experiment_name" in config else None, method=get("method"),
        markers=args.markers if args.markers is not None else get("markers"),
        modalities=args.modalities or (list(get("modalities")) if "modalities" in config else None))


def _configure(args: Any, rest: Sequence[str]) -> tuple[Any, _Job]:
    """The merged config and the job; raises ``BatchError``/``OverrideError`` or a config error."""
    from monai.bundle import ConfigParser

    overrides = parse_overrides(rest)
    files = _files(args, overrides)
    config = ConfigParser()
    config.read_config(files if len(files) > 1 else files[0])
    _apply_arguments(config, args, overrides)
    return config, _read_job(config, args)


def _error(message: Any) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None, prog: str = _PROG) -> int:
    """Build the bundle's predictor from its inference config and run the batch; returns the exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``): ``<bundle> --input PATH [options] [--key value ...]``.
        prog: program name shown in usage and error messages.
    """
    parser = _build_parser(prog)
    try:
        args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0)
    try:
        config, job = _configure(args, rest)
    except (BatchError, OverrideError) as err:
        return _error(err)
    except Exception as err:  # noqa: BLE001 - a bad override or config value is a command-line error
        return _error(f"bundle {args.bundle}: bad configuration ({type(err).__name__}: {one_line(err)[:500]})")
    if job.ckpt_path is not None and not Path(str(job.ckpt_path)).is_file():
        return _error(f"checkpoint {job.ckpt_path} not found" + (f" ({job.ckpt_hint})" if job.ckpt_hint else ""))
    try:
        predictor = config.get_parsed_content("predictor")
    except Exception as err:  # noqa: BLE001
        return _error(f"bundle {args.bundle}: cannot build the predictor ({type(err).__name__}: "
                      f"{one_line(err)[:500]})")
    return _run(job, args, predictor)


def _run(job: _Job, args: Any, predictor: Any) -> int:
    labels = {int(k): str(v) for k, v in job.labels.items()} if isinstance(job.labels, Mapping) else job.labels
    previous = _terminate_as_interrupt()
    try:
        return execute(job.bundle, args.input, job.output, job.postfix, predictor, ckpt_path=job.ckpt_path,
                       ckpt_hint=job.ckpt_hint, layout=args.layout, modalities=job.modalities, markers=job.markers,
                       overwrite=args.overwrite, identify=args.identify, labels=labels, csv_name=job.csv_name,
                       mlflow=not args.no_mlflow, experiment_name=job.experiment,
                       tags={"method": job.method} if job.method else None, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to finish the remaining cases", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill``) stop the batch like Ctrl-C: CSV saved, MLflow run KILLED. Returns the old handler."""

    def _handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not in the main thread
        return None


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(prog="python -m pipeline.inference.cli"))
