"""Shared by the losses: argument checks (``reduction``, non-negative weights), the dtype sums run in, and the
one reduction of per-sample values."""

from __future__ import annotations

import torch
from monai.utils import LossReduction

__all__ = ["check_reduction", "check_weight", "compute_dtype", "reduce"]

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


def reduce(values: torch.Tensor, reduction: str, trailing_dims: int,
           mean_divisor: int | float | None = None) -> torch.Tensor:
    """Reduce per-sample values (shape ``(B,)``, or ``(B, N)`` per sample and class) as ``reduction`` says.

    ``"sum"``: their total; ``"mean"``: their mean, or their total divided by ``mean_divisor`` when given (e.g. the
    number of pixels of the batch); ``"none"``: the values with ``trailing_dims`` singleton axes appended, so they
    broadcast against the input like MONAI's unreduced losses.

    Raises:
        ValueError: an unknown ``reduction`` (names the accepted values).
    """
    if reduction == LossReduction.SUM.value:
        return values.sum()
    if reduction == LossReduction.MEAN.value:
        return values.mean() if mean_divisor is None else values.sum() / mean_divisor
    if reduction == LossReduction.NONE.value:
        return values.reshape(*values.shape, *([1] * trailing_dims))
    raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}.")
