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
