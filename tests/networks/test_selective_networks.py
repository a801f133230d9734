"""Tests of networks.SelectiveUNet, VMNet, DIPNet and SelectivePair (Burrows et al. 2021)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from networks import DIPNet, SelectivePair, SelectiveUNet, VMNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _expected_parameters(cin: int, widths: list[int], out: int, kernel_numel: int = 9) -> int:
    """Parameters of the U-Net: every block is [conv (+bias), per-channel PReLU, affine BN] x 2."""

    def block(i: int, o: int) -> int:
        return (kernel_numel * i * o + o) + o + 2 * o + (kernel_numel * o * o + o) + o + 2 * o

    levels = len(widths) - 1
    total = sum(block(cin if k == 0 else widths[k - 1], widths[k]) for k in range(levels))
    total += block(widths[levels - 1], widths[levels])
    total += sum(block(widths[k + 1] + widths[k], widths[k]) for k in range(levels))
    return total + widths[0] * out + out  # 1x1 head with bias


# ---------------------------------------------------------------------------------------------------------------------
# SelectiveUNet / VMNet
# ---------------------------------------------------------------------------------------------------------------------


def test_ill_opts() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        SelectiveUNet(spatial_dims=4)
    with pytest.raises(ValueError, match="features"):
        SelectiveUNet(features=0)
    with pytest.raises(ValueError, match=r"levels \+ 1 = 5 widths.*\[8, 8, 8\]"):
        SelectiveUNet(features=[8, 8, 8])
    with pytest.raises(ValueError, match="levels"):
        SelectiveUNet(levels=0)
    with pytest.raises(ValueError, match="in_channels"):
        VMNet(in_channels=0)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"features": 8}, (2, 2, 32, 32)),
        ({"features": 8}, (1, 2, 16, 48)),
        ({"features": [4, 6, 8, 10, 12], "out_channels": 2}, (2, 2, 32, 32)),
        ({"spatial_dims": 3, "in_channels": 1, "features": 4, "levels": 2}, (2, 1, 8, 12, 8)),
        ({"spatial_dims": 1, "features": 4, "levels": 3}, (2, 2, 24)),
    ],
)
def test_shape_and_range(kwargs: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = VMNet(**kwargs)
    x = torch.rand(shape)
    for mode in ("train", "eval"):
        net.train(mode == "train")
        with torch.no_grad():
            out = net(x)
        assert out.shape == (shape[0], kwargs.get("out_channels", 1), *shape[2:])
        assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
        assert out.std() > 0  # not a constant map


def test_parameter_counts() -> None:
    assert _count(SelectiveUNet(features=128)) == _expected_parameters(2, [128] * 5, 1) == 3_108_225
    assert _count(SelectiveUNet(features=32)) == _expected_parameters(2, [32] * 5, 1) == 196_449
    widths = [4, 6, 8, 10, 12]
    assert _count(SelectiveUNet(in_channels=3, out_channels=2, features=widths)) == _expected_parameters(3, widths, 2)
    assert _count(SelectiveUNet(spatial_dims=3, features=8)) == _expected_parameters(2, [8] * 5, 1, kernel_numel=27)


def test_sequence_widths_are_mirrored() -> None:
    net = SelectiveUNet(in_channels=2, features=[4, 6, 8, 10, 12])
    assert [block[0].out_channels for block in net.down_blocks] == [4, 6, 8, 10]
    assert net.bottleneck[0].out_channels == 12
    # deepest up block first: reads upsampled bottleneck (12) + skip (10), writes 10; the last writes 4
    assert [(block[0].in_channels, block[0].out_channels) for block in net.up_blocks] == [
        (22, 10),
        (18, 8),
        (14, 6),
        (10, 4),
    ]
    assert net.head.in_channels == 4 and net.head.kernel_size == (1, 1)


def test_layer_types_and_init() -> None:
    net = SelectiveUNet(features=8)
    prelus = [m for m in net.modules() if isinstance(m, nn.PReLU)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(prelus) == len(norms) == 2 * (4 + 1 + 4)
    assert all(p.num_parameters == 8 and torch.equal(p.weight, torch.zeros(8)) for p in prelus)
    assert all(n.momentum == 0.01 and n.eps == 1e-3 for n in norms)
    # order inside a block: conv -> PReLU -> BN (BN after the activation)
    assert [type(m) for m in net.down_blocks[0]] == [nn.Conv2d, nn.PReLU, nn.BatchNorm2d] * 2
    conv = net.down_blocks[1][0]
    assert torch.equal(conv.bias, torch.zeros(8))
    assert conv.weight.abs().max() <= (6 / (8 * 9 + 8 * 9)) ** 0.5  # glorot-uniform bound
    assert isinstance(net.pool, nn.MaxPool2d) and net.upsample.mode == "nearest"


def test_non_divisible_size_raises() -> None:
    net = SelectiveUNet(features=4)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels = 16, got size 20"):
        net(torch.zeros(1, 2, 32, 20))
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels = 4, got size 6"):
        SelectiveUNet(spatial_dims=3, features=4, levels=2)(torch.zeros(1, 2, 8, 8, 6))


def test_wrong_rank_or_channels_raise() -> None:
    net = SelectiveUNet(features=4)
    with pytest.raises(ValueError, match=r"4D input.*\[1, 2, 16, 16, 16\]"):
        net(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="expected 2 input channels"):
        net(torch.zeros(1, 1, 16, 16))


def test_output_is_local() -> None:
    """A change of one input pixel changes the output there and leaves pixels beyond the receptive field alone."""
    torch.manual_seed(0)
    net = SelectiveUNet(features=4, levels=1).eval()  # receptive field well under 32 pixels
    x = torch.rand(1, 2, 48, 48)
    y = x.clone()
    y[0, 0, 5, 5] += 1.0
    with torch.no_grad():
        diff = (net(y) - net(x)).abs()[0, 0]
    assert diff[5, 5] > 0 and diff[5, 47] == 0 and diff[47, 5] == 0 and diff[40:, 40:].max() == 0


# ---------------------------------------------------------------------------------------------------------------------
# DIPNet
# ---------------------------------------------------------------------------------------------------------------------


def _dip(**kwargs) -> DIPNet:
    kwargs.setdefault("features", 8)
    return DIPNet(kwargs.pop("num_images", 2), kwargs.pop("spatial_size", (32, 32)), **kwargs)


def test_dip_ill_opts() -> None:
    with pytest.raises(ValueError, match="num_images"):
        _dip(num_images=0)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels = 16, got size 24"):
        _dip(spatial_size=(32, 24))
    with pytest.raises(ValueError, match="spatial_size"):
        _dip(spatial_size=(16, 16, 16, 16))
    with pytest.raises(ValueError, match="noise_max"):
        _dip(noise_max=0.0)
    with pytest.raises(ValueError, match="perturb_std"):
        _dip(perturb_std=-0.1)
    with pytest.raises(ValueError, match="noise_channels"):
        _dip(noise_channels=0)


def test_noise_buffer_fixed_range_and_seeded() -> None:
    net = _dip(num_images=3)
    noise = net.noise
    assert noise.shape == (3, 32, 32, 32) and noise.dtype == torch.float32
    assert "noise" in dict(net.named_buffers()) and all(p is not noise for p in net.parameters())
    assert noise.min() >= 0 and noise.max() <= 0.1
    # U(0, 0.1): mean 0.05, std 0.1 / sqrt(12) = 0.0289 over 98304 values
    assert abs(noise.mean().item() - 0.05) < 1e-3 and abs(noise.std().item() - 0.1 / 12**0.5) < 1e-3
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])
    assert torch.equal(_dip(num_images=3).noise, noise)  # same seed, same noise
    assert not torch.equal(_dip(num_images=3, seed=1).noise, noise)
    assert _dip(noise_max=0.5, noise_channels=4).noise.max() > 0.4


def test_noise_fixed_across_calls_in_eval_mode() -> None:
    net = _dip().eval()
    first = net.network_input([1, 0])
    assert torch.equal(first, net.noise[[1, 0]])
    assert torch.equal(net.network_input(torch.tensor([1, 0])), first)
    with torch.no_grad():
        assert torch.equal(net([0, 1]), net([0, 1]))
    assert torch.equal(net.network_input([0], perturb=False), net.noise[:1])


def test_noise_saved_and_restored_via_state_dict() -> None:
    net = _dip(seed=3)
    state = net.state_dict()
    assert torch.equal(state["noise"], net.noise)
    other = _dip(seed=None)
    assert not torch.equal(other.noise, net.noise)
    other.load_state_dict(state)
    assert torch.equal(other.noise, net.noise)
    with torch.no_grad():
        assert torch.equal(other.eval()([0, 1]), net.eval()([0, 1]))


def test_perturbation_statistics_in_train_mode() -> None:
    torch.manual_seed(0)
    net = _dip().train()
    inputs = net.network_input([0, 1])
    perturbation = inputs - net.noise
    # N(0, 0.01^2) over 65536 values: the standard error of the std is 0.01 / sqrt(2 * 65536) = 2.8e-5
    assert abs(perturbation.std().item() - 0.01) < 2e-4
    assert abs(perturbation.mean().item()) < 2e-4
    again = net.network_input([0, 1]) - net.noise
    assert not torch.equal(again, perturbation)  # fresh each call (= each epoch)
    assert abs(again.std().item() - 0.01) < 2e-4
    # switched off explicitly, or by eval mode
    assert torch.equal(net.network_input([0, 1], perturb=False), net.noise)
    assert torch.equal(net.eval().network_input([0, 1]), net.noise)
    assert not torch.equal(net.network_input([0, 1], perturb=True), net.noise)
    assert torch.equal(_dip(perturb_std=0.0).train().network_input([0]), _dip().noise[:1])


def test_forward_feeds_the_perturbed_input_to_the_unet() -> None:
    net = _dip().train()
    seen: list[torch.Tensor] = []
    net.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(5)
    out = net([1, 0])
    torch.manual_seed(5)
    expected = net.network_input([1, 0])
    assert torch.equal(seen[0], expected)
    assert out.shape == (2, 1, 32, 32) and (out >= 0).all() and (out <= 1).all()


def test_bad_indices_raise() -> None:
    net = _dip()
    with pytest.raises(IndexError, match=r"\[0, 2\).*\[0, 2\]"):
        net([0, 2])
    with pytest.raises(IndexError, match="-1"):
        net([-1])
    with pytest.raises(ValueError, match="integer"):
        net(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-empty 1D"):
        net([])
    with pytest.raises(ValueError, match="non-empty 1D"):
        net(torch.tensor([[0, 1]]))


def test_dip_3d() -> None:
    net = DIPNet(1, (8, 8, 8), noise_channels=4, features=4, levels=2).eval()
    assert net.noise.shape == (1, 4, 8, 8, 8)
    with torch.no_grad():
        assert net([0]).shape == (1, 1, 8, 8, 8)


# ---------------------------------------------------------------------------------------------------------------------
# SelectivePair
# ---------------------------------------------------------------------------------------------------------------------


def _pair(with_dip: bool = True) -> SelectivePair:
    torch.manual_seed(0)
    return SelectivePair(VMNet(features=8), _dip() if with_dip else None)


def test_pair_training_is_hadamard_product() -> None:
    pair = _pair().train()
    x = torch.rand(2, 2, 32, 32)
    torch.manual_seed(1)
    out = pair(x, indices=[0, 1])
    assert set(out) == {"u", "u_vm", "u_dip"}
    assert torch.equal(out["u"], out["u_vm"] * out["u_dip"])
    torch.manual_seed(1)
    u_vm = pair.vm_net(x)  # the same batch statistics in train mode
    torch.manual_seed(1)
    u_dip = pair.dip_net([0, 1])
    assert torch.allclose(out["u_vm"], u_vm) and torch.allclose(out["u_dip"], u_dip)
    assert not torch.equal(out["u"], out["u_vm"])


def test_pair_test_time_is_vm_only() -> None:
    pair = _pair().eval()
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        out = pair(x)
        assert out["u_dip"] is None
        assert torch.equal(out["u"], out["u_vm"]) and torch.equal(out["u"], pair.predict(x))
        assert torch.equal(pair.predict(x), pair.vm_net(x))
        no_dip = _pair(with_dip=False).eval()
        out = no_dip(x, indices=[0, 1])  # indices are ignored without a DIP-Net (methods M1, M2)
        assert out["u_dip"] is None and torch.equal(out["u"], no_dip.predict(x))


def test_pair_shape_mismatch_raises() -> None:
    pair = _pair()
    with pytest.raises(ValueError, match=r"u_dip shape \[1, 1, 32, 32\].*u_vm shape \[2, 1, 32, 32\]"):
        pair(torch.rand(2, 2, 32, 32), indices=[0])


def test_gradients_reach_both_networks() -> None:
    pair = _pair().train()
    out = pair(torch.rand(2, 2, 32, 32), indices=torch.tensor([0, 1]))
    out["u"].sum().backward()
    for name, unet in (("vm", pair.vm_net), ("dip", pair.dip_net.unet)):
        grads = [p.grad for p in unet.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert unet.head.weight.grad.abs().sum() > 0, name
        assert unet.down_blocks[0][0].weight.grad.abs().sum() > 0, name
    assert pair.dip_net.noise.grad is None
