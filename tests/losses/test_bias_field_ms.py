"""Tests of losses.BiasFieldMumfordShahLoss (Kim & Ye 2020, eqs. 19-20) against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losses import BiasFieldMumfordShahLoss, MumfordShahLoss


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """B=1, N=2, C=1, 2x2 image; the network output holds y_0, y_1 and the bias b (already positive).

    x = [[1, 2], [3, 4]], y_1 = [[0.75, 0.5], [0.25, 0.5]], y_0 = 1 - y_1 = [[0.25, 0.5], [0.75, 0.5]],
    b = [[1, 2], [1, 2]].

    eq. (20), c_n = sum(b x y_n) / sum(b^2 y_n):
      c_1: numerator 1*1*0.75 + 2*2*0.5 + 1*3*0.25 + 2*4*0.5 = 0.75 + 2 + 0.75 + 4 = 7.5
           denominator 1*0.75 + 4*0.5 + 1*0.25 + 4*0.5 = 5              -> c_1 = 1.5
      c_0: numerator 1*1*0.25 + 2*2*0.5 + 1*3*0.75 + 2*4*0.5 = 0.25 + 2 + 2.25 + 4 = 8.5
           denominator 1*0.25 + 4*0.5 + 1*0.75 + 4*0.5 = 5              -> c_0 = 1.7
    data term, sum (x - b c_n)^2 y_n:
      n=1: (1-1.5)^2*0.75 + (2-3)^2*0.5 + (3-1.5)^2*0.25 + (4-3)^2*0.5 = 0.1875 + 0.5 + 0.5625 + 0.5 = 1.75
      n=0: (1-1.7)^2*0.25 + (2-3.4)^2*0.5 + (3-1.7)^2*0.75 + (4-3.4)^2*0.5 = 0.1225 + 0.98 + 1.2675 + 0.18 = 2.55
    TV(y_n) (anisotropic L1): rows |0.25-0.75| + |0.5-0.5| = 0.5, columns |0.5-0.75| + |0.5-0.25| = 0.5 -> 1 each
    TV(b): rows 0 + 0, columns |2-1| + |2-1| -> 2
    """
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    y1 = torch.tensor([[0.75, 0.5], [0.25, 0.5]], dtype=torch.float64)
    bias = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    return torch.stack([1.0 - y1, y1, bias])[None], x


def _exact(**kwargs) -> BiasFieldMumfordShahLoss:
    """The loss with the bias taken as given and no epsilons, so that values are exactly eqs. (19)-(20)."""
    return BiasFieldMumfordShahLoss(bias_activation="none", bias_eps=0.0, eps=0.0, **kwargs)


LAM, GAMMA = 0.1, 0.5
DATA = (2.55, 1.75)  # per class n = 0, 1
SUM = 2.55 + 1.75 + LAM * (1.0 + 1.0) + GAMMA * 2.0  # = 5.5


def test_hand_values_sum_mean_none() -> None:
    output, image = hand_case()
    total = _exact(tv_weight=LAM, bias_tv_weight=GAMMA, reduction="sum")(output, image)
    assert total.item() == pytest.approx(SUM) and SUM == pytest.approx(5.5)
    # mean: sum / (B N C P) = 5.5 / (1 * 2 * 1 * 4)
    mean = _exact(tv_weight=LAM, bias_tv_weight=GAMMA, reduction="mean")(output, image)
    assert mean.item() == pytest.approx(0.6875)
    # none: (data_n + lam TV(y_n) + gamma TV(b) / N) / (C P)
    none = _exact(tv_weight=LAM, bias_tv_weight=GAMMA, reduction="none")(output, image)
    assert none.shape == (1, 2, 1, 1)
    expected = [(DATA[n] + LAM * 1.0 + GAMMA * 2.0 / 2) / 4 for n in range(2)]  # 0.7875, 0.5875
    torch.testing.assert_close(none.flatten(), torch.tensor(expected, dtype=torch.float64))


def test_hand_terms() -> None:
    output, image = hand_case()
    terms = _exact(tv_weight=LAM, bias_tv_weight=GAMMA, reduction="sum").terms(output, image)
    assert terms["data"].item() == pytest.approx(2.55 + 1.75)
    assert terms["tv"].item() == pytest.approx(LAM * 2.0)
    assert terms["bias_tv"].item() == pytest.approx(GAMMA * 2.0)


def test_unit_bias_reduces_to_mumford_shah() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64), dim=1)
    image = torch.rand(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    output = torch.cat([probs, torch.ones(2, 1, 6, 5, dtype=torch.float64)], dim=1)
    for reduction in ("sum", "mean", "none"):
        ours = _exact(tv_weight=0.3, bias_tv_weight=0.7, reduction=reduction)
        reference = MumfordShahLoss(tv_weight=0.3, reduction=reduction, eps=0.0)
        torch.testing.assert_close(ours.terms(output, image)["data"], reference.terms(probs, image)["data"])
        torch.testing.assert_close(ours(output, image), reference(probs, image))  # TV(b) = 0 for b = 1
    # softplus activation: raw = log(e - 1) gives b = 1 exactly (bias_eps = 0), logits via softmax
    logits = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    raw = torch.full((2, 1, 6, 5), torch.log(torch.expm1(torch.tensor(1.0, dtype=torch.float64))).item(),
                     dtype=torch.float64)
    ours = BiasFieldMumfordShahLoss(softmax=True, bias_eps=0.0, eps=0.0)(torch.cat([logits, raw], 1), image)
    torch.testing.assert_close(ours, MumfordShahLoss(softmax=True, eps=0.0)(logits, image))


def test_bias_tv_weight_increases_loss_for_non_constant_bias() -> None:
    output, image = hand_case()
    values = [_exact(tv_weight=LAM, bias_tv_weight=g, reduction="sum")(output, image).item() for g in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]
    assert values[2] - values[0] == pytest.approx(2.0 * 2.0)  # gamma * TV(b)
    constant = output.clone()
    constant[:, 2] = 1.5
    flat = [_exact(bias_tv_weight=g, reduction="sum")(constant, image).item() for g in (0.0, 2.0)]
    assert flat[0] == pytest.approx(flat[1])


def test_bias_absorbs_multiplicative_field() -> None:
    """A piecewise-constant image times a known field: the true field fits it exactly (zero data term)."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    field = torch.linspace(0.5, 1.5, 8, dtype=torch.float64).reshape(1, 1, 1, 8).expand(1, 1, 8, 8)
    image = field * torch.where(labels == 1, 3.0, 1.0).to(torch.float64).unsqueeze(1)
    y = F.one_hot(labels, 2).permute(0, 3, 1, 2).to(torch.float64)
    loss = _exact(tv_weight=0.0, bias_tv_weight=0.0, reduction="sum")
    assert loss(torch.cat([y, field], 1), image).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(torch.cat([y, torch.ones_like(field)], 1), image).item() > 1.0


def test_per_channel_bias() -> None:
    output, image = hand_case()
    two = torch.cat([image, 2.0 * image], dim=1)  # channel 1 = 2 x channel 0: same residual shape, 4x the data term
    per_channel = torch.cat([output, output[:, 2:]], dim=1)  # same bias for both channels
    value = _exact(tv_weight=0.0, bias_tv_weight=0.0, reduction="sum", per_channel_bias=True)(per_channel, two)
    assert value.item() == pytest.approx((2.55 + 1.75) * (1 + 4))
    shared = _exact(tv_weight=0.0, bias_tv_weight=0.0, reduction="sum")(output, two)
    assert shared.item() == pytest.approx(value.item())


def test_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    output = torch.randn(1, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    image = torch.rand(1, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = BiasFieldMumfordShahLoss(tv_weight=0.2, bias_tv_weight=0.3, softmax=True, reduction="mean")
    assert torch.autograd.gradcheck(loss, (output, image), eps=1e-6, atol=1e-6)
    output3d = torch.randn(1, 3, 2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    image3d = torch.rand(1, 1, 2, 2, 2, generator=gen, dtype=torch.float64)
    loss = BiasFieldMumfordShahLoss(bias_tv_weight=0.3, softmax=True, bias_activation="exp", reduction="sum")
    assert torch.autograd.gradcheck(lambda o: loss(o, image3d), (output3d,), eps=1e-6, atol=1e-6)


def test_default_softplus_bias_is_positive_and_trains() -> None:
    gen = torch.Generator().manual_seed(1)
    output = torch.randn(2, 3, 8, 8, generator=gen) * 5
    image = torch.rand(2, 1, 8, 8, generator=gen)
    loss = BiasFieldMumfordShahLoss(softmax=True)
    assert bool((loss.bias_field(output, image) > 0).all())
    output.requires_grad_(True)
    loss(output, image).backward()
    assert torch.isfinite(output.grad).all() and output.grad[:, 2].abs().sum() > 0


def test_ill_options_and_shapes() -> None:
    for kwargs in ({"bias_tv_weight": -1.0}, {"bias_eps": -1.0}, {"bias_activation": "relu"}, {"reduction": "max"},
                   {"tv_weight": -0.1}):
        with pytest.raises(ValueError):
            BiasFieldMumfordShahLoss(**kwargs)
    image = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="bias"):
        BiasFieldMumfordShahLoss(softmax=True)(torch.rand(1, 2, 4, 4), image)  # 1 class + bias
    with pytest.raises(ValueError, match="bias"):
        BiasFieldMumfordShahLoss()(torch.rand(1, 1, 4, 4), image)  # no class channel
    with pytest.raises(ValueError, match="bias"):
        BiasFieldMumfordShahLoss(per_channel_bias=True)(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="spatial shape"):
        BiasFieldMumfordShahLoss()(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 5))
