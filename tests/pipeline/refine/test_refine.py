"""Iterative refinement: the loop respects k and the early stop (scripted network), helpers on hand-computed values,
the training dataset, a tiny end-to-end workflow, the refine predictor and the batch CSV's quality column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from networks import QualityUNet
from pipeline.evaluation.metrics import dice_jaccard
from pipeline.refine.iteration import (
    choose_k,
    iterate_refinement,
    pearson_r,
    stack_slices,
    stop_step,
    volume_quality,
)
from pipeline.refine.predictors import RefinePredictor
from pipeline.refine.data import BaseMasks, RefineCase, RefineSliceDataset
from pipeline.refine.engine import RefinementRounds, RefineTrainer
from pipeline.refine.evaluation import RefineEvaluation

pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedNet(nn.Module):
    """Grows the mask by one row per pass (the refined mask) and returns the next scripted quality."""

    def __init__(self, qualities: list[float]) -> None:
        super().__init__()
        self.qualities = list(qualities)
        self.calls = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        q = self.qualities[self.calls]
        self.calls += 1
        grown = mask.clone()
        rows = mask.any(dim=-1)  # (N, 1, H)
        last = rows.float().cumsum(-1).argmax(-1)  # index of the last foreground row
        for n in range(mask.shape[0]):
            grown[n, 0, min(int(last[n, 0]) + 1, mask.shape[2] - 1)] = 1
        logits = torch.where(grown > 0, 5.0, -5.0)
        return logits, torch.full((x.shape[0], 1), q)


def _inputs(n: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(n, 1, size, size)
    mask[:, 0, 0, :] = 1  # one foreground row
    return torch.zeros(n, 1, size, size), mask


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3])
def test_loop_respects_k(k: int) -> None:
    net = ScriptedNet([0.1, 0.2, 0.3, 0.4, 0.5])
    x, mask = _inputs()
    trace = iterate_refinement(net, x, mask, k)
    assert trace.steps == k and not trace.stopped_early
    assert net.calls == trace.forward_passes == k + 1  # the result's quality comes with one more pass
    assert len(trace.masks) == k + 1
    # each step adds one foreground row to each of the 2 slices (8 voxels per row)
    assert [int(m.sum()) for m in trace.masks] == [2 * 8 * (i + 1) for i in range(k + 1)]
    assert trace.qualities == pytest.approx([0.1, 0.2, 0.3, 0.4][: k + 1])
    assert trace.quality == pytest.approx(0.1 * (k + 1))


def test_early_stop_keeps_the_mask_before_the_drop() -> None:
    net = ScriptedNet([0.5, 0.7, 0.65, 0.9, 0.95])
    x, mask = _inputs()
    trace = iterate_refinement(net, x, mask, 4, early_stop=True)
    assert trace.stopped_early and trace.steps == 1
    assert net.calls == trace.forward_passes == 3  # step 2 was computed and its quality (0.65 < 0.7) stopped it
    assert int(trace.mask.sum()) == 2 * 8 * 2  # the mask after one step
    assert trace.quality == pytest.approx(0.7)
    assert stop_step([0.5, 0.7, 0.65, 0.9, 0.95], 4) == 1


def test_early_stop_min_delta_and_flat_quality() -> None:
    x, mask = _inputs()
    # a rise of 0.01 does not count with min_delta 0.05: stop after step 0
    trace = iterate_refinement(ScriptedNet([0.5, 0.51, 0.9]), x, mask, 2, early_stop=True, min_delta=0.05)
    assert trace.steps == 0 and trace.stopped_early and int(trace.mask.sum()) == 16
    # equal quality is not a rise
    assert iterate_refinement(ScriptedNet([0.5, 0.5, 0.9]), x, mask, 2, early_stop=True).steps == 0
    # rising all the way: no early stop, k steps
    trace = iterate_refinement(ScriptedNet([0.1, 0.2, 0.3]), x, mask, 2, early_stop=True)
    assert trace.steps == 2 and not trace.stopped_early


def test_stop_step_matches_the_loop() -> None:
    scripts = [[0.2, 0.3, 0.25, 0.4], [0.9, 0.8, 0.95, 0.99], [0.1, 0.2, 0.3, 0.4]]
    x, mask = _inputs()
    for q in scripts:
        for k in range(4):
            trace = iterate_refinement(ScriptedNet(q + [1.0]), x, mask, k, early_stop=True)
            assert trace.steps == stop_step(q, k)


def test_loop_ill_inputs() -> None:
    x, mask = _inputs()
    with pytest.raises(ValueError, match="iterations must be >= 0, got -1"):
        iterate_refinement(ScriptedNet([0.1]), x, mask, -1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\), got \(2, 1, 8, 8\) and \(2, 2, 8, 8\)"):
        iterate_refinement(ScriptedNet([0.1]), x, torch.zeros(2, 2, 8, 8), 1)
    with pytest.raises(ValueError, match="qualities of steps 0..3"):
        stop_step([0.1, 0.2], 3)


def test_padding_for_the_network_is_cropped_back() -> None:
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3).eval()
    image, mask = torch.randn(3, 1, 10, 13), torch.zeros(3, 1, 10, 13)
    trace = iterate_refinement(net, image, mask, 2, divisor=4)
    assert [tuple(m.shape) for m in trace.masks] == [(3, 1, 10, 13)] * 3
    assert all(0.0 <= q <= 1.0 for q in trace.qualities)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def test_volume_quality_hand_computed() -> None:
    """Slices with q = 0.2 (mask 2 voxels, refined 2) and q = 0.8 (mask 1, refined 5): (0.2·4 + 0.8·6) / 10 = 0.56."""
    mask = np.zeros((2, 1, 3, 3), bool)
    refined = np.zeros((2, 1, 3, 3), bool)
    mask[0, 0, 0, :2] = True
    refined[0, 0, 1, :2] = True
    mask[1, 0, 0, 0] = True
    refined[1, 0].flat[:5] = True
    assert volume_quality(np.array([0.2, 0.8]), mask, refined) == pytest.approx(0.56)
    assert volume_quality(np.array([0.2, 0.8]), np.zeros_like(mask), np.zeros_like(refined)) == pytest.approx(0.5)


def test_dice_pearson_choose_k() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True
    b[0, 1:4] = True
    assert dice_jaccard(a, b)[0] == pytest.approx(2 * 1 / 5)
    assert dice_jaccard(np.zeros(3, bool), np.zeros(3, bool))[0] == 1.0
    assert pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert np.isnan(pearson_r([1, 2], [1, 2])) and np.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    assert choose_k([0.5, 0.7, 0.7, 0.6]) == 1  # first best on ties
    with pytest.raises(ValueError, match="cannot choose k"):
        choose_k([])


def test_stack_slices_channel_major_edges_replicated() -> None:
    image = torch.arange(2 * 1 * 1 * 3, dtype=torch.float32).reshape(2, 1, 1, 3)  # channel c, slice z = 3c + z
    x = stack_slices(image, 3)
    assert x.shape == (3, 6, 1, 1)
    assert x[0, :, 0, 0].tolist() == [0, 0, 1, 3, 3, 4]  # c0@z-1 (replicated), c0@z, c0@z+1, c1@...
    assert x[2, :, 0, 0].tolist() == [1, 2, 2, 4, 5, 5]


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _case(name: str, seed: int, shape=(16, 16, 4)) -> RefineCase:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, bool)
    label[4:11, 5:12, :] = True
    image = (label + rng.normal(0, 0.3, shape)).astype(np.float32)
    base = np.roll(label, 2, axis=0)  # a shifted, imperfect base mask
    return RefineCase(name, torch.as_tensor(image)[None], torch.as_tensor(label), torch.as_tensor(base))


def test_dataset_base_and_synthesised_masks() -> None:
    from transforms import RandImperfectMaskd

    cases = [_case("a", 0), _case("b", 1)]
    only_base = RefineSliceDataset(cases, 1, None, base_mask_prob=1.0)
    assert len(only_base) == 8
    item = only_base[5]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == item["label"].shape == (1, 16, 16)
    assert torch.equal(item["mask"][0].bool(), cases[1].base[..., 1])
    aug = lambda: RandImperfectMaskd(keys="mask", morphology_prob=1.0)  # noqa: E731
    first = [RefineSliceDataset(cases, 3, aug(), base_mask_prob=0.0, seed=4)[i]["mask"] for i in range(8)]
    second = [RefineSliceDataset(cases, 3, aug(), base_mask_prob=0.0, seed=4)[i]["mask"] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # reproducible under the seed
    assert any(not torch.equal(m, cases[i // 4].label[..., i % 4][None].float()) for i, m in enumerate(first))
    assert RefineSliceDataset(cases, 3, aug(), base_mask_prob=0.0)[0]["image"].shape == (3, 16, 16)
    strided = RefineSliceDataset(cases, 1, None, slice_stride=2)
    own = torch.ones(1, 16, 16)
    strided.add_masks([(0, 3, own)])
    assert len(strided) == 5 and strided.num_own == 1 and torch.equal(strided[4]["mask"], own)
    with pytest.raises(ValueError, match="at least one case"):
        RefineSliceDataset([], 1)


# ----------------------------------------------------------------------------------------------------------------
# Workflow end to end (tiny)
# ----------------------------------------------------------------------------------------------------------------


class _BaseNet(nn.Module):
    """A 'base model': one conv whose output > 0 roughly thresholds the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _toy_base(tmp_path: Path, base_ckpt: Path) -> tuple[BaseMasks, dict[str, list[dict]]]:
    """Base masks of a thresholding 'base model' and the toy splits: 2 training, 1 validation, 3 test cases."""
    from pipeline.inference.inferers import AdjacentSliceInferer

    def entry(i: int) -> dict:
        c = _case(f"case{i}", i)
        return {"case": c.case, "image": c.image, "label": c.label[None].float()}

    base = BaseMasks("toy", lambda d: d, _BaseNet(), base_ckpt, "python train_toy.py",
                     AdjacentSliceInferer(num_slices=1, divisible=1), lambda out: out[0] > 0,
                     lambda label: label[0] > 0.5, tmp_path / "cache", progress=False)
    return base, {"train": [entry(0), entry(1)], "val": [entry(2)], "test": [entry(3), entry(4), entry(5)]}


def _toy_net() -> nn.Module:
    return QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3, output_bias=-2.0)


def _refinement(tmp_path: Path, base: BaseMasks, splits: dict, factory=_toy_net, num_slices: int = 1,
                self_training: str = "none", max_epochs: int = 2, resume: bool = False, tracker=None):
    """The refinement stage as ``configs/refine.json`` builds it: trainer, rounds, evaluation, checkpoint."""
    import losses
    from pipeline.training.handlers import TrainingCheckpoint
    from transforms import RandImperfectMaskd

    cases = base.load(splits)
    augmentation = RandImperfectMaskd(keys="mask")
    dataset = RefineSliceDataset(cases["train"], num_slices, augmentation, base_mask_prob=0.5, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, drop_last=len(dataset) > 4)
    network = factory()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    rounds = RefinementRounds(dataset, cases["val"], factory, self_training, max_epochs=max_epochs, rounds=1,
                              round_epochs=1, num_slices=num_slices, seed=0, divisor=4)
    evaluation = RefineEvaluation("toy", "q", cases["val"], cases["test"], rounds, augmentation, num_slices,
                                  max_iterations=2, early_stop_delta=0.0, ckpt_dir=tmp_path / "ckpt",
                                  output_dir=tmp_path / "eval", tracker=tracker, divisor=4, progress=False)
    checkpoint = TrainingCheckpoint(tmp_path / "ckpt" / "checkpoints", network, optimizer, resume=resume,
                                    tracker=tracker, extra={"refinement": rounds})
    trainer = RefineTrainer(device=torch.device("cpu"), max_epochs=rounds.total_epochs, train_data_loader=loader,
                            network=network, optimizer=optimizer,
                            loss_function=losses.QualityRegularisedDiceLoss(quality_weight=1.0), divisor=4,
                            progress=False,
                            train_handlers=[rounds, evaluation, *([tracker] if tracker else []), checkpoint])
    return trainer, evaluation


def _base_checkpoint(tmp_path: Path) -> Path:
    base = _BaseNet()
    with torch.no_grad():
        base.conv.weight.zero_()
        base.conv.weight[0, 0, 1, 1] = 1.0
        base.conv.bias.fill_(-0.5)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    return tmp_path / "base.pt"


def test_missing_base_model_names_file_and_command(tmp_path: Path) -> None:
    base, splits = _toy_base(tmp_path, tmp_path / "nope" / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"base model .*nope/model.pt not found.*python train_toy.py"):
        base.load(splits)
    base, splits = _toy_base(tmp_path, _base_checkpoint(tmp_path))
    with pytest.raises(ValueError, match="training .*validation and test cases, got 2 / 0 / 3"):
        base.load({**splits, "val": []})


@pytest.mark.parametrize("self_training", ["none", "warm", "scratch"])
def test_refinement_end_to_end(tmp_path: Path, self_training: str) -> None:
    base, splits = _toy_base(tmp_path, _base_checkpoint(tmp_path))
    trainer, evaluation = _refinement(tmp_path, base, splits, self_training=self_training)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append((e.state.epoch, len(e.data_loader))))
    trainer.run()
    summary = evaluation.summary
    # 2 epochs, then one round: warm trains 1 more epoch, scratch retrains 2; own outputs double the samples
    rounds = {"none": [(1, 2), (2, 2)], "warm": [(1, 2), (2, 2), (3, 4)],
              "scratch": [(1, 2), (2, 2), (3, 4), (4, 4)]}
    assert epochs == rounds[self_training]
    assert {"train_loss", "train_dice_loss", "train_quality_mse", "val_dice_1x"} <= set(trainer.state.metrics)
    assert len(summary["test_dice_per_k"]) == 3 and summary["num_test_cases"] == 3
    assert 0 <= summary["k_val"] <= 2 and summary["test_dice_valk"] == summary["test_dice_per_k"][summary["k_val"]]
    assert summary["num_own_output_samples"] == (0 if self_training == "none" else 8)  # 2 cases x 4 slices, 1 round
    # the base mask (image > 0.5) of the noisy phantom against its square label, recomputed here
    cases = base.load(splits)
    expected = np.mean([dice_jaccard(c.base.numpy(), c.label.numpy())[0] for c in cases["test"]])
    assert summary["test_dice_0x"] == pytest.approx(expected)
    assert len(list((tmp_path / "cache").glob("base_masks_*.pt"))) == 1
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case_test.csv").open()))
    assert [r["case"] for r in rows] == ["case3", "case4", "case5"]
    assert all(0.0 <= float(r["quality_0x"]) <= 1.0 for r in rows)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["variant"] == "q"
    state = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    assert state["k"] == summary["k_val"] and "model" in state
    for k, v in trainer.network.state_dict().items():  # the best weights of the last round, evaluated and saved
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=0)
    es = summary["val_dice_early_stop_per_k"][summary["k_val_early_stop"]]
    fixed = summary["val_dice_per_k"][summary["k_val"]]
    assert state["early_stop"] == summary["early_stop_recommended"] == (es >= fixed)
    saved = torch.load(tmp_path / "ckpt" / "checkpoints" / f"checkpoint_epoch={len(epochs)}.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == len(epochs) * epochs[-1][1]  # epoch boundary, whatever the lengths
    assert len(saved["refinement"]["own_masks"]) == summary["num_own_output_samples"]


def test_refinement_resume_continues_the_same_run_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    """Scratch round (2 + 2 epochs), interrupted after epoch 3 (inside the round, own outputs added) and resumed
    with --resume true: same weights, figures and MLflow run as without the interruption."""
    from pipeline.training.tracking import MLflowTracker

    ckpt = _base_checkpoint(tmp_path)
    store = tmp_path / "mlruns"

    def tracker(name: str) -> MLflowTracker:
        return MLflowTracker("refine-test", run_name=name, bundle="toy", store_dir=store, log_config=False)

    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    base, splits = _toy_base(straight_dir, ckpt)
    torch.manual_seed(0)
    straight, straight_eval = _refinement(straight_dir, base, splits, self_training="scratch")
    straight.run()

    base, splits = _toy_base(resumed_dir, ckpt)
    torch.manual_seed(0)
    first_tracker = tracker("first")
    first, _ = _refinement(resumed_dir, base, splits, self_training="scratch", tracker=first_tracker)

    def crash(engine) -> None:
        raise RuntimeError("simulated crash")

    first.add_event_handler(Events.EPOCH_COMPLETED(once=3), crash)  # after the epoch-3 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.run()
    run_id = first_tracker.run_id
    client = first_tracker._client()
    assert client.get_run(run_id).info.status == "FAILED"

    torch.manual_seed(123)  # whatever the process drew before: the checkpoint restores the generators
    second_tracker = tracker("second")
    second, second_eval = _refinement(resumed_dir, base, splits, self_training="scratch", resume=True,
                                      tracker=second_tracker)
    epochs = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    second.run()
    assert epochs == [4]
    assert second_tracker.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    for k, v in straight.network.state_dict().items():
        torch.testing.assert_close(second.network.state_dict()[k], v, rtol=0, atol=0)
    assert second_eval.summary["test_dice_per_k"] == straight_eval.summary["test_dice_per_k"]
    assert second_eval.summary["num_own_output_samples"] == 8
    history = client.get_metric_history(run_id, "val_dice_1x")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # each epoch once, the resumed one included
    assert "test_dice_valk" in client.get_run(run_id).data.metrics


# ----------------------------------------------------------------------------------------------------------------
# Batch: the quality column
# ----------------------------------------------------------------------------------------------------------------


def test_refine_predictor_fills_the_batch_quality_column(tmp_path: Path) -> None:
    from pipeline.inference.batch import run_batch
    from pipeline.inference.predictors import SlicePredictor
    from pipeline.io.layouts import index_inputs

    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.1, (16, 16, 3)).astype(np.float32)
    image[4:10, 4:10] += 1
    nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 2.0, 1.0])), str(tmp_path / "scan.nii.gz"))
    base = SlicePredictor(_BaseNet(), None, lambda x, source: x, lambda out: (out[0] > 0).to(torch.uint8),
                          num_slices=1, divisible=1)
    torch.manual_seed(0)
    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3)
    torch.save({"model": net.state_dict(), "k": 2, "k_early_stop": 2}, tmp_path / "refine.pt")
    predictor = RefinePredictor(base, QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3),
                                tmp_path / "refine.pt", num_slices=1, divisor=4)
    predictor.load()
    assert predictor.iterations == 2
    report = run_batch(index_inputs(str(tmp_path / "scan.nii.gz")), predictor, tmp_path / "out", "mask",
                       progress=False)
    assert report.done == 1
    row = next(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    assert 0.0 <= float(row["quality"]) <= 1.0 and len(row["quality"].split(".")[1]) == 4
    mask = nib.load(str(tmp_path / "out" / "scan_mask.nii.gz")).get_fdata()
    assert mask.shape == image.shape and set(np.unique(mask)) <= {0.0, 1.0}
    # a plain predictor (a mask, no quality) leaves the column empty
    run_batch(index_inputs(str(tmp_path / "scan.nii.gz")), lambda v, e: (v.array > 0.5).astype(np.uint8),
              tmp_path / "plain", "mask", progress=False)
    assert next(csv.DictReader((tmp_path / "plain" / "cases.csv").open()))["quality"] == ""


@pytest.mark.parametrize("stored, asked, expected", [(True, None, (4, True)), (False, None, (2, False)),
                                                     (None, None, (4, True)), (False, True, (4, True)),
                                                     (True, False, (2, False))])
def test_refine_predictor_follows_the_validation_choice_of_early_stop(tmp_path: Path, stored, asked, expected) -> None:
    """None follows the checkpoint's recommendation (True for checkpoints without one); True/False override it."""
    from pipeline.inference.predictors import SlicePredictor
    from pipeline.refine.predictors import load_refinement

    net = QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3)
    state = {"model": net.state_dict(), "k": 2, "k_early_stop": 4}
    if stored is not None:
        state["early_stop"] = stored
    torch.save(state, tmp_path / "refine.pt")
    assert load_refinement(net, tmp_path / "refine.pt", None, asked) == expected
    assert load_refinement(net, tmp_path / "refine.pt", 3, asked) == (3, expected[1])
    base = SlicePredictor(_BaseNet(), None, lambda x, s: x, lambda out: out[0] > 0, num_slices=1, divisible=1)
    predictor = RefinePredictor(base, net, tmp_path / "refine.pt", num_slices=1, early_stop=asked)
    predictor.load()
    assert (predictor.iterations, predictor.early_stop) == expected


def test_refine_predictor_missing_checkpoint(tmp_path: Path) -> None:
    from pipeline.inference.predictors import SlicePredictor

    base = SlicePredictor(_BaseNet(), None, lambda x, s: x, lambda out: out[0] > 0, num_slices=1, divisible=1)
    predictor = RefinePredictor(base, QualityUNet(spatial_dims=2, in_channels=1, features=2, levels=3),
                                tmp_path / "none.pt", num_slices=1)
    with pytest.raises(FileNotFoundError, match=r"refinement checkpoint .*none.pt not found"):
        predictor.load()


def test_batch_refine_flag_needs_a_refinement_stage(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle without configs/refine_inference.json: --refine exits 2 naming the missing file."""
    from pipeline.inference.cli import main

    configs = tmp_path / "bundles" / "plain" / "configs"
    configs.mkdir(parents=True)
    (configs / "inference.json").write_text(json.dumps({"bundle": "plain"}))
    monkeypatch.chdir(tmp_path)
    assert main(["plain", "--input", str(tmp_path), "--refine", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "bundle 'plain' has no refinement stage" in err and "refine_inference.json not found" in err


def test_refine_configs_parse() -> None:
    """The shipped refine configs resolve: variant names, base checkpoints, the network they build."""
    from pipeline.experiments.refine_table import resolve

    ckpt, variant, net = resolve("lits", [], "base_ckpt", "refine_variant", "refine_network_def")
    assert ckpt.endswith("bundles/lits/models/model.pt") and variant == "q"
    assert isinstance(net(), QualityUNet) and net().in_channels == 3
    overrides = ["--quality_weight", "0", "--self_training", "warm"]
    ckpt, variant = resolve("spect", overrides, "base_ckpt", "refine_variant")
    assert ckpt.endswith("bundles/spect/models/mode1/model.pt") and variant == "noq-warm"


def test_refine_configs_parse_brats_and_lung() -> None:
    """BraTS refines its 12-channel input; the lung stage refines (f, G) slices of its M4 model."""
    from pipeline.experiments.refine_table import resolve

    ckpt, net = resolve("brats", [], "base_ckpt", "refine_network_def")
    assert ckpt.endswith("bundles/brats/models/model.pt") and net().in_channels == 12
    ckpt, net, inferer = resolve("lung", [], "base_ckpt", "refine_network_def", "refine_base_masks#inferer")
    assert ckpt.endswith("bundles/lung/models/m4/model.pt") and net().in_channels == 2
    x = torch.rand(1, 2, 20, 24, 3)
    out = inferer(x, lambda t: t[:, :1] * 2)  # slice by slice, padded for the network and cropped back
    assert out.shape == (1, 1, 20, 24, 3) and torch.allclose(out, x[:, :1] * 2)


# ----------------------------------------------------------------------------------------------------------------
# Lung (selective): clicked slices as one-slice cases
# ----------------------------------------------------------------------------------------------------------------


class _GeodesicNet(nn.Module):
    """A 'VM-Net': u = sigmoid(a·(t − G)) on the (f, G) input, so {u > 0.5} = {G < t}."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(200.0))
        self.t = nn.Parameter(torch.tensor(0.05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.a * (self.t - x[:, 1:2]))


@pytest.fixture(scope="module")
def lung_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.data.lung import generate_lung_phantoms

    out = tmp_path_factory.mktemp("lung")
    generate_lung_phantoms(out, num_cases=3, shape=(48, 48, 10), seed=0, progress=False)
    return out


def _lung_datalist(lung_dir: Path) -> list[dict]:
    return [{"case": f"lung_00{i}", "image": str(lung_dir / "imagesTr" / f"lung_00{i}_0000.nii.gz"),
             "label": str(lung_dir / "masksTr" / f"lung_00{i}_0000.nii.gz")} for i in (0, 1, 2)]


def test_lung_slices_become_one_slice_cases(lung_dir: Path) -> None:
    from pipeline.selective.padding import SliceStackInferer
    from pipeline.selective.samples import SelectiveSlices, refine_entries

    datalist = _lung_datalist(lung_dir)
    slicer = SelectiveSlices(progress=False)
    every = slicer.volume_slices(datalist[:1], stride=1, min_area=1)
    second = slicer.volume_slices(datalist[:1], stride=2, min_area=1)
    label = np.asarray(nib.load(datalist[0]["label"]).dataobj) == 1
    assert len(every) == int(label.any(axis=(0, 1)).sum()) and len(second) == (len(every) + 1) // 2
    again = slicer.volume_slices(datalist[:1], stride=2, min_area=1)
    assert [s["points"] for s in again] == [s["points"] for s in second]  # clicks seeded per case and slice
    entries = refine_entries(second, "geodesic")
    assert entries[0]["image"].shape == (2, 48, 48, 1) and entries[0]["label"].shape == (1, 48, 48, 1)
    assert len({e["case"] for e in entries}) == len(entries) and entries[0]["case"].startswith("lung_000_z")
    assert torch.equal(entries[0]["image"][1, ..., 0], second[0]["geodesic"][0])
    with pytest.raises(ValueError, match="no axial slice has a target region of 100000"):
        slicer.volume_slices(datalist[:1], min_area=100000)
    volume = torch.cat([torch.stack([e["image"] for e in entries[:2]], 0)] * 3, dim=-1)  # (2, 2, 48, 48, 3)
    volume[..., 1] = volume[..., 1].flip(-1)  # a different middle slice
    net = _GeodesicNet()
    with torch.no_grad():
        out = SliceStackInferer(16)(volume, net)
        assert out.shape == (2, 1, 48, 48, 3)
        for z in range(3):
            torch.testing.assert_close(out[..., z], net(volume[..., z]))


def test_lung_refinement_and_predictor_quality(lung_dir: Path, tmp_path: Path) -> None:
    """The refinement runs on selective one-slice cases; the predictor writes the quality column per volume."""
    from pipeline.inference.batch import run_batch
    from pipeline.inference.predictors import SelectivePredictor
    from pipeline.io.layouts import index_inputs
    from pipeline.refine.predictors import SelectiveRefinePredictor
    from pipeline.selective.padding import SliceStackInferer
    from pipeline.selective.samples import SelectiveSlices, refine_entries

    datalist = _lung_datalist(lung_dir)
    slicer = SelectiveSlices(progress=False)
    torch.save(_GeodesicNet().state_dict(), tmp_path / "vm.pt")
    net = lambda: QualityUNet(spatial_dims=2, in_channels=2, features=2, levels=3)  # noqa: E731
    base = BaseMasks("lung", lambda d: d, _GeodesicNet(), tmp_path / "vm.pt", "train the VM-Net", SliceStackInferer(16),
                     lambda out: out[0] > 0.5, lambda label: label[0] > 0.5, tmp_path / "cache", progress=False)
    splits = {"train": refine_entries(slicer.volume_slices(datalist[:1], stride=3), "geodesic"),
              "val": refine_entries(slicer.volume_slices(datalist[1:2], stride=3), "geodesic"),
              "test": refine_entries(slicer(datalist), "geodesic")}
    trainer, evaluation = _refinement(tmp_path, base, splits, factory=net, max_epochs=1)
    trainer.run()
    summary = evaluation.summary
    assert summary["num_test_cases"] == 3 and len(summary["test_dice_per_k"]) == 3
    base_dice = [dice_jaccard(c.base.numpy(), c.label.numpy())[0] for c in base.load(splits)["test"]]
    assert summary["test_dice_0x"] == pytest.approx(np.mean(base_dice)) and np.mean(base_dice) > 0.3

    # batch inference: clicks on one slice of one case, refined mask and quality in cases.csv
    image = Path(datalist[0]["image"])
    label = np.asarray(nib.load(datalist[0]["label"]).dataobj) == 1
    z = int(np.argmax(label.sum(axis=(0, 1))))
    inside = np.argwhere(label[:, :, z])[::40][:6]
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "lung_000_0000.csv").write_text("i,j,k\n" + "".join(f"{i},{j},{z}\n" for i, j in inside))
    base = SelectivePredictor(_GeodesicNet(), tmp_path / "vm.pt", "geodesic", slicer)
    predictor = SelectiveRefinePredictor(base, net(), tmp_path / "ckpt" / "model.pt", divisor=4)
    predictor.load()
    state = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    assert predictor.early_stop == state["early_stop"] == summary["early_stop_recommended"]
    assert predictor.iterations == state["k_early_stop" if state["early_stop"] else "k"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / image.name).write_bytes(image.read_bytes())
    report = run_batch(index_inputs(str(inputs)), predictor, tmp_path / "out", "left_lung", progress=False,
                       markers=markers)
    assert report.done == 1
    row = next(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    assert 0.0 <= float(row["quality"]) <= 1.0
    mask = np.asarray(nib.load(str(next((tmp_path / "out").glob("*left_lung.nii.gz")))).dataobj)
    assert mask.shape == label.shape and mask.sum() == mask[:, :, z].sum()  # only the clicked slice


def test_refine_table_format_and_csv(tmp_path: Path) -> None:
    """One row per variant with the chosen k, '–' for an undefined r, and the inference choice spelled out."""
    from pipeline.experiments.refine_table import format_table, write_csv

    def summary(rec: bool, r: float) -> dict:
        return {"num_test_cases": 3, "num_val_cases": 2, "max_iterations": 2, "test_dice_per_k": [0.5, 0.7, 0.6],
                "test_dice_std_per_k": [0.1, 0.05, 0.02], "k_val": 1, "k_val_early_stop": 2, "best_k": 1,
                "test_early_stop_steps": [0, 1, 2], "test_dice_valk": 0.7, "test_dice_valk_early_stop": 0.65,
                "test_dice_bestk": 0.7, "early_stop_recommended": rec, "pearson_r_cases_0x": r,
                "pearson_r_cases_all_k": 0.5, "pearson_r_slices_0x": r, "num_slices_0x": 10,
                "pearson_r_slices_synthetic": 0.8, "num_slices_synthetic": 12, "quality_mae_cases_0x": 0.2}

    summaries = {"noq": summary(False, float("nan")), "q": summary(True, 0.9)}
    text = format_table("lung", summaries, {"noq": 61.0, "q": 75.0})
    row = ("| noq: no quality output (λ = 0) | 0.500 ± 0.100 | 0.700 ± 0.050 | 0.600 ± 0.020 | "
           "0.700 ± 0.050 (k=1) | 0.650 (k≤2, steps 0–2) | 0.700 (k=1) | 61 |")
    assert row in text
    assert "| noq | – (3) | 0.50 | – (10) | 0.80 (12) | 0.200 |" in text and "| q | 0.90 (3) |" in text
    assert "k chosen on 2 clicked slices of the validation cases among 0..2" in text
    assert "`varseg infer lung --refine`) uses k = 1 without the early stop" in text
    assert "this q model (`varseg infer lung --refine`) uses k ≤ 2 with the early stop" in text
    write_csv(tmp_path / "t.csv", summaries, {"noq": 61.0})
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["variant"] for r in rows] == ["noq", "q"] and rows[0]["dice_1x"] == "0.7000"
    assert rows[0]["pearson_r_cases_0x"] == "nan" and rows[1]["wall_seconds"] == "nan"
