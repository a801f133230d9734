"""The 2.5D CT data path without copies: a decoded HU volume to windowed adjacent-slice samples in one pass.

:func:`window_stack` does what ``HUWindow`` followed by ``StackAdjacentSlices`` does to a whole volume, but writes the
windowed volume once, slice-major, with ``num_slices // 2`` replicated slices at each end, and returns the stacked
samples as a strided *view* of it: sample ``z`` channel ``c`` is slice ``z + c - num_slices // 2`` (edges
replicated), so the ``k``-fold stack costs no memory and no time. Paired with
:func:`pipeline.io.volumes.read_nifti_array`
(ISA-L inflate, no copy) this is the data path measured by ``bench/data_path.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from transforms.slices import check_num_slices

__all__ = ["window_stack"]


def window_stack(volume: np.ndarray, a_min: float, a_max: float, num_slices: int = 3) -> torch.Tensor:
    """HU window to [0, 1] and adjacent-slice stacking along the last axis, as a view.

    Args:
        volume: ``(X, Y, Z)`` array (any real dtype, e.g. int16 HU as decoded, Fortran- or C-ordered).
        a_min: HU mapped to 0 (values below are clipped).
        a_max: HU mapped to 1 (values above are clipped), > ``a_min``.
        num_slices: ``k`` adjacent slices per sample, odd.

    Returns:
        float32 tensor ``(Z, k, X, Y)``, a read-only-by-convention strided view (do not write to it): sample ``z`` is
        ``[window(volume[..., z - k//2]), ..., window(volume[..., z + k//2])]`` with edge slices replicated, equal to
        ``StackAdjacentSlices(k)(HUWindow(a_min, a_max)(volume[None]))``.

    Raises:
        ValueError: a volume that is not 3D, or ``a_max <= a_min``.
    """
    num_slices = check_num_slices(num_slices)
    if volume.ndim != 3:
        raise ValueError(f"window_stack needs a 3D (X, Y, Z) volume, got shape {tuple(volume.shape)}.")
    if not a_max > a_min:
        raise ValueError(f"a_max must be greater than a_min, got a_min={a_min}, a_max={a_max}.")
    x, y, depth = volume.shape
    half = num_slices // 2
    out = np.empty((depth + 2 * half, x, y), dtype=np.float32)
    scale = np.float32(1.0 / (a_max - a_min))
    slab = max(1, (1 << 22) // max(1, x * y))  # about 4 M voxels per step: stays in cache across the three passes
    for z in range(0, depth, slab):
        block = out[half + z : half + min(depth, z + slab)]
        np.subtract(np.moveaxis(volume[:, :, z : z + slab], 2, 0), np.float32(a_min), out=block, casting="unsafe")
        np.multiply(block, scale, out=block)
        np.clip(block, 0.0, 1.0, out=block)
    out[:half] = out[half]
    out[half + depth :] = out[half + depth - 1]
    s0, s1, s2 = out.strides
    item = out.itemsize
    return torch.from_numpy(out).as_strided((depth, num_slices, x, y), (s0 // item, s0 // item, s1 // item, s2 // item))
