from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from networks import PolyphasePool, PolyphaseUNet, PolyphaseUnpool


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 5, 4, 4, 2), (2, 2, 10)])
def test_pool_unpool_exact_inverse(shape: tuple[int, ...]) -> None:
    spatial_dims = len(shape) - 2
    x = torch.randn(shape)
    pooled = PolyphasePool(spatial_dims)(x)
    factor = 2**spatial_dims
    assert pooled.shape == (shape[0], shape[1] * factor, *(s // 2 for s in shape[2:]))
    assert torch.equal(PolyphaseUnpool(spatial_dims)(pooled), x)
    assert torch.equal(PolyphasePool(spatial_dims)(PolyphaseUnpool(spatial_dims)(pooled)), pooled)


def test_pool_phase_major_order_2d() -> None:
    # channel 0 holds 0..15, channel 1 holds 100..115 on a 4x4 grid
    x = torch.stack([torch.arange(16.0).reshape(4, 4), 100 + torch.arange(16.0).reshape(4, 4)])[None]
    pooled = PolyphasePool(2)(x)
    expected = torch.tensor(
        [
            [[0, 2], [8, 10]],  # phase (0, 0), channel 0
            [[100, 102], [108, 110]],  # phase (0, 0), channel 1
            [[1, 3], [9, 11]],  # phase (0, 1)
            [[101, 103], [109, 111]],
            [[4, 6], [12, 14]],  # phase (1, 0)
            [[104, 106], [112, 114]],
            [[5, 7], [13, 15]],  # phase (1, 1)
            [[105, 107], [113, 115]],
        ],
        dtype=torch.float32,
    )[None]
    assert torch.equal(pooled, expected)
    slices = [x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]]
    assert torch.equal(pooled, torch.cat(slices, dim=1))


def test_pool_phase_major_order_3d() -> None:
    x = torch.randn(2, 3, 4, 6, 2)
    phases = [x[..., a::2, b::2, c::2] for a, b, c in itertools.product((0, 1), repeat=3)]
    assert torch.equal(PolyphasePool(3)(x), torch.cat(phases, dim=1))


def test_pool_equals_pixel_unshuffle_up_to_channel_permutation() -> None:
    channels = 3
    x = torch.randn(2, channels, 6, 8)
    # pixel_unshuffle is channel-major (c * 4 + phase); polyphase pooling is phase-major (phase * C + c)
    permutation = [c * 4 + phase for phase in range(4) for c in range(channels)]
    assert torch.equal(PolyphasePool(2)(x), F.pixel_unshuffle(x, 2)[:, permutation])
    assert torch.equal(PolyphaseUnpool(2)(F.pixel_unshuffle(x, 2)[:, permutation]), x)


@pytest.mark.parametrize("shape", [(1, 2, 5, 4), (1, 2, 4, 7)])
def test_pool_odd_size_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="even spatial sizes"):
        PolyphasePool(2)(torch.zeros(shape))


def test_unpool_bad_channels_raises() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        PolyphaseUnpool(3)(torch.zeros(1, 4, 2, 2, 2))


def test_ill_opts() -> None:
    with pytest.raises(ValueError):
        PolyphasePool(4)
    with pytest.raises(ValueError):
        PolyphaseUNet(num_levels=1)
    with pytest.raises(ValueError):
        PolyphaseUNet(init="kaiming")


@pytest.mark.parametrize(
    "kwargs, in_shape, out_shape",
    [
        ({"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": 8}, (2, 3, 64, 64), (2, 2, 64, 64)),
        ({"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": 4}, (1, 1, 32, 48), (1, 3, 32, 48)),
        ({"spatial_dims": 3, "in_channels": 1, "features": 2}, (2, 1, 16, 32, 16), (2, 2, 16, 32, 16)),
        ({"spatial_dims": 2, "features": 4, "num_levels": 3}, (1, 3, 12, 8), (1, 2, 12, 8)),
    ],
)
def test_unet_shape(kwargs: dict, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    net = PolyphaseUNet(**kwargs)
    with torch.no_grad():
        assert net(torch.randn(in_shape)).shape == out_shape


def test_unet_non_divisible_raises() -> None:
    net = PolyphaseUNet(features=4)
    with pytest.raises(ValueError, match=r"divisible by 16.*\[1, 3, 40, 64\]"):
        net(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="4D input"):
        net(torch.zeros(1, 3, 64, 64, 64))


def test_unet_parameter_count_features_64() -> None:
    f, cin, cout = 64, 3, 2
    conv3x3 = [  # (in, out) of every 3x3 convolution, each followed by an affine batch norm
        (cin, f), (f, f),  # L1
        (4 * f, 2 * f), (2 * f, 2 * f),  # L2
        (8 * f, 4 * f), (4 * f, 4 * f),  # L3
        (16 * f, 8 * f), (8 * f, 8 * f),  # L4
        (32 * f, 16 * f), (16 * f, 32 * f),  # L5
        (16 * f, 8 * f), (8 * f, 16 * f),  # up4
        (8 * f, 4 * f), (4 * f, 8 * f),  # up3
        (4 * f, 2 * f), (2 * f, 4 * f),  # up2
        (2 * f, f), (f, f),  # up1
    ]  # fmt: skip
    expected = sum(9 * i * o + 2 * o for i, o in conv3x3) + f * cout + cout
    net = PolyphaseUNet(spatial_dims=2, in_channels=cin, out_channels=cout, features=f)
    assert sum(p.numel() for p in net.parameters()) == expected == 59_589_698


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch.jit is deprecated in recent torch
@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 3, 32, 32)), (3, (2, 3, 16, 16, 16))])
def test_unet_torchscript(spatial_dims: int, shape: tuple[int, ...]) -> None:
    net = PolyphaseUNet(spatial_dims=spatial_dims, features=4)
    net(torch.randn(shape))  # update the batch-norm running statistics once
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_unet_gradients_reach_every_parameter() -> None:
    net = PolyphaseUNet(features=4)
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.usefixtures("one_thread")
def test_unet_overfits_a_square() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    image[..., 8:20, 10:24] = 1.0
    label[..., 8:20, 10:24] = 1
    image += 0.1 * torch.randn_like(image)
    net = PolyphaseUNet(features=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(net(image), label).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = net(image).argmax(dim=1)
    dice = 2 * (pred * label).sum() / (pred.sum() + label.sum())
    assert dice > 0.9
