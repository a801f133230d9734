"""Lung CT data: synthetic thorax phantoms in a Learn2Reg-like layout and an indexer for that layout.

On-disk layout (the one of the Learn2Reg lung CT tasks)::

    <folder>/imagesTr/<case>_0000.nii[.gz]      CT, Hounsfield units (int16)
    <folder>/masksTr/<case>_0000.nii[.gz]       lung mask of the same image (same file name)
    <folder>/dataset.json                        description of the data set

The four digits after the case name number the images of a case (Learn2Reg uses ``_0000`` and ``_0001`` for the
two breathing phases); :func:`index_lung` reads phase ``0000`` by default. :func:`generate_lung_phantoms` writes
synthetic cases ``lung_NNN_0000.nii.gz`` in this layout (``.nii.gz``, int16 HU / uint8 labels, same shape and
affine) plus a ``dataset.json``; :func:`index_lung` turns a real or synthetic folder into a datalist.

Labels: 0 background, 1 **left lung**, 2 **right lung**, where left and right are the *patient's*. The affine is
RAS+ (NIfTI world coordinates; nibabel's ``aff2axcodes`` gives ``("R", "A", "S")``): world ``+x`` points towards the
patient's right, ``+y`` anterior, ``+z`` superior. The left lung (label 1) therefore lies at smaller (more negative)
world ``x`` than the right lung (label 2) and than the body axis; on a screen in the radiological convention
(patient's right on the viewer's left) it appears on the viewer's right. Masks of real data sets may be binary
(both lung fields 1); the indexer does not read the files.

The lung label is the lung field: everything inside the pleural surface, intrapulmonary vessels and nodules
included. A nodule attached to the pleura (juxtapleural) belongs to the label where it lies inside the lung field;
its part outside (in the chest wall) does not. Being of soft-tissue density, such a nodule bites a notch into a
plain threshold segmentation (e.g. HU < -400) that hole filling does not close, whereas nodules and vessels
surrounded by parenchyma are holes that it does close.

Phantom model. The anatomy is defined analytically in millimetres in a patient frame centred on the body axis
(RAS+, as above) and sampled at voxel centres:

* body: an ellipse of about 270-330 x 170-245 mm with skin, subcutaneous fat (about -100 HU, thickness varying
  around the body) and a muscle wall (40-60 HU); air outside (-1000 HU);
* ribs (bone 250-1000 HU: cortex and marrow) inside the muscle wall, one every 24-32 mm along z, sloping down
  anteriorly and replaced by costal cartilage next to the sternum; the sternum anteriorly; the spine posteriorly
  (vertebral body with cortical shell and cancellous core, neural arch, spinal canal, paraspinal muscles);
* mediastinum: a central band of soft tissue (30-60 HU) mixed with mediastinal fat, the heart (35-55 HU, shifted to
  the patient's left, in the lower part of the thorax), the descending aorta left of the spine and the ascending
  aorta (40-50 HU, or 150-250 HU in contrast-enhanced cases), and the trachea (air) above the carina;
* lungs: the thoracic cavity inside the ribs less a 2-4 mm pleural margin and the mediastinum, each lung an
  irregular dome-topped shape narrowing towards its apex and cut below by a diaphragm dome (the right one higher);
  below it the abdomen (soft tissue). Parenchyma is -870 to -830 HU with a smooth texture and a slightly denser
  dependent (posterior) part;
* vessel trees: from each hilum 3-4 trunks (radius 5-7 mm, 25-35 mm long) branch dichotomously seven times into
  tubes of soft-tissue density (30-60 HU) tapering outwards (radius x 0.79, the ratio of Murray's law, and length
  x 0.72-0.86 per generation, down to about 1-1.5 mm);
* nodules: 1-4 inside the lungs, 3-15 mm in diameter, and 1-3 attached to the pleura of the chest wall (6-15 mm,
  the first at least 10 mm), soft-tissue density (20-60 HU).

Acquisition: the in-plane field of view is 1.08-1.2 times the body's width, so the whole thorax fits whatever the
grid (square pixels; about 2.4-3.1 mm for the default 128 x 128 grid, finer for larger grids); slice thickness 2,
2.5 or 3 mm; the slab is centred near the middle of the lungs (a tall grid shows the apices and the diaphragm).
Partial-volume blur (Gaussian, sigma 0.5-0.8 pixel in-plane and 0.4 slice along z) is applied to the anatomy before
white Gaussian noise (sigma 20-40 HU per case); values are rounded to int16 and clipped to [-1024, 3071]. The affine
is diagonal RAS+ (qform and sform, scanner code) with a per-case table position as origin; units are mm.

Determinism. Case ``N`` of seed ``S`` only depends on ``numpy.random.default_rng([S, N])`` and the grid shape, so
it is identical whether generated alone or among other cases.

Command line::

    varseg make-data lung OUT_DIR [--num-cases 18] [--shape 128 128 48] [--seed 0] [--overwrite]
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

from pipeline.io.datasets import IMAGES_DIR, LUNG_IMAGE_RE, MASKS_DIR, index_lung

from .scaffold import BodyWall, Field, Grid, acquire_ct, case_rngs, check_shape
from .scaffold import draw_body_wall, ellipse, generate_image_label_cases, grid_affine, phantom_parser
from .scaffold import real_or_phantoms, run_phantom_command, segment_mask, wall_layers

logger = logging.getLogger(__name__)

__all__ = ["LUNG_LABELS", "generate_lung_phantoms", "lung_datalist", "make_lung_case"]

LUNG_LABELS: dict[int, str] = {0: "background", 1: "left lung", 2: "right lung"}
TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "muscle": 2, "soft_tissue": 3, "fluid": 4, "bone": 5, "vessel": 6, "lung": 7, "nodule": 8,
}
GENERATOR = "pipeline.data.lung"
GENERATOR_VERSION = 1
DEFAULT_SHAPE = (128, 128, 48)
_T = TISSUES
_GENERATIONS = 7  # branchings after the trunk


# ----------------------------------------------------------------------------------------------------------------
# Anatomy parameters (drawn independently of the grid)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bones:
    """Spine (vertebral body centre ``y``, semi-axes), ribs (period, slope, size) and sternum (mm, HU)."""

    y: float
    a: float
    b: float
    cortex_hu: float
    cancellous_hu: float
    arch_hu: float
    canal_r: float
    rib_period: float
    rib_phase: float
    rib_drop: float
    rib_half_z: float
    rib_half_r: float
    cartilage_hu: float


@dataclass(frozen=True)
class _Mediastinum:
    """Central band, heart ellipsoid, aortas, trachea and mediastinal fat (mm, HU)."""

    half_width: float
    soft_hu: float
    fat: Field
    fat_level: float
    heart_centre: np.ndarray
    heart_semi: np.ndarray
    heart_hu: float
    aorta_desc: tuple[float, float, float]
    aorta_asc: tuple[float, float, float]
    aorta_hu: float
    trachea: tuple[float, float, float]
    carina_z: float


@dataclass(frozen=True)
class _Lungs:
    """Lung ellipses (per side), apex and diaphragm heights, boundary field and parenchyma HU."""

    cx: float
    cy: float
    ax: float
    ay: float
    mid_z: float
    apex_z: float
    base_z: tuple[float, float]
    dome: float
    margin: float
    shape_field: Field
    base_hu: float
    gradient_hu: float
    texture: Field
    abdomen_hu: float


@dataclass(frozen=True)
class _Nodule:
    """A nodule: diameter (mm), axis ratios, HU and whether it is attached to the pleura."""

    diameter: float
    ratios: np.ndarray
    hu: float
    pleural: bool


@dataclass(frozen=True)
class _Anatomy:
    """All grid-independent parameters of a case, acquisition included."""

    fov_factor: float
    thickness: float
    origin: np.ndarray
    wall: BodyWall
    bones: _Bones
    mediastinum: _Mediastinum
    lungs: _Lungs
    nodules: tuple[_Nodule, ...]
    vessel_hu: float
    contrast: bool
    noise_sigma: float
    blur_xy: float


def _draw_wall(rng: np.random.Generator) -> BodyWall:
    """Thorax outline and wall layers."""
    return draw_body_wall(rng, (135, 165), (0.63, 0.74), (6, 20), (12, 20))


def _draw_bones(rng: np.random.Generator, wall: BodyWall) -> _Bones:
    """Vertebral body 45-60 mm in front of the back skin; ribs and costal cartilage."""
    return _Bones(
        y=-wall.b + float(rng.uniform(48, 60)), a=float(rng.uniform(17, 21)), b=float(rng.uniform(14, 17)),
        cortex_hu=float(rng.uniform(700, 1000)), cancellous_hu=float(rng.uniform(320, 450)),
        arch_hu=float(rng.uniform(450, 800)), canal_r=float(rng.uniform(7, 9)),
        rib_period=float(rng.uniform(24, 32)), rib_phase=float(rng.uniform(0, 32)), rib_drop=float(rng.uniform(25, 45)),
        rib_half_z=float(rng.uniform(5, 7)), rib_half_r=float(rng.uniform(3.5, 5)),
        cartilage_hu=float(rng.uniform(90, 130)),
    )


def _draw_mediastinum(rng: np.random.Generator, wall: BodyWall, bones: _Bones, contrast: bool) -> _Mediastinum:
    """Mediastinal band, heart on the patient's left (-x), aortas, trachea."""
    front = bones.y + bones.b
    aorta_hu = float(rng.uniform(150, 250)) if contrast else float(rng.uniform(40, 50))
    return _Mediastinum(
        half_width=float(rng.uniform(18, 26)), soft_hu=float(rng.uniform(35, 55)),
        fat=Field.draw(rng, 6, (15, 50), 1.0), fat_level=float(rng.uniform(-0.8, -0.3)),
        heart_centre=np.array([-rng.uniform(12, 25), rng.uniform(0.15, 0.3) * wall.b, -rng.uniform(40, 60)]),
        heart_semi=np.array([rng.uniform(50, 62), rng.uniform(0.32, 0.4) * wall.b, rng.uniform(50, 62)]),
        heart_hu=float(rng.uniform(35, 55)),
        aorta_desc=(-float(rng.uniform(18, 24)), front + float(rng.uniform(4, 8)), float(rng.uniform(10, 13))),
        aorta_asc=(float(rng.uniform(8, 16)), float(rng.uniform(0.05, 0.2)) * wall.b, float(rng.uniform(13, 17))),
        aorta_hu=aorta_hu,
        trachea=(float(rng.uniform(-3, 3)), front + float(rng.uniform(18, 25)), float(rng.uniform(7, 10))),
        carina_z=float(rng.uniform(10, 30)),
    )


def _draw_lungs(rng: np.random.Generator, wall: BodyWall) -> _Lungs:
    """Lung ellipses reaching beyond the rib cage (which clips them), about 220-260 mm tall."""
    height = float(rng.uniform(220, 260))
    right_base = -0.5 * height + float(rng.uniform(0, 15))
    return _Lungs(
        cx=0.5 * wall.a, cy=float(rng.uniform(-0.1, 0.05)) * wall.b, ax=0.75 * wall.a, ay=1.05 * wall.b,
        mid_z=0.0, apex_z=0.5 * height, base_z=(right_base - float(rng.uniform(10, 20)), right_base),
        dome=float(rng.uniform(25, 40)), margin=float(rng.uniform(2, 4)),
        shape_field=Field.draw(rng, 6, (50, 150), float(rng.uniform(0.03, 0.06))),
        base_hu=float(rng.uniform(-870, -830)), gradient_hu=float(rng.uniform(10, 30)),
        texture=Field.draw(rng, 8, (8, 40), float(rng.uniform(8, 15))), abdomen_hu=float(rng.uniform(45, 65)),
    )


def _draw_nodules(rng: np.random.Generator) -> tuple[_Nodule, ...]:
    """1-4 nodules inside the lungs (3-15 mm) and 1-3 attached to the pleura (6-15 mm, the first >= 10 mm)."""
    nodules = []
    for _ in range(int(rng.integers(1, 5))):
        diameter = float(rng.uniform(3, 15))
        nodules.append(_Nodule(diameter, rng.uniform(0.85, 1.15, 3), float(rng.uniform(20, 60)), False))
    for i in range(int(rng.integers(1, 4))):
        diameter = float(rng.uniform(10, 15) if i == 0 else rng.uniform(6, 15))
        nodules.append(_Nodule(diameter, rng.uniform(0.85, 1.15, 3), float(rng.uniform(20, 60)), True))
    return tuple(nodules)


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """All grid-independent parameters of one case."""
    wall = _draw_wall(rng)
    bones = _draw_bones(rng, wall)
    contrast = bool(rng.random() < 0.5)
    mediastinum = _draw_mediastinum(rng, wall, bones, contrast)
    lungs = _draw_lungs(rng, wall)
    return _Anatomy(
        fov_factor=float(rng.uniform(1.08, 1.2)), thickness=float(rng.choice([2.0, 2.5, 3.0])),
        origin=np.array([rng.uniform(-20, 20), rng.uniform(-30, 30), rng.uniform(-250, -100)]), wall=wall,
        bones=bones, mediastinum=mediastinum, lungs=lungs, nodules=_draw_nodules(rng),
        vessel_hu=float(rng.uniform(30, 60)), contrast=contrast, noise_sigma=float(rng.uniform(20, 40)),
        blur_xy=float(rng.uniform(0.5, 0.8)),
    )


# ----------------------------------------------------------------------------------------------------------------
# Composition: tissue classes and noise-free HU on a grid
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """Tissue classes, noise-free HU and per-side lung masks on a grid."""

    tissue: np.ndarray
    hu: np.ndarray
    label: np.ndarray


def _wall_layers(wall: BodyWall, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2-D tissue, HU, depth below the skin (mm) and depth of the inner surface of the muscle wall."""
    return wall_layers(wall, x, y, _T)


def _spine_parts(bones: _Bones, wall: BodyWall, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, str, float]]:
    """2-D masks (painted in order) of the paraspinal muscles, neural arch, canal, vertebral body and sternum."""
    canal_y = bones.y - bones.b - bones.canal_r - 1.0
    back = -wall.b + wall.skin + wall.fat * (1.0 - wall.fat_mod) + 3.0
    canal_r = np.hypot(x, y - canal_y)
    arch = (canal_r < bones.canal_r + 4.5) | ((np.abs(x) < 4.0) & (y < canal_y) & (y > back))
    arch |= ellipse(np.abs(x), y, bones.a + 6.0, canal_y + 2.0, 16.0, 4.5) < 1
    rho = ellipse(x, y, 0.0, bones.y, bones.a, bones.b)
    sternum_y = wall.b - wall.skin - wall.fat - 0.5 * wall.muscle
    sternum = ellipse(x, y, 0.0, sternum_y, 16.0, 6.0)
    return [
        ((ellipse(np.abs(x), y, 30.0, canal_y - 6.0, 24.0, 20.0) < 1) & (y > back), "muscle", wall.muscle_hu),
        (arch, "bone", bones.arch_hu),
        (canal_r < bones.canal_r, "fluid", 15.0),
        (rho < 1, "bone", bones.cancellous_hu),
        ((rho < 1) & ((1 - rho) * min(bones.a, bones.b) < 2.0), "bone", bones.cortex_hu),
        (sternum < 1, "bone", bones.cortex_hu),
        (sternum < 0.6, "bone", bones.cancellous_hu),
    ]


def _ribs(anat: _Anatomy, grid: Grid, x: np.ndarray, y: np.ndarray, depth: np.ndarray,
          inner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-D masks of rib bone, rib marrow and costal cartilage just inside the muscle wall."""
    bones = anat.bones
    theta = np.arctan2(y, x)
    centre_depth = inner - bones.rib_half_r - 0.5
    radial = ((depth - centre_depth) / bones.rib_half_r) ** 2
    drop = bones.rib_drop * (1.0 + np.sin(theta)) / 2.0  # ribs descend anteriorly
    phase = (grid.zs[None, None, :] + drop[:, :, None] - bones.rib_phase) % bones.rib_period
    axial = ((phase - bones.rib_period / 2.0) / bones.rib_half_z) ** 2
    level = radial[:, :, None] + axial
    rib = level < 1.0
    cartilage_zone = (np.abs(theta - np.pi / 2.0) < 0.45)[:, :, None]
    return rib & ~cartilage_zone, (level < 0.35) & ~cartilage_zone, rib & cartilage_zone


def _mediastinum_mask(anat: _Anatomy, grid: Grid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """3-D masks of the mediastinum (everything between the lungs), heart, aortas and trachea."""
    med, bones = anat.mediastinum, anat.bones
    zs = grid.zs[None, None, :]
    band = ((np.abs(x) < med.half_width) & (y > bones.y - bones.b - 10.0))[:, :, None]
    hc, hs = med.heart_centre, med.heart_semi
    heart = (((x - hc[0]) / hs[0]) ** 2 + ((y - hc[1]) / hs[1]) ** 2)[:, :, None] + ((zs - hc[2]) / hs[2]) ** 2 < 1.0
    desc = (np.hypot(x - med.aorta_desc[0], y - med.aorta_desc[1]) < med.aorta_desc[2])[:, :, None]
    asc = (np.hypot(x - med.aorta_asc[0], y - med.aorta_asc[1]) < med.aorta_asc[2])[:, :, None] & (zs > hc[2])
    trachea_r = np.hypot(x - med.trachea[0], y - med.trachea[1])[:, :, None]
    above = zs > med.carina_z
    trachea_wall = (trachea_r < med.trachea[2] + 2.0) & above
    trachea = (trachea_r < med.trachea[2]) & above
    paraspinal = (ellipse(x, y, 0.0, bones.y, bones.a + 14.0, bones.b + 8.0) < 1)[:, :, None]
    whole = band | heart | desc | asc | trachea_wall | paraspinal
    return whole, heart & ~desc & ~asc, desc | asc, trachea


def _lung_masks(anat: _Anatomy, grid: Grid, x: np.ndarray, y: np.ndarray, cavity_depth: np.ndarray,
                mediastinum: np.ndarray) -> np.ndarray:
    """Label map of the lung fields (1 left, x < 0; 2 right, x > 0) before nodules."""
    lungs = anat.lungs
    zs = grid.zs
    up = np.clip((zs - lungs.mid_z) / (lungs.apex_z - lungs.mid_z), 0.0, 1.0)
    scale = np.sqrt(np.maximum(1.0 - up**2, 1e-6))  # dome-topped apex
    field = lungs.shape_field.on_grid(grid.xs, grid.ys, grid.zs)
    inner = (cavity_depth > lungs.margin)[:, :, None]
    med = ndimage.binary_dilation(mediastinum, iterations=1)
    label = np.zeros(grid.shape, np.uint8)
    for value, side, base in ((1, -1.0, lungs.base_z[0]), (2, 1.0, lungs.base_z[1])):
        rho = ellipse(x, y, side * lungs.cx, lungs.cy, lungs.ax, lungs.ay)
        level = rho[:, :, None] / scale[None, None, :] + field
        dome = base + lungs.dome * np.clip(1.0 - rho**2, 0.0, 1.0)
        mask = (level < 1.0) & (zs[None, None, :] > dome[:, :, None]) & inner & ~med & (side * x > 0)[:, :, None]
        label[mask] = value
    return label


def _compose(anat: _Anatomy, grid: Grid) -> _Scene:
    """Tissue classes, noise-free HU and lung labels of the anatomy (without vessels and nodules)."""
    x, y = grid.xs[:, None], grid.ys[None, :]
    nz = grid.shape[2]
    tissue2, hu2, depth, inner = _wall_layers(anat.wall, x, y)
    inside = tissue2 != _T["air"]
    cavity2 = depth >= inner
    spine2 = np.zeros_like(cavity2)
    for mask, name, value in _spine_parts(anat.bones, anat.wall, x, y):
        mask = mask & inside
        tissue2[mask], hu2[mask] = _T[name], value
        spine2 |= mask
    cavity2 &= ~spine2
    tissue = np.repeat(tissue2[:, :, None], nz, 2)
    hu = np.repeat(hu2[:, :, None], nz, 2)
    # below the diaphragm and between the organs: abdomen / mediastinal soft tissue
    cavity = np.repeat(cavity2[:, :, None], nz, 2)
    tissue[cavity], hu[cavity] = _T["soft_tissue"], anat.lungs.abdomen_hu
    rib, marrow, cartilage = _ribs(anat, grid, x, y, depth, inner)
    rib &= inside[:, :, None]
    tissue[rib], hu[rib] = _T["bone"], anat.bones.cortex_hu
    hu[marrow & rib] = anat.bones.cancellous_hu
    cartilage &= inside[:, :, None] & ~rib
    tissue[cartilage], hu[cartilage] = _T["soft_tissue"], anat.bones.cartilage_hu
    med = anat.mediastinum
    whole, heart, aorta, trachea = _mediastinum_mask(anat, grid, x, y)
    region = whole & cavity
    mfat = region & (med.fat.on_grid(grid.xs, grid.ys, grid.zs) < med.fat_level)
    tissue[region], hu[region] = _T["soft_tissue"], med.soft_hu
    tissue[mfat], hu[mfat] = _T["fat"], anat.wall.fat_hu
    for mask, name, value in ((heart, "soft_tissue", med.heart_hu), (aorta, "vessel", med.aorta_hu),
                              (trachea, "air", -1000.0)):
        mask = mask & cavity
        tissue[mask], hu[mask] = _T[name], value
    label = _lung_masks(anat, grid, x, y, depth - inner, whole | ~cavity)
    lung = label > 0
    lungs = anat.lungs
    parenchyma = lungs.base_hu + lungs.texture.on_grid(grid.xs, grid.ys, grid.zs)
    parenchyma += (lungs.gradient_hu * np.clip(-y / anat.wall.b, -1.0, 1.0))[:, :, None]
    tissue[lung], hu[lung] = _T["lung"], parenchyma[lung]
    return _Scene(tissue, hu, label)


# ----------------------------------------------------------------------------------------------------------------
# Vessel trees and nodules
# ----------------------------------------------------------------------------------------------------------------


def _rotate_towards(direction: np.ndarray, rng: np.random.Generator, angle: float) -> np.ndarray:
    """``direction`` turned by ``angle`` radians about a random perpendicular axis."""
    axis = np.cross(direction, rng.normal(size=3))
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    out = direction * math.cos(angle) + np.cross(axis, direction) * math.sin(angle)
    return out / np.linalg.norm(out)


def _vessel_segments(anat: _Anatomy, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Segments (start, end, start radius, end radius) of the trees of both lungs, branching from the hila."""
    lungs, med = anat.lungs, anat.mediastinum
    segments = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * (med.half_width + rng.uniform(4, 10)), lungs.cy + rng.uniform(-10, 10),
                          rng.uniform(-15, 10)])
        trunks = [np.array([0.45 * side, rng.uniform(-0.3, 0.3), 0.85]),   # upper lobe
                  np.array([0.95 * side, rng.uniform(0.1, 0.4), 0.0]),      # middle
                  np.array([0.5 * side, rng.uniform(-0.5, -0.1), -0.75])]   # lower lobe
        if rng.random() < 0.5:
            trunks.append(np.array([0.7 * side, rng.uniform(-0.6, -0.3), -0.3]))
        for direction in trunks:
            stack = [(hilum, direction / np.linalg.norm(direction), float(rng.uniform(5, 7)),
                      float(rng.uniform(25, 35)), 0)]
            while stack:
                start, d, radius, length, generation = stack.pop()
                end = start + d * length
                segments.append((start, end, radius, 0.85 * radius))
                if generation >= _GENERATIONS:
                    continue
                outward = np.array([side, 0.0, 0.0]) * 0.3
                for sign in (-1.0, 1.0):
                    child = _rotate_towards(d, rng, sign * float(rng.uniform(0.35, 0.7))) + outward
                    stack.append((end, child / np.linalg.norm(child), 0.79 * radius,
                                  length * float(rng.uniform(0.72, 0.86)), generation + 1))
    return segments


def _paint_vessels(anat: _Anatomy, grid: Grid, scene: _Scene, rng: np.random.Generator) -> None:
    """Soft-tissue tubes inside the lung fields."""
    lung = scene.label > 0
    for a, b, ra, rb in _vessel_segments(anat, rng):
        found = segment_mask(grid, a, b, ra, rb)
        if found is None:
            continue
        box, mask = found
        mask &= lung[box]
        scene.hu[box][mask], scene.tissue[box][mask] = anat.vessel_hu, _T["vessel"]


def _nodule_mask(grid: Grid, centre: np.ndarray, nodule: _Nodule) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Index box and mask of an axis-aligned ellipsoidal nodule."""
    semi = nodule.diameter / 2.0 * nodule.ratios
    box = grid.box(centre - semi, centre + semi)
    if box is None:
        return None
    px, py, pz = grid.coords(box, centre)
    return box, (px / semi[0]) ** 2 + (py / semi[1]) ** 2 + (pz / semi[2]) ** 2 < 1.0


def _paint_nodules(anat: _Anatomy, grid: Grid, scene: _Scene, cavity_edge: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint the nodules; returns the masks of the inner and of the pleural nodules (whole nodules)."""
    lung = scene.label > 0
    depth = ndimage.distance_transform_edt(lung, sampling=grid.spacing)
    idx = np.argwhere(lung)
    points = np.stack([grid.xs[idx[:, 0]], grid.ys[idx[:, 1]], grid.zs[idx[:, 2]]], axis=1)
    values = depth[tuple(idx.T)]
    # lung voxels next to the chest wall (not the mediastinum or diaphragm): pleural attachment sites
    wall_side = cavity_edge[idx[:, 0], idx[:, 1]] & (values <= 1.05 * max(grid.spacing[:2]))
    inner_mask = np.zeros(grid.shape, bool)
    pleural_mask = np.zeros(grid.shape, bool)
    centres: list[np.ndarray] = []
    for nodule in anat.nodules:
        radius = nodule.diameter / 2.0
        if nodule.pleural:
            pool = np.flatnonzero(wall_side)
        else:
            pool = np.flatnonzero(values >= min(radius + 3.0, float(np.quantile(values, 0.95))))
        apart = [i for i in pool[rng.permutation(len(pool))[:200]]
                 if all(np.linalg.norm(points[i] - c) > radius + 10.0 for c in centres)]
        if not apart:
            continue
        centre = points[apart[0]]
        if nodule.pleural:  # push the centre towards the wall so that about a third lies outside the lung field
            outward = np.array([centre[0], centre[1] - anat.lungs.cy, 0.0])
            centre = centre + 0.3 * radius * outward / max(float(np.linalg.norm(outward)), 1e-9)
        centres.append(centre)
        found = _nodule_mask(grid, centre, nodule)
        if found is None:
            continue
        box, mask = found
        mask &= scene.tissue[box] != _T["bone"]
        scene.hu[box][mask], scene.tissue[box][mask] = nodule.hu, _T["nodule"]
        (pleural_mask if nodule.pleural else inner_mask)[box] |= mask
    return inner_mask, pleural_mask


# ----------------------------------------------------------------------------------------------------------------
# Case rendering
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phantom:
    """A rendered case: CT volume, label map, affine, tissue map and nodule masks."""

    volume: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray
    inner_nodules: np.ndarray
    pleural_nodules: np.ndarray
    spacing: tuple[float, float, float]
    noise_sigma: float


def _place_grid(anat: _Anatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> Grid:
    """Grid centred on the body axis in-plane (square pixels, the whole thorax in view), slab near mid-lung."""
    pixel = anat.fov_factor * max(2.0 * anat.wall.a / shape[0], 2.0 * anat.wall.b / shape[1])
    lungs = anat.lungs
    z = lungs.mid_z + rng.uniform(-0.1, 0.05) * (lungs.apex_z - lungs.base_z[0])
    return Grid.centred(shape, (pixel, pixel, anat.thickness), (0.0, rng.uniform(-5, 5), z))


def _render_case(index: int, shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0) -> _Phantom:
    """Render case ``index`` of ``seed`` on a grid of ``shape`` (see the module docstring)."""
    rng_anatomy, rng_place, rng_noise = case_rngs(seed, index)
    shape = check_shape(shape)
    anat = _draw_anatomy(rng_anatomy)
    grid = _place_grid(anat, shape, rng_place)
    scene = _compose(anat, grid)
    _, _, depth, inner = _wall_layers(anat.wall, grid.xs[:, None], grid.ys[None, :])
    cavity_edge = (depth - inner) < anat.lungs.margin + 1.5 * max(grid.spacing[:2])
    _paint_vessels(anat, grid, scene, rng_place)
    inner_nodules, pleural_nodules = _paint_nodules(anat, grid, scene, cavity_edge, rng_place)
    volume = acquire_ct(scene.hu, anat.blur_xy, anat.noise_sigma, rng_noise)
    affine = grid_affine(grid.spacing, anat.origin, grid)
    return _Phantom(volume, scene.label, affine, scene.tissue, inner_nodules, pleural_nodules,
                    grid.spacing, anat.noise_sigma)


def make_lung_case(index: int, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesise one thorax CT case with its lung mask.

    Args:
        index: case number ``N`` (>= 0).
        shape: grid size (x, y, z) in voxels; the whole thorax cross-section is always in view (finer pixels for a
            larger grid), the slab is ``z`` slices of 2-3 mm near the middle of the lungs.
        seed: dataset seed; case ``N`` only depends on ``(seed, N)`` and ``shape``.

    Returns:
        ``(volume, label, affine)``: int16 HU volume, uint8 labels (0 background, 1 left lung, 2 right lung, the
        patient's left and right) of the same shape, and the 4x4 float64 RAS+ voxel-to-world affine (mm); the left
        lung lies towards world ``-x``.

    Raises:
        ValueError: if ``index`` is negative or ``shape`` is not three sizes in [8, 2048].
    """
    case = _render_case(index, shape, seed)
    return case.volume, case.label, case.affine


# ----------------------------------------------------------------------------------------------------------------
# Writing phantoms
# ----------------------------------------------------------------------------------------------------------------


def _case_name(index: int) -> str:
    """Case name of synthetic case ``index`` (``lung_007``)."""
    return f"lung_{index:03d}"


def _case_entry(folder: Path, index: int) -> dict[str, str]:
    """Datalist entry of synthetic case ``index`` in ``folder``."""
    name = f"{_case_name(index)}_0000.nii.gz"
    return {"image": str(folder / IMAGES_DIR / name), "label": str(folder / MASKS_DIR / name),
            "case": _case_name(index)}


def _dataset_description(shape: tuple[int, int, int], seed: int, cases: Sequence[int]) -> dict[str, Any]:
    """Contents of ``dataset.json`` for phantoms of ``shape`` and ``seed`` with case numbers ``cases``."""
    cases = sorted(int(c) for c in cases)
    return {
        "name": "Lung CT synthetic thorax phantoms", "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
        "seed": int(seed), "shape": list(shape), "num_cases": len(cases), "cases": cases,
        "modality": {"0": "CT"}, "labels": {str(k): v for k, v in LUNG_LABELS.items()},
        "orientation": "RAS+ world; label 1 = patient's left lung (world -x), 2 = patient's right lung (world +x)",
        "layout": "imagesTr/<case>_0000.nii.gz (int16 HU), masksTr/<case>_0000.nii.gz (uint8 labels)",
        "training": [{"image": f"./{IMAGES_DIR}/{_case_name(c)}_0000.nii.gz",
                      "mask": f"./{MASKS_DIR}/{_case_name(c)}_0000.nii.gz"} for c in cases],
    }


def _stray(folder: Path) -> list[str]:
    """Learn2Reg-style data files of a folder (one without ``dataset.json`` holding them is not a phantom folder)."""
    return sorted(f"{sub}/{p.name}" for sub in (IMAGES_DIR, MASKS_DIR) if (folder / sub).is_dir()
                  for p in (folder / sub).iterdir() if LUNG_IMAGE_RE.match(p.name))


def _generate(out_dir: str | Path, num_cases: int, shape: Sequence[int], seed: int, start_index: int,
              overwrite: bool, progress: bool) -> tuple[list[dict[str, str]], int]:
    """Write the phantoms; returns the datalist and the number of cases actually written."""
    return generate_image_label_cases(out_dir, num_cases, shape, seed, start_index, overwrite, progress,
                                      "lung phantom", _dataset_description, _stray, _case_entry, make_lung_case)


def generate_lung_phantoms(out_dir: str | Path, num_cases: int = 18, shape: Sequence[int] = DEFAULT_SHAPE,
                           seed: int = 0, start_index: int = 0, overwrite: bool = False,
                           progress: bool = True) -> list[dict[str, str]]:
    """Write synthetic cases ``imagesTr/lung_NNN_0000.nii.gz`` / ``masksTr/lung_NNN_0000.nii.gz`` and ``dataset.json``.

    Arguments, idempotence and errors as :func:`pipeline.data.lits.generate_lits_phantoms`.

    Returns:
        The datalist ``[{"image": image path, "label": mask path, "case": "lung_NNN"}, ...]``.
    """
    return _generate(out_dir, num_cases, shape, seed, start_index, overwrite, progress)[0]


def lung_datalist(dataset_dir: str | Path | None, synthetic_dir: str | Path, num_cases: int = 18,
                  shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of a real Learn2Reg-style lung folder ``dataset_dir`` (``imagesTr/`` + ``masksTr/``, never written
    to), or of synthetic phantoms when it is None, ``""`` or ``"synthetic"``; arguments as
    :func:`pipeline.data.lits.lits_datalist`. Sorted by case (phantoms: ``lung_000 .. lung_{num_cases - 1}``).

    Raises:
        LayoutError: if ``dataset_dir`` is not in the Learn2Reg lung layout.
        ValueError: if ``synthetic_dir`` holds phantoms of other settings.
    """
    return real_or_phantoms(dataset_dir, synthetic_dir, index_lung,
                            lambda: generate_lung_phantoms(synthetic_dir, num_cases, shape, seed))


def main(argv: Sequence[str] | None = None) -> int:
    """``varseg make-data lung``: write phantoms and print a one-line summary; returns the exit status."""
    parser = phantom_parser("lung", "Write synthetic thorax CT phantoms in the Learn2Reg lung layout.", 18,
                            DEFAULT_SHAPE)
    return run_phantom_command(parser, argv, "lung phantom cases", lambda a: _generate(
        a.out_dir, a.num_cases, a.shape, a.seed, a.start_index, a.overwrite, not a.no_progress))


if __name__ == "__main__":
    raise SystemExit(main())
