"""Tests of modality-major slice stacking (StackModalitySlices[d]) and brain z-scoring (NormalizeModalities[d])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import (
    BRATS_MODALITIES,
    NormalizeModalities,
    NormalizeModalitiesd,
    NormalizeModalitiesD,
    NormalizeModalitiesDict,
    StackModalitySlices,
    StackModalitySlicesd,
    StackModalitySlicesD,
    StackModalitySlicesDict,
    complete_tumour_slice,
    modality_channel_names,
)

TEST_NDARRAYS = (np.asarray, torch.as_tensor, MetaTensor)
CONTAINERS = pytest.mark.parametrize("as_array", TEST_NDARRAYS, ids=["numpy", "torch", "metatensor"])
DEPTH = 6


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _encoded(num_modalities: int, depth: int = DEPTH, height: int = 3, width: int = 4) -> np.ndarray:
    """(M, H, W, D) volume whose voxels hold 100 * (m + 1) + z: modality and slice are readable from any voxel."""
    m = np.arange(num_modalities).reshape(-1, 1, 1, 1)
    z = np.arange(depth).reshape(1, 1, 1, -1)
    return np.broadcast_to(100 * (m + 1) + z, (num_modalities, height, width, depth)).astype(np.float32)


def _expected_channels(num_modalities: int, z: int, k: int = 3, depth: int = DEPTH) -> list[float]:
    """Hand-written channel values: modality-major, neighbours z-1, z, z+1 clamped to [0, depth - 1]."""
    return [100 * (m + 1) + min(max(z + o, 0), depth - 1) for m in range(num_modalities)
            for o in range(-(k // 2), k // 2 + 1)]


# ------------------------------------------------------------------------------------------------ stacking


@CONTAINERS
def test_twelve_channels_in_modality_major_order(as_array) -> None:
    volume = as_array(_encoded(4))
    out = StackModalitySlices()(volume, index=2)
    assert out.shape == (12, 3, 4) and type(out) in (np.ndarray, torch.Tensor)
    got = _to_numpy(out)
    # every channel written out: t1 z=1,2,3 | t1ce z=1,2,3 | t2 z=1,2,3 | flair z=1,2,3
    expected = [101, 102, 103, 201, 202, 203, 301, 302, 303, 401, 402, 403]
    assert expected == _expected_channels(4, 2)
    for channel, value in enumerate(expected):
        np.testing.assert_array_equal(got[channel], np.full((3, 4), value, np.float32), err_msg=f"channel {channel}")


@pytest.mark.parametrize("z, expected", [
    (0, [100, 100, 101, 200, 200, 201, 300, 300, 301, 400, 400, 401]),
    (DEPTH - 1, [104, 105, 105, 204, 205, 205, 304, 305, 305, 404, 405, 405]),
    (-1, [104, 105, 105, 204, 205, 205, 304, 305, 305, 404, 405, 405]),
])
def test_edge_slices_are_replicated(z: int, expected: list[int]) -> None:
    got = StackModalitySlices()(_encoded(4), index=z)
    np.testing.assert_array_equal(got[:, 0, 0], expected)


def test_two_modalities_give_six_channels_and_names() -> None:
    stacker = StackModalitySlices(("flair", "t1ce"))
    got = stacker(torch.as_tensor(_encoded(2)), index=3)
    assert got.shape == (6, 3, 4)
    np.testing.assert_array_equal(_to_numpy(got[:, 1, 2]), [102, 103, 104, 202, 203, 204])
    assert stacker.channel_names == ["flair@z-1", "flair@z", "flair@z+1", "t1ce@z-1", "t1ce@z", "t1ce@z+1"]
    assert modality_channel_names(BRATS_MODALITIES, 5)[:5] == ["t1@z-2", "t1@z-1", "t1@z", "t1@z+1", "t1@z+2"]
    got5 = StackModalitySlices(("flair", "t1ce"), num_slices=5)(_encoded(2), index=0)
    np.testing.assert_array_equal(got5[:, 0, 0], _expected_channels(2, 0, k=5))


def test_list_of_volumes_and_all_slices() -> None:
    volume = _encoded(4)
    as_list = [volume[m] for m in range(4)]
    np.testing.assert_array_equal(StackModalitySlices()(as_list, index=4), StackModalitySlices()(volume, index=4))
    with_channel = [torch.as_tensor(volume[m:m + 1]) for m in range(4)]
    np.testing.assert_array_equal(_to_numpy(StackModalitySlices()(with_channel, index=4)),
                                  StackModalitySlices()(volume, index=4))
    everything = StackModalitySlices()(volume)
    assert everything.shape == (DEPTH, 12, 3, 4)
    for z in range(DEPTH):
        np.testing.assert_array_equal(everything[z, :, 0, 0], _expected_channels(4, z))


def test_other_axis() -> None:
    volume = np.transpose(_encoded(2), (0, 3, 1, 2))  # slices along H now
    got = StackModalitySlices(("a", "b"), axis=0)(volume, index=0)
    assert got.shape == (6, 3, 4)
    np.testing.assert_array_equal(got[:, 0, 0], _expected_channels(2, 0))


def test_stacking_errors() -> None:
    with pytest.raises(ValueError, match="2 channel.*4 modalities"):
        StackModalitySlices()(_encoded(2), index=0)
    with pytest.raises(ValueError, match="outside|lie in"):
        StackModalitySlices(("a", "b"))(_encoded(2), index=DEPTH)
    with pytest.raises(ValueError, match="\\(M, H, W, D\\)"):
        StackModalitySlices(("a", "b"))(np.zeros((2, 3, 4)), index=0)
    with pytest.raises(ValueError, match="odd"):
        StackModalitySlices(num_slices=2)
    with pytest.raises(ValueError, match="distinct"):
        StackModalitySlices(("t1", "t1"))
    with pytest.raises(TypeError):
        StackModalitySlices("flair")
    with pytest.raises(ValueError, match="one shape"):
        StackModalitySlices(("a", "b"))([np.zeros((3, 4, 5)), np.zeros((3, 4, 6))], index=0)


def test_complete_tumour_target() -> None:
    label = np.zeros((1, 3, 4, DEPTH), np.uint8)
    label[0, 0, 0, 2], label[0, 1, 1, 2], label[0, 2, 3, 2], label[0, 0, 1, 3] = 1, 2, 4, 3
    target = complete_tumour_slice(label, 2)
    expected = np.zeros((1, 3, 4), np.float32)
    expected[0, 0, 0] = expected[0, 1, 1] = expected[0, 2, 3] = 1.0
    np.testing.assert_array_equal(target, expected)
    assert target.dtype == np.float32
    np.testing.assert_array_equal(_to_numpy(complete_tumour_slice(torch.as_tensor(label[0]), 3))[0, 0, 1], 1.0)
    with pytest.raises(ValueError, match="outside"):
        complete_tumour_slice(label, DEPTH)


@pytest.mark.parametrize("twin", [StackModalitySlicesd, StackModalitySlicesD, StackModalitySlicesDict])
def test_dictionary_twin(twin) -> None:
    label = np.zeros((1, 3, 4, DEPTH), np.float32)
    label[0, 1, 2, 0] = 4.0
    data = {"image": MetaTensor(torch.as_tensor(_encoded(4))), "label": label, "slice": torch.tensor(0), "x": 1}
    out = twin(keys="image", slice_key="slice", label_key="label", target_key="target")(data)
    np.testing.assert_array_equal(_to_numpy(out["image"])[:, 0, 0], _expected_channels(4, 0))
    assert out["target"].shape == (1, 3, 4) and out["target"][0, 1, 2] == 1.0 and out["target"].sum() == 1.0
    assert out["label"] is label and out["x"] == 1
    fixed = twin(keys="image", modalities=("flair", "t1ce"), index=5, label_key="label")(
        {"image": _encoded(2), "label": label})
    np.testing.assert_array_equal(fixed["image"][:, 0, 0], _expected_channels(2, 5))
    assert fixed["label"].shape == (1, 3, 4) and fixed["label"].sum() == 0
    every = twin(keys="image", label_key="label")({"image": _encoded(4), "label": label})
    assert every["image"].shape == (DEPTH, 12, 3, 4) and every["label"].shape == (DEPTH, 1, 3, 4)
    assert every["label"][0, 0, 1, 2] == 1.0 and every["label"].sum() == 1.0
    with pytest.raises(KeyError, match="slice"):
        twin(keys="image", slice_key="slice")({"image": _encoded(4)})


# ------------------------------------------------------------------------------------------------ normalisation


def _brain_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 modalities of different scales, > 0 inside an off-centre box 'brain', exactly 0 outside."""
    rng = np.random.default_rng(seed)
    brain = np.zeros((8, 9, 5), bool)
    brain[1:6, 2:8, 1:5] = True
    scales = np.array([800.0, 1200.0, 300.0, 50.0]).reshape(-1, 1, 1, 1)
    volume = np.where(brain, scales * rng.uniform(0.5, 1.5, (4, *brain.shape)), 0.0).astype(np.float32)
    return volume, brain


@CONTAINERS
def test_zscore_inside_the_brain(as_array) -> None:
    volume, brain = _brain_case()
    out = NormalizeModalities(clip=None)(as_array(volume))
    assert type(out) is type(as_array(volume))  # same container as the input
    got = _to_numpy(out)
    assert got.dtype == np.float32
    for m in range(4):
        inside = got[m][brain].astype(np.float64)
        assert inside.mean() == pytest.approx(0.0, abs=1e-5)
        assert inside.std() == pytest.approx(1.0, abs=1e-5)
        # independent formula: population statistics of the raw brain voxels
        raw = volume[m][brain].astype(np.float64)
        np.testing.assert_allclose(inside, (raw - raw.mean()) / raw.std(), atol=1e-5)
    np.testing.assert_array_equal(got[:, ~brain], 0.0)


def test_metatensor_keeps_metadata() -> None:
    volume, _ = _brain_case()
    image = MetaTensor(torch.as_tensor(volume), meta={"filename_or_obj": "case_t1.nii.gz"})
    out = NormalizeModalities()(image)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case_t1.nii.gz"


def test_given_mask_and_background() -> None:
    volume, brain = _brain_case()
    mask = np.zeros(brain.shape, np.float64)
    mask[2:5, 3:7, 2:4] = 0.99999997  # DeepMedic-like float mask; a sub-region of the positive voxels
    out = NormalizeModalities(clip=None, background=-7.0)(volume, mask=mask[None])
    region = mask > 0.5
    for m in range(4):
        assert out[m][region].mean() == pytest.approx(0.0, abs=1e-5)
        assert out[m][region].std() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(out[:, ~region], -7.0)
    with pytest.raises(ValueError, match="spatial shape"):
        NormalizeModalities()(volume, mask=mask[:4])


def test_already_normalized_only_clips() -> None:
    rng = np.random.default_rng(1)
    zscored = rng.normal(0.0, 1.0, (2, 6, 6, 3)).astype(np.float32)
    zscored[0, 0, 0, 0], zscored[1, 1, 1, 1], zscored[:, 5] = 13.6, -20.0, -3.62  # bright tumour, outlier, background
    transform = NormalizeModalities(("flair", "t1ce"), already_normalized=True)
    out = transform(zscored)
    np.testing.assert_array_equal(out, np.clip(zscored, -10.0, 10.0))
    np.testing.assert_array_equal(NormalizeModalities(("flair", "t1ce"), already_normalized=True, clip=None)(zscored),
                                  zscored)
    clipped = NormalizeModalities(("flair", "t1ce"), already_normalized=True, clip=(-4, 5))(zscored)
    np.testing.assert_array_equal(clipped, np.clip(zscored, -4, 5))


def test_normalisation_clip_two_modalities_and_warnings() -> None:
    volume, brain = _brain_case()
    out = NormalizeModalities(("flair", "t1ce"), clip=1.0)(volume[:2])
    assert out.shape == volume[:2].shape and out.max() <= 1.0 and out.min() >= -1.0
    with pytest.raises(ValueError, match="4 channel.*2 modalities"):
        NormalizeModalities(("flair", "t1ce"))(volume)
    with pytest.raises(ValueError, match="clip"):
        NormalizeModalities(clip=(3, 1))
    constant = np.where(brain, 5.0, 0.0).astype(np.float32)[None].repeat(4, 0)
    with pytest.warns(UserWarning, match="constant"):
        flat = NormalizeModalities()(constant)
    np.testing.assert_array_equal(flat, 0.0)
    with pytest.warns(UserWarning, match="empty brain mask"):
        NormalizeModalities()(np.zeros_like(volume))


@pytest.mark.parametrize("twin", [NormalizeModalitiesd, NormalizeModalitiesD, NormalizeModalitiesDict])
def test_normalisation_dictionary_twin(twin) -> None:
    volume, brain = _brain_case()
    mask = brain.astype(np.float32)[None]
    out = twin(keys="image", mask_key="mask", clip=None)({"image": torch.as_tensor(volume), "mask": mask})
    got = _to_numpy(out["image"])
    for m in range(4):
        assert got[m][brain].mean() == pytest.approx(0.0, abs=1e-5)
        assert got[m][brain].std() == pytest.approx(1.0, abs=1e-5)
    same = twin(keys="image", already_normalized=True)({"image": volume[:, :2]})
    np.testing.assert_array_equal(same["image"], np.clip(volume[:, :2], -10, 10))
    with pytest.raises(KeyError, match="mask"):
        twin(keys="image", mask_key="mask")({"image": volume})
    with pytest.raises(ValueError, match="key 'image'"):
        twin(keys="image", modalities=("flair", "t1ce"))({"image": volume})
