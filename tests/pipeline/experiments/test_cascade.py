"""The LiTS liver → lesion cascade command end to end on tiny phantoms (8 cases of 64×64×8, 1 epoch per stage).

The command runs in this process with MLflow redirected to a temporary store; the masking transform itself is
tested in ``tests/transforms/test_masking.py``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.experiments import cascade
from pipeline.data.lits import generate_lits_phantoms
from transforms import mask_region

FRACTIONS = ["1/5", "1/2"]  # 8 cases -> 5 train / 1 val / 2 test; 1 and 2 (round(2.5)) labelled cases
DILATION = [1, 1, 0]


@pytest.fixture(scope="module")
def ran(tmp_path_factory, fast_sqlite):
    root = tmp_path_factory.mktemp("cascade")
    data = root / "data"
    generate_lits_phantoms(data, num_cases=8, shape=(64, 64, 8), seed=0, progress=False)
    overrides = {"synthetic_dir": str(data), "synthetic_cases": 8, "synthetic_shape": [64, 64, 8],
                 "cascade_root": str(root / "eval"), "cascade_models": str(root / "models"), "features": 4,
                 "batch_size": 4, "num_threads": 1, "liver_max_epochs": 1, "lesion_max_epochs": 1,
                 "liver_dilation": DILATION, "overlay_interval": 0}
    argv = ["--fractions", *FRACTIONS, "--no-single-stage"]
    for key, value in overrides.items():
        argv += [f"--{key}", value if isinstance(value, str) else str(value).replace(" ", "")]
    saved = {k: os.environ.get(k) for k in ("VARSEG_MLRUNS", "MLFLOW_TRACKING_URI")}
    os.environ["VARSEG_MLRUNS"] = str(root / "mlruns")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert cascade.main(argv) == 0
        yield {"root": root, "overrides": overrides}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def _per_case(path: Path) -> dict[str, dict[str, float]]:
    return {r["case"]: {k: float(v) for k, v in r.items() if k != "case"} for r in _rows(path)
            if r["case"] not in ("mean", "std")}


def test_table_one_row_per_fraction_with_labelled_counts(ran):
    rows = _rows(ran["root"] / "eval" / "cascade_table.csv")
    assert [r["labelled_fraction"] for r in rows] == FRACTIONS
    assert [(int(r["num_labelled"]), int(r["num_train"])) for r in rows] == [(1, 5), (2, 5)]
    for row, tag in zip(rows, ("lab1of5", "lab1of2")):
        lesion = _per_case(ran["root"] / "eval" / tag / "lesion" / "per_case_test_metrics.csv")
        liver = _per_case(ran["root"] / "eval" / tag / "liver" / "per_case_test_metrics.csv")
        assert len(lesion) == len(liver) == 2
        dice = [c["test_dice"] for c in lesion.values()]
        assert float(row["lesion_dice_mean"]) == pytest.approx(np.mean(dice), abs=1e-4)
        assert float(row["lesion_dice_std"]) == pytest.approx(np.std(dice), abs=1e-4)
        assert float(row["liver_dice_mean"]) == pytest.approx(np.mean([c["test_dice_liver"] for c in liver.values()]),
                                                              abs=1e-4)
        assert (int(row["liver_epochs"]), int(row["lesion_epochs"])) == (1, 1)
        # the written liver masks are the ones that were scored: their Dice equals MONAI's per-case Dice
        masks = {r["case"]: r for r in _rows(ran["root"] / "eval" / tag / "liver_masks" / "masks.csv")}
        assert len(masks) == 8
        for case, values in liver.items():
            assert float(masks[case]["dice"]) == pytest.approx(values["test_dice_liver"], abs=1e-4)
    table = (ran["root"] / "eval" / "cascade_table.md").read_text()
    assert table.count("\n| 1/") == 2 and "1 of 5" in table and "2 of 5" in table


def test_mlflow_runs_per_workflow_and_table(ran):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ran['root'] / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("varseg-lits-cascade")
    runs = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.info.run_name for r in runs}) == len(runs) == 2 * 4 + 1
    kinds = sorted((r.data.tags.get("cascade_stage", "-"), r.data.tags["workflow"]) for r in runs)
    assert kinds == sorted([("liver", "train"), ("liver", "evaluate"), ("lesion", "train"),
                            ("lesion", "evaluate")] * 2 + [("-", "table")])
    lesion_train = [r for r in runs if r.data.tags.get("cascade_stage") == "lesion"
                    and r.data.tags["workflow"] == "train"]
    for run in lesion_train:
        params = run.data.params
        assert params["liver_dilation"] == "[1, 1, 0]" and params["gt_liver_for_labelled"] == "true"
        assert params["num_cases_gt_liver"] == params["num_labelled_cases"]
        assert params["num_classes"] == "2" and params["max_epochs"] == "1"
    table = next(r for r in runs if r.data.tags["workflow"] == "table")
    assert table.data.metrics["lab1of2_num_labelled"] == 2.0 and "lab1of5_lesion_dice" in table.data.metrics


def _lesion_parser(ran):
    tag = "lab1of2"
    overrides = {**ran["overrides"], "labelled_fraction": "1/2"}
    return cascade._parser(cascade.config_files("lesion", evaluate=True), overrides), tag


def test_labelled_cases_use_ground_truth_liver_others_the_prediction(ran):
    parser, tag = _lesion_parser(ran)
    train_list = parser.get_parsed_content("train_list")
    for case in train_list:
        expected = case["label"] if case["labelled"] else str(ran["root"] / "eval" / tag / "liver_masks" /
                                                              f"{case['case']}_liver.nii.gz")
        assert case["liver"] == expected
    assert all("liver_masks" in c["liver"] for c in parser.get_parsed_content("split")["test"])


def test_stage2_prediction_is_zero_outside_the_predicted_liver(ran, tmp_path):
    parser, _ = _lesion_parser(ran)
    case = dict(parser.get_parsed_content("split")["test"][0])
    # replace the predicted liver by a small box so that "outside" is most of the volume
    liver = nib.load(case["liver"])
    box = np.zeros(liver.shape, dtype=np.uint8)
    box[20:40, 24:44, 2:6] = 1
    case["liver"] = str(tmp_path / "box_liver.nii.gz")
    nib.save(nib.Nifti1Image(box, liver.affine), case["liver"])
    args = (parser.get_parsed_content("network"), parser.get_parsed_content("ckpt_path"), [case],
            parser.get_parsed_content("train#volume_transform"), parser.get_parsed_content("validate#inferer"))
    cascade.write_masks(*args, tmp_path / "final", "lesion", restrict=parser.get_parsed_content("liver_region"))
    cascade.write_masks(*args, tmp_path / "raw", "lesion")
    final = nib.load(tmp_path / "final" / f"{case['case']}_lesion.nii.gz").get_fdata() > 0
    raw = nib.load(tmp_path / "raw" / f"{case['case']}_lesion.nii.gz").get_fdata() > 0
    region = mask_region(box[None], DILATION)[0].numpy()
    assert int(region.sum()) == 22 * 22 * 4
    assert not final[~region].any()
    np.testing.assert_array_equal(final, raw & region)  # inside the region the network's output is kept


def test_evaluation_postprocessing_restricts_to_the_liver_region(ran):
    parser, _ = _lesion_parser(ran)
    post = parser.get_parsed_content("validate#postprocessing")
    liver = torch.zeros(1, 8, 8, 3)
    liver[0, 3, 3, 1] = 1
    logits = torch.stack([torch.zeros(8, 8, 3), torch.ones(8, 8, 3)])  # lesion everywhere
    out = post({"pred": logits, "label": torch.zeros(1, 8, 8, 3), "liver": liver})
    expected = np.zeros((8, 8, 3), dtype=bool)
    expected[2:5, 2:5, 1] = True  # dilation (1, 1, 0)
    np.testing.assert_array_equal(np.asarray(out["pred"][1]) > 0.5, expected)


def test_missing_predicted_masks_are_named(tmp_path):
    cases = [{"case": "volume-3", "image": "v.nii.gz", "label": "s.nii.gz", "labelled": False}]
    with pytest.raises(FileNotFoundError, match=r"volume-3_liver\.nii\.gz: run the liver stage's evaluation"):
        cascade.with_liver_masks(cases, tmp_path, key="liver")
    labelled = cascade.with_liver_masks([{**cases[0], "labelled": True}], tmp_path, from_label=True)
    assert labelled[0]["liver"] == "s.nii.gz"


def test_varseg_cascade_subcommand(capsys):
    from pipeline import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cascade", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: varseg cascade") and "--fractions" in out and "--single-stage" in out


def test_bad_overrides_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cascade.main(["--lesion_max_epochs"])
    assert exit_info.value.code == 2
    assert "bundle overrides must be --key value pairs" in capsys.readouterr().err
