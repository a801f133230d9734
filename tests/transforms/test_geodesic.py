"""Tests of GeodesicDistance / GeodesicDistanced: analytic answers on uniform images, edges, options, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import distance_transform_edt, gaussian_filter

from transforms import (
    GeodesicDistance,
    GeodesicDistanced,
    GeodesicDistanceD,
    GeodesicDistanceDict,
)

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _point(shape: tuple[int, ...], where: tuple[int, ...]) -> np.ndarray:
    seeds = np.zeros(shape, dtype=bool)
    seeds[where] = True
    return seeds


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _step_image(size: int = 48, column: int = 24) -> np.ndarray:
    """0 left of ``column``, 1 from it on: central differences give |∇z| = 0.5 at columns column-1 and column."""
    image = np.zeros((size, size))
    image[:, column:] = 1.0
    return image


def _euclidean_error(seeds: np.ndarray, order: int = 2, spacing=None) -> float:
    """Max |D_G·max(EDT) − EDT| on a uniform image, in physical units."""
    geodesic = _to_numpy(GeodesicDistance(order=order, spacing=spacing)(np.full(seeds.shape, 0.5), seeds))
    euclidean = distance_transform_edt(~seeds, sampling=spacing)
    return float(np.abs(geodesic * euclidean.max() - euclidean).max())


UNIFORM_CASES = [
    ("2d_point", lambda: _point((64, 64), (20, 30)), 2),
    ("2d_point_order1", lambda: _point((64, 64), (20, 30)), 1),
    ("2d_corner", lambda: _point((64, 64), (0, 0)), 2),
    ("2d_disk", lambda: _disk((64, 64), (30, 25), 3.0), 2),
    ("2d_disk_order1", lambda: _disk((64, 64), (30, 25), 3.0), 1),
    ("3d_point", lambda: _point((32, 32, 32), (10, 16, 20)), 2),
    ("3d_two_points", lambda: _point((32, 32, 32), (0, 0, 0)) | _point((32, 32, 32), (25, 20, 5)), 2),
]


@pytest.mark.parametrize("make_seeds, order", [c[1:] for c in UNIFORM_CASES], ids=[c[0] for c in UNIFORM_CASES])
def test_uniform_image_is_euclidean(make_seeds, order):
    # |∇z| = 0, so f = ε everywhere and D is ε times the Euclidean distance from the seed voxel centres
    assert _euclidean_error(make_seeds(), order=order) <= 1.0


@pytest.mark.parametrize("spacing", [(1.0, 2.5), (2.5, 1.0), 0.5], ids=["rows_fine", "columns_fine", "scalar"])
def test_uniform_image_anisotropic_spacing_2d(spacing):
    seeds = _point((48, 40), (10, 30))
    assert _euclidean_error(seeds, spacing=spacing) <= min(np.atleast_1d(spacing))


def test_uniform_image_anisotropic_spacing_3d():
    assert _euclidean_error(_point((24, 24, 12), (5, 12, 3)), spacing=(1.0, 1.0, 2.5)) <= 1.0


@CONTAINERS
def test_range_dtype_and_zero_on_seeds(as_array):
    seeds = _disk((32, 32), (10, 12), 2.0)
    image = np.random.default_rng(0).uniform(0.0, 1.0, size=(32, 32)).astype(np.float32)
    out = GeodesicDistance()(as_array(image), as_array(seeds))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (32, 32)
    values = _to_numpy(out)
    assert np.all(values[seeds] == 0.0)
    assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
    assert np.all(values[~seeds] > 0.0)


def test_edge_makes_voxels_across_farther():
    image, seeds = _step_image(), _point((48, 48), (24, 18))
    out = _to_numpy(GeodesicDistance()(image, seeds))
    same_side, across, sideways = out[24, 8], out[24, 28], out[14, 18]  # all 10 voxels from the seed
    assert same_side == pytest.approx(sideways, rel=1e-3)
    # crossing the two edge columns costs about 2 * β * 0.5² = 500 against ε * 10 = 0.01 for the same length
    assert across > 1000 * same_side


@pytest.mark.parametrize("p, barrier", [(1, 0.5), (2, 0.25), (4, 0.0625)])
def test_exponent_p_scales_the_edge_barrier(p, barrier):
    # |∇z| = 0.5 on the edge columns, so β|∇z|^p = 1000 * 0.5**p; the far side is dominated by that barrier
    image, seeds = _step_image(), _point((48, 48), (24, 18))
    out = _to_numpy(GeodesicDistance(p=p)(image, seeds))
    ratio = out[24, 28] / out[24, 8]
    expected = (2 * 1000.0 * barrier) / (1e-3 * 10)  # edge crossing over 10 voxels at cost ε
    assert ratio == pytest.approx(expected, rel=0.05)


def test_theta_moves_towards_euclidean():
    image, seeds = _step_image(), _point((48, 48), (24, 18))
    ratios = [
        _to_numpy(out)[24, 28] / _to_numpy(out)[24, 8]
        for out in (GeodesicDistance(theta=theta)(image, seeds) for theta in (0.0, 1.0, 100.0, 1e4))
    ]
    assert all(a > b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] == pytest.approx(1.0, abs=0.1)  # the edge barely matters any more
    # with θ·D_E dominant, f ∝ D_E and D ∝ D_E² / 2 from a point seed, so D_G ≈ D_E² (a function of EDT only)
    euclidean = distance_transform_edt(~seeds)
    dominant = _to_numpy(GeodesicDistance(theta=1e6)(image, seeds))
    np.testing.assert_allclose(dominant, (euclidean / euclidean.max()) ** 2, atol=0.02)


def test_theta_on_uniform_image_keeps_euclidean_order():
    seeds = _point((40, 40), (12, 9))
    out = _to_numpy(GeodesicDistance(theta=0.5)(np.zeros((40, 40)), seeds))
    euclidean = distance_transform_edt(~seeds)
    far, near = euclidean > euclidean.mean(), euclidean < 0.5 * euclidean.mean()
    assert out[far].min() > out[near].max()


@CONTAINERS
def test_channel_first_input(as_array):
    seeds = _point((20, 24), (5, 7))
    image = np.random.default_rng(1).uniform(0.0, 1.0, size=(20, 24))
    expected = _to_numpy(GeodesicDistance()(image, seeds))
    with_channel = GeodesicDistance()(as_array(image[None]), as_array(seeds[None]))
    assert tuple(with_channel.shape) == (1, 20, 24)
    np.testing.assert_allclose(_to_numpy(with_channel)[0], expected, atol=1e-6)
    mixed = GeodesicDistance()(as_array(image[None]), as_array(seeds))  # seeds without the channel
    np.testing.assert_allclose(_to_numpy(mixed)[0], expected, atol=1e-6)


def test_channel_first_volume_and_metadata():
    seeds = _point((1, 10, 12, 8), (0, 2, 3, 4))
    image = MetaTensor(torch.zeros(1, 10, 12, 8), meta={"filename_or_obj": "volume.nii.gz"})
    out = GeodesicDistance()(image, seeds)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 10, 12, 8)
    assert out.meta["filename_or_obj"] == "volume.nii.gz"
    assert float(out[0, 2, 3, 4]) == 0.0


def test_all_voxels_seeds_gives_zeros():
    out = GeodesicDistance()(np.zeros((6, 6)), np.ones((6, 6), dtype=bool))
    np.testing.assert_array_equal(_to_numpy(out), np.zeros((6, 6)))


def test_empty_seeds():
    with pytest.raises(ValueError, match="no seed voxel"):
        GeodesicDistance()(np.zeros((8, 8)), np.zeros((8, 8), dtype=bool))


def test_ill_shape():
    with pytest.raises(ValueError, match=r"spatial shape \(8, 8\).*got shape \(8, 9\)"):
        GeodesicDistance()(np.zeros((8, 8)), np.ones((8, 9), dtype=bool))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        GeodesicDistance()(np.zeros(8), np.ones(8, dtype=bool))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        GeodesicDistance()(np.zeros((1, 4, 4, 4, 4)), np.ones((4, 4, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="single channel.*2 channels"):
        GeodesicDistance()(np.zeros((2, 4, 4, 4)), np.ones((4, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="spacing"):
        GeodesicDistance(spacing=(1.0, 1.0, 1.0))(np.zeros((8, 8)), _point((8, 8), (1, 1)))


def test_ill_image():
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[-100, 200\]"):
        GeodesicDistance()(np.linspace(-100.0, 200.0, 64).reshape(8, 8), _point((8, 8), (1, 1)))
    image = np.zeros((8, 8))
    image[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GeodesicDistance()(image, _point((8, 8), (1, 1)))


@pytest.mark.parametrize(
    "kwargs",
    [{"epsilon": 0.0}, {"p": 0.0}, {"beta": -1.0}, {"theta": -0.1}, {"order": 3}, {"spacing": (1.0, -2.0)}],
    ids=["epsilon", "p", "beta", "theta", "order", "spacing"],
)
def test_ill_opts(kwargs):
    with pytest.raises(ValueError):
        GeodesicDistance(**kwargs)(np.zeros((8, 8)), _point((8, 8), (1, 1)))


def test_dictionary_twin():
    seeds = _point((1, 16, 16), (0, 4, 4))
    data = {"image": MetaTensor(torch.zeros(1, 16, 16)), "other": torch.zeros(1, 16, 16), "clicks": seeds}
    out = GeodesicDistanced(keys=("image", "other"), seeds_key="clicks")(data)
    assert set(out) == {"image", "other", "clicks", "image_geodesic", "other_geodesic"}
    assert out["image"] is data["image"]
    np.testing.assert_allclose(_to_numpy(out["image_geodesic"]), _to_numpy(GeodesicDistance()(data["image"], seeds)))
    renamed = GeodesicDistanced("image", "clicks", p=1, output_keys="dg")(data)
    np.testing.assert_allclose(_to_numpy(renamed["dg"]), _to_numpy(GeodesicDistance(p=1)(data["image"], seeds)))
    assert GeodesicDistanceD is GeodesicDistanced and GeodesicDistanceDict is GeodesicDistanced


def test_dictionary_twin_keys():
    data = {"image": np.zeros((8, 8))}
    with pytest.raises(KeyError, match="seeds key 'clicks' not found"):
        GeodesicDistanced("image", "clicks")(data)
    assert GeodesicDistanced("missing", "clicks", allow_missing_keys=True)(data) == data
    with pytest.raises(ValueError, match="one entry per key"):
        GeodesicDistanced(("image", "other"), "clicks", output_keys="dg")


# ---------------------------------------------------------------------------------------------------------------
# backend="fast": Gauss-Seidel sweeps of transforms.eikonal, the equation of first-order fast marching
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, make_seeds, bound", [
    ("2d_point", lambda: _point((64, 64), (20, 30)), 0.85),
    ("2d_corner", lambda: _point((64, 64), (0, 0)), 0.9),
    ("2d_disk", lambda: _disk((64, 64), (30, 25), 3.0), 0.7),
    ("3d_point", lambda: _point((32, 32, 32), (10, 16, 20)), 0.95),
    ("3d_two_points", lambda: _point((32, 32, 32), (0, 0, 0)) | _point((32, 32, 32), (25, 20, 5)), 1.15),
], ids=lambda v: v if isinstance(v, str) else "")
def test_fast_uniform_image_is_first_order_fast_marching(name, make_seeds, bound):
    """On a uniform image the sweeps give scikit-fmm's first-order map (measured within 3e-5 of the normalised map)
    and, like it, the Euclidean distance to within a voxel (measured 0.79, 0.85, 0.65, 0.89 and 1.08 voxels)."""
    seeds = make_seeds()
    image = np.full(seeds.shape, 0.5)
    geodesic = _to_numpy(GeodesicDistance(backend="fast")(image, seeds))
    marched = _to_numpy(GeodesicDistance(backend="fmm", order=1)(image, seeds))
    assert np.abs(geodesic - marched).max() < 1e-4
    euclidean = distance_transform_edt(~seeds)
    assert np.abs(geodesic * euclidean.max() - euclidean).max() < bound


def test_fast_does_not_leak_through_a_thin_edge():
    """A disc of 0.8 in 0.2 with N(0, 0.02) noise, seeds the polygon of 4 clicks: the front must cross the disc's
    edge, not slip diagonally between its staircase voxels. An update that charges a diagonal step only the cost of
    the voxel it reaches gave 0.29 at (12, 2) against first-order fast marching's 0.57."""
    from transforms import polygon_mask

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :24]
    image = np.clip(np.where((yy - 12) ** 2 + (xx - 12) ** 2 <= 36, 0.8, 0.2) + rng.normal(0, 0.02, (24, 24)), 0, 1)
    seeds = polygon_mask(np.array([(10, 10), (14, 10), (14, 14), (10, 14)]), image.shape)
    fast = _to_numpy(GeodesicDistance(backend="fast", epsilon=1e-3, beta=1000.0, p=2.0)(image, seeds))
    marched = _to_numpy(GeodesicDistance(backend="fmm", order=1)(image, seeds))
    assert np.abs(fast - marched).max() < 0.02  # measured 0.0008
    assert fast[12, 2] == pytest.approx(marched[12, 2], abs=0.01)


@pytest.mark.parametrize("spacing", [(1.0, 2.0), (2.5, 1.0)])
def test_fast_uniform_image_anisotropic_spacing_2d(spacing):
    seeds = _point((48, 48), (20, 14))
    geodesic = _to_numpy(GeodesicDistance(backend="fast", spacing=spacing)(np.full((48, 48), 0.5), seeds))
    euclidean = distance_transform_edt(~seeds, sampling=spacing)
    assert np.abs(geodesic * euclidean.max() - euclidean).max() < 0.5 * max(spacing)


def test_fast_uniform_image_anisotropic_spacing_3d():
    seeds = _point((24, 24, 12), (8, 12, 5))
    spacing = (0.8, 0.8, 2.5)
    geodesic = _to_numpy(GeodesicDistance(backend="fast", spacing=spacing)(np.full(seeds.shape, 0.5), seeds))
    euclidean = distance_transform_edt(~seeds, sampling=spacing)
    assert np.abs(geodesic * euclidean.max() - euclidean).max() < 0.5 * max(spacing)


def test_fast_deviation_from_fmm_on_an_edge():
    """A unit step edge: the two solvers agree to a few hundredths of the normalised map (measured 0.22 max, 0.010 mean)."""
    image, seeds = _step_image(), _point((48, 48), (10, 5))
    fast = _to_numpy(GeodesicDistance(backend="fast")(image, seeds))
    exact = _to_numpy(GeodesicDistance(backend="fmm")(image, seeds))
    deviation = np.abs(fast - exact)
    assert deviation.mean() < 0.02 and deviation.max() < 0.3
    # the edge separates the two halves in both: every voxel across it is farther than every voxel before it
    assert fast[:, 25:].min() > fast[:, :23].max()


def test_fast_smooth_volume_close_to_fmm():
    rng = np.random.default_rng(0)
    field = gaussian_filter(rng.random((40, 40, 12)), 2.0)
    image = (field - field.min()) / (field.max() - field.min())
    seeds = _point(image.shape, (20, 20, 6))
    fast = _to_numpy(GeodesicDistance(backend="fast")(image, seeds))
    exact = _to_numpy(GeodesicDistance(backend="fmm")(image, seeds))
    deviation = np.abs(fast - exact)
    assert deviation.mean() < 0.06 and deviation.max() < 0.2  # measured 0.043 and 0.136
    assert np.corrcoef(fast.ravel(), exact.ravel())[0, 1] > 0.97


@CONTAINERS
def test_fast_masks_markers_like_fmm(as_array):
    """Same input handling as the fmm backend: channel-first input, any non-zero seed, zero on seeds, range [0, 1]."""
    image = np.zeros((1, 20, 24))
    image[0, :, 12:] = 1.0
    seeds = np.zeros((1, 20, 24), dtype=np.uint8)
    seeds[0, 5, 3] = 7
    seeds[0, 15, 20] = 1
    out = GeodesicDistance(backend="fast")(as_array(image), as_array(seeds))
    result = _to_numpy(out)
    assert result.shape == (1, 20, 24) and result.dtype == np.float32
    assert result[0, 5, 3] == 0.0 and result[0, 15, 20] == 0.0
    assert result.min() == 0.0 and result.max() == pytest.approx(1.0)
    assert isinstance(out, torch.Tensor) and (as_array is not MetaTensor or isinstance(out, MetaTensor))


def test_fast_bad_input_same_errors_as_fmm():
    for backend in ("fmm", "fast"):
        with pytest.raises(ValueError, match="empty"):
            GeodesicDistance(backend=backend)(np.zeros((8, 8)), np.zeros((8, 8)))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            GeodesicDistance(backend=backend)(np.full((8, 8), 2.0), _point((8, 8), (1, 1)))


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)])
def test_fast_torch_device_matches_numba(shape):
    """The torch plane sweeps (in-plane neighbours from before the plane's update) reach the numba sweeps' fixed
    point, in more iterations."""
    rng = np.random.default_rng(1)
    image = gaussian_filter(rng.random(shape), 1.5)
    image = (image - image.min()) / (image.max() - image.min())
    seeds = _point(shape, tuple(n // 2 for n in shape))
    numba_map = _to_numpy(GeodesicDistance(backend="fast", max_iter=20, tol=0.0)(image, seeds))
    torch_map = _to_numpy(GeodesicDistance(backend="fast", device="cpu", max_iter=40, tol=0.0)(image, seeds))
    np.testing.assert_allclose(torch_map, numba_map, atol=1e-4)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('fmm', 'fast'\), got 'skfmm'"):
        GeodesicDistance(backend="skfmm")
    with pytest.raises(ValueError, match="backend"):
        GeodesicDistanced(keys="image", seeds_key="seeds", backend="FAST")
    with pytest.raises(ValueError, match="max_iter"):
        GeodesicDistance(backend="fast", max_iter=0)


def test_dictionary_twin_fast_backend():
    image, seeds = _step_image(24, 12), _point((24, 24), (5, 5))
    out = GeodesicDistanced(keys="image", seeds_key="seeds", backend="fast")({"image": image, "seeds": seeds})
    expected = GeodesicDistance(backend="fast")(image, seeds)
    np.testing.assert_allclose(_to_numpy(out["image_geodesic"]), _to_numpy(expected))
