"""Writing helpers shared by the phantom generators: NIfTI headers, atomic writes, ``dataset.json`` bookkeeping."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

DATASET_JSON = "dataset.json"


def nifti_image(array: np.ndarray, affine: np.ndarray, description: str) -> nib.Nifti1Image:
    """NIfTI-1 image with qform and sform set (scanner code), mm units and the array's own data type."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.header["descrip"] = description.encode()[:79]
    return image


def atomic_write(folder: Path, name: str, writer: Callable[[Path], None]) -> Path:
    """Write ``folder/name`` through ``writer(temporary_path)`` then rename it into place (same folder)."""
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ""
    tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"
    try:
        writer(tmp)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / name


def sync_dataset_json(
    folder: Path,
    describe: Callable[[list[int]], dict[str, Any]],
    identity_keys: Sequence[str],
    cases: Sequence[int],
    stray: Sequence[str],
) -> None:
    """Create or extend ``folder/dataset.json``; refuse a folder made with other settings or holding foreign files.

    Args:
        folder: the data set folder.
        describe: ``describe(case_numbers)`` returns the full ``dataset.json`` content for those cases.
        identity_keys: keys that must match an existing ``dataset.json`` (generator, version, seed, shape, ...).
        cases: case numbers about to be written.
        stray: data files already in the folder (used only when there is no ``dataset.json`` yet).

    Raises:
        ValueError: the folder holds data files but no ``dataset.json``, its ``dataset.json`` is unreadable, or it
            was made with other settings.
    """
    path = folder / DATASET_JSON
    wanted = describe(sorted(int(c) for c in cases))
    if not path.exists():
        if stray:
            raise ValueError(f"{folder} holds {', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''} but no "
                             f"{DATASET_JSON}: these are not phantoms of this generator; use an empty folder")
    else:
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        differ = [k for k in identity_keys if existing.get(k) != wanted[k]]
        if differ:
            found = ", ".join(f"{k}={existing.get(k)!r}" for k in differ)
            requested = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
            raise ValueError(f"{folder} holds phantoms made with other settings ({found}; requested {requested}); "
                             "use another folder or delete this one")
        known = {int(c) for c in existing.get("cases", [])}
        if known.issuperset(int(c) for c in cases):
            return
        wanted = describe(sorted(known | {int(c) for c in cases}))
    atomic_write(folder, DATASET_JSON, lambda p: p.write_text(json.dumps(wanted, indent=2) + "\n"))
