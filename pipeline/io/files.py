"""Files written safely and recognised again: atomic writes, NIfTI headers, content hashes, checkpoints.

* :func:`atomic_write` writes through a temporary file in the target folder (``.<name>.tmp-<12 hex><suffix>``),
  synced, then renamed into place, so a crash never leaves a partial file under the final name; with
  ``overwrite=False`` an existing file is never replaced, even one that appears while writing.
* :func:`nifti_image` builds a NIfTI-1 image with qform and sform set, as a viewer expects.
* :func:`sha256_prefix` names a checkpoint by its content (MLflow params, base-mask caches).
* :func:`load_weights` loads a checkpoint into a network, whatever varseg workflow wrote it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["TEMP_MARKER", "atomic_write", "load_weights", "nifti_image", "sha256_prefix"]

#: Temporary files are ``.<final name>.tmp-<12 hex><suffix>`` (see :func:`pipeline.io.volumes.clean_stale_temporaries`).
TEMP_MARKER = ".tmp-"
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".json", ".csv", ".pt", ".md")


def _suffix(name: str) -> str:
    return next((s for s in _SUFFIXES if name.endswith(s)), "")


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; a file system that cannot sync a folder is tolerated."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_no_clobber(temporary: Path, path: Path) -> None:
    """Move ``temporary`` to ``path`` atomically, failing if ``path`` appeared meanwhile."""
    try:
        os.link(temporary, path)
    except FileExistsError as exc:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)") from exc
    except OSError:  # file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)") from None
        os.replace(temporary, path)


def atomic_write(folder: str | Path, name: str, writer: Callable[[Path], Any], *, overwrite: bool = True) -> Path:
    """Write ``folder/name`` through ``writer(temporary_path)``, then move it into place atomically.

    The temporary file sits in ``folder`` (created if missing) and keeps the name's suffix, so writers that choose
    the format by suffix (nibabel, SimpleITK) write the right one.

    Raises:
        FileExistsError: ``overwrite`` is False and ``folder/name`` exists (it is left unchanged).
    """
    folder = Path(folder)
    path = folder / name
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}{_suffix(name)}"
    try:
        writer(temporary)
        _fsync(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            _link_no_clobber(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _fsync(folder)
    return path


def nifti_image(array: np.ndarray, affine: np.ndarray, description: str = "") -> nib.Nifti1Image:
    """NIfTI-1 image with qform and sform set (scanner code), mm units and the array's own data type."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    image.header["descrip"] = description.encode()[:79]
    return image


def sha256_prefix(path: str | Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def load_weights(network: Any, ckpt_path: str | Path, device: Any = "cpu", *, hint: str = "") -> Any:
    """Load a checkpoint into ``network`` and return it on ``device`` in eval mode.

    Accepts a bare ``state_dict`` (what MONAI's ``CheckpointSaver`` writes for a single model) or a dict holding it
    under ``"model"`` (a training checkpoint of :class:`pipeline.training.handlers.TrainingCheckpoint`).

    Args:
        network: the ``torch.nn.Module`` to fill.
        ckpt_path: the checkpoint file.
        device: where the weights are mapped and the network is moved.
        hint: what to do when the file is missing (added to the error, e.g. ``"train Mode 1 first"``).

    Raises:
        FileNotFoundError: the file does not exist (names it, and the hint).
        RuntimeError: the file is not a checkpoint of this network (names the file).
    """
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found" + (f": {hint}" if hint else ""))
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        network.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any failure means: not a usable checkpoint of this network
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RuntimeError(f"checkpoint {path} does not fit the network ({type(err).__name__}: {first})") from err
    return network.to(device).eval()
