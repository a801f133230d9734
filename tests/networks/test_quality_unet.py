from __future__ import annotations

import pytest
import torch

from networks import QualityOutput, QualityUNet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ill_opts() -> None:
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        QualityUNet(spatial_dims=1)
    with pytest.raises(ValueError, match="features must be >= 1, got 0"):
        QualityUNet(features=0)
    with pytest.raises(ValueError, match="levels must be >= 2"):
        QualityUNet(levels=1)
    with pytest.raises(ValueError, match="quality_hidden must be >= 1"):
        QualityUNet(quality_hidden=0)


@pytest.mark.parametrize(
    "kwargs, image, mask",
    [
        ({"spatial_dims": 2, "in_channels": 3, "features": 4}, (2, 3, 16, 24), (2, 1, 16, 24)),
        ({"spatial_dims": 2, "in_channels": 1, "features": 2, "levels": 3, "out_channels": 2}, (3, 1, 8, 12),
         (3, 1, 8, 12)),
        ({"spatial_dims": 3, "in_channels": 2, "features": 2, "levels": 3}, (2, 2, 8, 8, 12), (2, 1, 8, 8, 12)),
        ({"spatial_dims": 3, "in_channels": 1, "features": 2, "norm": None}, (1, 1, 8, 16, 8), (1, 1, 8, 16, 8)),
    ],
)
def test_shapes_and_quality_range(kwargs: dict, image: tuple, mask: tuple) -> None:
    torch.manual_seed(0)
    net = QualityUNet(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(image) * 3, (torch.rand(mask) > 0.5).float())
    assert isinstance(out, QualityOutput)
    assert out.logits.shape == (image[0], kwargs.get("out_channels", 1), *image[2:])
    assert out.quality.shape == (image[0], 1)
    assert bool(((out.quality > 0) & (out.quality < 1)).all())


def test_quality_saturates_inside_unit_interval() -> None:
    """Huge pre-activations still give qualities in [0, 1] (the head ends in a sigmoid)."""
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=2, norm=None).eval()
    with torch.no_grad():
        net.quality_head[2].bias.fill_(1e4)
        high = net(torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).quality
        net.quality_head[2].bias.fill_(-1e4)
        low = net(torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).quality
    assert torch.equal(high, torch.ones(2, 1)) and torch.equal(low, torch.zeros(2, 1))


def test_concatenated_input_equals_image_and_mask() -> None:
    torch.manual_seed(1)
    net = QualityUNet(spatial_dims=2, in_channels=2, features=2, levels=3).eval()
    image, mask = torch.randn(2, 2, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    with torch.no_grad():
        a = net(image, mask)
        b = net(torch.cat([image, mask], dim=1))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.quality, b.quality)


def test_output_bias_sets_initial_foreground_probability() -> None:
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=2, output_bias=-4.0)
    assert float(net.head.bias.detach()[0]) == -4.0


def test_bad_inputs_raise() -> None:
    net = QualityUNet(spatial_dims=2, in_channels=3, features=2)
    with pytest.raises(ValueError, match=r"image \+ mask = 4 channels.*\[1, 3, 16, 16\]"):
        net(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"divisible by 8, got shape \[1, 4, 12, 16\]"):
        net(torch.zeros(1, 3, 12, 16), torch.zeros(1, 1, 12, 16))


def test_gradients_reach_both_heads() -> None:
    torch.manual_seed(0)
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=2)
    out = net(torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
    (out.logits.mean() + out.quality.mean()).backward()
    assert net.head.weight.grad.abs().sum() > 0
    assert net.quality_head[0].weight.grad.abs().sum() > 0
    assert net.encoders[0].conv0.conv.weight.grad.abs().sum() > 0


def test_torchscript() -> None:
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=2).eval()
    scripted = torch.jit.script(net)
    x, m = torch.randn(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    with torch.no_grad():
        expected, got = net(x, m), scripted(x, m)
    assert torch.allclose(expected.logits, got[0]) and torch.allclose(expected.quality, got[1])
