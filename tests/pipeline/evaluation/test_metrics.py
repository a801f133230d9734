"""Per-case precision / recall metrics and handlers (pipeline.evaluation.metrics) on hand-counted masks."""

import math

import pytest
import torch
from ignite.engine import Engine

from pipeline.evaluation.metrics import OverlapRatioMetric, Precision, Recall


def _masks():
    # case 0: gt = 4 pixels, pred = 5 pixels, 3 in common -> precision 3/5, recall 3/4
    gt0 = torch.zeros(4, 4)
    gt0[0, 0:4] = 1
    pred0 = torch.zeros(4, 4)
    pred0[0, 1:4] = 1
    pred0[1, 0:2] = 1
    # case 1: empty prediction, gt 2 pixels -> precision NaN (excluded), recall 0
    gt1 = torch.zeros(4, 4)
    gt1[3, 3] = gt1[2, 3] = 1
    pred1 = torch.zeros(4, 4)
    pred = torch.stack([pred0, pred1])[:, None]
    gt = torch.stack([gt0, gt1])[:, None]
    return pred, gt


def test_precision_recall_values():
    pred, gt = _masks()
    precision = OverlapRatioMetric("precision")
    recall = OverlapRatioMetric("recall")
    p = precision(pred, gt)
    r = recall(pred, gt)
    assert p[0, 0].item() == pytest.approx(0.6)
    assert math.isnan(p[1, 0].item())
    assert r[:, 0].tolist() == pytest.approx([0.75, 0.0])
    assert precision.aggregate().item() == pytest.approx(0.6)  # NaN case left out
    assert recall.aggregate().item() == pytest.approx(0.375)


def test_background_channel_dropped_and_errors():
    pred, gt = _masks()
    two = torch.cat([1 - pred, pred], dim=1)
    two_gt = torch.cat([1 - gt, gt], dim=1)
    out = OverlapRatioMetric("recall", include_background=False)(two, two_gt)
    assert out.shape == (2, 1)
    assert out[:, 0].tolist() == pytest.approx([0.75, 0.0])
    with pytest.raises(ValueError, match="kind"):
        OverlapRatioMetric("f1")
    with pytest.raises(ValueError, match="same shape"):
        OverlapRatioMetric("precision")(pred, gt[:, :, :2])


def test_handlers_keep_per_case_details():
    pred, gt = _masks()
    engine = Engine(lambda e, b: (list(pred), list(gt)))
    Precision().attach(engine, "p")
    Recall().attach(engine, "r")
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["p"] == pytest.approx(0.6)
    assert engine.state.metrics["r"] == pytest.approx(0.375)
    assert engine.state.metric_details["r"].reshape(-1).tolist() == pytest.approx([0.75, 0.0])
