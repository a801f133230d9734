"""What the four phantom generators share: smooth random fields and sampling grids, shape checks, ``dataset.json``
bookkeeping, and the ``varseg make-data`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from pipeline.io.files import atomic_write, nifti_image

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_JSON",
    "Field",
    "Grid",
    "BodyWall",
    "acquire_ct",
    "draw_body_wall",
    "ellipse",
    "case_indices",
    "case_rngs",
    "generate_image_label_cases",
    "check_shape",
    "grid_affine",
    "phantom_parser",
    "real_or_phantoms",
    "run_phantom_command",
    "segment_mask",
    "sync_dataset_json",
    "wall_layers",
    "write_case_files",
    "write_image_label",
    "write_cases",
]

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class Field:
    """A smooth random field in millimetres: a sum of plane waves ``amp * cos(k . p + phase)``."""

    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, modes: int, wavelength_mm: tuple[float, float], std: float) -> Field:
        """Draw a field of ``modes`` plane waves with log-uniform wavelengths and overall standard deviation ``std``."""
        direction = rng.normal(size=(modes, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = np.exp(rng.uniform(np.log(wavelength_mm[0]), np.log(wavelength_mm[1]), modes))
        k = direction * (2.0 * np.pi / wavelength)[:, None]
        return cls(k, rng.uniform(0.0, 2.0 * np.pi, modes), np.full(modes, std * math.sqrt(2.0 / modes)))

    def on_grid(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Evaluate the field on the grid spanned by 1-D coordinates; float32 ``(len(xs), len(ys), len(zs))``."""
        out = np.zeros((xs.size, ys.size, zs.size), np.float32)
        for (kx, ky, kz), phase, amp in zip(self.k, self.phase, self.amp):
            plane = kx * xs[:, None] + ky * ys[None, :] + phase
            out += np.cos(plane).astype(np.float32)[:, :, None] * (amp * np.cos(kz * zs)).astype(np.float32)
            out -= np.sin(plane).astype(np.float32)[:, :, None] * (amp * np.sin(kz * zs)).astype(np.float32)
        return out


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (mm, patient frame) of an axis-aligned grid."""

    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: Sequence[float], centre: Sequence[float]) -> Grid:
        """Grid of ``shape`` voxels of ``spacing`` mm whose centre is at ``centre`` (mm)."""
        axes = [c + (np.arange(n) - (n - 1) / 2.0) * s for n, s, c in zip(shape, spacing, centre)]
        return cls(axes[0], axes[1], axes[2], (float(spacing[0]), float(spacing[1]), float(spacing[2])))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z."""
        return self.xs.size, self.ys.size, self.zs.size

    def sub(self, steps: tuple[int, int, int]) -> Grid:
        """Every ``steps``-th voxel along each axis (a subset of this grid's voxel centres)."""
        sx, sy, sz = steps
        return Grid(self.xs[::sx], self.ys[::sy], self.zs[::sz],
                     (self.spacing[0] * sx, self.spacing[1] * sy, self.spacing[2] * sz))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box of the voxels whose centres lie within ``[lo, hi]`` mm, or None when it is empty."""
        out = []
        for axis, a, b in zip((self.xs, self.ys, self.zs), lo, hi):
            i0, i1 = np.searchsorted(axis, a, "left"), np.searchsorted(axis, b, "right")
            if i1 <= i0:
                return None
            out.append(slice(int(i0), int(i1)))
        return out[0], out[1], out[2]

    def coords(self, box: tuple[slice, slice, slice], centre: np.ndarray) -> tuple[np.ndarray, ...]:
        """Broadcastable offsets (mm) from ``centre`` of the voxel centres in ``box``."""
        return (self.xs[box[0]][:, None, None] - centre[0], self.ys[box[1]][None, :, None] - centre[1],
                self.zs[box[2]][None, None, :] - centre[2])


def check_shape(shape: Sequence[int], min_size: int = 8, max_size: int = 2048) -> tuple[int, int, int]:
    """Validate a grid shape of three integers, each in ``[min_size, max_size]``."""
    values = tuple(int(s) for s in shape)
    if len(values) != 3 or any(v != s for v, s in zip(values, shape)):
        raise ValueError(f"shape must be three integers (x, y, z), got {shape!r}")
    if any(not min_size <= v <= max_size for v in values):
        raise ValueError(f"shape {values} out of range: each size must be in [{min_size}, {max_size}]")
    return values[0], values[1], values[2]


def segment_mask(grid: Grid, a: np.ndarray, b: np.ndarray, ra: float,
                  rb: float) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Index box and mask of a tapered cylinder (capsule) from ``a`` to ``b``."""
    r = max(ra, rb)
    box = grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
    if box is None:
        return None
    px, py, pz = grid.coords(box, a)
    d = b - a
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
    return box, dist2 < (ra + t * (rb - ra)) ** 2


def sync_dataset_json(folder: Path, describe: Callable[[list[int]], dict[str, Any]], identity_keys: Sequence[str],
                      cases: Sequence[int], stray: Sequence[str]) -> None:
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


def phantom_parser(dataset: str, description: str, num_cases: int, shape: Sequence[int],
                   shape_help: str = "grid size in voxels") -> argparse.ArgumentParser:
    """The ``varseg make-data <dataset>`` parser with the options every generator has; add the generator's own."""
    parser = argparse.ArgumentParser(prog=f"varseg make-data {dataset}", description=description)
    parser.add_argument("out_dir", nargs="?", default=None, help="output folder (or --out)")
    parser.add_argument("--out", dest="out_option", default=None, help="output folder")
    parser.add_argument("--num-cases", type=int, default=num_cases, help=f"number of cases (default {num_cases})")
    parser.add_argument("--shape", type=int, nargs=3, default=list(shape), metavar=("X", "Y", "Z"),
                        help=f"{shape_help} (default {' '.join(map(str, shape))})")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--start-index", type=int, default=0, help="number of the first case (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing cases")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run_phantom_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None, what: str,
                        generate: Callable[[argparse.Namespace], tuple[list[dict[str, Any]], int]],
                        details: Callable[[argparse.Namespace], str] = lambda args: "") -> int:
    """Parse ``argv``, run ``generate(args)`` (returns the datalist and the number of cases written), print a summary.

    A bad setting or a folder holding other data (``ValueError``) prints one ``error:`` line and exits with 2.
    """
    args = parser.parse_args(argv)
    if (args.out_dir is None) == (args.out_option is None):
        parser.error("give the output folder once: as OUT_DIR or as --out DIR")
    args.out_dir = args.out_dir if args.out_dir is not None else args.out_option
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        datalist, written = generate(args)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    extra = details(args)
    print(f"{len(datalist)} {what} in {Path(args.out_dir).expanduser().absolute()} ({written} written, "
          f"{len(datalist) - written} already present; shape {tuple(args.shape)}, seed {args.seed}"
          f"{', ' + extra if extra else ''})")
    return 0


def case_indices(num_cases: int, start_index: int) -> list[int]:
    """Case numbers ``start_index .. start_index + num_cases - 1``; raises ``ValueError`` for a bad count or start."""
    if int(num_cases) != num_cases or num_cases < 1 or int(start_index) != start_index or start_index < 0:
        raise ValueError(f"num_cases must be >= 1 and start_index >= 0, got {num_cases!r} and {start_index!r}")
    return list(range(int(start_index), int(start_index) + int(num_cases)))


def write_cases(out_dir: str | Path, indices: Sequence[int], sync: Callable[[Path, list[int]], None],
                write_case: Callable[[Path, int], bool], what: str, progress: bool) -> tuple[Path, int]:
    """Create ``out_dir``, check/extend its ``dataset.json`` (``sync``), write every case not there yet.

    Returns:
        The absolute folder and the number of cases ``write_case(folder, index)`` actually wrote.
    """
    folder = Path(out_dir).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    sync(folder, list(indices))
    written = 0
    for index in tqdm(indices, desc=what, unit="case", disable=not progress):
        written += bool(write_case(folder, index))
    logger.info("%s in %s: %d written, %d already present", what, folder, written, len(indices) - written)
    return folder, written


def write_case_files(files: Mapping[str, Path], index: int, overwrite: bool,
                     make: Callable[[], Mapping[str, nib.Nifti1Image]]) -> bool:
    """Write the files of case ``index`` (``role -> path``) unless all exist; returns whether they were written.

    ``make()`` renders the case and returns one NIfTI image per role; each file is written atomically.

    Raises:
        ValueError: some but not all files exist and not ``overwrite`` (names the missing ones).
    """
    present = {role: Path(path).exists() for role, path in files.items()}
    if all(present.values()) and not overwrite:
        logger.debug("case %d already present; skipped", index)
        return False
    if any(present.values()) and not overwrite:
        there = ", ".join(Path(files[r]).name for r, p in present.items() if p)
        missing = ", ".join(Path(files[r]).name for r, p in present.items() if not p)
        raise ValueError(f"case {index} is incomplete: {there} exists without its pair(s) {missing}; remove it or "
                         f"pass overwrite=True to regenerate case {index}")
    images = make()
    for role, path in files.items():
        path = Path(path)
        atomic_write(path.parent, path.name, lambda p, image=images[role]: nib.save(image, p))
    return True


def real_or_phantoms(dataset_dir: str | Path | None, synthetic_dir: str | Path,
                     index: Callable[[str | Path], list[dict[str, Any]]],
                     generate: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The datalist of the real folder ``dataset_dir`` (never written to), or of the phantoms in ``synthetic_dir``.

    ``None``, ``""`` or ``"synthetic"`` select the phantoms: ``generate()`` writes those missing (idempotent) and
    returns their entries; the datalist is ``index(synthetic_dir)`` restricted to them, so a real and a synthetic
    folder give entries of the same form.
    """
    if dataset_dir is not None and str(dataset_dir).strip() not in ("", "synthetic"):
        return index(dataset_dir)
    wanted = {entry["case"] for entry in generate()}
    return [entry for entry in index(synthetic_dir) if entry["case"] in wanted]



def case_rngs(seed: int, index: int, count: int = 3) -> list[np.random.Generator]:
    """Independent generators of case ``index`` of data set ``seed`` (anatomy, placement, noise, ...)."""
    if int(index) != index or index < 0:
        raise ValueError(f"case index must be a non-negative integer, got {index!r}")
    return np.random.default_rng([int(seed), int(index)]).spawn(count)


def grid_affine(spacing: Sequence[float], origin: np.ndarray, grid: Grid) -> np.ndarray:
    """Diagonal RAS+ voxel-to-world affine of ``grid``; the world origin is the case's table position ``origin``."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin + np.array([grid.xs[0], grid.ys[0], grid.zs[0]])
    return affine


def acquire_ct(hu: np.ndarray, blur_xy: float, noise_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A CT acquisition of an HU map: partial-volume blur, Gaussian noise, rounding to int16 HU in [-1024, 3071]."""
    out = ndimage.gaussian_filter(hu, sigma=(blur_xy, blur_xy, 0.4), mode="nearest", truncate=3.0)
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    noise *= noise_sigma
    out += noise
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)



@dataclass(frozen=True)
class BodyWall:
    """Body outline (semi-axes ``a`` x ``b`` mm) and wall: skin, fat (thickness modulated by angle), muscle."""

    a: float
    b: float
    skin: float
    fat: float
    fat_mod: float
    fat_angle: float
    muscle: float
    skin_hu: float
    fat_hu: float
    muscle_hu: float


def draw_body_wall(rng: np.random.Generator, a_mm: tuple[float, float], ratio: tuple[float, float],
                   fat_mm: tuple[float, float], muscle_mm: tuple[float, float], max_a: float | None = None) -> BodyWall:
    """A body wall with semi-axis ``a`` in ``a_mm`` (at most ``max_a``), ``b = a * ratio``, fat and muscle layers."""
    a = float(rng.uniform(*a_mm))
    a = min(a, max_a) if max_a is not None else a
    return BodyWall(
        a=a, b=a * float(rng.uniform(*ratio)), skin=float(rng.uniform(1.5, 2.5)), fat=float(rng.uniform(*fat_mm)),
        fat_mod=float(rng.uniform(0.1, 0.4)), fat_angle=float(rng.uniform(0, 2 * np.pi)),
        muscle=float(rng.uniform(*muscle_mm)), skin_hu=float(rng.uniform(20, 40)), fat_hu=float(rng.uniform(-115, -85)),
        muscle_hu=float(rng.uniform(40, 60)),
    )


def ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised elliptic radius (1 on the boundary)."""
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def wall_layers(wall: BodyWall, x: np.ndarray, y: np.ndarray,
                tissues: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2-D tissue (codes of ``tissues``), HU, depth below the skin (mm) and depth of the inner muscle surface."""
    theta, radius = np.arctan2(y, x), np.hypot(x, y)
    edge = wall.a * wall.b / np.sqrt((wall.b * np.cos(theta)) ** 2 + (wall.a * np.sin(theta)) ** 2)
    depth = edge - radius
    fat_depth = wall.skin + wall.fat * (1.0 + wall.fat_mod * np.cos(theta - wall.fat_angle))
    tissue = np.full(depth.shape, tissues["air"], np.uint8)
    hu = np.full(depth.shape, -1000.0, np.float32)
    for lo, name, value in ((0.0, "soft_tissue", wall.skin_hu), (wall.skin, "fat", wall.fat_hu),
                            (fat_depth, "muscle", wall.muscle_hu)):
        mask = depth >= lo
        tissue[mask], hu[mask] = tissues[name], value
    return tissue, hu, depth, fat_depth + wall.muscle



def write_image_label(entry: Mapping[str, str], index: int, overwrite: bool,
                      render: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]], description: str) -> bool:
    """Write the ``label`` and ``image`` NIfTI files of a CT phantom case (``render() -> (volume, label, affine)``)
    unless both exist; returns whether they were written (:func:`write_case_files`)."""

    def make() -> dict[str, nib.Nifti1Image]:
        volume, label, affine = render()
        return {"label": nifti_image(label, affine, description), "image": nifti_image(volume, affine, description)}

    return write_case_files({"label": Path(entry["label"]), "image": Path(entry["image"])}, index, overwrite, make)



def generate_image_label_cases(out_dir: str | Path, num_cases: int, shape: Sequence[int], seed: int, start_index: int,
                               overwrite: bool, progress: bool, what: str,
                               describe: Callable[[tuple[int, int, int], int, Sequence[int]], dict[str, Any]],
                               stray: Callable[[Path], list[str]], entry: Callable[[Path, int], dict[str, str]],
                               render: Callable[[int, tuple[int, int, int], int], tuple[np.ndarray, ...]],
                               ) -> tuple[list[dict[str, str]], int]:
    """Write CT phantom cases of one image and one label each (LiTS, lung); the datalist and the number written.

    ``describe(shape, seed, cases)`` is the ``dataset.json`` content, ``stray(folder)`` the data files of a folder
    without one, ``entry(folder, index)`` a case's datalist entry and ``render(index, shape, seed)`` its
    ``(volume, label, affine)``; ``what`` names the phantoms in the progress bar, logs and NIfTI descriptions.
    """
    shape, seed, indices = check_shape(shape), int(seed), case_indices(num_cases, start_index)

    def sync(folder: Path, cases: list[int]) -> None:
        found = [] if (folder / DATASET_JSON).exists() else stray(folder)
        sync_dataset_json(folder, lambda c: describe(shape, seed, c), ("generator", "generator_version", "seed",
                                                                      "shape"), cases, found)

    def write(folder: Path, index: int) -> bool:
        return write_image_label(entry(folder, index), index, overwrite, lambda: render(index, shape, seed),
                                 f"varseg {what} seed={seed} case={index}")

    folder, written = write_cases(out_dir, indices, sync, write, f"{what}s", progress)
    return [entry(folder, i) for i in indices], written
