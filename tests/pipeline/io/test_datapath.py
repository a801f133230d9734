"""Tests of the zero-copy data path: read_nifti_array and window_stack against nibabel, HUWindow and StackAdjacentSlices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.io.datapath import window_stack
from pipeline.io.volumes import CaseError, read_nifti_array
from transforms import HUWindow, StackAdjacentSlices


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_nifti_array_equals_nibabel(tmp_path, suffix):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1024, 2000, size=(9, 7, 5)).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    path = tmp_path / f"ct{suffix}"
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    array, got_affine = read_nifti_array(path)
    np.testing.assert_array_equal(array, np.asanyarray(nib.load(str(path)).dataobj))
    assert array.dtype == np.int16 and array.shape == (9, 7, 5)
    np.testing.assert_allclose(got_affine, nib.load(str(path)).affine)


def test_read_nifti_array_truncated(tmp_path):
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CaseError, match="truncated"):
        read_nifti_array(path)


@pytest.mark.parametrize("num_slices", [1, 3, 5])
def test_window_stack_equals_transforms(num_slices):
    rng = np.random.default_rng(1)
    volume = np.asfortranarray(rng.integers(-400, 600, size=(6, 5, 4)).astype(np.int16))
    stacked = window_stack(volume, -124.0, 276.0, num_slices)
    expected = StackAdjacentSlices(num_slices)(HUWindow(-124.0, 276.0)(torch.as_tensor(volume[None])))
    assert stacked.shape == (4, num_slices, 6, 5) and stacked.dtype == torch.float32
    torch.testing.assert_close(stacked, expected.float(), atol=1e-6, rtol=0)


def test_window_stack_ill_input():
    with pytest.raises(ValueError, match="3D"):
        window_stack(np.zeros((4, 4)), 0.0, 1.0)
    with pytest.raises(ValueError, match="a_max"):
        window_stack(np.zeros((4, 4, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match="odd"):
        window_stack(np.zeros((4, 4, 4)), 0.0, 1.0, 2)
