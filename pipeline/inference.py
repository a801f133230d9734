"""Inputs and outputs of the inference configs: which volumes to segment and where each mask goes."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["list_volumes", "mask_path", "plan_outputs"]

_EXTENSIONS = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def list_volumes(input_path: str | Path) -> list[dict[str, str]]:
    """Datalist ``[{"image": path, "case": stem}]`` for a NIfTI file or every NIfTI file in a folder (sorted).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not NIfTI, or the folder holds no NIfTI file.
    """
    if input_path is None or str(input_path) == "":
        raise ValueError("no input given: pass --input <NIfTI file or folder>")
    path = Path(input_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_file():
        if not path.name.endswith(_EXTENSIONS):
            raise ValueError(f"input {path} is not a NIfTI file (.nii or .nii.gz)")
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_EXTENSIONS))
        if not files:
            raise ValueError(f"input folder {path} holds no .nii or .nii.gz file")
    return [{"image": str(f.resolve()), "case": _stem(f)} for f in files]


def mask_path(image_path: str | Path, output_dir: str | Path, postfix: str) -> Path:
    """Where the mask of ``image_path`` is written: ``<output_dir>/<stem>_<postfix>.nii.gz``."""
    return Path(output_dir) / f"{_stem(Path(image_path))}_{postfix}.nii.gz"


def plan_outputs(
    datalist: list[dict[str, str]], output_dir: str | Path, postfix: str, overwrite: bool = False
) -> list[dict[str, str]]:
    """Check the output folder before any work: refuse to overwrite existing masks unless ``overwrite``.

    Returns the datalist unchanged. Creates ``output_dir``.

    Raises:
        FileExistsError: a mask already exists and ``overwrite`` is False (names the first few).
    """
    out = Path(output_dir).expanduser()
    existing = [mask_path(d["image"], out, postfix) for d in datalist]
    existing = [p for p in existing if p.exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise FileExistsError(
            f"{len(existing)} mask(s) already exist in {out} ({names}); pass --overwrite true to replace them "
            "or choose another --output"
        )
    out.mkdir(parents=True, exist_ok=True)
    return datalist
