"""Bone SPECT data: simulated 99mTc bone SPECT phantoms, their projection data, OS-EM reconstructions and an indexer.

On-disk layout::

    <folder>/dataset.json
    <folder>/case-N/recon_osemK.nii.gz   OS-EM reconstruction after K iterations (float32, activity units)
    <folder>/case-N/bone.nii.gz          bone label (uint8: 1 bone, lesions included; 0 elsewhere)
    <folder>/case-N/phantom.nii.gz       true activity (float32, same units as the reconstructions)
    <folder>/case-N/mu.nii.gz            linear attenuation coefficients at 140 keV (float32, 1/cm)

All volumes of a case share shape and affine (diagonal RAS+, isotropic voxels, mm). :func:`generate_spect_phantoms`
writes cases in this layout, :func:`make_spect_case` simulates one case in memory, :func:`index_spect` turns a
folder in this layout into a datalist and :func:`main` is the command line.

Phantom. A stylised torso defined analytically in millimetres (x towards the patient's right, y anterior, z
superior), sampled at 2 x 2 x 2 sub-voxel points and averaged, so that voxels on boundaries get partial-volume
activity and attenuation. The axial field of view is compressed into three zones, pelvic (lowest 35 % of the
slices), lumbar and thoracic (upper 50 %):

* body: an elliptic cylinder (semi-axes about 115-132 x 80-100 mm), water-like soft tissue, mu = 0.15 /cm,
  activity 1 (the unit of all activities);
* lungs (thoracic zone): two elliptic cylinders with a domed base, mu = 0.05 /cm, activity 0.2-0.35;
* skeleton, mu = 0.25 /cm, activity 5-10 (drawn per case; each bone varies by +-15 %): vertebral bodies stacked
  along z with intervertebral discs and spinous processes, ribs (tubes curving around the thorax inside the body
  wall, descending anteriorly, interrupted at the spine and at the costal cartilages), a sternum, a sacrum, two
  flaring iliac wings, femoral heads and a pubic symphysis;
* hot lesions: 1-4 spheres (radius 5-10 mm) centred on bone, multiplying the bone activity by 2-4 (soft tissue
  in the sphere is unchanged);
* kidneys (lumbar zone), activity 2-4, and a bladder (pelvic zone), activity 1-3 x the bone activity: the
  bladder is the hottest non-bone structure, as in clinical bone scans.

The label is ``bone``: voxels at least half covered by bone (lesions are in bone, so they are included).

Acquisition (the physics modelled):

* geometry: parallel-beam (parallel-hole collimator), circular orbit of radius = body semi-major axis + 30-60 mm,
  ``angles`` views evenly spaced over 360 degrees, detector bins of the voxel size (one bin per voxel column of the
  rotated grid, one row per slice). Each view rotates the activity and attenuation maps in the transaxial plane by
  bilinear interpolation (a sparse matrix, so that the backprojector is its exact transpose);
* attenuation: each voxel's emission is weighted by ``exp(-integral of mu)`` from its centre to the detector along
  the ray (half of its own voxel plus the voxels in front of it), with the true mu map (ideal CT-based correction);
* depth-dependent collimator-detector response: a separable Gaussian (detector direction and axial) whose FWHM
  grows linearly with the distance ``d`` from the detector face, ``FWHM = fwhm0 + fwhm_slope * d`` (defaults
  3 mm + 0.04 * d, i.e. about 7 mm at 10 cm, a low-energy high-resolution collimator). Each depth plane of the
  rotated, attenuated volume is blurred with its own kernel (integrated over the detector bins) before summing;
* Poisson counting noise: the noiseless projections are scaled so that the whole study has ``counts`` expected
  counts (default 2 million), then Poisson-sampled;
* reconstruction: OS-EM with the same system model (``subsets`` interleaved subsets of views), started from a
  uniform image inside the body and kept at zero outside it; the estimates after the requested numbers of full
  iterations are divided by the count scale, so they are in the activity units of the phantom.

Left out: Compton scatter (no energy window, no scatter correction), septal penetration and collimator scatter,
dead time and pile-up, patient and organ motion, detector non-uniformity, radioactive decay during the
acquisition, finite detector resolution beyond the Gaussian model (no intrinsic-resolution edge effects, so
partial volume only comes from the voxel size and the Gaussian response), the XCAT anatomy (this phantom is a
stylised, axially compressed torso) and realistic biokinetics beyond fixed uptake ratios.

Determinism. Case ``N`` of seed ``S`` only depends on ``numpy.random.default_rng([S, N])``, the grid shape and
the acquisition settings, so it is identical whether generated alone or among other cases.

Command line::

    python -m pipeline.data.spect OUT_DIR [--num-cases 8] [--shape 64 64 48] [--seed 0] [--iterations 2 5]
        [--subsets 8] [--angles 64] [--counts 2e6] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import sparse
from scipy.special import erf

from pipeline.io.datasets import SPECT_CASE_RE, index_spect
from pipeline.io.files import nifti_image

from .scaffold import DATASET_JSON, case_indices, check_shape, phantom_parser, real_or_phantoms, run_phantom_command
from .scaffold import sync_dataset_json, write_cases

logger = logging.getLogger(__name__)

__all__ = [
    "SpectCase",
    "SpectProjector",
    "generate_spect_phantoms",
    "make_spect_case",
    "osem",
    "spect_datalist",
    "spect_spacing",
]

GENERATOR = "pipeline.data.spect"
GENERATOR_VERSION = 1
_MAX_SIZE = 512  # the system matrix grows as size^3
LABELS: dict[int, str] = {0: "background", 1: "bone"}
FOV_MM = 64 * 4.42  # in-plane field of view: a 64-pixel matrix of 4.42 mm
MU_PER_MM = {"air": 0.0, "soft": 0.015, "lung": 0.005, "bone": 0.025}  # 140 keV
_TISSUE = {"air": 0, "soft": 1, "lung": 2, "kidney": 3, "bladder": 4, "bone": 5}


# ----------------------------------------------------------------------------------------------------------------
# System model
# ----------------------------------------------------------------------------------------------------------------


def _bin_gaussian(centres: np.ndarray, sources: np.ndarray, sigma: float, width: float) -> np.ndarray:
    """Fraction of a Gaussian (``sigma`` mm) centred on each source falling in each bin of ``width`` mm.

    Returns ``(len(centres), len(sources))``; for ``sigma -> 0`` this is the identity on a common grid.
    """
    delta = centres[:, None] - sources[None, :]
    if sigma <= 1e-6:
        return (np.abs(delta) < width / 2).astype(np.float64)
    scale = np.sqrt(2.0) * sigma
    return 0.5 * (erf((delta + width / 2) / scale) - erf((delta - width / 2) / scale))


class SpectProjector:
    """Parallel-beam SPECT projector with attenuation and depth-dependent Gaussian collimator response.

    Volumes are ``(nx, ny, nz)`` arrays on an isotropic grid of ``spacing`` mm centred on the rotation axis;
    projections are ``(views, n, nz)`` arrays with ``n = max(nx, ny)`` detector bins of ``spacing`` mm. The
    backprojector :meth:`back` is the exact transpose of :meth:`forward` (up to float32 rounding).

    Args:
        shape: volume grid ``(nx, ny, nz)``.
        spacing: voxel size in mm (isotropic).
        mu: attenuation map ``(nx, ny, nz)`` in 1/mm, or None for no attenuation.
        angles: number of views over 360 degrees.
        radius: radius of rotation (mm): distance from the axis to the detector face.
        fwhm0: collimator-detector FWHM (mm) at the detector face.
        fwhm_slope: FWHM increase per mm of distance from the detector.
    """

    def __init__(self, shape: Sequence[int], spacing: float, mu: np.ndarray | None = None, angles: int = 64,
                 radius: float = 200.0, fwhm0: float = 3.0, fwhm_slope: float = 0.04) -> None:
        nx, ny, nz = (int(v) for v in shape)
        if angles < 1 or spacing <= 0 or fwhm0 < 0 or fwhm_slope < 0:
            raise ValueError(f"invalid projector settings: angles={angles}, spacing={spacing}, fwhm0={fwhm0}, "
                             f"fwhm_slope={fwhm_slope}")
        self.shape, self.spacing, self.angles, self.radius = (nx, ny, nz), float(spacing), int(angles), float(radius)
        n = self.n = max(nx, ny)
        self.theta = 2.0 * np.pi * np.arange(self.angles) / self.angles
        centre = (np.arange(n) - (n - 1) / 2.0) * self.spacing  # u (bins) and t (depth) coordinates, mm
        self._rot = [self._rotation(th, centre) for th in self.theta]
        depth = np.maximum(self.radius - centre, 0.0)  # distance of depth plane j to the detector face
        sigma = (fwhm0 + fwhm_slope * depth) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        z = np.arange(nz) * self.spacing
        self._gu = np.stack([_bin_gaussian(centre, centre, s, self.spacing) for s in sigma]).astype(np.float32)
        self._gz = np.stack([_bin_gaussian(z, z, s, self.spacing) for s in sigma]).astype(np.float32)
        self._gu_t = np.ascontiguousarray(self._gu.transpose(0, 2, 1))  # (j, a, u)
        self._gz_t = np.ascontiguousarray(self._gz.transpose(0, 2, 1))  # (j, z, w)
        self._att: list[np.ndarray] | None = None
        if mu is not None:
            mu = np.asarray(mu, np.float32)
            if mu.shape != self.shape:
                raise ValueError(f"mu has shape {mu.shape}, expected {self.shape}")
            self._att = [self._attenuation(r, mu) for r in self._rot]

    def _rotation(self, theta: float, centre: np.ndarray) -> sparse.csr_matrix:
        """Sparse bilinear resampling ``(n*n, nx*ny)`` of the transaxial plane onto view ``theta``'s (t, u) grid.

        Row ``j * n + a`` is the point ``u_a * e_u + t_j * e_t`` with ``e_u = (cos, sin)`` and ``e_t = (-sin, cos)``
        (``e_t`` points towards the detector).
        """
        nx, ny, _ = self.shape
        n = self.n
        t, u = np.meshgrid(centre, centre, indexing="ij")  # (j, a)
        px = u * np.cos(theta) - t * np.sin(theta)
        py = u * np.sin(theta) + t * np.cos(theta)
        fx, fy = px / self.spacing + (nx - 1) / 2.0, py / self.spacing + (ny - 1) / 2.0
        x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        wx, wy = fx - x0, fy - y0
        rows, cols, vals = [], [], []
        row = np.arange(n * n).reshape(n, n)
        for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny) & (w > 0)
            rows.append(row[ok]), cols.append((xi * ny + yi)[ok]), vals.append(w[ok])
        return sparse.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows),
                                  np.concatenate(cols))), shape=(n * n, nx * ny))

    def _attenuation(self, rot: sparse.csr_matrix, mu: np.ndarray) -> np.ndarray:
        """Attenuation factors ``(j, a, z)`` of one view: ``exp(-mu integral)`` from each voxel to the detector."""
        n, nz = self.n, self.shape[2]
        m = (rot @ mu.reshape(-1, nz)).reshape(n, n, nz)
        ahead = np.cumsum(m[::-1], axis=0)[::-1] - 0.5 * m  # own half voxel plus all planes nearer the detector
        return np.exp(-self.spacing * ahead).astype(np.float32)

    def _views(self, views: Iterable[int] | None) -> list[int]:
        return list(range(self.angles)) if views is None else [int(v) for v in views]

    def forward(self, volume: np.ndarray, views: Iterable[int] | None = None) -> np.ndarray:
        """Project ``volume`` ``(nx, ny, nz)`` onto ``views`` (default all): float32 ``(len(views), n, nz)``."""
        volume = np.asarray(volume, np.float32)
        if volume.shape != self.shape:
            raise ValueError(f"volume has shape {volume.shape}, expected {self.shape}")
        n, nz = self.n, self.shape[2]
        flat = volume.reshape(-1, nz)
        views = self._views(views)
        out = np.empty((len(views), n, nz), np.float32)
        for k, v in enumerate(views):
            w = (self._rot[v] @ flat).reshape(n, n, nz)  # (j, a, z)
            if self._att is not None:
                w *= self._att[v]
            blurred = np.matmul(self._gu, w)  # (j, u, z)
            out[k] = np.matmul(blurred, self._gz_t).sum(axis=0)  # sum_j sum_z blurred[j, u, z] gz[j, w, z]
        return out

    def back(self, projections: np.ndarray, views: Iterable[int] | None = None) -> np.ndarray:
        """Backproject ``projections`` ``(len(views), n, nz)``: the exact transpose of :meth:`forward`."""
        views = self._views(views)
        n, nz = self.n, self.shape[2]
        projections = np.asarray(projections, np.float32)
        if projections.shape != (len(views), n, nz):
            raise ValueError(f"projections have shape {projections.shape}, expected {(len(views), n, nz)}")
        acc = np.zeros((self.shape[0] * self.shape[1], nz), np.float32)
        for k, v in enumerate(views):
            spread = np.matmul(projections[k][None], self._gz)  # (j, u, z): sum_w y[u, w] gz[j, w, z]
            w = np.matmul(self._gu_t, spread)  # (j, a, z)
            if self._att is not None:
                w *= self._att[v]
            acc += self._rot[v].T @ w.reshape(n * n, nz)
        return acc.reshape(self.shape)


# ----------------------------------------------------------------------------------------------------------------
# OS-EM
# ----------------------------------------------------------------------------------------------------------------


def osem(projections: np.ndarray, projector: SpectProjector, iterations: Sequence[int] = (2, 5), subsets: int = 8,
         support: np.ndarray | None = None, eps: float = 1e-12) -> dict[int, np.ndarray]:
    """Ordered-subsets expectation maximisation.

    Subset ``k`` holds the views ``k, k + subsets, k + 2 * subsets, ...``; one iteration visits every subset once
    (``x <- x / A_k^T 1 * A_k^T (y_k / A_k x)``). The start is uniform inside ``support`` (default: everywhere) at
    the level that matches the total counts; voxels outside the support stay zero.

    Args:
        projections: measured projections ``(views, n, nz)`` (non-negative).
        projector: the system model.
        iterations: full iteration counts at which to return the estimate (positive integers).
        subsets: number of subsets (1 = MLEM), at most the number of views.
        support: boolean volume where activity may be, or None.
        eps: floor of the expected projections in the ratio.

    Returns:
        ``{iterations: float32 volume}`` for each requested count.
    """
    wanted = sorted({int(i) for i in iterations})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"iterations must be positive integers, got {iterations!r}")
    if not 1 <= int(subsets) <= projector.angles:
        raise ValueError(f"subsets must be in [1, {projector.angles}] (the number of views), got {subsets!r}")
    y = np.asarray(projections, np.float32)
    if y.shape != (projector.angles, projector.n, projector.shape[2]):
        raise ValueError(f"projections have shape {y.shape}, expected "
                         f"{(projector.angles, projector.n, projector.shape[2])}")
    if np.any(y < 0):
        raise ValueError("projections must be non-negative")
    groups = [list(range(k, projector.angles, int(subsets))) for k in range(int(subsets))]
    sens = [projector.back(np.ones((len(g), projector.n, projector.shape[2]), np.float32), g) for g in groups]
    mask = np.ones(projector.shape, bool) if support is None else np.asarray(support, bool)
    total_sens = np.sum(sens, axis=0)
    level = float(y.sum()) / max(float(total_sens[mask].sum()), eps)
    x = np.where(mask, level, 0.0).astype(np.float32)
    out = {}
    for it in range(1, wanted[-1] + 1):
        for g, s in zip(groups, sens):
            expected = projector.forward(x, g)
            ratio = np.divide(y[g], expected, out=np.zeros_like(expected), where=expected > eps)
            update = projector.back(ratio, g)
            np.divide(update, s, out=update, where=s > 0)
            update[s <= 0] = 0.0
            x *= update
        if it in wanted:
            out[it] = x.copy()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Phantom
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpectCase:
    """One simulated case.

    Attributes:
        recons: ``{iterations: float32 OS-EM reconstruction}`` in activity units.
        label: uint8 bone label (1 bone, lesions included).
        activity: float32 true activity (soft tissue = 1).
        mu: float32 attenuation map in 1/cm.
        affine: 4x4 RAS+ voxel-to-world affine (mm).
        projections: the noisy projections (counts), ``(angles, n, nz)`` float32.
        count_scale: expected counts per unit of noiseless projected activity.
        spacing: voxel size (mm).
        params: drawn per-case parameters (uptake ratios, lesion count, radius of rotation, ...).
    """

    recons: dict[int, np.ndarray]
    label: np.ndarray
    activity: np.ndarray
    mu: np.ndarray
    affine: np.ndarray
    projections: np.ndarray
    count_scale: float
    spacing: float
    params: dict[str, Any]


def _check_iterations(iterations: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted({int(i) for i in iterations}))
    if not values or values[0] < 1 or any(int(i) != i for i in iterations):
        raise ValueError(f"iterations must be positive integers, got {iterations!r}")
    return values


def spect_spacing(shape: Sequence[int]) -> float:
    """Isotropic voxel size (mm) of a grid: the in-plane field of view of a 64 x 4.42 mm matrix over max(nx, ny)."""
    return FOV_MM / max(int(shape[0]), int(shape[1]))


_SUB = 2  # sub-voxel samples per axis of the phantom's fine grid


@dataclass
class _Torso:
    """The fine (sub-voxel) grid of a stylised torso while it is painted: coordinates (mm), tissue, bone uptake."""

    rng: np.random.Generator
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    zmin: float
    length: float
    a: float
    b: float
    tissue: np.ndarray
    mult: np.ndarray

    @property
    def zf(self) -> np.ndarray:
        """Height along the body, 0 inferior .. 1 superior."""
        return (self.z - self.zmin) / self.length

    def paint(self, mask: np.ndarray, kind: str) -> None:
        """Tissue ``kind`` where ``mask`` is inside the body."""
        mask = np.broadcast_to(mask, self.tissue.shape) & (self.tissue > 0)
        self.tissue[mask] = _TISSUE[kind]

    def bone(self, mask: np.ndarray) -> None:
        """Bone where ``mask`` is inside the body, with its own uptake multiplier."""
        mask = np.broadcast_to(mask, self.tissue.shape) & (self.tissue > 0)
        self.tissue[mask] = _TISSUE["bone"]
        self.mult[mask] = float(self.rng.uniform(0.85, 1.15))

    def ellipsoid(self, centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
        return (((self.x - centre[0]) / semi[0]) ** 2 + ((self.y - centre[1]) / semi[1]) ** 2
                + ((self.z - centre[2]) / semi[2]) ** 2 < 1.0)


def _torso(rng: np.random.Generator, shape: tuple[int, int, int], spacing: float) -> _Torso:
    """The body outline (an elliptic cylinder of soft tissue) on the fine grid."""
    off = (np.arange(_SUB) + 0.5) / _SUB - 0.5

    def axis(n: int) -> np.ndarray:
        return (((np.arange(n) - (n - 1) / 2.0)[:, None] + off[None, :]) * spacing).ravel()

    nx, ny, nz = shape
    x, y, z = axis(nx)[:, None, None], axis(ny)[None, :, None], axis(nz)[None, None, :]
    r_max = 0.47 * max(nx, ny) * spacing
    a = min(float(rng.uniform(115, 132)), r_max)
    b = min(a * float(rng.uniform(0.65, 0.78)), r_max)
    tissue = np.zeros((x.size, y.size, z.size), np.int8)
    tissue[np.broadcast_to((x / a) ** 2 + (y / b) ** 2 < 1.0, tissue.shape)] = _TISSUE["soft"]
    return _Torso(rng, x, y, z, -nz * spacing / 2.0, nz * spacing, a, b, tissue, np.ones(tissue.shape, np.float32))


def _paint_organs(t: _Torso) -> float:
    """Lungs (thoracic zone, domed base), kidneys (lumbar), bladder (pelvic); returns the vertebral body's y."""
    rng, a, b = t.rng, t.a, t.b
    lung_base = 0.5 + float(rng.uniform(0.0, 0.06))
    lx, ly, la, lb = 0.45 * a, 0.08 * b, 0.33 * a, 0.62 * b
    for side in (-1.0, 1.0):
        rho2 = ((t.x - side * lx) / la) ** 2 + ((t.y - ly) / lb) ** 2
        t.paint((rho2 < 1.0) & (t.zf > lung_base + 0.08 * (1.0 - rho2)), "lung")
    y_sp = -b + float(rng.uniform(36, 46))  # vertebral body centre
    for side in (-1.0, 1.0):
        c = (side * rng.uniform(50, 62), y_sp + rng.uniform(0, 12), t.zmin + rng.uniform(0.38, 0.46) * t.length)
        s = (rng.uniform(18, 24), rng.uniform(15, 19), min(rng.uniform(38, 50), 0.12 * t.length + 10))
        t.paint(t.ellipsoid(c, s), "kidney")
    bc = (rng.uniform(-8, 8), b * rng.uniform(0.25, 0.4), t.zmin + rng.uniform(0.12, 0.2) * t.length)
    bs = (rng.uniform(30, 45), rng.uniform(22, 32), rng.uniform(22, 32))
    t.paint(t.ellipsoid(bc, bs), "bladder")
    return y_sp


def _paint_spine_and_pelvis(t: _Torso, y_sp: float) -> float:
    """Vertebrae with spinous processes, sacrum, iliac wings, femoral heads, pubis; returns the vertebra half-width."""
    rng, a, b, x, y, zf = t.rng, t.a, t.b, t.x, t.y, t.zf
    va, vb = float(rng.uniform(16, 21)), float(rng.uniform(12, 16))
    period, disc = float(rng.uniform(26, 32)), float(rng.uniform(5, 8))
    phase = float(rng.uniform(0, period))
    in_vertebra = ((t.z - t.zmin - phase) % period) > disc
    pelvic_top = 0.35
    spine_zone = zf > pelvic_top - 0.1
    t.bone(((x / va) ** 2 + ((y - y_sp) / vb) ** 2 < 1.0) & in_vertebra & spine_zone)
    t.bone((np.abs(x) < 4.5) & (y < y_sp - vb + 2) & (y > y_sp - vb - 22) & in_vertebra & spine_zone)  # spinous
    t.bone((((x / rng.uniform(35, 45)) ** 2 + ((y - y_sp + 6) / rng.uniform(9, 13)) ** 2) < 1.0)
           & (zf < pelvic_top) & (zf > 0.12))
    wing_r, wing_t = float(rng.uniform(45, 58)), float(rng.uniform(7, 10))
    for side in (-1.0, 1.0):
        cx, cy = side * float(rng.uniform(0.22, 0.3)) * a, y_sp + float(rng.uniform(20, 30))
        radius = wing_r * (0.6 + 0.4 * np.clip(zf / pelvic_top, 0, 1))
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        t.bone((np.abs(dist - radius) < wing_t / 2) & (side * (x - cx) > -5) & (y < cy + 0.5 * radius)
               & (zf < pelvic_top) & (zf > 0.05))
        fc = (side * rng.uniform(0.5, 0.6) * a, y_sp + rng.uniform(45, 60), t.zmin + rng.uniform(5, 15))
        t.bone((x - fc[0]) ** 2 + (y - fc[1]) ** 2 + (t.z - fc[2]) ** 2 < rng.uniform(18, 23) ** 2)
    pc = (0.0, b - rng.uniform(18, 26), t.zmin + rng.uniform(5, 15))
    t.bone(t.ellipsoid(pc, (14, 8, 16)))
    return va


def _paint_ribs_and_sternum(t: _Torso, va: float) -> None:
    """Ribs: tubes along an ellipse inside the body wall, descending anteriorly (thoracic zone); the sternum."""
    rng, a, b, x, y = t.rng, t.a, t.b, t.x, t.y
    rib_top, rib_bottom = t.zmin + t.length - float(rng.uniform(5, 15)), t.zmin + 0.48 * t.length
    rib_gap, rib_r = float(rng.uniform(21, 27)), float(rng.uniform(5, 6.5))
    inset = float(rng.uniform(12, 18))
    ra, rb = a - inset, b - inset
    rho = np.sqrt((x / ra) ** 2 + (y / rb) ** 2) + 1e-9
    radial = (rho - 1.0) * np.sqrt(x ** 2 + y ** 2) / rho  # distance to the rib ellipse along the ray from the axis
    psi = np.arctan2(y / rb, x / ra)  # -pi/2 posterior, +pi/2 anterior
    descent = float(rng.uniform(20, 40)) * (1.0 + np.sin(psi)) / 2.0
    ribbed = (np.abs(psi - np.pi / 2) > np.radians(30)) & (np.abs(x) > va + 4)
    for z_rib in np.arange(rib_top, rib_bottom, -rib_gap):
        dz = t.z - (z_rib - descent)
        t.bone((radial ** 2 + dz ** 2 < rib_r ** 2) & ribbed & (z_rib - descent > rib_bottom - 2 * rib_gap))
    st_half = float(rng.uniform(11, 15))
    t.bone((np.abs(x) < st_half) & (y > b - inset - 10) & (y < b - inset + 2) & (t.zf > 0.58) & (t.zf < 0.97))


def _paint_lesions(t: _Torso) -> list[dict[str, Any]]:
    """1-4 hot lesions centred on bone sub-voxel points (uptake times 2-4); returns their description."""
    rng, tissue = t.rng, t.tissue
    n_lesions = int(rng.integers(1, 5))
    bone_points = np.flatnonzero(tissue == _TISSUE["bone"])
    lesions = []
    for _ in range(n_lesions if bone_points.size else 0):
        i, j, k = np.unravel_index(bone_points[int(rng.integers(bone_points.size))], tissue.shape)
        centre = [float(t.x.ravel()[i]), float(t.y.ravel()[j]), float(t.z.ravel()[k])]
        radius, factor = float(rng.uniform(5, 10)), float(rng.uniform(2, 4))
        inside = (t.x - centre[0]) ** 2 + (t.y - centre[1]) ** 2 + (t.z - centre[2]) ** 2 < radius ** 2
        t.mult[inside & (tissue == _TISSUE["bone"])] *= factor
        lesions.append({"centre_mm": centre, "radius_mm": radius, "factor": factor})
    return lesions


def _render_phantom(rng: np.random.Generator, shape: tuple[int, int, int],
                    spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Activity, mu (1/mm) and bone label of a stylised torso (see the module docstring)."""
    t = _torso(rng, shape, spacing)
    y_sp = _paint_organs(t)
    va = _paint_spine_and_pelvis(t, y_sp)
    _paint_ribs_and_sternum(t, va)
    ratio = float(rng.uniform(5.0, 10.0))
    lesions = _paint_lesions(t)
    act_lut = np.zeros(len(_TISSUE), np.float32)
    act_lut[_TISSUE["soft"]] = 1.0
    act_lut[_TISSUE["lung"]] = float(rng.uniform(0.2, 0.35))
    act_lut[_TISSUE["kidney"]] = float(rng.uniform(2.0, 4.0))
    act_lut[_TISSUE["bladder"]] = ratio * float(rng.uniform(1.0, 3.0))
    act_lut[_TISSUE["bone"]] = ratio
    mu_lut = np.array([MU_PER_MM[k] for k in ("air", "soft", "lung", "soft", "soft", "bone")], np.float32)
    is_bone = t.tissue == _TISSUE["bone"]
    nx, ny, nz = shape

    def coarse(v: np.ndarray) -> np.ndarray:
        return v.reshape(nx, _SUB, ny, _SUB, nz, _SUB).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)

    activity = coarse(act_lut[t.tissue] * np.where(is_bone, t.mult, 1.0))
    label = (coarse(is_bone.astype(np.float32)) >= 0.5).astype(np.uint8)
    params = {"body_semi_axes_mm": [t.a, t.b], "bone_to_soft_tissue": ratio,
              "bladder_activity": float(act_lut[_TISSUE["bladder"]]), "lesions": lesions}
    return activity, coarse(mu_lut[t.tissue]), label, params


def _affine(shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """Diagonal RAS+ affine with the grid centred on the rotation axis / origin (mm)."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * spacing for n in shape]
    return affine


def make_spect_case(index: int, shape: Sequence[int] = (64, 64, 48), seed: int = 0,
                    iterations: Sequence[int] = (2, 5), subsets: int = 8, counts: float = 2e6, angles: int = 64,
                    fwhm0: float = 3.0, fwhm_slope: float = 0.04) -> SpectCase:
    """Simulate one bone SPECT case: phantom, noisy projections and OS-EM reconstructions.

    Args:
        index: case number ``N`` (>= 0).
        shape: grid size ``(x, y, z)``; the voxel size is :func:`spect_spacing` (4.42 mm for 64 x 64 in-plane).
        seed: dataset seed; case ``N`` only depends on ``(seed, N)``, the shape and the acquisition settings.
        iterations: OS-EM iteration counts to reconstruct.
        subsets: OS-EM subsets (a divisor of ``angles`` is usual but not required).
        counts: expected total counts of the whole study (all views).
        angles: number of views over 360 degrees.
        fwhm0: collimator-detector FWHM (mm) at the detector face.
        fwhm_slope: FWHM increase per mm of distance.

    Returns:
        The :class:`SpectCase`.

    Raises:
        ValueError: for invalid arguments.
    """
    if int(index) != index or index < 0:
        raise ValueError(f"case index must be a non-negative integer, got {index!r}")
    shape = check_shape(shape, max_size=_MAX_SIZE)
    iterations = _check_iterations(iterations)
    if not counts > 0:
        raise ValueError(f"counts must be positive, got {counts!r}")
    if int(angles) != angles or angles < 1 or int(subsets) != subsets or not 1 <= subsets <= angles:
        raise ValueError(f"need angles >= 1 and 1 <= subsets <= angles, got angles={angles!r}, subsets={subsets!r}")
    rng_anatomy, rng_scan, rng_noise = np.random.default_rng([int(seed), int(index)]).spawn(3)
    spacing = spect_spacing(shape)
    activity, mu, label, params = _render_phantom(rng_anatomy, shape, spacing)
    radius = max(params["body_semi_axes_mm"]) + float(rng_scan.uniform(30, 60))
    projector = SpectProjector(shape, spacing, mu, int(angles), radius, fwhm0, fwhm_slope)
    noiseless = projector.forward(activity)
    scale = float(counts) / float(noiseless.sum(dtype=np.float64))
    measured = rng_noise.poisson(noiseless.astype(np.float64) * scale).astype(np.float32)
    support = mu > 0
    recons = {k: v / np.float32(scale) for k, v in osem(measured, projector, iterations, int(subsets), support).items()}
    params = {**params, "radius_of_rotation_mm": radius, "total_counts": float(measured.sum())}
    return SpectCase(recons, label, activity, mu * np.float32(10.0), _affine(shape, spacing), measured, scale,
                     spacing, params)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _case_files(iterations: Sequence[int]) -> list[str]:
    return [f"recon_osem{k}.nii.gz" for k in iterations] + ["bone.nii.gz", "phantom.nii.gz", "mu.nii.gz"]


def _case_entry(folder: Path, index: int, iterations: Sequence[int], image_iterations: int) -> dict[str, str]:
    case = folder / f"case-{index}"
    entry = {"image": str(case / f"recon_osem{image_iterations}.nii.gz"), "label": str(case / "bone.nii.gz"),
             "case": f"case-{index}"}
    entry.update({f"image_osem{k}": str(case / f"recon_osem{k}.nii.gz") for k in iterations})
    return entry


def _write_case(folder: Path, index: int, settings: dict[str, Any], overwrite: bool) -> bool:
    """Write ``case-N`` (all files in a temporary folder renamed into place); returns whether it was written."""
    target = folder / f"case-{index}"
    names = _case_files(settings["iterations"])
    if target.exists() and not overwrite:
        missing = [n for n in names if not (target / n).exists()]
        if not missing:
            logger.debug("case %d already in %s; skipped", index, folder)
            return False
        raise ValueError(f"{target} lacks {', '.join(missing)}; remove it or pass overwrite=True to regenerate it")
    case = make_spect_case(index, settings["shape"], settings["seed"], settings["iterations"], settings["subsets"],
                           settings["counts"], settings["angles"], settings["fwhm0"], settings["fwhm_slope"])
    text = f"varseg bone SPECT phantom seed={settings['seed']} case={index}"
    tmp = folder / f".case-{index}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for k, recon in case.recons.items():
            nib.save(nifti_image(recon.astype(np.float32), case.affine, f"{text} osem{k}"),
                     tmp / f"recon_osem{k}.nii.gz")
        nib.save(nifti_image(case.label, case.affine, text), tmp / "bone.nii.gz")
        nib.save(nifti_image(case.activity, case.affine, text), tmp / "phantom.nii.gz")
        nib.save(nifti_image(case.mu, case.affine, f"{text} mu 1/cm"), tmp / "mu.nii.gz")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True


def _settings(shape: Sequence[int], seed: int, iterations: Sequence[int], subsets: int, counts: float, angles: int,
              fwhm0: float, fwhm_slope: float) -> dict[str, Any]:
    return {"shape": list(check_shape(shape, max_size=_MAX_SIZE)), "seed": int(seed),
            "iterations": list(_check_iterations(iterations)), "subsets": int(subsets), "counts": float(counts),
            "angles": int(angles), "fwhm0": float(fwhm0), "fwhm_slope": float(fwhm_slope)}


def _dataset_description(settings: dict[str, Any], cases: list[int]) -> dict[str, Any]:
    """Contents of ``dataset.json`` for cases ``cases`` simulated with ``settings``."""
    return {
        "name": "Simulated 99mTc bone SPECT", "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
        **settings, "num_cases": len(cases), "cases": cases, "modality": {"0": "SPECT"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "layout": "case-N/recon_osemK.nii.gz (float32 activity), case-N/bone.nii.gz (uint8), "
                  "case-N/phantom.nii.gz (float32 true activity), case-N/mu.nii.gz (float32, 1/cm)",
    }


def _sync_dataset_json(folder: Path, settings: dict[str, Any], cases: Sequence[int]) -> None:
    """Create or extend ``dataset.json``; refuse a folder holding cases of other settings or foreign cases."""
    stray = [] if (folder / DATASET_JSON).exists() else sorted(
        p.name for p in folder.iterdir() if SPECT_CASE_RE.match(p.name))
    sync_dataset_json(folder, lambda c: _dataset_description(settings, c),
                      ("generator", "generator_version", *settings), cases, stray)


def _generate(out_dir: str | Path, num_cases: int, settings: dict[str, Any], start_index: int, overwrite: bool,
              progress: bool, image_iterations: int | None) -> tuple[list[dict[str, str]], int]:
    indices = case_indices(num_cases, start_index)
    image_iterations = settings["iterations"][-1] if image_iterations is None else int(image_iterations)
    if image_iterations not in settings["iterations"]:
        raise ValueError(f"image_iterations={image_iterations} is not one of iterations={settings['iterations']}")
    if not 1 <= settings["subsets"] <= settings["angles"] or not settings["counts"] > 0:
        raise ValueError(f"need 1 <= subsets <= angles and counts > 0, got {settings}")
    folder, written = write_cases(out_dir, indices, lambda f, c: _sync_dataset_json(f, settings, c),
                                  lambda f, i: _write_case(f, i, settings, overwrite), "bone SPECT cases", progress)
    return [_case_entry(folder, i, settings["iterations"], image_iterations) for i in indices], written


def generate_spect_phantoms(out_dir: str | Path, num_cases: int = 8, shape: Sequence[int] = (64, 64, 48),
                            seed: int = 0, iterations: Sequence[int] = (2, 5), subsets: int = 8,
                            counts: float = 2e6, angles: int = 64, fwhm0: float = 3.0, fwhm_slope: float = 0.04,
                            start_index: int = 0, image_iterations: int | None = None, overwrite: bool = False,
                            progress: bool = True) -> list[dict[str, str]]:
    """Write simulated bone SPECT cases ``case-N/`` and ``dataset.json`` to ``out_dir``.

    Each case folder is written to a temporary folder and renamed into place, so it is either complete or absent.
    A complete existing case is skipped (re-running is idempotent) unless ``overwrite`` is set.

    Args:
        out_dir: output folder (created if needed).
        num_cases: number of cases.
        shape: grid size ``(x, y, z)``.
        seed: dataset seed.
        iterations: OS-EM iteration counts written as ``recon_osemK.nii.gz``.
        subsets: OS-EM subsets.
        counts: expected total counts per study.
        angles: number of views over 360 degrees.
        fwhm0: collimator-detector FWHM (mm) at the detector face.
        fwhm_slope: FWHM increase per mm of distance from the detector.
        start_index: number ``N`` of the first case.
        image_iterations: which reconstruction the ``"image"`` key points to (default the largest of
            ``iterations``).
        overwrite: regenerate existing cases.
        progress: show a progress bar.

    Returns:
        ``[{"image": recon path, "label": bone path, "case": "case-N", "image_osemK": recon path for each K}, ...]``.

    Raises:
        ValueError: for invalid arguments, an incomplete case folder (without ``overwrite``), a folder holding cases
            of other settings (per its ``dataset.json``) or ``case-N`` folders without ``dataset.json``.
    """
    settings = _settings(shape, seed, iterations, subsets, counts, angles, fwhm0, fwhm_slope)
    return _generate(out_dir, num_cases, settings, start_index, overwrite, progress, image_iterations)[0]


def spect_datalist(dataset_dir: str | Path | None, synthetic_dir: str | Path, num_cases: int = 12,
                   shape: Sequence[int] = (64, 64, 48), seed: int = 0, iterations: int = 5) -> list[dict[str, str]]:
    """Datalist of a real bone SPECT folder ``dataset_dir`` or of synthetic phantoms (generated if missing).

    Args:
        dataset_dir: folder in the layout ``case-N/recon_osemK.nii[.gz]`` + ``case-N/bone.nii[.gz]`` (never
            written to); None, ``""`` or ``"synthetic"`` selects the phantoms.
        synthetic_dir: phantom folder, generated there if missing (idempotent).
        num_cases, shape, seed: phantom settings (``seed`` is the data seed, separate from the training seed).
        iterations: OS-EM iterations of the reconstruction used as ``"image"`` (2 or 5 for the phantoms).
    """
    return real_or_phantoms(
        dataset_dir, synthetic_dir, lambda folder: index_spect(folder, iterations=int(iterations)),
        lambda: generate_spect_phantoms(synthetic_dir, int(num_cases), tuple(shape), int(seed), progress=False))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``varseg make-data spect``: write simulated bone SPECT cases and print a one-line summary."""
    parser = phantom_parser("spect", "Write simulated 99mTc bone SPECT cases (phantom, OS-EM recons).", 8,
                            (64, 64, 48))
    parser.add_argument("--iterations", type=int, nargs="+", default=[2, 5], help="OS-EM iterations (default 2 5)")
    parser.add_argument("--subsets", type=int, default=8, help="OS-EM subsets (default 8)")
    parser.add_argument("--angles", type=int, default=64, help="views over 360 degrees (default 64)")
    parser.add_argument("--counts", type=float, default=2e6, help="expected counts per study (default 2e6)")

    def generate(a: argparse.Namespace) -> tuple[list[dict[str, str]], int]:
        settings = _settings(a.shape, a.seed, a.iterations, a.subsets, a.counts, a.angles, 3.0, 0.04)
        return _generate(a.out_dir, a.num_cases, settings, a.start_index, a.overwrite, not a.no_progress, None)

    return run_phantom_command(parser, argv, "bone SPECT cases", generate)


if __name__ == "__main__":
    raise SystemExit(main())
