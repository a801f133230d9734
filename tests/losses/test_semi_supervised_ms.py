"""Tests of losses.SemiSupervisedMumfordShahLoss (eqs. 16-18 of Kim & Ye 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import MumfordShahLoss, SemiSupervisedMumfordShahLoss


def make_batch(
    batch: int = 4, classes: int = 2, channels: int = 3, spatial: tuple[int, ...] = (6, 5), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((batch, classes, *spatial), generator=gen, dtype=torch.float64)
    image = torch.rand((batch, channels, *spatial), generator=gen, dtype=torch.float64)
    target = torch.randint(0, classes, (batch, 1, *spatial), generator=gen)
    return logits, image, target


@pytest.mark.parametrize("ms_reduction", ["mean", "sum"])
def test_ce_only_from_labelled_samples(ms_reduction: str) -> None:
    logits, image, target = make_batch()
    labelled = [True, False, True, False]
    beta = 0.7
    loss = SemiSupervisedMumfordShahLoss(beta=beta, ms_reduction=ms_reduction)
    total = loss(logits, image, target, labelled)
    idx = torch.tensor([0, 2])
    ce = F.cross_entropy(logits[idx], target[idx, 0])
    ms = MumfordShahLoss(tv_weight=1e-3, reduction=ms_reduction)(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, ce + beta * ms)
    np.testing.assert_allclose(loss.last_ce, ce.item(), rtol=1e-10)
    np.testing.assert_allclose(loss.last_ms, ms.item(), rtol=1e-10)
    assert isinstance(loss.last_ce, float) and isinstance(loss.last_ms, float)
    # changing the targets of unlabelled samples (even to invalid placeholders) does not change anything
    target2 = target.clone()
    target2[1] = 255
    target2[3] = -1
    torch.testing.assert_close(loss(logits, image, target2, labelled), total)


def test_ce_matches_eq18_by_hand() -> None:
    """Eq. (18): -(1/P) Σ_i Σ_n g_n(i) log y_n(i), averaged over the labelled samples, written out explicitly."""
    logits, image, target = make_batch(batch=3, classes=3, spatial=(4, 4), seed=4)
    labelled = torch.tensor([False, True, True])
    loss = SemiSupervisedMumfordShahLoss(beta=0.0)
    total = loss(logits, image, target, labelled)
    logp = torch.log_softmax(logits, dim=1).numpy()
    g = target[:, 0].numpy()
    values = []
    for b in (1, 2):
        for i in range(4):
            for j in range(4):
                values.append(-logp[b, g[b, i, j], i, j])
    np.testing.assert_allclose(total.item(), np.mean(values), rtol=1e-10)


def test_no_labelled_samples_gives_beta_times_ms() -> None:
    logits, image, target = make_batch()
    logits.requires_grad_(True)
    beta = 2.5
    loss = SemiSupervisedMumfordShahLoss(beta=beta)
    total = loss(logits, image, target, torch.zeros(4, dtype=torch.bool))
    ms = MumfordShahLoss(reduction="mean")(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, beta * ms)
    assert loss.last_ce == 0.0
    total.backward()  # the zero CE keeps the graph valid
    assert torch.all(torch.isfinite(logits.grad))


def test_all_labelled_and_sum_reduction() -> None:
    logits, image, target = make_batch(seed=2)
    loss = SemiSupervisedMumfordShahLoss(beta=1e-3, ms_reduction="sum", reduction="sum")
    total = loss(logits, image, target, [1, 1, 1, 1])
    ce = F.cross_entropy(logits, target[:, 0], reduction="sum")
    ms = MumfordShahLoss(reduction="sum")(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, ce + 1e-3 * ms)


def test_class_weights_applied() -> None:
    logits, image, target = make_batch(classes=3, seed=3)
    weights = [0.2, 1.0, 3.0]
    labelled = [False, True, True, True]
    loss = SemiSupervisedMumfordShahLoss(beta=0.5, ce_weight=weights)
    total = loss(logits, image, target, labelled)
    ce = F.cross_entropy(logits[1:], target[1:, 0], weight=torch.tensor(weights, dtype=torch.float64))
    ms = MumfordShahLoss(reduction="mean")(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, ce + 0.5 * ms)
    unweighted = SemiSupervisedMumfordShahLoss(beta=0.5)(logits, image, target, labelled)
    assert not torch.isclose(total, unweighted)


def test_ce_weight_length_mismatch_raises() -> None:
    logits, image, target = make_batch(classes=2)
    with pytest.raises(ValueError, match="3 entries.*N = 2"):
        SemiSupervisedMumfordShahLoss(ce_weight=[1.0, 1.0, 1.0])(logits, image, target, [True] * 4)
    with pytest.raises(ValueError, match="ce_weight"):
        SemiSupervisedMumfordShahLoss(ce_weight=[1.0, -1.0])


def test_ce_on_probabilities_reproduces_double_softmax() -> None:
    logits, image, target = make_batch(seed=5)
    labelled = [True, True, False, False]
    loss = SemiSupervisedMumfordShahLoss(beta=0.3, ce_on_probabilities=True)
    total = loss(logits, image, target, labelled)
    probs = torch.clamp(torch.softmax(logits, 1), 1e-10, 1.0)
    ce = F.cross_entropy(probs[:2], target[:2, 0])  # log_softmax of probabilities: softmax applied twice
    ms = MumfordShahLoss(reduction="mean")(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, ce + 0.3 * ms)
    default = SemiSupervisedMumfordShahLoss(beta=0.3)(logits, image, target, labelled)
    assert not torch.isclose(total, default)


def test_none_reduction_per_sample() -> None:
    logits, image, target = make_batch(seed=6)
    labelled = [True, False, True, True]
    beta = 0.9
    for ms_reduction in ("mean", "sum"):
        loss = SemiSupervisedMumfordShahLoss(beta=beta, ms_reduction=ms_reduction, reduction="none")
        out = loss(logits, image, target, labelled)
        assert out.shape == (4,)
        ms_none = MumfordShahLoss(reduction="none")(torch.softmax(logits, 1), image).reshape(4, 2)
        ms_b = ms_none.mean(1) if ms_reduction == "mean" else ms_none.sum(1) * (3 * 30)
        for b in range(4):
            ce_b = F.cross_entropy(logits[b : b + 1], target[b : b + 1, 0]) if labelled[b] else 0.0
            torch.testing.assert_close(out[b], ce_b + beta * ms_b[b])


def test_float_targets_and_channel_free_targets() -> None:
    logits, image, target = make_batch(seed=7)
    loss = SemiSupervisedMumfordShahLoss(beta=0.1)
    ref = loss(logits, image, target, [True, True, False, True])
    torch.testing.assert_close(loss(logits, image, target.double(), [True, True, False, True]), ref)
    torch.testing.assert_close(loss(logits, image, target[:, 0], [True, True, False, True]), ref)
    with pytest.raises(ValueError, match="integer"):
        loss(logits, image, target.double() + 0.5, [True, True, False, True])


@pytest.mark.parametrize("bad_value", [2, -1, 7])
def test_bad_target_value_raises(bad_value: int) -> None:
    logits, image, target = make_batch(classes=2)
    target[0, 0, 0, 0] = bad_value
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SemiSupervisedMumfordShahLoss()(logits, image, target, [True, False, False, False])


@pytest.mark.parametrize("labelled", [[True, False, True], [True] * 5, torch.ones(2, 2, dtype=torch.bool)])
def test_bad_labelled_length_raises(labelled) -> None:
    logits, image, target = make_batch()
    with pytest.raises(ValueError, match="length 4"):
        SemiSupervisedMumfordShahLoss()(logits, image, target, labelled)


def test_bad_labelled_values_raise() -> None:
    logits, image, target = make_batch()
    with pytest.raises(ValueError, match="labelled"):
        SemiSupervisedMumfordShahLoss()(logits, image, target, [0, 1, 2, 0])


def test_shape_errors() -> None:
    logits, image, target = make_batch()
    loss = SemiSupervisedMumfordShahLoss()
    with pytest.raises(ValueError, match="target"):
        loss(logits, image, target[..., :-1], [True] * 4)
    with pytest.raises(ValueError, match=r"\(4, 2, 6, 5\).*\(4, 3, 6, 4\)"):
        loss(logits, image[..., :-1], target, [True] * 4)
    with pytest.raises(ValueError, match="two channels"):
        loss(logits[:, :1], image, target * 0, [True] * 4)
    with pytest.raises(ValueError, match="ms_reduction"):
        SemiSupervisedMumfordShahLoss(ms_reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        SemiSupervisedMumfordShahLoss(reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        SemiSupervisedMumfordShahLoss(beta=-1.0)


def test_3d_inputs() -> None:
    logits, image, target = make_batch(batch=2, classes=3, channels=1, spatial=(3, 4, 3), seed=8)
    loss = SemiSupervisedMumfordShahLoss(beta=0.4)
    total = loss(logits, image, target, [False, True])
    ce = F.cross_entropy(logits[1:], target[1:, 0])
    ms = MumfordShahLoss(reduction="mean")(torch.softmax(logits, 1), image)
    torch.testing.assert_close(total, ce + 0.4 * ms)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("ce_on_probabilities", [False, True])
def test_gradcheck_wrt_logits(reduction: str, ce_on_probabilities: bool) -> None:
    logits, image, target = make_batch(batch=2, classes=3, channels=2, spatial=(4, 4), seed=9)
    logits.requires_grad_(True)
    loss = SemiSupervisedMumfordShahLoss(
        beta=0.5, tv_weight=0.1, ce_weight=[1.0, 2.0, 0.5], ce_on_probabilities=ce_on_probabilities, reduction=reduction
    )
    assert torch.autograd.gradcheck(lambda z: loss(z, image, target, [True, False]), (logits,), eps=1e-6, atol=1e-5)
