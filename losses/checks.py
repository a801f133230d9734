"""Argument checks shared by the losses: the ``reduction`` name, non-negative weights, the dtype sums run in."""

from __future__ import annotations

import torch
from monai.utils import LossReduction

__all__ = ["check_reduction", "check_weight", "compute_dtype"]

_REDUCTIONS = tuple(r.value for r in LossReduction)


def check_reduction(reduction: LossReduction | str, name: str = "reduction") -> str:
    """Return ``reduction`` as a plain string or raise a ``ValueError`` naming the accepted values."""
    try:
        return LossReduction(reduction).value
    except ValueError:
        raise ValueError(f"{name} must be one of {list(_REDUCTIONS)}, got {reduction!r}.") from None


def check_weight(value: float, name: str) -> float:
    """Return ``value`` as a float or raise a ``ValueError`` if it is not a finite non-negative number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.") from None
    if not (out >= 0.0 and out != float("inf")):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    return out


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Common floating dtype of ``tensors``, at least float32 (sums over many voxels are unsafe in half precision)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)
