"""Tests of adjacent-slice stacking (StackAdjacentSlices[d]), its inverse (UnstackSlices[d]) and the index helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import (
    StackAdjacentSlices,
    StackAdjacentSlicesd,
    StackAdjacentSlicesD,
    StackAdjacentSlicesDict,
    UnstackSlices,
    UnstackSlicesd,
    UnstackSlicesD,
    UnstackSlicesDict,
    adjacent_slice_indices,
)

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _encoded_volume(num_channels: int, depth: int = 5, height: int = 2, width: int = 3) -> np.ndarray:
    """(C, H, W, D) volume whose voxels hold 100 * c + z."""
    c = np.arange(num_channels).reshape(-1, 1, 1, 1)
    z = np.arange(depth).reshape(1, 1, 1, -1)
    return np.broadcast_to(100 * c + z, (num_channels, height, width, depth)).astype(np.float32)


# D = 5, k = 3: neighbours of z = 0..4 with edges replicated
INDICES_D5_K3 = [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]


@pytest.mark.parametrize(
    "depth, k, slices, expected",
    [
        (5, 3, None, INDICES_D5_K3),
        (3, 5, None, [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]),
        (4, 1, None, [[0], [1], [2], [3]]),
        (5, 3, [4, 0, -3], [[3, 4, 4], [0, 0, 1], [1, 2, 3]]),
        (1, 3, None, [[0, 0, 0]]),
        (5, 3, [], np.zeros((0, 3))),
    ],
)
def test_adjacent_slice_indices(depth, k, slices, expected):
    out = adjacent_slice_indices(depth, k, slices)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.asarray(expected).reshape(-1, k))


@CONTAINERS
def test_channel_order_single_channel(as_array):
    out = StackAdjacentSlices(num_slices=3)(as_array(_encoded_volume(1)))
    assert tuple(out.shape) == (5, 3, 2, 3)
    np.testing.assert_array_equal(_to_numpy(out)[:, :, 0, 0], INDICES_D5_K3)


@CONTAINERS
def test_channel_order_four_channels(as_array):
    out = _to_numpy(StackAdjacentSlices(num_slices=3)(as_array(_encoded_volume(4))))
    assert out.shape == (5, 12, 2, 3)
    # channel-major: c0@z-1, c0@z, c0@z+1, c1@z-1, ...; edge z = 0 replicated
    np.testing.assert_array_equal(out[0, :, 1, 2], [0, 0, 1, 100, 100, 101, 200, 200, 201, 300, 300, 301])
    np.testing.assert_array_equal(out[2, :, 0, 0], [1, 2, 3, 101, 102, 103, 201, 202, 203, 301, 302, 303])
    # edge z = D - 1 replicated
    np.testing.assert_array_equal(out[4, :, 0, 1], [3, 4, 4, 103, 104, 104, 203, 204, 204, 303, 304, 304])


@CONTAINERS
def test_slices_subset(as_array):
    out = _to_numpy(StackAdjacentSlices(num_slices=3, slices=[4, 1])(as_array(_encoded_volume(2))))
    assert out.shape == (2, 6, 2, 3)
    np.testing.assert_array_equal(out[:, :, 0, 0], [[3, 4, 4, 103, 104, 104], [0, 1, 2, 100, 101, 102]])
    override = StackAdjacentSlices(num_slices=3, slices=[4, 1])(as_array(_encoded_volume(2)), slices=[0])
    np.testing.assert_array_equal(_to_numpy(override)[:, :, 0, 0], [[0, 0, 1, 100, 100, 101]])


@CONTAINERS
def test_single_slice_is_plain_2d(as_array):
    vol = _encoded_volume(4)
    out = _to_numpy(StackAdjacentSlices(num_slices=1)(as_array(vol)))
    np.testing.assert_array_equal(out, np.moveaxis(vol, -1, 0))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_axis_choice_matches_reference(axis, k):
    vol = np.random.default_rng(1).normal(size=(2, 4, 5, 6)).astype(np.float32)
    out = StackAdjacentSlices(num_slices=k, axis=axis)(torch.as_tensor(vol)).numpy()
    moved = np.moveaxis(vol, axis % 3 + 1, 1)  # (C, Z, A, B): remaining spatial dims keep their order
    depth = moved.shape[1]
    assert out.shape == (depth, 2 * k, *moved.shape[2:])
    for s in range(depth):
        for c in range(2):
            for j in range(k):
                np.testing.assert_array_equal(out[s, c * k + j], moved[c, min(max(s - k // 2 + j, 0), depth - 1)])


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64])
def test_dtype_and_container_kept(dtype):
    vol = _encoded_volume(1).astype(dtype)
    out_np = StackAdjacentSlices()(vol)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == dtype
    out_t = StackAdjacentSlices()(torch.as_tensor(vol))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.as_tensor(vol).dtype


def test_metatensor_gives_plain_tensor():
    out = StackAdjacentSlices()(MetaTensor(_encoded_volume(1), meta={"filename_or_obj": "a.nii"}))
    assert type(out) is torch.Tensor


@pytest.mark.parametrize("k", [2, 0, -1])
def test_ill_num_slices(k):
    with pytest.raises(ValueError, match=f"odd and >= 1.*got {k}"):
        StackAdjacentSlices(num_slices=k)
    with pytest.raises(ValueError, match=f"got {k}"):
        adjacent_slice_indices(5, k)


def test_ill_num_slices_type():
    with pytest.raises(TypeError, match="num_slices must be an int"):
        StackAdjacentSlices(num_slices=3.0)


@pytest.mark.parametrize("axis", [3, -4])
def test_ill_axis(axis):
    with pytest.raises(ValueError, match=f"got {axis}"):
        StackAdjacentSlices(axis=axis)
    with pytest.raises(ValueError, match=f"got {axis}"):
        UnstackSlices(axis=axis)


def test_ill_shape():
    with pytest.raises(ValueError, match=r"\(C, H, W, D\), got shape \(2, 3, 5\)"):
        StackAdjacentSlices()(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\(S, N, H, W\), got shape \(5, 2, 3\)"):
        UnstackSlices()(np.zeros((5, 2, 3)))


def test_ill_slices():
    with pytest.raises(ValueError, match=r"\[-5, 4\].*got \[5\]"):
        StackAdjacentSlices(slices=[0, 5])(_encoded_volume(1))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        adjacent_slice_indices(0, 3)


@CONTAINERS
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("k", [1, 3])
def test_round_trip(as_array, axis, k):
    vol = np.random.default_rng(2).normal(size=(4, 3, 5, 6)).astype(np.float32)
    stacked = StackAdjacentSlices(num_slices=k, axis=axis)(as_array(vol))
    centre = stacked[:, k // 2 :: k]  # the centre channel of each input channel
    np.testing.assert_array_equal(_to_numpy(UnstackSlices(axis=axis)(centre)), vol)
    np.testing.assert_array_equal(_to_numpy(UnstackSlices(axis=axis, num_slices=k)(stacked)), vol)


@CONTAINERS
def test_unstack_subset_with_fill(as_array):
    preds = as_array(np.array([1.0, 2.0], dtype=np.float32).reshape(2, 1, 1, 1) * np.ones((2, 1, 2, 2), np.float32))
    out = _to_numpy(UnstackSlices(slices=[3, -5], num_total=5, fill_value=-1.0)(preds))
    assert out.shape == (1, 2, 2, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0, 0], [2.0, -1.0, -1.0, 1.0, -1.0])
    override = _to_numpy(UnstackSlices()(preds, slices=[0, 1], num_total=3))
    np.testing.assert_array_equal(override[0, 1, 1], [1.0, 2.0, 0.0])


def test_unstack_subset_round_trip():
    vol = _encoded_volume(2)
    stacked = StackAdjacentSlices(num_slices=3, slices=[1, 3])(vol)
    out = UnstackSlices(num_slices=3, slices=[1, 3], num_total=5, fill_value=np.nan)(stacked)
    np.testing.assert_array_equal(out[..., [1, 3]], vol[..., [1, 3]])
    assert np.isnan(out[..., [0, 2, 4]]).all()


def test_ill_unstack():
    preds = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="num_total .* is required"):
        UnstackSlices(slices=[0, 1])(preds)
    with pytest.raises(ValueError, match="must not repeat"):
        UnstackSlices(slices=[1, -4], num_total=5)(preds)
    with pytest.raises(ValueError, match=r"got 2 slices but 3 positions"):
        UnstackSlices(slices=[0, 1, 2], num_total=5)(preds)
    with pytest.raises(ValueError, match="got 2 slices but num_total=5"):
        UnstackSlices(num_total=5)(preds)
    with pytest.raises(ValueError, match="3 channels cannot be split into groups of num_slices=5"):
        UnstackSlices(num_slices=5)(preds)


def test_dict_per_key_num_slices():
    data = {"image": _encoded_volume(4), "label": _encoded_volume(1) > 2, "name": "case_0"}
    out = StackAdjacentSlicesd(keys=("image", "label"), num_slices=(3, 1))(data)
    assert out["image"].shape == (5, 12, 2, 3)
    assert out["label"].shape == (5, 1, 2, 3) and out["label"].dtype == bool
    np.testing.assert_array_equal(out["label"][:, 0, 0, 0], [False, False, False, True, True])
    assert out["name"] == "case_0"


def test_dict_shared_num_slices_axis_and_slices():
    data = {"t1": torch.as_tensor(_encoded_volume(1)), "t2": torch.as_tensor(_encoded_volume(1) + 1)}
    out = StackAdjacentSlicesd(keys=["t1", "t2"], num_slices=3, slices=[0])(data)
    np.testing.assert_array_equal(out["t1"][:, :, 0, 0].numpy(), [[0, 0, 1]])
    np.testing.assert_array_equal(out["t2"][:, :, 0, 0].numpy(), [[1, 1, 2]])
    along_h = StackAdjacentSlicesd(keys="t1", num_slices=1, axis=0)(data)
    assert tuple(along_h["t1"].shape) == (2, 1, 3, 5)


def test_dict_round_trip_and_aliases():
    data = {"image": _encoded_volume(4), "label": _encoded_volume(1)}
    stacked = StackAdjacentSlicesD(keys=("image", "label"), num_slices=(5, 1))(data)
    restored = UnstackSlicesD(keys=("image", "label"), num_slices=(5, 1))(stacked)
    np.testing.assert_array_equal(restored["image"], data["image"])
    np.testing.assert_array_equal(restored["label"], data["label"])
    assert StackAdjacentSlicesDict is StackAdjacentSlicesd and UnstackSlicesDict is UnstackSlicesd


def test_dict_missing_key():
    data = {"image": _encoded_volume(1)}
    with pytest.raises(KeyError):
        StackAdjacentSlicesd(keys=("image", "label"))(data)
    out = StackAdjacentSlicesd(keys=("image", "label"), num_slices=(3, 1), allow_missing_keys=True)(data)
    assert set(out) == {"image"} and out["image"].shape == (5, 3, 2, 3)
    with pytest.raises(KeyError):
        UnstackSlicesd(keys="pred")(data)


def test_dict_ill_num_slices():
    with pytest.raises(ValueError, match=r"one entry per key \['image', 'label'\], got \(3, 1, 1\)"):
        StackAdjacentSlicesd(keys=("image", "label"), num_slices=(3, 1, 1))
    with pytest.raises(ValueError, match="odd and >= 1"):
        UnstackSlicesd(keys=("image", "label"), num_slices=(3, 2))
