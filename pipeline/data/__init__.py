"""Datasets: synthetic phantoms, on-disk layout indexers and case splits."""

from __future__ import annotations

from .lits import (
    LABELS,
    LayoutError,
    generate_lits_phantoms,
    index_lits,
    lits_datalist,
    make_lits_case,
    mark_labelled,
    split_cases,
)
from .spect import SpectCase, SpectProjector, generate_spect_phantoms, index_spect, make_spect_case, osem
from .lung import LUNG_LABELS, generate_lung_phantoms, index_lung, lung_datalist, make_lung_case
from .brats import (
    BRATS_LABELS,
    BRATS_MODALITY_NAMES,
    BratsCase,
    brats_affine,
    brats_datalist,
    generate_brats_phantoms,
    make_brats_case,
)
