"""Unit tests of pipeline.training.finetune: freezing, checkpoint loading, labelled-slice subsets, label-only loss."""

from __future__ import annotations

import torch

from losses import ActiveContourLabelLoss, LabelOnlyLoss
from networks import RCNN
from pipeline.io.files import load_weights
from pipeline.training.finetune import LabelledSlices, freeze_blocks, trainable_parameters, unlabelled


def test_freeze_blocks_keeps_first_block_and_its_bn_stats():
    torch.manual_seed(0)
    net = freeze_blocks(RCNN(features=4), 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(trainable_parameters(net), lr=1e-2)
    net.train()
    assert not net.blocks[0].training and net.blocks[1].training
    for _ in range(2):
        opt.zero_grad()
        net(torch.rand(2, 1, 16, 16)).sum().backward()
        opt.step()
    after = net.state_dict()
    for k in before:
        if k.startswith("blocks.0."):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.1."))


def test_load_weights_accepts_bare_and_nested_state(tmp_path):
    src, dst = RCNN(features=4), RCNN(features=4)
    torch.save(src.state_dict(), tmp_path / "a.pt")
    torch.save({"model": src.state_dict()}, tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        load_weights(dst, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


class _FakeSlices:
    label_key, labelled_key = "label", "labelled"

    def __init__(self):
        lab = torch.zeros(1, 4, 4, 5)
        lab[..., 1] = 1
        lab[..., 3] = 1
        lab[..., 4] = 1
        self.volumes = [{"label": lab}, {"label": lab}]
        self.index = [(v, z) for v in range(2) for z in range(5)]

    def __getitem__(self, i):
        v, z = self.index[i]
        return {"image": torch.zeros(1, 4, 4), "label": self.volumes[v]["label"][..., z], "labelled": False,
                "slice": z, "vol": v}


def test_labelled_slices_first_and_spread():
    ds = LabelledSlices(_FakeSlices(), 4)
    assert ds.indices == [1, 3, 4, 6] and len(ds) == 4
    assert all(ds[i]["labelled"] is True for i in range(4))
    spread = LabelledSlices(_FakeSlices(), 3, order="spread")
    assert spread.indices == [1, 4, 9]


def test_label_only_loss_uses_labelled_samples_only():
    pred, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    loss = LabelOnlyLoss()(pred, pred, target, torch.tensor([True, False, True]))
    ref = ActiveContourLabelLoss(reduction="sum")(pred[[0, 2]], target[[0, 2]]) / 3
    torch.testing.assert_close(loss, ref)
    assert float(LabelOnlyLoss()(pred, pred, target, [False] * 3)) == 0.0
    assert all(d["labelled"] is False for d in unlabelled([{"labelled": True}, {}]))
