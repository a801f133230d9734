"""LiTS data: synthetic CT phantoms in the LiTS on-disk layout, an indexer for that layout, and case splits.

On-disk layout (the one of the LiTS 2017 challenge)::

    <folder>/[any sub-folders, e.g. "Training Batch 1"/]volume-N.nii[.gz]        CT, Hounsfield units (int16)
    <folder>/[any sub-folders]/segmentation-N.nii[.gz]                          0 background, 1 liver, 2 lesion

:func:`generate_lits_phantoms` writes synthetic cases in this layout (``.nii.gz``, int16 HU / uint8 labels, same
shape and affine) plus a small ``dataset.json``; :func:`index_lits` turns a real or synthetic folder into a
datalist; :func:`lits_datalist` picks one or the other; :func:`split_cases` and :func:`mark_labelled` make the
deterministic train/val/test split and the labelled subset of the training cases.

Phantom model. The anatomy is defined analytically in millimetres in a patient frame centred on the body axis
(RAS+: +x towards the patient's right, +y anterior, +z superior) and sampled at voxel centres:

* body: an ellipse of about 280-340 x 190-260 mm (capped so that it fits a 512-pixel reconstruction of the case's
  pixel spacing), with skin, subcutaneous fat (about -100 HU, thickness varying around the body) and a muscle wall
  (40-60 HU); air outside (-1000 HU);
* spine posteriorly: vertebral body with cortical shell and cancellous core (300-1000 HU), intervertebral discs,
  neural arch, spinal canal, paraspinal muscles; aorta and inferior vena cava in front of it (contrast-enhanced);
* abdominal cavity: a mix of visceral fat, bowel/soft tissue and gas pockets (smooth random fields), kidneys,
  gallbladder (fluid, a lesion mimic) and the liver in the patient's right;
* liver: a wedge-shaped, irregular ellipsoid clipped by the body wall and neighbouring organs, 50-90 HU with a
  smooth low-frequency texture; contrast-enhanced vessels (150-200 HU, tubular, curved, branching) run through it;
* lesions: 1-5 per case, 5-40 mm in diameter (biased towards >= 12 mm), rotated and optionally irregular
  ellipsoids, 15-60 HU darker than the local liver, some with blurred rims; they lie inside the liver and inside
  the field of view, so every case has lesion voxels.

Acquisition: in-plane pixel spacing 0.6-0.9 mm and slice thickness 1-5 mm drawn per case; partial-volume blur
(Gaussian, sigma 0.5-1 pixel in-plane and 0.4 x slice thickness along z) applied to the anatomy before white
Gaussian noise (sigma 10-25 HU per case); values rounded to int16 and clipped to [-1024, 3071]. The affine is
diagonal RAS+ (qform and sform, scanner code), with a per-case table position as origin; units are mm.

Field of view. The grid is placed per case. A grid larger than the body (e.g. 512 x 512 x N) is centred on it and
shows the whole abdominal cross-section. The default 128 x 128 x 32 grid covers only about 77-115 mm in-plane, so
it is a liver-centred field of view: its centre is placed inside the liver, shifted towards the right body wall, so
that it holds mostly liver, the lesions and vessels, and at least two other tissue classes (body wall muscle, fat,
and air, bowel or other organs where the geometry allows). Slabs are centred near the middle of the liver.

Determinism. Case ``N`` of seed ``S`` only depends on ``numpy.random.default_rng([S, N])`` and the grid shape, so
it is identical whether generated alone or among other cases.

Command line::

    python -m pipeline.data.lits OUT_DIR [--num-cases 16] [--shape 128 128 32] [--seed 0] [--overwrite]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.io.datasets import LITS_SEGMENTATION_RE, LITS_VOLUME_RE, index_lits

from .scaffold import BodyWall, Field, Grid, acquire_ct, case_rngs, check_shape
from .scaffold import draw_body_wall, ellipse, generate_image_label_cases, grid_affine, phantom_parser
from .scaffold import real_or_phantoms, run_phantom_command, segment_mask, wall_layers

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS",
    "generate_lits_phantoms",
    "lits_datalist",
    "make_lits_case",
]

LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "lesion"}
TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "muscle": 2, "soft_tissue": 3, "fluid": 4, "bone": 5, "vessel": 6, "liver": 7, "lesion": 8,
}
GENERATOR = "pipeline.data.lits"
GENERATOR_VERSION = 1
_T = TISSUES


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic smooth step of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# ----------------------------------------------------------------------------------------------------------------
# Anatomy parameters (drawn independently of the grid)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spine:
    """Vertebra (centre ``y``, semi-axes ``a`` x ``b``), discs along z, spinal canal, aorta and IVC (mm, HU)."""

    y: float
    a: float
    b: float
    cortex: float
    cortex_hu: float
    cancellous_hu: float
    arch_hu: float
    canal_r: float
    disc_period: float
    disc_width: float
    disc_phase: float
    disc_hu: float
    aorta: tuple[float, float, float]
    aorta_hu: float
    ivc: tuple[float, float, float, float]
    ivc_hu: float


@dataclass(frozen=True)
class _Ellipsoid:
    """Axis-aligned ellipsoidal organ (centre and semi-axes in mm) of uniform HU."""

    centre: np.ndarray
    semi: np.ndarray
    hu: float


@dataclass(frozen=True)
class _Liver:
    """Liver ellipsoid (before the wedge deformation), boundary perturbation field, base HU and texture."""

    centre: np.ndarray
    semi: np.ndarray
    shape_field: Field
    base_hu: float
    texture: Field


@dataclass(frozen=True)
class _Viscera:
    """Bowel/visceral-fat mix: fat where ``bowel < fat_level``, gas pockets where both fields are high."""

    bowel: Field
    gas: Field
    fat_level: float
    bowel_hu: float
    fat_texture: Field


@dataclass(frozen=True)
class _Lesion:
    """Lesion shape (rotated, optionally irregular ellipsoid), darkening ``contrast`` (HU) and rim width (mm)."""

    diameter: float
    contrast: float
    rim: float
    semi: np.ndarray
    rotation: np.ndarray
    irregular: float
    irr_k: np.ndarray
    irr_phase: np.ndarray


@dataclass(frozen=True)
class _Anatomy:
    """All grid-independent parameters of a case, acquisition included."""

    spacing: tuple[float, float, float]
    origin: np.ndarray
    body: BodyWall
    spine: _Spine
    viscera: _Viscera
    kidneys: tuple[_Ellipsoid, ...]
    gallbladder: _Ellipsoid | None
    liver: _Liver
    lesions: tuple[_Lesion, ...]
    vessel_count: int
    noise_sigma: float
    blur_xy: float


def _draw_spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    """In-plane pixel spacing 0.6-0.9 mm and a slice thickness from the usual 1-5 mm protocols."""
    pixel = float(rng.uniform(0.6, 0.9))
    thickness = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0], p=[0.12, 0.12, 0.16, 0.16, 0.16, 0.12, 0.16]))
    return pixel, pixel, thickness


def _draw_body(rng: np.random.Generator, pixel: float) -> BodyWall:
    """Body ellipse fitting a 512-pixel reconstruction with at least 12 mm of air on either side."""
    return draw_body_wall(rng, (140.0, 172.0), (0.68, 0.78), (10, 28), (7, 14), max_a=256.0 * pixel - 12.0)


def _draw_spine(rng: np.random.Generator, body: BodyWall) -> _Spine:
    """Vertebral column about 60-80 mm in front of the back skin, with aorta and IVC in front of it."""
    y, a, b = -body.b + float(rng.uniform(62, 78)), float(rng.uniform(18, 24)), float(rng.uniform(14, 18))
    return _Spine(
        y=y, a=a, b=b, cortex=float(rng.uniform(1.5, 2.5)), cortex_hu=float(rng.uniform(700, 1000)),
        cancellous_hu=float(rng.uniform(300, 420)), arch_hu=float(rng.uniform(450, 800)),
        canal_r=float(rng.uniform(7, 9)), disc_period=float(rng.uniform(28, 34)), disc_width=float(rng.uniform(6, 9)),
        disc_phase=float(rng.uniform(0, 34)), disc_hu=float(rng.uniform(70, 100)),
        aorta=(-float(rng.uniform(15, 25)), y + b + float(rng.uniform(9, 14)), float(rng.uniform(9, 13))),
        aorta_hu=float(rng.uniform(150, 200)),
        ivc=(float(rng.uniform(18, 28)), y + b + float(rng.uniform(12, 20)), float(rng.uniform(9, 12)),
             float(rng.uniform(12, 16))),
        ivc_hu=float(rng.uniform(130, 170)),
    )


def _draw_liver(rng: np.random.Generator, body: BodyWall) -> _Liver:
    """Liver in the patient's right, reaching the right body wall and crossing the midline anteriorly."""
    centre = np.array([rng.uniform(0.30, 0.40) * body.a, rng.uniform(0.0, 0.12) * body.b, 0.0])
    semi = np.array([rng.uniform(0.55, 0.65) * body.a, rng.uniform(0.62, 0.75) * body.b, rng.uniform(75, 95)])
    return _Liver(centre=centre, semi=semi, shape_field=Field.draw(rng, 6, (60, 160), float(rng.uniform(0.04, 0.08))),
                  base_hu=float(rng.uniform(58, 82)), texture=Field.draw(rng, 8, (15, 80), float(rng.uniform(3, 6))))


def _draw_organs(rng: np.random.Generator, spine: _Spine,
                 liver: _Liver) -> tuple[tuple[_Ellipsoid, ...], _Ellipsoid | None]:
    """Kidneys beside the spine below the liver centre, and (in most cases) a gallbladder under the liver."""
    lc, ls = liver.centre, liver.semi
    kidneys = tuple(
        _Ellipsoid(
            np.array([side * rng.uniform(55, 75), spine.y + rng.uniform(-5, 10), lc[2] - rng.uniform(*dz) * ls[2]]),
            np.array([rng.uniform(22, 28), rng.uniform(18, 24), rng.uniform(45, 60)]), float(rng.uniform(140, 190)),
        )
        for side, dz in ((1.0, (0.45, 0.7)), (-1.0, (0.3, 0.55)))
    )
    gallbladder = None
    if rng.random() < 0.75:
        centre = lc + np.array([-rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.5), -rng.uniform(0.25, 0.45)]) * ls
        gallbladder = _Ellipsoid(centre, np.array([rng.uniform(10, 16), rng.uniform(12, 18), rng.uniform(25, 40)]),
                                 float(rng.uniform(0, 20)))
    return kidneys, gallbladder


def _draw_lesion(rng: np.random.Generator, dominant: bool) -> _Lesion:
    """One lesion: the dominant one is 14-40 mm across, the others half >= 12 mm and half 5-12 mm."""
    if dominant:
        diameter = float(rng.uniform(14, 40))
    else:
        diameter = float(rng.uniform(12, 32) if rng.random() < 0.5 else rng.uniform(5, 12))
    ratios = rng.uniform(0.8, 1.25, 3)
    semi = diameter / 2.0 * ratios / np.cbrt(np.prod(ratios))
    blurred = rng.random() < 0.4
    rim = min(float(rng.uniform(1.5, 4.0)), 0.3 * diameter / 2.0) if blurred else 0.3
    irregular = float(rng.uniform(0.04, 0.12)) if rng.random() < 0.5 else 0.0
    k = rng.normal(size=(3, 3))
    k *= (rng.uniform(2.0, 4.0, 3) / np.linalg.norm(k, axis=1))[:, None]
    return _Lesion(diameter=diameter, contrast=float(rng.uniform(20, 58)), rim=rim, semi=semi,
                   rotation=_random_rotation(rng), irregular=irregular, irr_k=k, irr_phase=rng.uniform(0, 2 * np.pi, 3))


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """All grid-independent parameters of one case."""
    spacing = _draw_spacing(rng)
    origin = np.array([rng.uniform(-20, 20), rng.uniform(-40, 10), rng.uniform(-650, -350)])
    body = _draw_body(rng, spacing[0])
    spine = _draw_spine(rng, body)
    viscera = _Viscera(bowel=Field.draw(rng, 8, (15, 50), 1.0), gas=Field.draw(rng, 6, (8, 25), 1.0),
                       fat_level=float(rng.uniform(-0.4, 0.3)), bowel_hu=float(rng.uniform(20, 45)),
                       fat_texture=Field.draw(rng, 4, (10, 40), 6.0))
    liver = _draw_liver(rng, body)
    kidneys, gallbladder = _draw_organs(rng, spine, liver)
    count = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.25, 0.2, 0.15]))
    lesions = tuple(_draw_lesion(rng, i == 0) for i in range(count))
    return _Anatomy(spacing=spacing, origin=origin, body=body, spine=spine, viscera=viscera, kidneys=kidneys,
                    gallbladder=gallbladder, liver=liver, lesions=lesions, vessel_count=int(rng.integers(4, 9)),
                    noise_sigma=float(rng.uniform(10, 25)), blur_xy=float(rng.uniform(0.5, 1.0)))


# ----------------------------------------------------------------------------------------------------------------
# Composition: tissue classes and noise-free HU on a grid
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """Tissue classes, noise-free HU and liver mask on a grid."""

    tissue: np.ndarray
    hu: np.ndarray
    liver: np.ndarray


def _body_layers(body: BodyWall, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D tissue, HU and cavity mask of the body wall (skin, fat, muscle) and air."""
    tissue, hu, depth, inner = wall_layers(body, x, y, _T)
    return tissue, hu, depth >= inner


def _spine_parts(spine: _Spine, body: BodyWall, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, str, float]]:
    """2-D masks (painted in order) of the paraspinal muscles, vertebra, neural arch, canal, aorta and IVC."""
    canal_y = spine.y - spine.b - spine.canal_r - 1.0
    back = -body.b + body.skin + body.fat * (1.0 - body.fat_mod) + 4.0
    canal_r = np.hypot(x, y - canal_y)
    arch = (canal_r < spine.canal_r + 4.5) | ((np.abs(x) < 4.0) & (y < canal_y) & (y > back))
    arch |= ellipse(np.abs(x), y, spine.a + 4.0, canal_y + 3.0, 14.0, 4.0) < 1
    rho = ellipse(x, y, 0.0, spine.y, spine.a, spine.b)
    return [
        ((ellipse(np.abs(x), y, 32.0, canal_y - 8.0, 24.0, 20.0) < 1) & (y > back), "muscle", body.muscle_hu),
        (arch, "bone", spine.arch_hu),
        (canal_r < spine.canal_r, "fluid", 15.0),
        (rho < 1, "bone", spine.cancellous_hu),
        ((rho < 1) & ((1 - rho) * min(spine.a, spine.b) < spine.cortex), "bone", spine.cortex_hu),
        (np.hypot(x - spine.aorta[0], y - spine.aorta[1]) < spine.aorta[2], "vessel", spine.aorta_hu),
        (ellipse(x, y, *spine.ivc) < 1, "vessel", spine.ivc_hu),
    ]


def _cross_section(anat: _Anatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """z-invariant part of the anatomy: 2-D tissue, HU, free cavity mask and vertebral-body mask."""
    x, y = grid.xs[:, None], grid.ys[None, :]
    tissue, hu, cavity = _body_layers(anat.body, x, y)
    inside = tissue != _T["air"]
    for mask, name, value in _spine_parts(anat.spine, anat.body, x, y):
        mask = mask & inside
        tissue[mask], hu[mask] = _T[name], value
        cavity &= ~mask
    vertebra = ellipse(x, y, 0.0, anat.spine.y, anat.spine.a, anat.spine.b) < 1
    return tissue, hu, cavity, vertebra


def _ellipsoid_mask(grid: Grid, ell: _Ellipsoid) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid on the grid."""
    terms = [((axis - c) / s) ** 2 for axis, c, s in zip((grid.xs, grid.ys, grid.zs), ell.centre, ell.semi)]
    return (terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :]) < 1.0


def _paint_viscera(anat: _Anatomy, grid: Grid, cavity: np.ndarray, scene: _Scene) -> None:
    """Fill the free cavity with visceral fat, bowel/soft tissue and gas pockets."""
    vis = anat.viscera
    bowel = vis.bowel.on_grid(grid.xs, grid.ys, grid.zs)
    fat = cavity & (bowel < vis.fat_level)
    soft = cavity & ~fat
    gas = soft & (bowel > vis.fat_level + 1.0) & (vis.gas.on_grid(grid.xs, grid.ys, grid.zs) > 1.2)
    scene.tissue[soft], scene.hu[soft] = _T["soft_tissue"], vis.bowel_hu
    scene.tissue[fat] = _T["fat"]
    scene.hu[fat] = anat.body.fat_hu + vis.fat_texture.on_grid(grid.xs, grid.ys, grid.zs)[fat]
    scene.tissue[gas], scene.hu[gas] = _T["air"], -990.0


def _liver_mask(liver: _Liver, grid: Grid) -> np.ndarray:
    """Wedge-shaped irregular ellipsoid: thick laterally, thin medial left lobe shifted anteriorly, narrower below."""
    (cx, cy, cz), (ax, ay, az) = liver.centre, liver.semi
    lateral = _smoothstep((grid.xs - (cx - ax)) / (1.3 * ax))
    ay_eff = ay * (0.35 + 0.65 * lateral)
    y_shift = 0.3 * ay * (1.0 - lateral)
    taper = 1.0 - 0.3 * np.clip((cz - grid.zs) / az, 0.0, 1.0)
    term_x = ((grid.xs[:, None] - cx) / ax) ** 2 / taper[None, :] ** 2
    term_y = ((grid.ys[None, :] - cy - y_shift[:, None]) / ay_eff[:, None]) ** 2
    term_z = ((grid.zs - cz) / az) ** 2
    level = (term_x[:, None, :] + term_y[:, :, None] + term_z[None, None, :]).astype(np.float32)
    np.sqrt(level, out=level)
    level += liver.shape_field.on_grid(grid.xs, grid.ys, grid.zs)
    return level < 1.0


def _compose(anat: _Anatomy, grid: Grid) -> _Scene:
    """Tissue classes, noise-free HU and liver mask of the whole anatomy (without lesions and liver vessels)."""
    tissue2, hu2, cavity2, vertebra2 = _cross_section(anat, grid)
    nz = grid.shape[2]
    scene = _Scene(np.repeat(tissue2[:, :, None], nz, 2), np.repeat(hu2[:, :, None], nz, 2), np.zeros(0, bool))
    cavity = np.repeat(cavity2[:, :, None], nz, 2)
    _paint_viscera(anat, grid, cavity, scene)
    spine = anat.spine
    disc = ((grid.zs - spine.disc_phase) % spine.disc_period) < spine.disc_width
    discs = vertebra2[:, :, None] & disc[None, None, :]
    scene.tissue[discs], scene.hu[discs] = _T["soft_tissue"], spine.disc_hu
    organs = [(kidney, "soft_tissue") for kidney in anat.kidneys]
    if anat.gallbladder is not None:
        organs.append((anat.gallbladder, "fluid"))
    for ell, name in organs:
        mask = _ellipsoid_mask(grid, ell) & cavity
        scene.tissue[mask], scene.hu[mask] = _T[name], ell.hu
        cavity &= ~mask
    liver = _liver_mask(anat.liver, grid) & cavity
    scene.tissue[liver] = _T["liver"]
    scene.hu[liver] = anat.liver.base_hu + anat.liver.texture.on_grid(grid.xs, grid.ys, grid.zs)[liver]
    scene.liver = liver
    return scene


# ----------------------------------------------------------------------------------------------------------------
# Field of view
# ----------------------------------------------------------------------------------------------------------------


def _distance_to_skin(body: BodyWall, point: np.ndarray, direction: np.ndarray) -> float:
    """Distance (mm) from an inner ``point`` along unit ``direction`` to the body outline."""
    a = (direction[0] / body.a) ** 2 + (direction[1] / body.b) ** 2
    b = 2.0 * (point[0] * direction[0] / body.a**2 + point[1] * direction[1] / body.b**2)
    c = (point[0] / body.a) ** 2 + (point[1] / body.b) ** 2 - 1.0
    return float((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))


def _clamp_centre(value: float, half_body: float, half_extent: float) -> float:
    """Keep the field of view within the body (plus a 15 mm margin); centre it when it is larger than that."""
    lo, hi = -(half_body + 15.0) + half_extent, half_body + 15.0 - half_extent
    return 0.0 if lo > hi else float(np.clip(value, lo, hi))


def _candidate_centre(anat: _Anatomy, extent: np.ndarray, rng: np.random.Generator, reach: float) -> np.ndarray:
    """In-plane centre in the liver, shifted towards the body wall so the FOV edge reaches about the skin.

    ``reach`` in [0, 1] scales the shift from the liver centre (later attempts stay closer to the liver).
    """
    start = anat.liver.centre[:2]
    angle = rng.uniform(-1.1, 1.1)
    u = np.array([math.cos(angle), math.sin(angle)])
    with np.errstate(divide="ignore"):
        half = float(np.min(extent[:2] / 2.0 / np.abs(u)))
    shift = max(_distance_to_skin(anat.body, start, u) - half + rng.uniform(-12.0, 10.0), 0.0)
    centre = start + u * shift * reach
    return np.array([_clamp_centre(centre[0], anat.body.a, extent[0] / 2),
                     _clamp_centre(centre[1], anat.body.b, extent[1] / 2)])


def _fov_score(anat: _Anatomy, grid: Grid) -> tuple[bool, float]:
    """Whether a (coarse) FOV holds >= 30 % liver and >= 2 other tissue classes (>= 1 % each), and a score."""
    tissue = _compose(anat, grid).tissue
    fractions = np.bincount(tissue.ravel(), minlength=len(TISSUES)) / tissue.size
    liver = float(fractions[_T["liver"]])
    others = int(np.sum(np.delete(fractions, [_T["liver"], _T["lesion"]]) >= 0.01))
    return liver >= 0.3 and others >= 2, float(liver > 0.05) + min(liver, 0.5) + 0.1 * min(others, 3)


def _place_fov(anat: _Anatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> Grid:
    """Grid of ``shape`` placed as described in the module docstring."""
    extent = np.asarray(shape, float) * np.asarray(anat.spacing)
    z = anat.liver.centre[2] + rng.uniform(-0.2, 0.2) * anat.liver.semi[2]
    steps = (max(1, shape[0] // 32), max(1, shape[1] // 32), max(1, shape[2] // 16))
    best: tuple[float, Grid] | None = None
    for attempt in range(24):
        centre = _candidate_centre(anat, extent, rng, 1.0 - attempt / 23.0)
        grid = Grid.centred(shape, anat.spacing, (centre[0], centre[1], z))
        ok, score = _fov_score(anat, grid.sub(steps))
        if ok:
            logger.debug("field of view centred at %s mm after %d attempt(s)", np.round(centre, 1), attempt + 1)
            return grid
        if best is None or score > best[0]:
            best = (score, grid)
    logger.debug("no field of view met all criteria; using the best of 24 candidates")
    return best[1]


# ----------------------------------------------------------------------------------------------------------------
# Lesions and vessels
# ----------------------------------------------------------------------------------------------------------------


def _coarse_steps(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Subsampling steps giving a placement grid of about 64 x 64 x 32 voxels."""
    return max(1, round(shape[0] / 64)), max(1, round(shape[1] / 64)), max(1, round(shape[2] / 32))


def _liver_depth(liver: np.ndarray, grid: Grid) -> np.ndarray:
    """Distance (mm) of each liver voxel to the nearest non-liver voxel or in-plane edge of the grid."""
    padded = np.pad(liver, ((1, 1), (1, 1), (0, 0)))
    return ndimage.distance_transform_edt(padded, sampling=grid.spacing)[1:-1, 1:-1, :]


def _lesion_centres(anat: _Anatomy, grid: Grid, liver: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Centres (mm) inside the liver and the grid, deep enough for each lesion and apart from each other."""
    steps = _coarse_steps(grid.shape)
    coarse = grid.sub(steps)
    depth = _liver_depth(liver[:: steps[0], :: steps[1], :: steps[2]], coarse)
    idx = np.argwhere(depth > 0)
    if idx.size == 0:
        raise RuntimeError("the field of view holds no liver; cannot place lesions")
    points = np.stack([coarse.xs[idx[:, 0]], coarse.ys[idx[:, 1]], coarse.zs[idx[:, 2]]], axis=1)
    values = depth[tuple(idx.T)]
    centres: list[np.ndarray] = []
    for lesion in anat.lesions:
        radius = lesion.diameter / 2.0
        deep = values >= min(0.6 * radius, float(np.quantile(values, 0.9)))
        apart = np.ones(len(points), bool)
        for other, placed in zip(anat.lesions, centres):
            apart &= np.linalg.norm(points - placed, axis=1) >= 0.8 * (radius + other.diameter / 2.0)
        pool = np.flatnonzero(deep & apart) if np.any(deep & apart) else np.flatnonzero(deep)
        centres.append(points[rng.choice(pool)])
    return centres


def _lesion_weight(grid: Grid, centre: np.ndarray,
                   lesion: _Lesion) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """Index box, darkening weight in [0, 1] (with rim) and inside mask of one lesion, or None if off the grid.

    The irregularity scales the elliptic radius by ``1 + irregular * wave`` with ``|wave| <= 3``, so the lesion lies
    within ``(max semi-axis + rim) / (1 - 3 * irregular)`` of its centre.
    """
    reach = (float(np.max(lesion.semi)) + lesion.rim) / (1.0 - 3.0 * lesion.irregular)
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return None
    offsets = grid.coords(box, centre)
    local = [sum(lesion.rotation[i, j] * offsets[j] for j in range(3)) / lesion.semi[i] for i in range(3)]
    dist = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
    if lesion.irregular > 0:
        wave = sum(np.cos(sum(k[j] * local[j] for j in range(3)) + p) for k, p in zip(lesion.irr_k, lesion.irr_phase))
        dist = dist * (1.0 + lesion.irregular * wave)
    weight = np.clip(0.5 - (dist - 1.0) * (lesion.diameter / 2.0) / lesion.rim, 0.0, 1.0).astype(np.float32)
    return box, weight, dist < 1.0


def _paint_lesions(anat: _Anatomy, grid: Grid, scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Darken the liver at each lesion; returns the lesion mask (inside the liver, never empty)."""
    drop = np.zeros(grid.shape, np.float32)
    mask = np.zeros(grid.shape, bool)
    for lesion, centre in zip(anat.lesions, _lesion_centres(anat, grid, scene.liver, rng)):
        found = _lesion_weight(grid, centre, lesion)
        if found is None:
            continue
        box, weight, inside = found
        np.maximum(drop[box], lesion.contrast * weight, out=drop[box])
        mask[box] |= inside & scene.liver[box]
    if not mask.any():
        raise RuntimeError("no lesion voxel in the field of view (lesion centres are liver voxels of the grid)")
    scene.hu -= drop * scene.liver
    scene.tissue[mask] = _T["lesion"]
    return mask


def _vessel_path(start: np.ndarray, rng: np.random.Generator, steps: int, step_mm: float = 3.0) -> np.ndarray:
    """A smooth random curve of ``steps`` segments from ``start`` (mostly in-plane)."""
    direction = rng.normal(size=3) * np.array([1.0, 1.0, 0.5])
    points = [start]
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.15, 3)
        direction /= np.linalg.norm(direction)
        points.append(points[-1] + step_mm * direction)
    return np.asarray(points)


def _vessel_trees(anat: _Anatomy, grid: Grid, liver: np.ndarray,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Curves (points, radii, HU) through the liver in the grid: trunks tapering outwards and some branches."""
    steps = _coarse_steps(grid.shape)
    idx = np.argwhere(liver[:: steps[0], :: steps[1], :: steps[2]]) * np.asarray(steps)
    trees = []
    for _ in range(anat.vessel_count):
        i = idx[rng.integers(len(idx))]
        start = np.array([grid.xs[i[0]], grid.ys[i[1]], grid.zs[i[2]]])
        path = np.concatenate([_vessel_path(start, rng, int(rng.integers(10, 30)))[::-1],
                               _vessel_path(start, rng, int(rng.integers(10, 30)))[1:]])
        radii = rng.uniform(1.5, 5.0) * np.linspace(1.15, 0.55, len(path))
        hu = float(rng.uniform(150, 200))
        trees.append((path, radii, hu))
        if rng.random() < 0.5:
            j = int(rng.integers(len(path)))
            branch = _vessel_path(path[j], rng, int(rng.integers(8, 20)))
            trees.append((branch, 0.6 * radii[j] * np.linspace(1.0, 0.6, len(branch)), hu))
    return trees


def _paint_vessels(anat: _Anatomy, grid: Grid, scene: _Scene, lesion: np.ndarray, rng: np.random.Generator) -> None:
    """Contrast-enhanced vessels inside the liver (lesions displace them)."""
    for path, radii, hu in _vessel_trees(anat, grid, scene.liver, rng):
        for k in range(len(path) - 1):
            found = segment_mask(grid, path[k], path[k + 1], float(radii[k]), float(radii[k + 1]))
            if found is None:
                continue
            box, mask = found
            mask &= scene.liver[box] & ~lesion[box]
            scene.hu[box][mask], scene.tissue[box][mask] = hu, _T["vessel"]


# ----------------------------------------------------------------------------------------------------------------
# Case rendering
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phantom:
    """A rendered case: CT volume, segmentation, affine and the underlying tissue map."""

    volume: np.ndarray
    segmentation: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray
    spacing: tuple[float, float, float]
    noise_sigma: float


def _render_case(index: int, shape: Sequence[int] = (128, 128, 32), seed: int = 0) -> _Phantom:
    """Render case ``index`` of ``seed`` on a grid of ``shape`` (see the module docstring)."""
    rng_anatomy, rng_place, rng_noise = case_rngs(seed, index)
    shape = check_shape(shape)
    anat = _draw_anatomy(rng_anatomy)
    grid = _place_fov(anat, shape, rng_place)
    scene = _compose(anat, grid)
    lesion = _paint_lesions(anat, grid, scene, rng_place)
    _paint_vessels(anat, grid, scene, lesion, rng_place)
    segmentation = scene.liver.astype(np.uint8)
    segmentation[lesion] = 2
    volume = acquire_ct(scene.hu, anat.blur_xy, anat.noise_sigma, rng_noise)
    affine = grid_affine(anat.spacing, anat.origin, grid)
    return _Phantom(volume, segmentation, affine, scene.tissue, anat.spacing, anat.noise_sigma)


def make_lits_case(index: int, shape: tuple[int, int, int] = (128, 128, 32),
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesise one LiTS-like CT case.

    Args:
        index: case number ``N`` (>= 0).
        shape: grid size (x, y, z) in voxels; the default is a liver-centred field of view, a grid larger than the
            body (e.g. 512 x 512 x N) shows the whole abdominal cross-section.
        seed: dataset seed; case ``N`` only depends on ``(seed, N)`` and ``shape``.

    Returns:
        ``(volume, segmentation, affine)``: int16 HU volume, uint8 labels (0 background, 1 liver, 2 lesion) of the
        same shape, and the 4x4 float64 RAS+ voxel-to-world affine (mm).

    Raises:
        ValueError: if ``index`` is negative or ``shape`` is not three sizes in [8, 2048].
    """
    case = _render_case(index, shape, seed)
    return case.volume, case.segmentation, case.affine


# ----------------------------------------------------------------------------------------------------------------
# Writing phantoms
# ----------------------------------------------------------------------------------------------------------------


def _case_entry(folder: Path, index: int) -> dict[str, str]:
    """Datalist entry of synthetic case ``index`` in ``folder``."""
    return {"image": str(folder / f"volume-{index}.nii.gz"), "label": str(folder / f"segmentation-{index}.nii.gz"),
            "case": f"volume-{index}"}


def _dataset_description(shape: tuple[int, int, int], seed: int, cases: Sequence[int]) -> dict[str, Any]:
    """Contents of ``dataset.json`` for phantoms of ``shape`` and ``seed`` with case numbers ``cases``."""
    return {
        "name": "LiTS synthetic CT phantoms", "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
        "seed": int(seed), "shape": list(shape), "num_cases": len(cases), "cases": sorted(int(c) for c in cases),
        "modality": {"0": "CT"}, "labels": {str(k): v for k, v in LABELS.items()},
        "layout": "volume-N.nii.gz (int16 HU), segmentation-N.nii.gz (uint8 labels)",
    }


def _stray(folder: Path) -> list[str]:
    """LiTS data files of a folder (a folder without ``dataset.json`` holding them is not a phantom folder)."""
    return sorted(p.name for p in folder.iterdir()
                  if LITS_VOLUME_RE.match(p.name) or LITS_SEGMENTATION_RE.match(p.name))


def _generate(out_dir: str | Path, num_cases: int, shape: Sequence[int], seed: int, start_index: int,
              overwrite: bool, progress: bool) -> tuple[list[dict[str, str]], int]:
    """Write the phantoms; returns the datalist and the number of cases actually written."""
    return generate_image_label_cases(out_dir, num_cases, shape, seed, start_index, overwrite, progress,
                                      "LiTS phantom", _dataset_description, _stray, _case_entry, make_lits_case)


def generate_lits_phantoms(out_dir: str | Path, num_cases: int = 16, shape: Sequence[int] = (128, 128, 32),
                           seed: int = 0, start_index: int = 0, overwrite: bool = False,
                           progress: bool = True) -> list[dict[str, str]]:
    """Write synthetic cases ``volume-N.nii.gz`` / ``segmentation-N.nii.gz`` and ``dataset.json`` to ``out_dir``.

    Files are written atomically. A case whose two files both exist is skipped (so re-running is idempotent)
    unless ``overwrite`` is set.

    Args:
        out_dir: output folder (created if needed).
        num_cases: number of cases.
        shape: grid size (x, y, z) of every case.
        seed: dataset seed.
        start_index: number ``N`` of the first case.
        overwrite: regenerate cases whose files exist.
        progress: show a progress bar.

    Returns:
        The datalist ``[{"image": volume path, "label": segmentation path, "case": "volume-N"}, ...]``.

    Raises:
        ValueError: for invalid arguments, a case with only one of its two files (without ``overwrite``), a folder
            holding phantoms of other settings (per its ``dataset.json``) or LiTS files without ``dataset.json``.
    """
    return _generate(out_dir, num_cases, shape, seed, start_index, overwrite, progress)[0]


def lits_datalist(dataset_dir: str | Path | None, synthetic_dir: str | Path, num_cases: int = 16,
                  shape: Sequence[int] = (128, 128, 32), seed: int = 0) -> list[dict[str, str]]:
    """Datalist of the real LiTS folder ``dataset_dir``, or of synthetic phantoms when it is not given.

    Args:
        dataset_dir: real LiTS folder (never written to); None, ``""`` or ``"synthetic"`` selects the phantoms.
        synthetic_dir: folder of the phantoms, generated there if missing (idempotent).
        num_cases: number of phantoms.
        shape: phantom grid size.
        seed: phantom seed.

    Returns:
        The datalist, sorted by case number (for phantoms: cases ``0 .. num_cases - 1``).

    Raises:
        LayoutError: if ``dataset_dir`` is not in the LiTS layout.
        ValueError: if ``synthetic_dir`` holds phantoms of other settings.
    """
    return real_or_phantoms(dataset_dir, synthetic_dir, index_lits,
                            lambda: generate_lits_phantoms(synthetic_dir, num_cases, shape, seed))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``varseg make-data lits``: write phantoms and print a one-line summary; returns the exit status."""
    parser = phantom_parser("lits", "Write synthetic LiTS-layout CT phantoms.", 16, (128, 128, 32))
    return run_phantom_command(parser, argv, "LiTS phantom cases", lambda a: _generate(
        a.out_dir, a.num_cases, a.shape, a.seed, a.start_index, a.overwrite, not a.no_progress))


if __name__ == "__main__":
    raise SystemExit(main())
