"""Selective segmentation pipeline: samples from clicks, padding, metrics, short training, volume inference."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.data.lung import generate_lung_phantoms
from pipeline.data.splits import split_selective
from pipeline.inference.batch import run_batch
from pipeline.inference.predictors import SelectivePredictor, segment_selective
from pipeline.io.volumes import CaseError, read_volume
from pipeline.evaluation.metrics import dice_jaccard
from pipeline.selective.evaluation import evaluate_masks, predict_mask
from pipeline.selective.padding import PaddedInferer, TrainingBatch
from pipeline.selective.per_image import dip_segment
from pipeline.selective.samples import SelectiveSlices, loader_samples


def _disc_slice(size: int = 64, radius: float = 14.0, centre: tuple[float, float] = (30.0, 34.0)):
    """A 2D 'CT' slice: a dark disc (-850 HU) in soft tissue (40 HU), with mild noise, and its mask."""
    yy, xx = np.mgrid[:size, :size]
    obj = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    rng = np.random.default_rng(0)
    hu = np.where(obj, -850.0, 40.0) + rng.normal(0, 15, (size, size))
    return hu.astype(np.float32), obj


@pytest.fixture(scope="module")
def lung_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lung")
    generate_lung_phantoms(out, num_cases=3, shape=(64, 64, 12), seed=0, progress=False)
    return out


def test_split_is_deterministic_and_sized():
    datalist = [{"case": f"c{i}"} for i in range(20)]
    a = split_selective(datalist, num_train=2, num_val=2, num_test=16, seed=0)
    b = split_selective(datalist, num_train=2, num_val=2, num_test=16, seed=0)
    assert a == b
    assert [len(a[k]) for k in ("train", "val", "test")] == [2, 2, 16]
    cases = [d["case"] for part in a.values() for d in part]
    assert len(set(cases)) == 20
    assert len(split_selective(datalist, 2, 2, seed=0)["test"]) == 16  # the rest by default
    with pytest.raises(ValueError, match="cannot split 3 case"):
        split_selective(datalist[:3], num_train=2, num_val=2)


def test_sample_maps_from_a_slice():
    hu, obj = _disc_slice()
    sample = SelectiveSlices(window=(-1000, 200), num_clicks=5, seed=3, progress=False).from_slice(hu, obj, case="d")
    for key in ("intensity", "polygon", "geodesic", "fitting", "edge", "label"):
        assert sample[key].shape == (1, 64, 64) and sample[key].dtype == torch.float32
    points = np.asarray(json.loads(sample["points"]))
    assert len(points) == 5 and obj[tuple(points.T)].all()  # every click inside the object
    polygon = sample["polygon"][0].numpy() > 0
    assert (polygon & ~obj).sum() == 0  # convex object: its click polygon stays inside
    geodesic = sample["geodesic"][0].numpy()
    assert geodesic[polygon].max() == 0.0 and geodesic.max() == pytest.approx(1.0)
    # crossing the object's edge costs far more than travelling inside it
    assert geodesic[obj].mean() < 0.1 < geodesic[~obj].mean()
    fitting = sample["fitting"][0].numpy()
    assert fitting[obj].mean() < 0 < fitting[~obj].mean()
    intensity = sample["intensity"][0].numpy()
    assert intensity.min() >= 0 and intensity.max() <= 1
    np.testing.assert_allclose(intensity, np.clip((hu + 1000) / 1200, 0, 1), atol=1e-6)


def test_sample_errors_name_the_problem():
    slicer = SelectiveSlices(progress=False)
    hu, obj = _disc_slice()
    with pytest.raises(ValueError, match="2D slice"):
        slicer.from_slice(hu[None], obj)
    bad = hu.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        slicer.from_slice(bad, obj, case="broken")
    with pytest.raises(ValueError, match="no object"):
        slicer.from_slice(hu, np.zeros_like(obj))
    with pytest.raises(ValueError, match="high > low"):
        SelectiveSlices(window=(200, -1000))


def test_volume_sample_picks_the_biggest_left_lung_slice(lung_dir):
    entry = {"image": str(lung_dir / "imagesTr" / "lung_000_0000.nii.gz"),
             "label": str(lung_dir / "masksTr" / "lung_000_0000.nii.gz"), "case": "lung_000"}
    sample = SelectiveSlices(target_label=1, progress=False).from_volume(entry)
    label = nib.load(entry["label"]).get_fdata() == 1  # phantoms are written RAS, so no reorientation
    areas = label.sum(axis=(0, 1))
    assert sample["slice"] == int(np.argmax(areas))
    assert sample["label"][0].sum() <= areas.max() and sample["label"][0].sum() > 0.9 * areas.max()
    # the left lung lies at negative world x (patient's left in RAS)
    xs = np.argwhere(sample["label"][0].numpy() > 0)[:, 0]
    affine = nib.load(entry["image"]).affine
    assert (affine[0, 0] * xs + affine[0, 3]).mean() < 0


def test_training_batch_pads_as_background():
    hu, obj = _disc_slice(size=60)
    slicer = SelectiveSlices(progress=False)
    items = loader_samples([slicer.from_slice(hu, obj, case="a"), slicer.from_slice(hu[:50, :44], obj[:50, :44])],
                           "geodesic")
    batch = TrainingBatch(items, divisible=16).batch
    assert batch["input"].shape == (2, 2, 64, 64)
    assert batch["index"].tolist() == [0, 1]
    # second sample: 50 x 44 padded to 64 x 64 -> 7/7 rows, 10/10 columns
    assert batch["geodesic"][1, 0, 0, 0] == 1.0 and batch["label"][1, 0, 0, 0] == 0.0
    assert batch["fitting"][1, 0, 0, 0] == items[1]["fitting"].max()
    torch.testing.assert_close(batch["input"][1, :, 7:57, 10:54], items[1]["input"])
    with pytest.raises(ValueError, match="guidance"):
        loader_samples(items, "clicks")


def test_padded_inferer_crops_back():
    x = torch.rand(1, 2, 50, 37)
    out = PaddedInferer(16)(x, lambda t: t[:, :1] * 2)
    torch.testing.assert_close(out, x[:, :1] * 2)


def test_dice_jaccard_hand_values(tmp_path):
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, 4 shared
    assert dice_jaccard(a, b) == pytest.approx((0.8, 4 / 6))
    assert dice_jaccard(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)
    samples = [{"label": torch.as_tensor(b, dtype=torch.float32)[None], "case": "x", "slice": 0},
               {"label": torch.as_tensor(b, dtype=torch.float32)[None], "case": "y", "slice": 1}]
    summary = evaluate_masks(samples, [a, b], tmp_path / "m.csv")
    assert summary["test_dice"] == pytest.approx(0.9) and summary["test_dice_std"] == pytest.approx(0.1)
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["case"] for r in rows] == ["x", "y", "mean", "std"]


def test_short_m4_training_beats_its_initial_dice():
    """VM-Net + DIP-Net trained with eq. (2) on one 64x64 image improves its own segmentation, without labels."""
    import losses
    import networks

    torch.manual_seed(0)
    hu, obj = _disc_slice()
    sample = SelectiveSlices(window=(-1000, 200), num_clicks=5, seed=0, progress=False).from_slice(hu, obj)
    item = loader_samples([sample], "geodesic")[0]
    batch = TrainingBatch([item]).batch
    vm = networks.VMNet(features=8, levels=2, bn_momentum=0.1)  # running statistics keep up with 60 steps
    pair = networks.SelectivePair(vm, networks.DIPNet(1, (64, 64), features=8, levels=2, seed=0))
    loss_fn = losses.DIPSelectiveLoss(lam=2.0, theta=30.0)
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    initial = dice_jaccard(predict_mask(vm, item, divisible=4), obj)[0]
    for _ in range(60):
        pair.train()
        optimizer.zero_grad()
        out = pair(batch["input"], batch["index"])
        loss = loss_fn(out["u_vm"], out["u_dip"], batch["fitting"], batch["geodesic"])
        loss.backward()
        optimizer.step()
    final = dice_jaccard(predict_mask(vm, item, divisible=4), obj)[0]
    assert final > initial + 0.2
    assert final > 0.9


def test_dip_like_model_returns_requested_epochs():
    hu, obj = _disc_slice()
    sample = SelectiveSlices(num_clicks=5, progress=False).from_slice(hu, obj)
    masks = dip_segment(sample, epochs=[5, 40], features=8, levels=2, learning_rate=1e-2, seed=0)
    assert sorted(masks) == [5, 40]
    assert masks[40].shape == (64, 64) and masks[40].dtype == bool
    assert dice_jaccard(masks[40], obj)[0] > 0.8
    with pytest.raises(ValueError, match="positive"):
        dip_segment(sample, epochs=[0])


def _predict_by_distance(sample):
    return sample["geodesic"][0].numpy() < 0.05


def _lps_copy(src, dst):
    """Same voxels and world positions, stored with flipped first two axes (an LPS-like voxel order)."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)[::-1, ::-1].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    nib.save(nib.Nifti1Image(data, img.affine @ flip), str(dst))


def test_volume_inference_keeps_geometry_and_world_position(lung_dir, tmp_path):
    image = lung_dir / "imagesTr" / "lung_001_0000.nii.gz"
    img = nib.load(str(image))
    label = np.asarray(nib.load(str(lung_dir / "masksTr" / "lung_001_0000.nii.gz")).dataobj) == 1
    z = int(np.argmax(label.sum(axis=(0, 1))))
    inside = np.argwhere(label[:, :, z])
    chosen = inside[np.random.default_rng(0).choice(len(inside), 5, replace=False)]
    world = [img.affine @ np.array([i, j, z, 1.0]) for i, j in chosen]
    markers = tmp_path / "clicks.csv"
    markers.write_text("x,y,z\n" + "".join(f"{w[0]},{w[1]},{w[2]}\n" for w in world))
    slicer = SelectiveSlices(progress=False)
    mask = segment_selective(read_volume(image), markers, _predict_by_distance, slicer, markers_space="RAS")
    assert mask.shape == img.shape and mask.dtype == np.uint8
    assert mask[:, :, z].sum() > 0 and mask.sum() == mask[:, :, z].sum()  # only the clicked slice
    assert dice_jaccard(mask[:, :, z], label[:, :, z])[0] > 0.7
    # the same clicks on an LPS-ordered copy give the same voxels in world space
    lps = tmp_path / "lps.nii.gz"
    _lps_copy(image, lps)
    mask_lps = segment_selective(read_volume(lps), markers, _predict_by_distance, slicer, markers_space="RAS")
    np.testing.assert_array_equal(mask_lps[::-1, ::-1], mask)
    # written through the batch runner: input affine and shape kept, an existing mask skipped, not overwritten
    predictor = SelectivePredictor(None, None, "geodesic", slicer, markers_space="RAS",
                                   sample_predict=_predict_by_distance)
    entries = [{"image": str(lps), "case": "lps"}]
    report = run_batch(entries, predictor, tmp_path / "out", "sel", progress=False, markers=markers)
    assert report.done == 1
    saved = nib.load(str(tmp_path / "out" / "lps_sel.nii.gz"))
    lps_img = nib.load(str(lps))
    assert saved.shape == lps_img.shape and np.allclose(saved.affine, lps_img.affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), mask_lps)
    again = run_batch(entries, predictor, tmp_path / "out", "sel", progress=False, markers=markers)
    assert again.done == 0 and again.skipped == 1


def test_volume_inference_rejects_bad_inputs(lung_dir, tmp_path):
    image = read_volume(lung_dir / "imagesTr" / "lung_002_0000.nii.gz")
    outside = tmp_path / "outside.csv"
    outside.write_text("i,j,k\n5,5,5\n500,5,5\n")
    with pytest.raises(CaseError, match="outside"):
        segment_selective(image, outside, _predict_by_distance, SelectiveSlices(progress=False))
    flat = tmp_path / "flat.csv"
    flat.write_text("i,j\n5,5\n6,6\n")
    with pytest.raises(CaseError, match="unusable markers file: points have 2 coordinates"):
        segment_selective(image, flat, _predict_by_distance, SelectiveSlices(progress=False))


def test_flip_augmentation_flips_the_maps_per_epoch_and_keeps_the_batch():
    """With flip_augmentation the loss sees the maps under random flips; the stored training batch is untouched."""
    import losses
    import networks
    from pipeline.training.engines import SelectiveTrainer

    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    flags = torch.tensor([[True, False], [True, True]])
    flipped = SelectiveTrainer._flip(t, flags)
    assert torch.equal(flipped[0], torch.flip(t[0], [1]))  # H of sample 0
    assert torch.equal(flipped[1], torch.flip(t[1], [1, 2]))  # H and W of sample 1
    assert torch.equal(SelectiveTrainer._flip(flipped, flags), t)  # an involution

    hu, obj = _disc_slice(size=32, radius=7.0, centre=(12.0, 20.0))
    sample = SelectiveSlices(window=(-1000, 200), num_clicks=4, seed=0, progress=False).from_slice(hu, obj)
    batch = TrainingBatch(loader_samples([sample], "geodesic"), divisible=4)
    seen: dict[str, torch.Tensor] = {}

    class Recorder(losses.DIPSelectiveLoss):
        def forward(self, u_vm, u_dip, fitting, distance):  # noqa: D102 - records what the trainer passes
            seen.update(u_dip=u_dip.detach().clone(), fitting=fitting.detach().clone())
            return super().forward(u_vm, u_dip, fitting, distance)

    torch.manual_seed(3)
    pair = networks.SelectivePair(networks.VMNet(features=4, levels=2),
                                  networks.DIPNet(1, batch.shape, features=4, levels=2, seed=0))
    trainer = SelectiveTrainer(device=torch.device("cpu"), max_epochs=6, train_data_loader=batch, epoch_length=1,
                               network=pair, optimizer=torch.optim.Adam(pair.parameters(), lr=1e-3),
                               loss_function=Recorder(), flip_augmentation=True)
    original = batch.batch["fitting"].clone()
    fittings = []

    def _record(engine):
        fittings.append(seen["fitting"])

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _record)
    trainer.run()
    variants = {tuple(f.flatten()[:8].tolist()) for f in fittings}
    assert len(variants) > 1  # the maps were flipped in some epochs and not in others
    for f in fittings:  # every recorded map is the original under one of the four flips
        assert any(torch.equal(f, torch.flip(original, dims)) if dims else torch.equal(f, original)
                   for dims in ([], [2], [3], [2, 3]))
    assert torch.equal(batch.batch["fitting"], original)  # the stored batch itself is never modified
