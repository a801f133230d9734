from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from networks import RCNN, RecurrentConvBlock


def test_ill_opts() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        RCNN(spatial_dims=4)
    with pytest.raises(ValueError, match="features"):
        RCNN(features=0)
    with pytest.raises(ValueError, match="num_blocks"):
        RCNN(num_blocks=0)
    with pytest.raises(ValueError, match="steps"):
        RecurrentConvBlock(steps=-1)
    with pytest.raises(ValueError, match="kernel_size"):
        RecurrentConvBlock(kernel_size=0)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (1, 1, 31, 33)),
        ({}, (2, 1, 32, 32)),
        ({"in_channels": 2, "out_channels": 3, "features": 4, "share_recurrent": True}, (2, 2, 7, 12)),
        ({"spatial_dims": 3, "features": 4}, (2, 1, 5, 6, 7)),
        ({"spatial_dims": 1, "features": 4, "num_blocks": 1, "steps": 0}, (2, 1, 9)),
    ],
)
def test_shape_any_size(kwargs: dict, shape: tuple[int, ...]) -> None:
    net = RCNN(**kwargs)
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], kwargs.get("out_channels", 1), *shape[2:])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_wrong_rank_raises() -> None:
    with pytest.raises(ValueError, match=r"4D input.*\[1, 1, 8, 8, 8\]"):
        RCNN()(torch.zeros(1, 1, 8, 8, 8))


def test_output_nonnegative_at_init_and_real_after_slope_change() -> None:
    torch.manual_seed(0)
    net = RCNN(features=4)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = net(x)
        assert (out >= 0).all() and (out > 0).any() and (out == 0).any()  # slope 0 -> ReLU at init
        net.act.weight.fill_(0.25)  # a learnt slope lets the output go negative
        assert (net(x) < 0).any()


def _expected_parameters(cin: int, cout: int, f: int, blocks: int, steps: int, k: int, shared: bool) -> int:
    def conv(i: int, o: int, kernel: int) -> int:
        return i * o * kernel * kernel + o  # 2D kernel + bias

    total = 0
    for b in range(blocks):
        total += conv(cin if b == 0 else f, f, k)  # feed-forward conv
        total += (1 if shared and steps > 0 else steps) * conv(f, f, k)  # recurrent conv(s)
        total += (steps + 1) * 2 * f  # one affine batch norm per state h_0..h_T
        total += (steps + 1) * f  # one per-channel PReLU per state
    return total + conv(f, cout, 1) + cout  # head conv + final per-channel PReLU


@pytest.mark.parametrize("shared, expected", [(False, 26_274), (True, 12_354)])
def test_parameter_count_default(shared: bool, expected: int) -> None:
    net = RCNN(share_recurrent=shared)
    count = sum(p.numel() for p in net.parameters())
    assert count == _expected_parameters(1, 1, 16, 3, 3, 3, shared) == expected


def test_parameter_count_other_config() -> None:
    net = RCNN(in_channels=3, out_channels=2, features=8, num_blocks=2, steps=4, kernel_size=5)
    assert sum(p.numel() for p in net.parameters()) == _expected_parameters(3, 2, 8, 2, 4, 5, False)


def test_layer_types_and_init() -> None:
    net = RCNN()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    prelus = [m for m in net.modules() if isinstance(m, nn.PReLU)]
    assert len(norms) == 3 * 4 and len(prelus) == 3 * 4 + 1
    for norm in norms:
        assert norm.momentum == 0.01 and norm.eps == 1e-3 and norm.affine
    for prelu in prelus:
        assert prelu.num_parameters in (16, 1) and torch.equal(prelu.weight, torch.zeros_like(prelu.weight))
    for block in net.blocks:
        assert len(block.recurrent) == 3
        assert torch.equal(block.feedforward.bias, torch.zeros(16))
    # he-normal recurrent weights have std sqrt(2 / fan_in), fan_in = 16 * 9
    weight = net.blocks[1].recurrent[0].conv.weight
    assert abs(weight.std().item() - (2 / 144) ** 0.5) < 0.01
    # glorot-uniform feed-forward weights lie in +-sqrt(6 / (fan_in + fan_out))
    assert net.blocks[1].feedforward.weight.abs().max() <= (6 / (144 + 144)) ** 0.5
    custom = RCNN(bn_momentum=0.1, bn_eps=1e-5)
    assert all(m.momentum == 0.1 and m.eps == 1e-5 for m in custom.modules() if isinstance(m, nn.BatchNorm2d))


def test_shared_recurrent_conv_is_one_module() -> None:
    block = RecurrentConvBlock(share_recurrent=True)
    convs = [step.conv for step in block.recurrent]
    assert all(conv is convs[0] for conv in convs)
    assert len({id(step.norm) for step in block.recurrent}) == 3  # batch norm stays per step
    unshared = RecurrentConvBlock()
    count = sum(p.numel() for p in unshared.parameters()) - sum(p.numel() for p in block.parameters())
    assert count == 2 * (16 * 16 * 9 + 16)


def test_unshared_convs_start_equal_then_diverge() -> None:
    torch.manual_seed(0)
    block = RecurrentConvBlock(in_channels=1, out_channels=4)
    convs = [step.conv for step in block.recurrent]
    assert len({id(conv) for conv in convs}) == 3
    assert len({id(conv.weight) for conv in convs}) == 3
    for conv in convs[1:]:
        assert torch.equal(conv.weight, convs[0].weight) and torch.equal(conv.bias, convs[0].bias)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(torch.randn(2, 1, 12, 12)).square().mean().backward()
    optimizer.step()
    for conv in convs[1:]:
        assert not torch.equal(conv.weight, convs[0].weight)
    assert not torch.equal(convs[1].weight, convs[2].weight)


def test_reset_parameters_restores_copies() -> None:
    block = RecurrentConvBlock(out_channels=4)
    with torch.no_grad():
        block.recurrent[2].conv.weight.add_(1.0)
    block.reset_parameters()
    assert torch.equal(block.recurrent[2].conv.weight, block.recurrent[0].conv.weight)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_reach_every_parameter(mode: str) -> None:
    torch.manual_seed(0)
    net = RCNN(features=4)
    net.train(mode == "train")
    out = net(torch.randn(2, 1, 16, 16))
    (out * torch.randn_like(out)).sum().backward()  # linear in the output: the zero final slope still gets a gradient
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        # in training mode a batch norm removes any constant shift of its input, so the biases of the
        # convolutions inside the blocks get (numerically) zero gradient; in eval mode every gradient is non-zero
        if mode == "eval" or not (name.startswith("blocks.") and name.endswith("bias")):
            assert param.grad.abs().sum() > 0, name


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch.jit is deprecated in recent torch
@pytest.mark.parametrize(
    "kwargs, shape",
    [({}, (2, 1, 17, 16)), ({"spatial_dims": 3, "features": 4, "share_recurrent": True}, (1, 1, 5, 6, 4))],
)
def test_torchscript(kwargs: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = RCNN(**kwargs)
    net(torch.randn(shape))  # update the batch-norm running statistics once
    with torch.no_grad():
        net.act.weight.fill_(0.1)
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.usefixtures("one_thread")
def test_overfits_a_bright_square() -> None:
    torch.manual_seed(0)
    image = torch.zeros(4, 1, 24, 24)
    label = torch.zeros_like(image)
    for i, (r, c) in enumerate([(3, 5), (10, 2), (6, 12), (12, 11)]):
        image[i, :, r : r + 9, c : c + 8] = 1.0
        label[i, :, r : r + 9, c : c + 8] = 1.0
    image += 0.2 * torch.randn_like(image)
    net = RCNN(features=8, bn_momentum=0.1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(120):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(net(image), label).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = (net(image) > 0).float()
    dice = 2 * (pred * label).sum() / (pred.sum() + label.sum())
    assert dice >= 0.9
