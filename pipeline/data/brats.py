"""BraTS data: synthetic multi-modal brain MR phantoms in the BraTS 2020 case-folder layout, and their datalist.

On-disk layout (the one of the BraTS 2018-2021 challenges)::

    <folder>/<case>/<case>_t1.nii.gz        T1-weighted, scanner units (int16, >= 0, 0 outside the brain)
    <folder>/<case>/<case>_t1ce.nii.gz      T1-weighted after gadolinium
    <folder>/<case>/<case>_t2.nii.gz        T2-weighted
    <folder>/<case>/<case>_flair.nii.gz     T2-FLAIR
    <folder>/<case>/<case>_seg.nii.gz       uint8 labels: 0 background, 1 necrotic / non-enhancing tumour core,
                                            2 peritumoral oedema, 4 GD-enhancing tumour
    <folder>/dataset.json                   description of the synthetic data set (generator settings, cases)

All five files of a case share shape and affine. The affine is the one BraTS ships (and the DeepMedic copy of BraTS
2015 in the shared real data): 1 mm isotropic voxels, LPS axes (nibabel's ``aff2axcodes`` gives ``("L", "P", "S")``:
voxel ``i`` runs towards the patient's left, ``j`` posterior, ``k`` superior), i.e.
``diag(-1, -1, 1)`` with origin ``(0, ny - 1, 0)`` (``(0, 239, 0)`` for the 240 x 240 x 155 BraTS grid).
:func:`generate_brats_phantoms` writes synthetic cases ``brats_NNN``; :func:`brats_datalist` indexes a real BraTS
folder with :func:`pipeline.io.layouts.index_brats`, or generates (if needed) and indexes the phantoms.

Phantom model. The anatomy is defined analytically in millimetres of a real-size brain (LPS, centred on the
brain) and sampled at voxel centres. On the BraTS grid (240 x 240 x 155) the brain has its real size (semi-axes
about 66-74 x 80-90 x 61-69 mm); on smaller grids it is shrunk uniformly so that it fits (a miniature brain at the
same 1 mm spacing: about 0.4 times real size on the default 96 x 96 x 64 grid), so every case shows the whole brain.

* brain (skull-stripped): an ellipsoid whose surface is perturbed by a smooth random field; 0 outside;
* CSF: a subarachnoid layer under the surface with sulci (CSF indentations where a smooth field is high), the
  interhemispheric fissure, two lateral ventricles (bent ellipsoids, enlarged in some cases) and a third ventricle;
* grey matter: the cortex (a band of varying thickness under the CSF, following the sulci and the fissure) and deep
  nuclei (thalami, basal ganglia); white matter everywhere else inside the brain;
* tumour (one per case, in either hemisphere): a necrotic core (label 1) inside an enhancing rim (label 4) inside
  peritumoral oedema (label 2, only in grey or white matter, never in CSF). Each boundary is a rotated ellipsoid
  whose radius is perturbed by its own smooth random field, so the shapes are irregular and not nested spheres.

Contrast (mean signal per tissue before the per-case jitter, in scanner-like units)::

                 T1     T1ce    T2     FLAIR
    CSF          250     260   1800     150     T2 bright, FLAIR suppressed
    grey matter  600     620    900     620
    white matter 850     860    650     480     T1: WM > GM > CSF; T2: CSF > GM > WM
    oedema       520     540   1400    1050     FLAIR and T2 bright
    enhancing    620    1500   1100     900     T1ce bright rim
    necrosis     300     330   1600     700     dark on T1 / T1ce

Each tissue value is jittered by +-6 % and each modality scaled by a gain of 0.75-1.3 per case (MR intensities have
no absolute scale); a smooth texture (+-3 %) is added. Acquisition: partial-volume blur (Gaussian, sigma 0.5 voxel),
a smooth multiplicative bias field per modality ``b_m = exp(bias_strength * f_m)`` (``f_m``: a low-frequency random
field with zero mean and unit standard deviation over the brain, wavelengths 200-500 mm; ``bias_strength = 0`` gives
``b_m = 1``), then Rician noise: the magnitude ``|b_m J_m + n_1 + i n_2|`` of complex Gaussian noise with sigma
2-4 % of the white-matter signal. Values outside the brain are set to 0 and inside it to at least 1 (so "any
modality > 0" is exactly the brain mask), then rounded to int16.

Determinism. Case ``N`` of seed ``S`` only depends on ``numpy.random.default_rng([S, N])``, the grid shape and
``bias_strength``; the anatomy, the bias directions and the noise do not depend on ``bias_strength``, so the same
case with and without bias differs only by the bias field.

Command line::

    python -m pipeline.data.brats --out OUT_DIR [--num-cases 16] [--shape 96 96 64] [--seed 0] [--bias-strength 0.15]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.io.files import nifti_image
from pipeline.io.layouts import index_brats

from .scaffold import DATASET_JSON, Field, case_indices, check_shape, phantom_parser, real_or_phantoms
from .scaffold import run_phantom_command, sync_dataset_json, write_case_files, write_cases

logger = logging.getLogger(__name__)

__all__ = [
    "BRATS_LABELS",
    "BRATS_MODALITY_NAMES",
    "BratsCase",
    "brats_affine",
    "brats_datalist",
    "generate_brats_phantoms",
    "make_brats_case",
]

BRATS_MODALITY_NAMES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS: dict[int, str] = {
    0: "background", 1: "necrotic / non-enhancing tumour core", 2: "peritumoral oedema", 4: "GD-enhancing tumour",
}
TISSUES: dict[str, int] = {
    "background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3, "oedema": 4, "enhancing": 5, "necrosis": 6,
}
GENERATOR = "pipeline.data.brats"
GENERATOR_VERSION = 1
DEFAULT_SHAPE = (96, 96, 64)
DEFAULT_BIAS_STRENGTH = 0.15
_T = TISSUES
# Mean signal per tissue and modality (t1, t1ce, t2, flair), see the module docstring.
_SIGNAL: dict[str, tuple[float, float, float, float]] = {
    "csf": (250.0, 260.0, 1800.0, 150.0),
    "grey_matter": (600.0, 620.0, 900.0, 620.0),
    "white_matter": (850.0, 860.0, 650.0, 480.0),
    "oedema": (520.0, 540.0, 1400.0, 1050.0),
    "enhancing": (620.0, 1500.0, 1100.0, 900.0),
    "necrosis": (300.0, 330.0, 1600.0, 700.0),
}
_LABEL_OF = {"necrosis": 1, "oedema": 2, "enhancing": 4}
_CASE_FILE_RE = re.compile(r"^(?P<case>.+)_(?P<role>t1|t1ce|t2|flair|seg)\.nii(?:\.gz)?$")
_INT16_MAX = 32767


# ----------------------------------------------------------------------------------------------------------------
# Parameters (drawn independently of the grid)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob:
    """Rotated ellipsoid (centre, semi-axes in mm, rotation) whose radius is scaled by ``1 + shape_field``."""

    centre: np.ndarray
    semi: np.ndarray
    rotation: np.ndarray
    shape_field: Field


@dataclass(frozen=True)
class _Anatomy:
    """Brain outline, CSF spaces, grey matter and the tumour (mm of a real-size brain, LPS, brain-centred)."""

    semi: np.ndarray
    surface: Field
    csf_mm: float
    sulci: Field
    sulcus_mm: float
    cortex_mm: float
    cortex_var: Field
    fissure_mm: float
    fissure_z: float
    ventricle: tuple[float, float, float, float, float, float, float]
    deep_gm: tuple[tuple[np.ndarray, np.ndarray], ...]
    core: _Blob
    rim: _Blob
    oedema: _Blob


@dataclass(frozen=True)
class _Acquisition:
    """Per-case signal table (tissue -> 4 modalities), textures, bias directions and noise level."""

    signal: dict[str, np.ndarray]
    texture: tuple[Field, ...]
    bias: tuple[Field, ...]
    noise_fraction: float


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _draw_brain(rng: np.random.Generator) -> dict[str, Any]:
    """Brain outline, CSF spaces and grey matter."""
    semi = np.array([rng.uniform(66, 74), rng.uniform(80, 90), rng.uniform(61, 69)])
    enlarge = float(rng.uniform(0.8, 1.5))
    ventricle = (float(rng.uniform(7, 10)), float(rng.uniform(-8, 0)), float(rng.uniform(8, 14)),
                 float(rng.uniform(4, 6) * enlarge), float(rng.uniform(24, 30)), float(rng.uniform(6, 9) * enlarge),
                 float(rng.uniform(0.006, 0.012)))
    deep_gm = []
    for centre, size in (((11, 8, 0), (7, 11, 8)), ((21, -8, 2), (6, 13, 10))):
        jitter = rng.uniform(0.9, 1.1, 3)
        for side in (-1.0, 1.0):
            deep_gm.append((np.array([side * centre[0], centre[1], centre[2]], float), np.array(size) * jitter))
    return dict(
        semi=semi, surface=Field.draw(rng, 6, (60, 160), float(rng.uniform(0.02, 0.035))),
        csf_mm=float(rng.uniform(1.5, 2.5)), sulci=Field.draw(rng, 10, (14, 32), 0.5),
        sulcus_mm=float(rng.uniform(6, 10)), cortex_mm=float(rng.uniform(4.5, 6)),
        cortex_var=Field.draw(rng, 8, (15, 40), 1.0), fissure_mm=float(rng.uniform(1.0, 1.6)),
        fissure_z=float(rng.uniform(18, 26)), ventricle=ventricle, deep_gm=tuple(deep_gm),
    )


def _draw_tumour(rng: np.random.Generator, semi: np.ndarray) -> dict[str, _Blob]:
    """Necrotic core inside an enhancing rim inside oedema, centred in one hemisphere away from the surface."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    r_enh = float(rng.uniform(12, 24))
    for _ in range(100):
        centre = np.array([side * rng.uniform(16, 42), rng.uniform(-45, 40), rng.uniform(-12, 30)])
        if np.linalg.norm(centre / semi) + 1.25 * r_enh / float(semi.min()) < 0.9:
            break
        r_enh = max(10.0, 0.97 * r_enh)
    else:  # pragma: no cover - the loop always finds a centre for these ranges
        centre = np.array([side * 25.0, 0.0, 10.0])
    rotation = _random_rotation(rng)
    ratios = rng.uniform(0.8, 1.2, 3)
    ratios /= np.cbrt(ratios.prod())
    r_core = r_enh * float(rng.uniform(0.4, 0.65))
    r_oed = r_enh * float(rng.uniform(1.5, 2.2))
    return {
        "core": _Blob(centre, r_core * ratios, rotation, Field.draw(rng, 6, (15, 45), 0.08)),
        "rim": _Blob(centre, r_enh * ratios, rotation, Field.draw(rng, 6, (15, 45), 0.06)),
        "oedema": _Blob(centre, r_oed * ratios * rng.uniform(0.85, 1.15, 3), rotation,
                        Field.draw(rng, 8, (15, 60), 0.15)),
    }


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """All anatomical parameters of one case."""
    brain = _draw_brain(rng)
    return _Anatomy(**brain, **_draw_tumour(rng, brain["semi"]))


def _draw_acquisition(rng: np.random.Generator) -> _Acquisition:
    """Signal table with per-case jitter and gains, texture and bias-field directions, noise level."""
    gain = rng.uniform(0.75, 1.3, 4)
    signal = {name: np.asarray(values) * rng.uniform(0.94, 1.06, 4) * gain for name, values in _SIGNAL.items()}
    texture = tuple(Field.draw(rng, 4, (10, 40), 0.03) for _ in BRATS_MODALITY_NAMES)
    bias = tuple(Field.draw(rng, 4, (200, 500), 1.0) for _ in BRATS_MODALITY_NAMES)
    return _Acquisition(signal, texture, bias, float(rng.uniform(0.02, 0.04)))


# ----------------------------------------------------------------------------------------------------------------
# Composition on a grid
# ----------------------------------------------------------------------------------------------------------------


def _scale(anat: _Anatomy, shape: tuple[int, int, int]) -> float:
    """Shrink factor (<= 1) that fits the perturbed brain into the grid with a voxel of margin on each side."""
    extent = anat.semi * (1.0 + float(anat.surface.amp.sum()))  # the surface field never exceeds its amplitudes
    return float(min(1.0, *((np.asarray(shape) / 2.0 - 1.5) / extent)))


def _axes(shape: tuple[int, int, int], scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anatomical coordinates (mm of the real-size brain, brain-centred, LPS) of the voxel centres."""
    xs, ys, zs = (((np.arange(n) - (n - 1) / 2.0) / scale).astype(np.float32) for n in shape)
    return xs, ys, zs


def _blob_radius(blob: _Blob, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Normalised radius of a perturbed rotated ellipsoid (< 1 inside)."""
    r, c = blob.rotation, blob.centre
    px, py, pz = xs[:, None, None] - c[0], ys[None, :, None] - c[1], zs[None, None, :] - c[2]
    radius = np.zeros((xs.size, ys.size, zs.size), np.float32)
    for row in range(3):
        u = r[row, 0] * px + r[row, 1] * py + r[row, 2] * pz
        radius += (u / blob.semi[row]) ** 2
    return np.sqrt(radius) / (1.0 + blob.shape_field.on_grid(xs, ys, zs))


def _ellipsoid(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, centre: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Mask of an axis-aligned ellipsoid."""
    return (((xs[:, None, None] - centre[0]) / semi[0]) ** 2 + ((ys[None, :, None] - centre[1]) / semi[1]) ** 2
            + ((zs[None, None, :] - centre[2]) / semi[2]) ** 2) < 1.0


def _ventricles(anat: _Anatomy, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Lateral ventricles (bent ellipsoids either side of the midline) and the third ventricle."""
    offset, yc, zc, ax, ay, az, bend = anat.ventricle
    x, y, z = xs[:, None, None], ys[None, :, None], zs[None, None, :]
    centre_z = zc - bend * (y - yc) ** 2
    mask = np.zeros((xs.size, ys.size, zs.size), bool)
    for side in (-1.0, 1.0):
        mask |= ((x - side * offset) / ax) ** 2 + ((y - yc) / ay) ** 2 + ((z - centre_z) / az) ** 2 < 1.0
    mask |= (np.abs(x) < 1.5) & (np.abs(y - yc - 8.0) < 12.0) & (z > zc - 22.0) & (z < zc - 2.0)
    return mask


def _compose(anat: _Anatomy, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue classes (``TISSUES``), BraTS labels and the shrink factor on a grid of ``shape``."""
    scale = _scale(anat, shape)
    xs, ys, zs = _axes(shape, scale)
    x, z = xs[:, None, None], zs[None, None, :]
    rho = np.sqrt((x / anat.semi[0]) ** 2 + (ys[None, :, None] / anat.semi[1]) ** 2 + (z / anat.semi[2]) ** 2)
    depth = (1.0 + anat.surface.on_grid(xs, ys, zs) - rho) * float(np.cbrt(anat.semi.prod()))  # mm below the surface
    brain = depth > 0
    sulcus = anat.sulcus_mm * np.clip(2.0 * (anat.sulci.on_grid(xs, ys, zs) - 0.35), 0.0, 1.0)
    csf_depth = anat.csf_mm + sulcus
    cortex = anat.cortex_mm * (1.0 + 0.35 * np.tanh(anat.cortex_var.on_grid(xs, ys, zs)))
    midline, above = np.abs(x), z > anat.fissure_z  # interhemispheric fissure: near x = 0, above the ventricles
    tissue = np.where(brain, _T["white_matter"], _T["background"]).astype(np.uint8)
    grey = (depth < csf_depth + cortex) | (above & (midline < anat.fissure_mm + cortex))
    for centre, semi in anat.deep_gm:
        grey |= _ellipsoid(xs, ys, zs, centre, semi)
    tissue[brain & grey] = _T["grey_matter"]
    csf = (depth < csf_depth) | (above & (midline < anat.fissure_mm)) | _ventricles(anat, xs, ys, zs)
    tissue[brain & csf] = _T["csf"]

    label = np.zeros(shape, np.uint8)
    parenchyma = (tissue == _T["grey_matter"]) | (tissue == _T["white_matter"])
    core = brain & (_blob_radius(anat.core, xs, ys, zs) < 1.0)
    rim = brain & ~core & (_blob_radius(anat.rim, xs, ys, zs) < 1.0)
    oedema = parenchyma & ~core & ~rim & (_blob_radius(anat.oedema, xs, ys, zs) < 1.0)
    for name, mask in (("oedema", oedema), ("enhancing", rim), ("necrosis", core)):
        tissue[mask] = _T[name]
        label[mask] = _LABEL_OF[name]
    return tissue, label, scale


def _bias_field(direction: Field, strength: float, axes: tuple[np.ndarray, ...], brain: np.ndarray) -> np.ndarray:
    """``exp(strength * f)`` with ``f`` normalised to zero mean and unit std over the brain (ones for strength 0)."""
    if strength == 0.0:
        return np.ones(brain.shape, np.float32)
    f = direction.on_grid(*axes)
    inside = f[brain]
    f = (f - inside.mean()) / max(float(inside.std()), 1e-6)
    return np.exp(strength * f).astype(np.float32)


def _acquire(tissue: np.ndarray, acq: _Acquisition, bias_strength: float, axes: tuple[np.ndarray, ...],
             rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Images (int16) and true bias fields (float32) of the four modalities."""
    brain = tissue != _T["background"]
    images, biases = {}, {}
    for m, name in enumerate(BRATS_MODALITY_NAMES):
        lut = np.zeros(len(TISSUES), np.float32)
        for tissue_name, values in acq.signal.items():
            lut[_T[tissue_name]] = values[m]
        clean = lut[tissue] * (1.0 + acq.texture[m].on_grid(*axes))
        clean = ndimage.gaussian_filter(clean, 0.5, mode="constant")
        bias = _bias_field(acq.bias[m], bias_strength, axes, brain)
        sigma = acq.noise_fraction * float(acq.signal["white_matter"][m])
        real = bias * clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
        imag = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
        magnitude = np.where(brain, np.maximum(np.hypot(real, imag), 1.0), 0.0)
        images[name] = np.clip(np.rint(magnitude), 0, _INT16_MAX).astype(np.int16)
        biases[name] = bias
    return images, biases


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """The BraTS voxel-to-world affine of a grid: 1 mm, LPS, ``diag(-1, -1, 1)`` with origin ``(0, ny - 1, 0)``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = float(shape[1] - 1)
    return affine


@dataclass
class BratsCase:
    """One synthetic case.

    Attributes:
        images: ``{"t1", "t1ce", "t2", "flair"} -> int16 volume`` (scanner-like units, 0 outside the brain).
        label: uint8 BraTS labels (0, 1 necrotic core, 2 oedema, 4 enhancing) of the same shape.
        bias: ``{modality -> float32 multiplicative bias field}`` that was applied (all ones for strength 0).
        brain: boolean brain mask (exactly where every modality is > 0).
        tissue: uint8 tissue classes (``TISSUES``: 1 CSF, 2 grey matter, 3 white matter, 4 oedema, 5 enhancing,
            6 necrosis).
        affine: 4x4 LPS voxel-to-world affine (1 mm, as BraTS ships).
        params: drawn per-case values (shrink factor, noise level, tumour centre and radii, bias strength).
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    bias: dict[str, np.ndarray]
    brain: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def _check_bias_strength(bias_strength: float) -> float:
    """``bias_strength`` as a float in [0, 1]."""
    value = float(bias_strength)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"bias_strength must be in [0, 1] (0 = no bias field), got {bias_strength!r}")
    return value


def make_brats_case(index: int, shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0,
                    bias_strength: float = DEFAULT_BIAS_STRENGTH) -> BratsCase:
    """Synthesise one four-modality brain MR case with its tumour labels and the true bias fields.

    Args:
        index: case number ``N`` (>= 0).
        shape: grid size (x, y, z) in voxels of 1 mm; the whole brain is always in view (real size on a
            240 x 240 x 155 grid, shrunk to fit smaller grids).
        seed: dataset seed; case ``N`` only depends on ``(seed, N)``, ``shape`` and ``bias_strength``.
        bias_strength: standard deviation of the log bias field over the brain, in [0, 1]; 0 switches it off.

    Returns:
        The :class:`BratsCase`.

    Raises:
        ValueError: if ``index`` is negative, ``shape`` is not three sizes in [8, 2048] or ``bias_strength`` is
            outside [0, 1].
    """
    if int(index) != index or index < 0:
        raise ValueError(f"case index must be a non-negative integer, got {index!r}")
    shape = check_shape(shape)
    strength = _check_bias_strength(bias_strength)
    rng_anatomy, rng_acquisition, rng_noise = np.random.default_rng([int(seed), int(index)]).spawn(3)
    anat = _draw_anatomy(rng_anatomy)
    acq = _draw_acquisition(rng_acquisition)
    tissue, label, scale = _compose(anat, shape)
    axes = _axes(shape, scale)
    images, biases = _acquire(tissue, acq, strength, axes, rng_noise)
    params = {"scale": scale, "bias_strength": strength, "noise_fraction": acq.noise_fraction,
              "tumour_centre_mm": anat.rim.centre.tolist(), "enhancing_radius_mm": float(anat.rim.semi.mean()),
              "core_radius_mm": float(anat.core.semi.mean()), "oedema_radius_mm": float(anat.oedema.semi.mean())}
    return BratsCase(images, label, biases, tissue != _T["background"], tissue, brats_affine(shape), params)


# ----------------------------------------------------------------------------------------------------------------
# Writing phantoms
# ----------------------------------------------------------------------------------------------------------------


def _case_name(index: int) -> str:
    """Case name (and folder name) of synthetic case ``index`` (``brats_007``)."""
    return f"brats_{index:03d}"


def _case_files(folder: Path, index: int) -> dict[str, Path]:
    """Role (modality or ``"seg"``) -> file of synthetic case ``index``."""
    name = _case_name(index)
    return {role: folder / name / f"{name}_{role}.nii.gz" for role in (*BRATS_MODALITY_NAMES, "seg")}


def _write_case(folder: Path, index: int, shape: tuple[int, int, int], seed: int, bias_strength: float,
                overwrite: bool) -> bool:
    """Write case ``index`` unless all five files exist; returns whether it was written."""

    def make() -> dict[str, nib.Nifti1Image]:
        case = make_brats_case(index, shape, seed, bias_strength)
        text = f"varseg brats phantom seed={seed} case={index}"
        return {role: nifti_image(array, case.affine, f"{text} {role}")
                for role, array in {**case.images, "seg": case.label}.items()}

    return write_case_files(_case_files(folder, index), index, overwrite, make)


def _dataset_description(shape: tuple[int, int, int], seed: int, bias_strength: float,
                         cases: Sequence[int]) -> dict[str, Any]:
    """Contents of ``dataset.json`` (no ``"training"`` list, so that layout detection sees BraTS case folders)."""
    cases = sorted(int(c) for c in cases)
    return {
        "name": "BraTS-style synthetic brain MR phantoms", "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION, "seed": int(seed), "shape": list(shape),
        "bias_strength": float(bias_strength), "num_cases": len(cases), "cases": cases,
        "case_names": [_case_name(c) for c in cases],
        "modality": {str(i): name for i, name in enumerate(BRATS_MODALITY_NAMES)},
        "labels": {str(k): v for k, v in BRATS_LABELS.items()},
        "orientation": "LPS, 1 mm, affine diag(-1, -1, 1) with origin (0, ny - 1, 0), as BraTS ships",
        "layout": "<case>/<case>_{t1,t1ce,t2,flair}.nii.gz (int16), <case>/<case>_seg.nii.gz (uint8 labels 0/1/2/4)",
    }


def _sync_dataset_json(folder: Path, shape: tuple[int, int, int], seed: int, bias_strength: float,
                       cases: Sequence[int]) -> None:
    """Create or extend ``dataset.json``; refuse a folder holding phantoms of other settings or foreign files."""
    stray = [] if (folder / DATASET_JSON).exists() else sorted(
        f"{p.parent.name}/{p.name}" for p in folder.glob("*/*") if _CASE_FILE_RE.match(p.name))
    sync_dataset_json(folder, lambda c: _dataset_description(shape, seed, bias_strength, c),
                      ("generator", "generator_version", "seed", "shape", "bias_strength"), cases, stray)


def _generate(out_dir: str | Path, num_cases: int, shape: Sequence[int], seed: int, bias_strength: float,
              start_index: int, overwrite: bool, progress: bool) -> tuple[list[dict[str, Any]], int]:
    """Write the phantoms; returns the datalist and the number of cases actually written."""
    shape, strength, indices = check_shape(shape), _check_bias_strength(bias_strength), case_indices(num_cases,
                                                                                                    start_index)
    folder, written = write_cases(
        out_dir, indices, lambda f, c: _sync_dataset_json(f, shape, int(seed), strength, c),
        lambda f, i: _write_case(f, i, shape, int(seed), strength, overwrite), "BraTS phantoms", progress)
    datalist = []
    for index in indices:
        files = _case_files(folder, index)
        datalist.append({"case": _case_name(index), "image": [str(files[m]) for m in BRATS_MODALITY_NAMES],
                         "label": str(files["seg"]), "modalities": list(BRATS_MODALITY_NAMES)})
    return datalist, written


def generate_brats_phantoms(out_dir: str | Path, num_cases: int = 16, shape: Sequence[int] = DEFAULT_SHAPE,
                            seed: int = 0, bias_strength: float = DEFAULT_BIAS_STRENGTH, start_index: int = 0,
                            overwrite: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Write synthetic cases ``brats_NNN/brats_NNN_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``dataset.json``.

    Files are written atomically. A case whose five files all exist is skipped (so re-running is idempotent) unless
    ``overwrite`` is set.

    Args:
        out_dir: output folder (created if needed).
        num_cases: number of cases.
        shape: grid size (x, y, z) of every case.
        seed: dataset seed.
        bias_strength: bias-field strength in [0, 1] (0 = none), see :func:`make_brats_case`.
        start_index: number ``N`` of the first case.
        overwrite: regenerate cases whose files exist.
        progress: show a progress bar.

    Returns:
        The datalist ``[{"case": "brats_NNN", "image": [t1, t1ce, t2, flair paths], "label": seg path,
        "modalities": [...]}, ...]``.

    Raises:
        ValueError: for invalid arguments, an incomplete case folder (without ``overwrite``), a folder holding
            phantoms of other settings (per its ``dataset.json``) or BraTS files without ``dataset.json``.
    """
    return _generate(out_dir, num_cases, shape, seed, bias_strength, start_index, overwrite, progress)[0]


def brats_datalist(dataset_dir: str | Path | None, synthetic_dir: str | Path, num_cases: int = 16,
                   shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0,
                   modalities: Sequence[str] | None = BRATS_MODALITY_NAMES,
                   bias_strength: float = DEFAULT_BIAS_STRENGTH) -> list[dict[str, Any]]:
    """Datalist of a real BraTS folder ``dataset_dir``, or of synthetic phantoms when it is not given.

    Both go through :func:`pipeline.io.layouts.index_brats`, so the entries have the same keys: ``"case"``,
    ``"image"`` (one path per modality, in the order of ``modalities``), ``"label"``, ``"modalities"``,
    ``"label_convention"``, ``"kind"``, ``"layout"`` (and ``"mask"`` for the DeepMedic copy of BraTS 2015).

    Args:
        dataset_dir, synthetic_dir, num_cases, shape, seed: as :func:`pipeline.data.lits.lits_datalist`.
        modalities: modalities in the order wanted (e.g. ``("flair", "t1ce")``); None takes those every case has.
        bias_strength: phantom bias-field strength.

    Returns:
        The datalist sorted by case (for phantoms: ``brats_000 .. brats_{num_cases - 1}``).

    Raises:
        LayoutError: if ``dataset_dir`` (or a damaged phantom folder) is not in a BraTS layout or a case lacks a
            requested modality.
        ValueError: if ``synthetic_dir`` holds phantoms of other settings, or for an unknown modality name.
    """
    return real_or_phantoms(
        dataset_dir, synthetic_dir, lambda folder: index_brats(folder, modalities=modalities),
        lambda: generate_brats_phantoms(synthetic_dir, num_cases, shape, seed, bias_strength, progress=False))


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``varseg make-data brats``: write phantoms and print a one-line summary; returns the exit status."""
    parser = phantom_parser("brats", "Write synthetic BraTS-style brain MR phantoms (BraTS 2020 layout).", 16,
                            DEFAULT_SHAPE, shape_help="grid size in 1 mm voxels")
    parser.add_argument("--bias-strength", type=float, default=DEFAULT_BIAS_STRENGTH,
                        help=f"bias-field strength, 0 = none (default {DEFAULT_BIAS_STRENGTH})")
    return run_phantom_command(
        parser, argv, "BraTS phantom cases",
        lambda a: _generate(a.out_dir, a.num_cases, a.shape, a.seed, a.bias_strength, a.start_index, a.overwrite,
                            not a.no_progress),
        details=lambda a: f"bias strength {a.bias_strength}")


if __name__ == "__main__":
    raise SystemExit(main())
