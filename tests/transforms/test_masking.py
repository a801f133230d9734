"""Tests of RestrictToMask / RestrictToMaskd and mask_region (hand-computed cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import RestrictToMask, RestrictToMaskd, RestrictToMaskD, RestrictToMaskDict, mask_region

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A (1, 5, 5, 3) image of values 1..75 and a mask holding one voxel (2, 2, 1) with label 2."""
    image = np.arange(1, 76, dtype=np.float32).reshape(1, 5, 5, 3)
    mask = np.zeros((1, 5, 5, 3), dtype=np.uint8)
    mask[0, 2, 2, 1] = 2
    return image, mask


@CONTAINERS
def test_outside_is_zeroed_inside_kept(as_array):
    image, mask = _volume()
    out = RestrictToMask()(as_array(image), as_array(mask))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == image.shape
    expected = np.zeros_like(image)
    expected[0, 2, 2, 1] = image[0, 2, 2, 1]
    np.testing.assert_array_equal(_np(out), expected)


@CONTAINERS
def test_dilation_per_axis_and_fill_value(as_array):
    image, mask = _volume()
    out = _np(RestrictToMask(dilation=(1, 1, 0), fill_value=-1.0)(as_array(image), as_array(mask)))
    inside = np.zeros(image.shape, dtype=bool)
    inside[0, 1:4, 1:4, 1] = True  # a 3x3 box in-plane, slice 1 only
    np.testing.assert_array_equal(out[inside], image[inside])
    assert np.all(out[~inside] == -1.0)
    assert int(mask_region(as_array(mask), 1).sum()) == 27  # 3x3x3 box
    assert int(mask_region(as_array(mask), (0, 0, 1)).sum()) == 3


def test_image_geometry_kept():
    image, mask = _volume()
    affine = torch.diag(torch.tensor([0.7, 0.8, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.as_tensor(image), affine=affine, meta={"filename_or_obj": "volume-3.nii.gz"})
    out = RestrictToMask(dilation=2)(img, MetaTensor(torch.as_tensor(mask), affine=affine))
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.affine, affine) and out.meta["filename_or_obj"] == "volume-3.nii.gz"
    assert out.shape == img.shape


def test_multichannel_image_single_channel_mask():
    image = np.stack([np.arange(4.0), 10 + np.arange(4.0)])  # (2, 4)
    out = _np(RestrictToMask()(image, np.array([[1, 0, 0, 1]])))
    np.testing.assert_array_equal(out, [[0, 0, 0, 3], [10, 0, 0, 13]])


def test_dictionary_twin_reads_mask_from_key():
    image, mask = _volume()
    data = {"image": MetaTensor(torch.as_tensor(image)), "liver": torch.as_tensor(mask), "label": mask.copy()}
    out = RestrictToMaskd(keys="image", mask_key="liver", dilation=(1, 1, 0))(data)
    assert int((_np(out["image"]) != 0).sum()) == 9
    np.testing.assert_array_equal(out["label"], mask)  # other keys untouched
    np.testing.assert_array_equal(_np(out["liver"]), mask)
    assert RestrictToMaskD is RestrictToMaskd and RestrictToMaskDict is RestrictToMaskd


def test_ill_shape():
    image, _ = _volume()
    with pytest.raises(ValueError,
                       match=r"mask of shape \(1, 5, 5, 2\) does not fit the image of shape \(1, 5, 5, 3\)"):
        RestrictToMask()(image, np.ones((1, 5, 5, 2)))
    with pytest.raises(ValueError, match="1 or 1 channel"):
        RestrictToMask()(image, np.ones((2, 5, 5, 3)))


def test_ill_shape_names_keys_and_files():
    image, _ = _volume()
    data = {"image": MetaTensor(torch.as_tensor(image), meta={"filename_or_obj": "/d/volume-7.nii.gz"}),
            "liver": MetaTensor(torch.ones(1, 4, 5, 3), meta={"filename_or_obj": "/m/volume-7_liver.nii.gz"})}
    with pytest.raises(ValueError, match=r"image key 'image', file '/d/volume-7.nii.gz'; mask key 'liver', "
                                         r"file '/m/volume-7_liver.nii.gz'"):
        RestrictToMaskd(keys="image", mask_key="liver")(data)


def test_missing_mask_key():
    image, _ = _volume()
    with pytest.raises(KeyError, match="no mask key 'liver'"):
        RestrictToMaskd(keys="image", mask_key="liver")({"image": image})


@pytest.mark.parametrize("dilation", [-1, 1.5, True, (1, -2), ()])
def test_ill_dilation(dilation):
    with pytest.raises(ValueError, match="dilation must be"):
        RestrictToMask(dilation=dilation)


def test_dilation_entries_must_match_axes():
    with pytest.raises(ValueError, match="has 2 entries but the mask has 3 spatial axes"):
        mask_region(np.ones((1, 2, 2, 2)), (1, 1))


def test_empty_mask_warns():
    image, mask = _volume()
    with pytest.warns(UserWarning, match="is empty"):
        out = RestrictToMask()(image, np.zeros_like(mask))
    assert not torch.any(out)
