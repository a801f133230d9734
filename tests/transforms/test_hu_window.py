"""Tests of HUWindow / HUWindowd and the Hounsfield-unit plausibility check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import LITS_WINDOW, HUWindow, HUWindowd, HUWindowD, HUWindowDict, check_hounsfield

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _soft_tissue_crop(shape=(1, 6, 6, 4), seed=0) -> np.ndarray:
    """A liver-centred crop without air: fat, liver, vessels (-150..300 HU)."""
    return np.random.default_rng(seed).uniform(-150.0, 300.0, size=shape).astype(np.float32)


# input HU -> expected output, hand-computed for the LiTS window [-124, 276] -> [0, 1]
HU_POINTS = [(-124.0, 0.0), (276.0, 1.0), (76.0, 0.5), (-24.0, 0.25), (176.0, 0.75), (-1000.0, 0.0), (1000.0, 1.0)]


@CONTAINERS
def test_lits_window_values(as_array):
    hu, expected = zip(*HU_POINTS)
    out = HUWindow()(as_array(np.array([hu], dtype=np.float32)))
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(_to_numpy(out), [expected], atol=1e-6)


@CONTAINERS
def test_custom_range_without_clip(as_array):
    window = HUWindow(a_min=-1000.0, a_max=1000.0, b_min=-1.0, b_max=1.0, clip=False)
    out = window(as_array(np.array([[-1000.0, 0.0, 500.0, 3000.0]])))
    np.testing.assert_allclose(_to_numpy(out), [[-1.0, 0.0, 0.5, 3.0]], atol=1e-6)


@CONTAINERS
def test_integer_input_and_dtype(as_array):
    out = HUWindow(dtype=np.float64)(as_array(np.array([[-124, 76, 276]], dtype=np.int16)))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(_to_numpy(out), [[0.0, 0.5, 1.0]])


def test_lits_window_constant():
    assert LITS_WINDOW == (-124.0, 276.0)
    assert HUWindowD is HUWindowd and HUWindowDict is HUWindowd


@CONTAINERS
def test_soft_tissue_crop_passes(as_array):
    img = _soft_tissue_crop()
    out = HUWindow()(as_array(img))
    assert tuple(out.shape) == img.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("padding", [-3024.0, -2048.0, -1024.0])
def test_scanner_padding_and_metal_pass(padding):
    img = _soft_tissue_crop()
    img[0, 0, 0, 0] = padding
    img[0, -1, -1, -1] = 30000.0  # extended-scale metal
    check_hounsfield(img)


@CONTAINERS
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.8, 1.9)], ids=["unit_range", "z_scores"])
def test_refuses_normalised(as_array, low, high):
    img = np.linspace(low, high, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"already normalised.*observed min=.*max=.*median="):
        HUWindow()(as_array(img))


@CONTAINERS
@pytest.mark.parametrize("value", [-32768.0, 50000.0], ids=["low_padding", "too_high"])
def test_refuses_out_of_ct_range(as_array, value):
    img = _soft_tissue_crop()
    img[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"outside any CT range.*min={img.min():g}, max={img.max():g}"):
        HUWindow()(as_array(img))


@CONTAINERS
def test_refuses_missing_rescale_intercept(as_array):
    # unsigned 12-bit stored values: air 0, soft tissue ~1024 + 40
    img = np.full((1, 4, 4, 4), 1064, dtype=np.uint16)
    img[0, 0] = 0
    with pytest.raises(ValueError, match=r"without the rescale intercept \(expected air ≈ -1000 HU\).*median=1064"):
        HUWindow()(as_array(img))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_refuses_non_finite(value):
    img = _soft_tissue_crop()
    img[0, 1, 1, 1] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        HUWindow()(img)


def test_check_hu_false_skips_check():
    out = HUWindow(check_hu=False)(np.array([[0.0, 0.5, 1.0]]))
    np.testing.assert_allclose(_to_numpy(out), [[0.31, 0.31125, 0.3125]], atol=1e-6)


def test_constant_image_warns():
    with pytest.warns(UserWarning, match=r"constant \(value 0\)"):
        out = HUWindow()(np.zeros((1, 3, 3, 3), dtype=np.float32))
    np.testing.assert_allclose(_to_numpy(out), 0.31)


def test_constant_out_of_range_refused():
    with pytest.raises(ValueError, match="outside any CT range"):
        check_hounsfield(np.full((1, 2, 2, 2), -32768.0))


def test_ill_window():
    with pytest.raises(ValueError, match="a_min=276.0, a_max=-124.0"):
        HUWindow(a_min=276.0, a_max=-124.0)


def test_metadata_preserved():
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(_soft_tissue_crop(), affine=affine, meta={"filename_or_obj": "liver_03.nii.gz"})
    out = HUWindow()(img)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "liver_03.nii.gz"
    torch.testing.assert_close(out.affine, affine)


def test_array_error_names_metatensor_file():
    img = MetaTensor(np.linspace(0, 1, 8).reshape(1, 2, 2, 2), meta={"filename_or_obj": "x.nii"})
    with pytest.raises(ValueError, match=r"file 'x.nii'"):
        HUWindow()(img)


@CONTAINERS
def test_dict_values(as_array):
    data = {"image": as_array(np.array([[-124.0, 76.0, 276.0]])), "label": np.array([[0, 1, 1]])}
    out = HUWindowd(keys="image")(data)
    np.testing.assert_allclose(_to_numpy(out["image"]), [[0.0, 0.5, 1.0]])
    assert out["label"] is data["label"]


def test_dict_error_names_key_and_file():
    img = MetaTensor(np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2), meta={"filename_or_obj": "ct_7.nii"})
    with pytest.raises(ValueError, match=r"key 'ct', file 'ct_7.nii'.*already normalised"):
        HUWindowd(keys="ct")({"ct": img})


def test_dict_error_names_file_from_meta_dict():
    data = {"ct": np.full((1, 2, 2, 2), 1024.0), "ct_meta_dict": {"filename_or_obj": "raw.dcm"}}
    data["ct"][0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"key 'ct', file 'raw.dcm'.*rescale intercept"):
        HUWindowd(keys="ct")(data)


def test_dict_missing_key():
    data = {"image": _soft_tissue_crop()}
    with pytest.raises(KeyError):
        HUWindowd(keys=("image", "pet"))(data)
    out = HUWindowd(keys=("image", "pet"), allow_missing_keys=True)(data)
    assert set(out) == {"image"}


def test_no_warning_on_valid_ct():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HUWindow()(_soft_tissue_crop())
