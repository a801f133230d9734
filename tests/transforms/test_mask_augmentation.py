from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import (
    RandImperfectMask,
    RandImperfectMaskd,
    RandMaskElastic,
    RandMaskElasticd,
    RandMaskFlip,
    RandMaskFlipd,
    RandMaskMorphology,
    RandMaskMorphologyd,
    RandMaskNoise,
    RandMaskNoised,
    RandMaskRotate,
    RandMaskRotated,
    RandMaskShift,
    RandMaskShiftd,
)

ARRAY_TRANSFORMS = [RandMaskElastic, RandMaskMorphology, RandMaskNoise, RandMaskRotate, RandMaskFlip, RandMaskShift,
                    RandImperfectMask]
DICT_TRANSFORMS = [RandMaskElasticd, RandMaskMorphologyd, RandMaskNoised, RandMaskRotated, RandMaskFlipd,
                   RandMaskShiftd,
                   RandImperfectMaskd]


def _square(shape=(1, 20, 20), lo=6, hi=14) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.float32)
    mask[(slice(None),) + (slice(lo, hi),) * (len(shape) - 1)] = 1
    return mask


def _l_shape() -> np.ndarray:
    mask = np.zeros((1, 16, 16), dtype=np.float32)
    mask[0, 4:12, 4:7] = 1
    mask[0, 9:12, 4:12] = 1
    return mask


@pytest.mark.parametrize("cls", ARRAY_TRANSFORMS)
@pytest.mark.parametrize("kind", ["numpy", "torch", "meta", "uint8", "bool"])
def test_binary_same_type_shape(cls, kind: str) -> None:
    mask = _l_shape()
    data = {"numpy": mask, "torch": torch.as_tensor(mask), "meta": MetaTensor(torch.as_tensor(mask)),
            "uint8": torch.as_tensor(mask, dtype=torch.uint8), "bool": mask.astype(bool)}[kind]
    t = cls()
    t.set_random_state(3)
    for _ in range(5):
        out = t(data)
        assert type(out) is type(data)
        assert out.shape == data.shape and out.dtype == data.dtype
        values = set(np.unique(np.asarray(out, dtype=np.float32)).tolist())
        assert values <= {0.0, 1.0}


@pytest.mark.parametrize("cls", ARRAY_TRANSFORMS)
def test_3d_masks(cls) -> None:
    mask = _square((1, 12, 12, 10), 3, 9)
    out = cls().set_random_state(0)(mask)
    assert out.shape == mask.shape and set(np.unique(out).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("cls", ARRAY_TRANSFORMS)
def test_reproducible_under_seed(cls) -> None:
    mask = _l_shape()
    a = cls().set_random_state(7)
    b = cls().set_random_state(7)
    outs_a = [a(mask) for _ in range(4)]
    outs_b = [b(mask) for _ in range(4)]
    for x, y in zip(outs_a, outs_b):
        np.testing.assert_array_equal(x, y)
    assert a.last_params == b.last_params


def test_replay_with_randomize_false() -> None:
    t = RandImperfectMask(morphology_prob=1.0, elastic_prob=1.0, noise_prob=1.0).set_random_state(1)
    first = t(_l_shape())
    again = t(_l_shape(), randomize=False)
    np.testing.assert_array_equal(first, again)
    assert [name for name, _ in t.last_params["steps"]][:2] == ["morphology", "elastic"]


def test_shift_hand_computed() -> None:
    mask = np.zeros((1, 4, 4), dtype=np.float32)
    mask[0, 1, 1] = mask[0, 3, 3] = 1
    out = RandMaskShift().apply(mask > 0.5, {"offsets": [1, -1]})
    expected = np.zeros((1, 4, 4), dtype=bool)
    expected[0, 2, 0] = True  # (1, 1) -> (2, 0); (3, 3) -> (4, 2) leaves the array
    np.testing.assert_array_equal(out, expected)


def test_flip_about_centroid_keeps_centroid() -> None:
    mask = _l_shape() > 0.5
    out = RandMaskFlip().apply(mask, {"axis": 1, "centre": [float(c) for c in np.argwhere(mask[0]).mean(0)]})
    assert out.sum() == mask.sum()
    np.testing.assert_allclose(np.argwhere(out[0]).mean(0), np.argwhere(mask[0]).mean(0), atol=0.5)
    assert not np.array_equal(out, mask)  # an L is not mirror-symmetric


def test_morphology_hand_computed() -> None:
    mask = _square() > 0.5  # 8x8 square
    eroded = RandMaskMorphology().apply(mask, {"operation": "erode", "radius": 1})
    dilated = RandMaskMorphology().apply(mask, {"operation": "dilate", "radius": 1})
    assert eroded.sum() == 6 * 6
    assert dilated.sum() == 10 * 10 - 4  # a radius-1 Euclidean ball adds the 4 edges, not the corners


def test_noise_flips_a_ball() -> None:
    mask = _square() > 0.5
    out = RandMaskNoise().apply(mask, {"blobs": [([10.0, 10.0], 1.0), ([1.0, 1.0], 1.0)]})
    assert not out[0, 10, 10] and out[0, 1, 1]  # inside flipped off, outside flipped on
    assert (out ^ mask).sum() == 10  # two radius-1 balls of 5 voxels each


def test_rotation_by_zero_and_ninety() -> None:
    mask = _l_shape() > 0.5
    centre = [float(c) for c in np.argwhere(mask[0]).mean(0)]
    np.testing.assert_array_equal(RandMaskRotate().apply(mask, {"angle": 0.0, "centre": centre}), mask)
    quarter = RandMaskRotate().apply(mask, {"angle": 90.0, "centre": [7.5, 7.5]})  # about the array centre
    assert any(np.array_equal(quarter[0], np.rot90(mask[0], k)) for k in (1, 3))


def test_elastic_zero_magnitude_is_identity() -> None:
    mask = _l_shape() > 0.5
    out = RandMaskElastic().apply(mask, {"sigma": 3.0, "magnitude": 0.0, "seed": 0})
    np.testing.assert_array_equal(out, mask)


def test_imperfect_mask_degrades_quality() -> None:
    mask = _square((1, 32, 32), 8, 24)
    t = RandImperfectMask(prob=1.0, morphology_prob=1.0, elastic_prob=1.0).set_random_state(0)
    dices = []
    for _ in range(10):
        out = t(mask) > 0.5
        dices.append(2 * (out & (mask > 0.5)).sum() / (out.sum() + (mask > 0.5).sum()))
    assert 0.5 < np.mean(dices) < 0.99


@pytest.mark.parametrize("cls", DICT_TRANSFORMS)
def test_dict_twin_touches_mask_only(cls) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 16, 16)).astype(np.float32)
    original = image.copy()
    data = {"image": image, "mask": _l_shape(), "other": _l_shape()}
    out = cls(keys=["mask", "other"]).set_random_state(5)(data)
    assert out["image"] is image and np.array_equal(image, original)
    np.testing.assert_array_equal(out["mask"], out["other"])  # one draw applied to every key
    assert set(np.unique(out["mask"]).tolist()) <= {0.0, 1.0}
    # the twin with a seed gives what its array transform gives with the same seed
    array_transform = type(cls(keys="mask").transform)().set_random_state(5)
    twin = cls(keys="mask").set_random_state(5)
    np.testing.assert_array_equal(array_transform(_l_shape()), twin({"mask": _l_shape()})["mask"])


def test_dict_missing_key() -> None:
    with pytest.raises(KeyError):
        RandImperfectMaskd(keys="mask")({"image": np.zeros((1, 4, 4))})
    out = RandImperfectMaskd(keys="mask", allow_missing_keys=True)({"image": np.zeros((1, 4, 4))})
    assert set(out) == {"image"}


def test_ill_opts() -> None:
    with pytest.raises(ValueError, match=r"magnitude must satisfy 0 <= low <= high, got \(3, 1\)"):
        RandMaskElastic(magnitude=(3, 1))
    with pytest.raises(ValueError, match="operations must be a non-empty subset"):
        RandMaskMorphology(operations=("open",))
    with pytest.raises(ValueError, match="boundary_fraction must be in"):
        RandMaskNoise(boundary_fraction=2)
    with pytest.raises(ValueError, match="axes must name two different"):
        RandMaskRotate(axes=(0, 0))
    with pytest.raises(ValueError, match="max_shift must be non-negative integers"):
        RandMaskShift(max_shift=-1)
    with pytest.raises(ValueError, match="prob must be in"):
        RandMaskFlip(prob=1.5)
    with pytest.raises(ValueError, match=r"channel-first 2D or 3D mask.*\(4, 4\)"):
        RandMaskShift()(np.zeros((4, 4)))
