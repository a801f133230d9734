"""Tests of EdgeIndicator / EdgeIndicatord and ChanVeseFitting / ChanVeseFittingd on hand-computed images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage.filters import threshold_multiotsu

from transforms import (
    ChanVeseFitting,
    ChanVeseFittingd,
    ChanVeseFittingD,
    ChanVeseFittingDict,
    EdgeIndicator,
    EdgeIndicatord,
    EdgeIndicatorD,
    EdgeIndicatorDict,
)

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------- edge indicator


@CONTAINERS
@pytest.mark.parametrize("shape", [(5, 6), (1, 5, 6), (4, 5, 6), (1, 4, 5, 6)])
def test_constant_image_is_one(as_array, shape):
    out = EdgeIndicator()(as_array(np.full(shape, 0.3, dtype=np.float32)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == shape
    np.testing.assert_array_equal(_to_numpy(out), np.ones(shape))


@CONTAINERS
def test_step_edge(as_array):
    # columns 0..3 are 0, 4..7 are 1: central differences give |∇f| = (1 - 0) / 2 = 0.5 at columns 3 and 4 only
    image = np.zeros((5, 8), dtype=np.float32)
    image[:, 4:] = 1.0
    expected = np.ones((5, 8))
    expected[:, 3:5] = 1.0 / (1.0 + 1000.0 * 0.25)  # = 1/251
    np.testing.assert_allclose(_to_numpy(EdgeIndicator()(as_array(image))), expected, rtol=1e-6)
    np.testing.assert_allclose(_to_numpy(EdgeIndicator(iota=4.0)(as_array(image[None])))[0, 0, 3], 0.5, rtol=1e-6)


def test_corner_and_border_differences():
    # a single bright voxel in the corner: at (0, 1) the row gradient is one-sided (0 - 0) and the column gradient
    # central (0 - 1) / 2, at (0, 0) both are one-sided: (0 - 1) / 1 each -> |∇f|² = 2
    image = np.zeros((4, 4))
    image[0, 0] = 1.0
    out = _to_numpy(EdgeIndicator(iota=1.0)(image))
    assert out[0, 0] == pytest.approx(1.0 / 3.0)
    assert out[0, 1] == pytest.approx(1.0 / 1.25) and out[1, 0] == pytest.approx(1.0 / 1.25)
    assert out[1, 1] == 1.0 and out[0, 2] == 1.0


def test_ramp_3d():
    ramp = np.broadcast_to(0.1 * np.arange(6), (4, 5, 6)).copy()  # |∇f| = 0.1 everywhere, borders included
    np.testing.assert_allclose(_to_numpy(EdgeIndicator(iota=100.0)(ramp)), np.full((4, 5, 6), 0.5), rtol=1e-6)


def test_edge_metadata_and_zero_iota():
    image = MetaTensor(torch.rand(1, 6, 6), meta={"filename_or_obj": "slice.nii"})
    out = EdgeIndicator(iota=0.0)(image)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "slice.nii"
    np.testing.assert_array_equal(_to_numpy(out), np.ones((1, 6, 6)))


def test_edge_ill_opts_and_shape():
    with pytest.raises(ValueError, match="iota"):
        EdgeIndicator(iota=-1.0)
    with pytest.raises(ValueError, match="2D .* or 3D"):
        EdgeIndicator()(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        EdgeIndicator()(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        EdgeIndicator()(np.full((4, 4), np.nan))


def test_edge_dictionary_twin():
    image = np.zeros((1, 5, 8), dtype=np.float32)
    image[..., 4:] = 1.0
    data = {"image": image}
    out = EdgeIndicatord("image")(data)
    assert set(out) == {"image", "image_edge"} and out["image"] is image
    np.testing.assert_allclose(_to_numpy(out["image_edge"]), _to_numpy(EdgeIndicator()(image)))
    out = EdgeIndicatord("image", iota=4.0, output_keys="image")(data)
    assert _to_numpy(out["image"])[0, 0, 3] == pytest.approx(0.5)
    assert EdgeIndicatorD is EdgeIndicatord and EdgeIndicatorDict is EdgeIndicatord


# ------------------------------------------------------------------------------------------------ Chan-Vese fitting


def _three_class_image() -> np.ndarray:
    """Columns 0-1 dark (mean 0.12), 2-3 grey (mean 0.5), 4-5 bright (mean 0.9)."""
    image = np.zeros((6, 6))
    image[:, 0:2] = np.array([0.05, 0.1, 0.15, 0.1, 0.2, 0.12])[:, None]
    image[:, 2:4] = np.array([0.45, 0.5, 0.55, 0.4, 0.6, 0.5])[:, None]
    image[:, 4:6] = np.array([0.8, 0.85, 0.9, 0.95, 1.0, 0.9])[:, None]
    return image


def _columns(first: int, last: int) -> np.ndarray:
    mask = np.zeros((6, 6), dtype=bool)
    mask[:, first : last + 1] = True
    return mask


def _phi_by_hand(value: float, c1: float, gamma1: float, gamma2: float, lambda3: float = 1.0) -> float:
    """Φ of one voxel, straight from the definition of the hat function."""
    if c1 - gamma1 <= value <= c1:
        nu = 1.0 + (value - c1) / gamma1 if gamma1 > 0 else 1.0
    elif c1 < value <= c1 + gamma2:
        nu = 1.0 - (value - c1) / gamma2
    else:
        nu = 0.0
    return (value - c1) ** 2 - lambda3 * nu


def _widths_by_hand(c1: float, t0: float, t1: float) -> tuple[float, float]:
    if c1 <= t0:
        return c1, t0 - c1
    if c1 <= t1:
        return c1 - t0, t1 - c1
    return c1 - t1, 1.0 - c1


@CONTAINERS
@pytest.mark.parametrize(
    "columns, c1, case",
    [((0, 1), 0.12, "c1 <= t0"), ((2, 3), 0.5, "t0 < c1 <= t1"), ((4, 5), 0.9, "c1 > t1")],
    ids=["dark", "grey", "bright"],
)
def test_fitting_three_cases(as_array, columns, c1, case):
    image = _three_class_image()
    t0, t1 = threshold_multiotsu(image, classes=3)
    assert {"c1 <= t0": c1 <= t0, "t0 < c1 <= t1": t0 < c1 <= t1, "c1 > t1": c1 > t1}[case]
    gamma1, gamma2 = _widths_by_hand(c1, t0, t1)
    out = ChanVeseFitting(lambda3=0.7)(as_array(image.astype(np.float32)), as_array(_columns(*columns)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (6, 6)
    expected = [[_phi_by_hand(float(v), c1, gamma1, gamma2, 0.7) for v in row] for row in image]
    np.testing.assert_allclose(_to_numpy(out), expected, atol=1e-5)


def test_fitting_hand_values_dark_case():
    image = _three_class_image()
    t0, _ = threshold_multiotsu(image, classes=3)
    out = _to_numpy(ChanVeseFitting()(image, _columns(0, 1)))
    # c1 = 0.12, γ1 = 0.12, γ2 = t0 - 0.12
    assert out[5, 0] == pytest.approx(-1.0)  # f = c1: ν = 1
    assert out[0, 0] == pytest.approx(0.07**2 - (1.0 - 0.07 / 0.12), abs=1e-6)  # f = 0.05, left side of the hat
    assert out[2, 0] == pytest.approx(0.03**2 - (1.0 - 0.03 / (t0 - 0.12)), abs=1e-6)  # f = 0.15, right side
    assert out[1, 2] == pytest.approx((0.5 - 0.12) ** 2, abs=1e-6)  # f = 0.5, outside the hat: ν = 0


@pytest.mark.parametrize("where, value", [((slice(None), 0), 0.0), ((slice(None), 5), 1.0)], ids=["c1=0", "c1=1"])
def test_fitting_zero_width(where, value):
    # c1 = 0 gives γ1 = 0 (c1 <= t0), c1 = 1 gives γ2 = 1 - c1 = 0 (c1 > t1): no division, ν = 1 only at f == c1
    image = _three_class_image()
    image[where] = value
    mask = np.zeros((6, 6), dtype=bool)
    mask[where] = True
    out = _to_numpy(ChanVeseFitting()(image, mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[where], -1.0)
    t0, t1 = threshold_multiotsu(image, classes=3)
    gamma1, gamma2 = _widths_by_hand(value, t0, t1)
    assert 0.0 in (gamma1, gamma2)
    expected = [[_phi_by_hand(float(v), value, gamma1, gamma2) for v in row] for row in image]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_fitting_two_classes_and_channel():
    image = _three_class_image()
    (t,) = threshold_multiotsu(image, classes=2)
    c1 = 0.5  # grey columns; t = 0.549 so c1 <= t: (γ1, γ2) = (c1, t - c1)
    assert c1 <= t
    out = ChanVeseFitting(classes=2)(image[None], _columns(2, 3)[None])
    assert tuple(out.shape) == (1, 6, 6)
    expected = [[_phi_by_hand(float(v), c1, c1, t - c1) for v in row] for row in image]
    np.testing.assert_allclose(_to_numpy(out)[0], expected, atol=1e-6)


def test_fitting_3d_metadata():
    volume = np.stack([_three_class_image()] * 3, axis=-1)[None]
    mask = np.stack([_columns(2, 3)] * 3, axis=-1)
    out = ChanVeseFitting()(MetaTensor(torch.as_tensor(volume), meta={"filename_or_obj": "v.nii"}), mask)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "v.nii"
    middle = _to_numpy(ChanVeseFitting()(volume[0, :, :, 1], mask[..., 1]))
    np.testing.assert_allclose(_to_numpy(out)[0, :, :, 1], middle)


def test_fitting_errors():
    image, mask = _three_class_image(), _columns(0, 1)
    with pytest.raises(ValueError, match="no marker voxel"):
        ChanVeseFitting()(image, np.zeros((6, 6)))
    with pytest.raises(ValueError, match=r"spatial shape \(6, 6\).*got shape \(6, 5\)"):
        ChanVeseFitting()(image, mask[:, :5])
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[-0.5, 1\]"):
        ChanVeseFitting()(np.where(mask, -0.5, image), mask)
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[0.05, 250\]"):
        ChanVeseFitting()(np.where(mask, image, 250.0), mask)
    with pytest.raises(ValueError, match="3 multi-Otsu classes.*2 distinct"):
        ChanVeseFitting()(mask.astype(float), mask)
    with pytest.raises(ValueError, match="classes"):
        ChanVeseFitting(classes=1)
    with pytest.raises(ValueError, match="lambda3"):
        ChanVeseFitting(lambda3=float("inf"))


def test_fitting_dictionary_twin():
    image = _three_class_image()[None]
    data = {"image": image, "polygon": _columns(2, 3)[None]}
    out = ChanVeseFittingd("image", mask_key="polygon")(data)
    assert set(out) == {"image", "polygon", "image_fitting"} and out["image"] is image
    np.testing.assert_allclose(_to_numpy(out["image_fitting"]), _to_numpy(ChanVeseFitting()(image, data["polygon"])))
    out = ChanVeseFittingd("image", "polygon", lambda3=2.0, output_keys="phi")(data)
    np.testing.assert_allclose(_to_numpy(out["phi"])[0, 1, 2], -2.0, atol=1e-6)  # f = c1 = 0.5
    with pytest.raises(KeyError, match="marker mask key 'clicks' not found"):
        ChanVeseFittingd("image", "clicks")(data)
    assert ChanVeseFittingD is ChanVeseFittingd and ChanVeseFittingDict is ChanVeseFittingd
