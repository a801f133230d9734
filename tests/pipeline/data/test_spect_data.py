"""Simulated bone SPECT: phantom, projector/backprojector, OS-EM, on-disk layout and indexer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.io.datasets import LayoutError, index_spect
from pipeline.data.spect import SpectProjector, generate_spect_phantoms, make_spect_case, osem
from pipeline.data.spect import _render_phantom, main, spect_spacing

SMALL = (24, 24, 16)
FAST = {"shape": SMALL, "angles": 16, "subsets": 4, "counts": 2e5}


@pytest.fixture(scope="module")
def spect_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small cases of seed 0."""
    folder = tmp_path_factory.mktemp("spect")
    generate_spect_phantoms(folder, num_cases=2, progress=False, **FAST)
    return folder


@pytest.fixture(scope="module")
def small_phantom():
    """A 32 x 32 x 24 phantom (activity, mu in 1/mm, label) and its spacing."""
    shape = (32, 32, 24)
    spacing = spect_spacing(shape)
    activity, mu, label, _ = _render_phantom(np.random.default_rng([3, 1]), shape, spacing)
    return shape, spacing, activity, mu, label


# ---------------------------------------------------------------------------------------------- system model


def test_backprojector_is_the_adjoint_of_the_projector(small_phantom) -> None:
    shape, spacing, _, mu, _ = small_phantom
    projector = SpectProjector(shape, spacing, mu, angles=12, radius=170.0)
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    y = rng.random((12, projector.n, shape[2]), dtype=np.float32)
    lhs = float(np.vdot(projector.forward(x).astype(np.float64), y))
    rhs = float(np.vdot(x.astype(np.float64), projector.back(y)))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
    views = [1, 5, 9]  # subsets too
    lhs = float(np.vdot(projector.forward(x, views).astype(np.float64), y[:3]))
    rhs = float(np.vdot(x.astype(np.float64), projector.back(y[:3], views)))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_projector_models_attenuation_and_depth_dependent_blur() -> None:
    shape, spacing = (33, 33, 9), 4.0
    point = np.zeros(shape, np.float32)
    point[16, 4, 4] = 1.0  # posterior: far from the detector of view 0 (anterior), near the one of the opposite view
    free = SpectProjector(shape, spacing, None, angles=4, radius=80.0)
    near, far = free.forward(point, [2])[0], free.forward(point, [0])[0]
    assert near.sum() == pytest.approx(1.0, rel=1e-4) and far.sum() == pytest.approx(1.0, rel=1e-4)
    assert far.max() < near.max()  # wider blur far from the detector
    water = np.full(shape, 0.015, np.float32)
    attenuated = SpectProjector(shape, spacing, water, angles=4, radius=80.0)
    assert attenuated.forward(point, [0]).sum() < attenuated.forward(point, [2]).sum() < 1.0


def test_osem_of_noiseless_data_converges_towards_the_phantom(small_phantom) -> None:
    shape, spacing, activity, mu, _ = small_phantom
    projector = SpectProjector(shape, spacing, mu, angles=32, radius=170.0)
    body = mu > 0
    recons = osem(projector.forward(activity), projector, (1, 2, 5, 10), subsets=4, support=body)
    errors = [np.linalg.norm((recons[k] - activity)[body]) / np.linalg.norm(activity[body]) for k in (1, 2, 5, 10)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.25
    assert all((r >= 0).all() and not r[~body].any() for r in recons.values())


def test_osem_rejects_bad_arguments(small_phantom) -> None:
    shape, spacing, _, mu, _ = small_phantom
    projector = SpectProjector(shape, spacing, mu, angles=8)
    y = np.ones((8, projector.n, shape[2]), np.float32)
    with pytest.raises(ValueError, match="subsets"):
        osem(y, projector, (2,), subsets=9)
    with pytest.raises(ValueError, match="iterations"):
        osem(y, projector, (0,))
    with pytest.raises(ValueError, match="shape"):
        osem(y[:4], projector, (1,))


# ---------------------------------------------------------------------------------------------- cases


def test_case_is_deterministic_and_seeded() -> None:
    first, again = make_spect_case(1, **FAST), make_spect_case(1, **FAST)
    for k in first.recons:
        np.testing.assert_array_equal(first.recons[k], again.recons[k])
    np.testing.assert_array_equal(first.label, again.label)
    np.testing.assert_array_equal(first.projections, again.projections)
    other = make_spect_case(1, seed=1, **FAST)
    assert not np.array_equal(first.activity, other.activity)


def test_case_contents_and_counts() -> None:
    case = make_spect_case(0, iterations=(2, 5), **{**FAST, "counts": 1e5})
    assert sorted(case.recons) == [2, 5]
    assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1}
    assert all(r.dtype == np.float32 and r.shape == SMALL for r in case.recons.values())
    assert case.label.shape == case.activity.shape == case.mu.shape == SMALL
    assert np.allclose(np.diag(case.affine)[:3], spect_spacing(SMALL))
    assert case.projections.sum() == pytest.approx(1e5, abs=5 * np.sqrt(1e5))
    assert np.isclose(case.mu.max(), 0.25, rtol=1e-3) and case.mu.min() == 0.0  # 1/cm
    body = case.mu > 0
    for recon in case.recons.values():
        assert recon[case.label == 1].mean() > 2.0 * recon[body & (case.label == 0)].mean()
    assert case.activity[case.label == 1].mean() > 4.0 * np.median(case.activity[body & (case.label == 0)])


def test_counts_scaling_is_exact_in_expectation() -> None:
    case = make_spect_case(2, **FAST)
    projector = SpectProjector(SMALL, case.spacing, case.mu / 10.0, FAST["angles"],
                               case.params["radius_of_rotation_mm"])
    expected = case.count_scale * projector.forward(case.activity).sum(dtype=np.float64)
    assert expected == pytest.approx(FAST["counts"], rel=1e-4)
    assert case.projections.sum() == pytest.approx(FAST["counts"], abs=5 * np.sqrt(FAST["counts"]))
    assert case.params["total_counts"] == case.projections.sum()


def test_default_phantom_has_skeleton_bladder_and_lesions() -> None:
    shape = (64, 64, 48)
    activity, mu, label, params = _render_phantom(np.random.default_rng([0, 0]), shape, spect_spacing(shape))
    assert spect_spacing(shape) == pytest.approx(4.42)
    assert 5 <= params["bone_to_soft_tissue"] <= 10 and 1 <= len(params["lesions"]) <= 4
    assert activity.max() > params["bone_to_soft_tissue"] * 1.5  # hot lesions or bladder
    slices = label.sum(axis=(0, 1))
    assert (slices > 0).mean() > 0.9  # bone in nearly every slice
    assert np.isclose(mu.max(), 0.025) and (mu[mu > 0] < 0.0075).any()  # bone and lungs


def test_invalid_case_arguments() -> None:
    with pytest.raises(ValueError, match="index"):
        make_spect_case(-1, **FAST)
    with pytest.raises(ValueError, match="shape"):
        make_spect_case(0, shape=(4, 24, 16))
    with pytest.raises(ValueError, match="subsets"):
        make_spect_case(0, shape=SMALL, angles=4, subsets=8)


# ---------------------------------------------------------------------------------------------- on disk


def test_files_on_disk(spect_dir: Path) -> None:
    datalist = index_spect(spect_dir)
    assert [e["case"] for e in datalist] == ["case-0", "case-1"]
    for entry in datalist:
        assert entry["image"] == entry["image_osem5"] and "image_osem2" in entry
        label = nib.load(entry["label"])
        assert label.get_data_dtype() == np.uint8 and label.shape == SMALL
        for key in ("image_osem2", "image_osem5"):
            image = nib.load(entry[key])
            assert image.get_data_dtype() == np.float32 and image.shape == SMALL
            np.testing.assert_allclose(image.affine, label.affine)
        assert (Path(entry["label"]).parent / "phantom.nii.gz").exists()
    in_memory = make_spect_case(1, **FAST)
    np.testing.assert_array_equal(nib.load(datalist[1]["label"]).get_fdata().astype(np.uint8), in_memory.label)
    np.testing.assert_allclose(nib.load(datalist[1]["image_osem2"]).get_fdata(), in_memory.recons[2])
    description = json.loads((spect_dir / "dataset.json").read_text())
    assert description["cases"] == [0, 1] and description["iterations"] == [2, 5]
    assert index_spect(spect_dir, iterations=2)[0]["image"].endswith("recon_osem2.nii.gz")


def test_regeneration_is_idempotent_and_checks_settings(spect_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in spect_dir.rglob("*.nii.gz")}
    datalist = generate_spect_phantoms(spect_dir, num_cases=2, progress=False, image_iterations=2, **FAST)
    assert {p: p.stat().st_mtime_ns for p in spect_dir.rglob("*.nii.gz")} == before
    assert datalist[0]["image"].endswith("recon_osem2.nii.gz")
    with pytest.raises(ValueError, match="other settings"):
        generate_spect_phantoms(spect_dir, num_cases=2, progress=False, **{**FAST, "counts": 1e6})
    with pytest.raises(ValueError, match="image_iterations"):
        generate_spect_phantoms(spect_dir, num_cases=2, progress=False, image_iterations=3, **FAST)


def test_incomplete_case_is_reported(tmp_path: Path) -> None:
    generate_spect_phantoms(tmp_path, num_cases=1, progress=False, **FAST)
    (tmp_path / "case-0" / "bone.nii.gz").unlink()
    with pytest.raises(ValueError, match="lacks bone"):
        generate_spect_phantoms(tmp_path, num_cases=1, progress=False, **FAST)
    with pytest.raises(LayoutError, match="lacks bone"):
        index_spect(tmp_path)
    generate_spect_phantoms(tmp_path, num_cases=1, progress=False, overwrite=True, **FAST)
    assert len(index_spect(tmp_path)) == 1


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        index_spect(tmp_path / "missing")
    (tmp_path / "volume-0.nii.gz").write_bytes(b"")
    with pytest.raises(LayoutError, match="no case-N folders.*volume-0.nii.gz"):
        index_spect(tmp_path)
    assert issubclass(LayoutError, ValueError)
    (tmp_path / "case-3").mkdir()
    with pytest.raises(LayoutError, match="recon_osem5"):
        index_spect(tmp_path)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path), "--num-cases", "1", "--shape", *map(str, SMALL), "--angles", "8", "--subsets", "2",
            "--iterations", "1", "3", "--no-progress"]
    assert main(argv) == 0
    assert "1 written" in capsys.readouterr().out
    assert index_spect(tmp_path, iterations=3)[0]["image_osem1"].endswith("recon_osem1.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--num-cases", "1", "--shape", *map(str, SMALL), "--angles", "8", "--no-progress"])
    assert exit_info.value.code == 2
