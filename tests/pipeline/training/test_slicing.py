"""Tests of the 2.5D data flow: SliceDataset (volumes -> adjacent-slice samples) and AdjacentSliceInferer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from pipeline.inference.inferers import AdjacentSliceInferer
from pipeline.training.slicing import SliceDataset


# ----------------------------------------------------------------------------------------------- helpers
def _encoded_volume(num_channels: int, height: int = 4, width: int = 5, depth: int = 6) -> np.ndarray:
    """(C, H, W, D) float32 volume whose voxels hold 100 * c + z."""
    c = np.arange(num_channels).reshape(-1, 1, 1, 1)
    z = np.arange(depth).reshape(1, 1, 1, -1)
    return np.broadcast_to(100 * c + z, (num_channels, height, width, depth)).astype(np.float32)


def _random_volume(num_channels: int, height: int, width: int, depth: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((num_channels, height, width, depth)).astype(np.float32)


def _to_tensors(item: dict) -> dict:
    """Simple volume transform: numpy arrays -> tensors, everything else unchanged."""
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}


def _case(name: str, image: np.ndarray, label: np.ndarray | None = None, **extra) -> dict:
    item = {"case": name, "image": image, **extra}
    if label is not None:
        item["label"] = label
    return item


def _dataset(data, **kwargs) -> SliceDataset:
    kwargs.setdefault("progress", False)
    return SliceDataset(data, volume_transform=_to_tensors, **kwargs)


def _label_for(image: np.ndarray) -> np.ndarray:
    """(1, H, W, D) label whose voxels hold z + 1000 (distinct from any image value)."""
    return (image[:1] % 100 + 1000).astype(np.float32)


# ----------------------------------------------------------------------------------------------- SliceDataset
def test_length_is_sum_of_depths() -> None:
    data = [_case("a", _encoded_volume(1, depth=6)), _case("b", _encoded_volume(1, depth=3)),
            _case("c", _encoded_volume(1, depth=1))]
    ds = _dataset(data)
    assert len(ds) == 6 + 3 + 1
    assert [ds[i]["case"] for i in range(len(ds))] == ["a"] * 6 + ["b"] * 3 + ["c"]
    assert [ds[i]["slice"] for i in range(len(ds))] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 0]


@pytest.mark.parametrize("stride, expected_slices", [(2, [[0, 2, 4], [0, 2, 4], [0]]), (3, [[0, 3], [0, 3], [0]]),
                                                     (10, [[0], [0], [0]])])
def test_length_with_slice_stride(stride: int, expected_slices: list[list[int]]) -> None:
    data = [_case("a", _encoded_volume(1, depth=6)), _case("b", _encoded_volume(1, depth=5)),
            _case("c", _encoded_volume(1, depth=1))]
    ds = _dataset(data, slice_stride=stride)
    assert len(ds) == sum(len(s) for s in expected_slices)
    got = [[ds[i]["slice"] for i in range(len(ds)) if ds[i]["case"] == name] for name in "abc"]
    assert got == expected_slices


@pytest.mark.parametrize("num_channels, k", [(1, 1), (1, 3), (2, 3), (3, 5)])
def test_item_shapes(num_channels: int, k: int) -> None:
    image = _encoded_volume(num_channels, height=4, width=5, depth=6)
    ds = _dataset([_case("a", image, _label_for(image))], num_slices=k)
    for i in (0, 3, 5):
        item = ds[i]
        assert item["image"].shape == (num_channels * k, 4, 5)
        assert item["label"].shape == (1, 4, 5)
        assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.float32
        assert isinstance(item["image"], torch.Tensor) and not isinstance(item["image"], MetaTensor)


def test_channel_content_channel_major_with_edge_replication() -> None:
    depth = 5
    image = _encoded_volume(2, height=3, width=4, depth=depth)
    ds = _dataset([_case("a", image, _label_for(image))], num_slices=3)
    expected_z = {0: [0, 0, 1], 1: [0, 1, 2], 2: [1, 2, 3], 3: [2, 3, 4], 4: [3, 4, 4]}
    for z, zs in expected_z.items():
        item = ds[z]
        assert item["slice"] == z
        # channel-major: c0@z-1, c0@z, c0@z+1, c1@z-1, c1@z, c1@z+1
        expected = [100 * c + zz for c in range(2) for zz in zs]
        values = item["image"]
        for ch, value in enumerate(expected):
            assert torch.all(values[ch] == value), (z, ch, values[ch].unique())
        assert torch.all(item["label"] == 1000 + z)


def test_channel_content_k5_and_in_plane_layout() -> None:
    """Random volume: every channel is exactly the right (H, W) slice, not a transposed/reshaped one."""
    image = _random_volume(2, 3, 4, 4, seed=1)
    ds = _dataset([_case("a", image)], num_slices=5)
    for z in range(4):
        zs = np.clip(np.arange(z - 2, z + 3), 0, 3)
        expected = np.stack([image[c, :, :, zz] for c in range(2) for zz in zs])
        np.testing.assert_array_equal(ds[z]["image"].numpy(), expected)


def test_labelled_flag_per_case_and_default() -> None:
    image = _encoded_volume(1, depth=2)
    label = _label_for(image)
    data = [_case("yes", image, label, labelled=True), _case("no", image, label, labelled=False),
            _case("default", image, label)]
    ds = _dataset(data)
    assert ds.labelled == [True, False, True]
    assert [ds[i]["labelled"] for i in range(len(ds))] == [True, True, False, False, True, True]
    assert ds.labelled_fraction() == pytest.approx(4 / 6)

    ds_unlab = _dataset(data, default_labelled=False)
    assert ds_unlab.labelled == [True, False, False]
    assert [ds_unlab[i]["labelled"] for i in range(len(ds_unlab))] == [True, True, False, False, False, False]
    # the label itself is still returned for a case flagged unlabelled
    assert torch.all(ds_unlab[2]["label"] == 1000)


def test_custom_labelled_key() -> None:
    image = _encoded_volume(1, depth=2)
    ds = _dataset([_case("a", image, _label_for(image), has_gt=False)], labelled_key="has_gt")
    assert ds[0]["has_gt"] is False
    assert "labelled" not in ds[0]


def test_missing_label_gives_zeros_and_unlabelled() -> None:
    image = _encoded_volume(2, height=3, width=4, depth=3)
    data = [_case("nolabel", image, labelled=True), _case("withlabel", image, _label_for(image))]
    ds = _dataset(data)
    for i in range(3):
        item = ds[i]
        assert item["case"] == "nolabel"
        assert item["label"].shape == (1, 3, 4)
        assert torch.all(item["label"] == 0)
        assert item["labelled"] is False
    assert ds[3]["labelled"] is True and torch.all(ds[3]["label"] == 1000)


def test_label_none_gives_zeros_and_unlabelled() -> None:
    image = _encoded_volume(1, depth=2)
    ds = _dataset([{"case": "a", "image": image, "label": None}])
    assert torch.all(ds[0]["label"] == 0) and ds[0]["labelled"] is False


def test_slice_transform_applied_per_item() -> None:
    image = _encoded_volume(1, depth=3)
    calls = []

    def flip(sample: dict) -> dict:
        calls.append(sample["slice"])
        return {**sample, "image": torch.flip(sample["image"], dims=(-1,)), "flipped": True}

    ds = _dataset([_case("a", image)], slice_transform=flip)
    item = ds[1]
    assert item["flipped"] is True and calls == [1]


def test_case_name_falls_back_to_image_path(tmp_path: Path) -> None:
    """Without a 'case' key the name is the image path (datalists of file names)."""
    path = tmp_path / "vol_007.nii.gz"
    image = _encoded_volume(1, height=3, width=4, depth=3)[0]
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    ds = SliceDataset([{"image": str(path)}], Compose([LoadImaged("image"), EnsureChannelFirstd("image")]),
                      progress=False)
    assert ds[0]["case"] == str(path)


def test_nifti_volumes_with_load_transforms(tmp_path: Path) -> None:
    """Real files through LoadImaged + EnsureChannelFirstd: values and labels come out per slice."""
    image = _encoded_volume(1, height=3, width=4, depth=4)[0]
    label = (image % 100 > 1).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "lab.nii.gz"))
    keys = ["image", "label"]
    ds = SliceDataset(
        [{"case": "c0", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}],
        Compose([LoadImaged(keys), EnsureChannelFirstd(keys)]),
        num_slices=3,
        progress=False,
    )
    assert len(ds) == 4
    item = ds[3]
    assert item["image"].shape == (3, 3, 4) and item["label"].shape == (1, 3, 4)
    assert [float(item["image"][c, 0, 0]) for c in range(3)] == [2.0, 3.0, 3.0]
    assert torch.all(item["label"] == 1) and torch.all(ds[0]["label"] == 0)
    assert item["labelled"] is True and item["case"] == "c0"


@pytest.mark.parametrize("k", [0, -1, 2, 4])
def test_bad_num_slices(k: int) -> None:
    with pytest.raises(ValueError, match="num_slices"):
        _dataset([_case("a", _encoded_volume(1))], num_slices=k)


@pytest.mark.parametrize("stride", [0, -2])
def test_bad_slice_stride(stride: int) -> None:
    with pytest.raises(ValueError, match="slice_stride"):
        _dataset([_case("a", _encoded_volume(1))], slice_stride=stride)


def test_empty_datalist() -> None:
    with pytest.raises(ValueError, match="empty"):
        _dataset([])


@pytest.mark.parametrize("shape", [(4, 5, 6), (1, 1, 4, 5, 6)])
def test_non_4d_volume(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"case bad.*\(C, H, W, D\)"):
        _dataset([_case("ok", _encoded_volume(1)), _case("bad", np.zeros(shape, np.float32))])


# ----------------------------------------------------------------------------------------------- inferer
class CentreChannel(torch.nn.Module):
    """Returns the centre slice of channel 0 (1 output channel); records the input shapes it saw."""

    def __init__(self, k: int, divisible: int = 1) -> None:
        super().__init__()
        self.k, self.divisible, self.shapes = k, divisible, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] % self.k == 0
        assert x.shape[-2] % self.divisible == 0 and x.shape[-1] % self.divisible == 0, x.shape
        self.shapes.append(tuple(x.shape))
        return x[:, self.k // 2 : self.k // 2 + 1]


def _volume_batch(b: int, c: int, h: int, w: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.stack([_random_volume(c, h, w, d, seed=seed + i) for i in range(b)]))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_inferer_centre_channel_reproduces_volume(k: int) -> None:
    vol = _volume_batch(2, 1, 16, 16, 7)
    out = AdjacentSliceInferer(num_slices=k, batch_size=3)(vol, CentreChannel(k))
    assert out.shape == vol.shape
    torch.testing.assert_close(out, vol, rtol=0, atol=0)


def test_inferer_centre_channel_multichannel_input() -> None:
    """With C = 2 the first k channels are channel 0's slices: the centre one gives back channel 0."""
    vol = _volume_batch(1, 2, 16, 16, 5)
    out = AdjacentSliceInferer(num_slices=3)(vol, CentreChannel(3))
    assert out.shape == (1, 1, 16, 16, 5)
    torch.testing.assert_close(out, vol[:, :1], rtol=0, atol=0)
    # channel 1's centre slice is channel index k + k // 2 = 4
    out1 = AdjacentSliceInferer(num_slices=3)(vol, lambda x: x[:, 4:5])
    torch.testing.assert_close(out1, vol[:, 1:2], rtol=0, atol=0)


def test_inferer_mean_of_k_channels_edges() -> None:
    depth = 5
    z = torch.arange(depth, dtype=torch.float32)
    vol = z.reshape(1, 1, 1, 1, depth).expand(1, 1, 16, 16, depth).contiguous()
    out = AdjacentSliceInferer(num_slices=3)(vol, lambda x: x.mean(dim=1, keepdim=True))
    assert out.shape == (1, 1, 16, 16, depth)
    # z=0: (0 + 0 + 1) / 3; z=2: (1 + 2 + 3) / 3; z=4: (3 + 4 + 4) / 3
    expected = torch.tensor([1 / 3, 1.0, 2.0, 3.0, 11 / 3])
    for zz in range(depth):
        assert torch.allclose(out[0, 0, :, :, zz], expected[zz].expand(16, 16))
    # k = 5 at z = 0: (0 + 0 + 0 + 1 + 2) / 5
    out5 = AdjacentSliceInferer(num_slices=5)(vol, lambda x: x.mean(dim=1, keepdim=True))
    assert torch.allclose(out5[0, 0, 3, 7, 0], torch.tensor(3 / 5))
    assert torch.allclose(out5[0, 0, 3, 7, 4], torch.tensor((2 + 3 + 4 + 4 + 4) / 5))


@pytest.mark.parametrize("h, w", [(13, 16), (16, 21), (17, 30), (5, 3)])
def test_inferer_pads_and_crops(h: int, w: int) -> None:
    vol = _volume_batch(1, 1, h, w, 4)
    net = CentreChannel(3, divisible=16)
    out = AdjacentSliceInferer(num_slices=3, divisible=16)(vol, net)
    assert out.shape == (1, 1, h, w, 4)
    torch.testing.assert_close(out, vol, rtol=0, atol=0)
    assert all(s[-2] == h + (-h) % 16 and s[-1] == w + (-w) % 16 for s in net.shapes)


def test_inferer_multi_output_channels_and_activation() -> None:
    vol = _volume_batch(1, 1, 8, 8, 3)
    net = lambda x: torch.cat([x[:, 1:2], -x[:, 1:2]], dim=1)  # noqa: E731
    out = AdjacentSliceInferer(num_slices=3, divisible=1, activation=lambda y: torch.softmax(y, dim=1))(vol, net)
    assert out.shape == (1, 2, 8, 8, 3)
    torch.testing.assert_close(out, torch.softmax(torch.cat([vol, -vol], dim=1), dim=1))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_inferer_batch_size_does_not_change_result(batch_size: int) -> None:
    vol = _volume_batch(2, 2, 12, 10, 7, seed=3)
    conv = torch.nn.Conv2d(6, 2, 3, padding=1)
    with torch.no_grad():
        full = AdjacentSliceInferer(num_slices=3, batch_size=16)(vol, conv)
        small = AdjacentSliceInferer(num_slices=3, batch_size=batch_size)(vol, conv)
    assert full.shape == (2, 2, 12, 10, 7)
    torch.testing.assert_close(small, full)


def test_inferer_batch_size_controls_forward_calls() -> None:
    net = CentreChannel(3)
    AdjacentSliceInferer(num_slices=3, batch_size=3, divisible=1)(_volume_batch(1, 1, 4, 4, 7), net)
    assert [s[0] for s in net.shapes] == [3, 3, 1]


@pytest.mark.parametrize("shape", [(1, 8, 8, 4), (8, 8), (1, 1, 8, 8, 4, 1)])
def test_inferer_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        AdjacentSliceInferer()(torch.zeros(shape), CentreChannel(3))


@pytest.mark.parametrize("kwargs", [{"num_slices": 2}, {"num_slices": 0}, {"batch_size": 0}, {"divisible": 0}])
def test_inferer_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdjacentSliceInferer(**kwargs)


def test_inferer_metatensor_input() -> None:
    vol = _volume_batch(1, 1, 10, 12, 4)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    meta_vol = MetaTensor(vol, affine=affine, meta={"filename_or_obj": "x.nii.gz"})
    out = AdjacentSliceInferer(num_slices=3)(meta_vol, CentreChannel(3, divisible=16))
    assert out.shape == (1, 1, 10, 12, 4)
    torch.testing.assert_close(torch.as_tensor(out), vol, rtol=0, atol=0)


def test_inferer_with_network_args() -> None:
    vol = _volume_batch(1, 1, 8, 8, 3)
    out = AdjacentSliceInferer(num_slices=3, divisible=1)(vol, lambda x, scale, shift=0.0: x[:, 1:2] * scale + shift,
                                                          2.0, shift=1.0)
    torch.testing.assert_close(out, vol * 2 + 1)


def test_inferer_compile_matches_eager_with_a_padded_last_batch() -> None:
    """compile=True: same output as eager (5 slices, batch 2: the last batch is padded to one compiled shape)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.PReLU(),
                              torch.nn.Conv2d(4, 2, 1)).eval()
    vol = torch.rand(1, 1, 12, 10, 5)
    eager = AdjacentSliceInferer(num_slices=3, batch_size=2, divisible=4)(vol, net)
    inferer = AdjacentSliceInferer(num_slices=3, batch_size=2, divisible=4, compile=True)
    with torch.no_grad():
        compiled = inferer(vol, net)
    assert compiled.shape == eager.shape == (1, 2, 12, 10, 5)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert list(inferer._compiled) == [id(net)] and inferer._compiled[id(net)] is not net


def test_inferer_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(module, **kwargs):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    vol = torch.rand(1, 1, 8, 8, 3)
    with torch.no_grad():
        out = AdjacentSliceInferer(num_slices=3, batch_size=2, divisible=1, compile=True)(vol, net)
        ref = AdjacentSliceInferer(num_slices=3, batch_size=2, divisible=1)(vol, net)
    torch.testing.assert_close(out, ref)
    assert "torch.compile of Conv2d failed (RuntimeError: no C++ compiler found); running eagerly" in caplog.text
