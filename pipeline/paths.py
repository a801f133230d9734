"""Where things live: repository root, bundles, generated data, real sample data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["REPO_ROOT", "bundle_root", "data_root", "real_data_root"]


def bundle_root(name: str) -> str:
    """Folder of bundle ``name``: ``bundles/<name>`` under the current directory if present, else in the repository."""
    local = Path("bundles") / name
    if (local / "configs").is_dir():
        return str(local.resolve())
    candidate = REPO_ROOT / "bundles" / name
    if not (candidate / "configs").is_dir():
        raise FileNotFoundError(
            f"bundle '{name}' not found in ./bundles or {REPO_ROOT / 'bundles'}; pass --bundle_root <folder>"
        )
    return str(candidate)


def data_root() -> str:
    """Folder for generated (synthetic) data: ``VARSEG_DATA`` or ``<repository>/data`` (git-ignored)."""
    return str(Path(os.environ.get("VARSEG_DATA", REPO_ROOT / "data")).resolve())


def real_data_root() -> Path:
    """Folder of the small real sample cases: ``VARSEG_REAL_DATA`` or ``<repository>/../shared/data/real``."""
    return Path(os.environ.get("VARSEG_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real")).resolve()


def require_file(path: str | Path, what: str) -> str:
    """Return ``path`` if it is a file, else raise ``FileNotFoundError`` naming it and ``what`` it should be."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    return str(path)
