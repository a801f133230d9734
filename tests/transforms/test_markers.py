"""Tests of the click markers, the marker polygon M and the markers file readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import distance_transform_edt

from transforms import (
    AddClickMarkers,
    AddClickMarkersd,
    LoadMarkersd,
    PolygonMask,
    RandClickMarkersd,
    click_mask,
    polygon_mask,
    read_markers,
)

TEST_NDARRAYS = (np.asarray, torch.as_tensor, lambda x: MetaTensor(x, meta={"filename_or_obj": "case.nii"}))


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


def _box_label(shape=(1, 24, 24), box=(slice(4, 20), slice(6, 18)), value=1) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[(slice(None),) * (len(shape) - len(box)) + box] = value
    return label


# ------------------------------------------------------------------------------------------ deterministic
@pytest.mark.parametrize("to_type", TEST_NDARRAYS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_click_markers_exact_voxels(to_type, dtype):
    ref = to_type(np.zeros((1, 4, 5), dtype=np.float32))
    out = AddClickMarkers([[0, 1], [3, 4], [2, 0]], dtype=dtype)(ref)
    expected = np.zeros((1, 4, 5), dtype=bool)
    expected[0, [0, 3, 2], [1, 4, 0]] = True
    assert out.shape == (1, 4, 5) and out.dtype == dtype
    np.testing.assert_array_equal(_np(out).astype(bool), expected)
    if isinstance(ref, MetaTensor):
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii"


def test_click_markers_3d_without_channel():
    out = AddClickMarkers(np.array([[1, 2, 3]]))(np.zeros((3, 4, 5)))
    assert out.shape == (3, 4, 5) and int(out.sum()) == 1 and out[1, 2, 3] == 1


@pytest.mark.parametrize("point", [[4, 0], [-1, 2], [0, 5]])
def test_click_outside_image(point):
    with pytest.raises(ValueError, match=rf"marker \[{point[0]}, {point[1]}\].*outside.*\(4, 5\)"):
        AddClickMarkers([[0, 0], point])(np.zeros((4, 5)))


def test_ill_points():
    with pytest.raises(ValueError, match="integer voxel indices"):
        AddClickMarkers([[0.5, 1.0]])
    with pytest.raises(ValueError, match=r"\(k, 2\) or \(k, 3\)"):
        AddClickMarkers(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="do not fit an image of shape"):
        AddClickMarkers([[0, 0, 0]])(np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="clockwise"):
        PolygonMask([[0, 0]], order="clockwise")


def test_polygon_square_corners_fill_square():
    corners = [[1, 1], [6, 6], [1, 6], [6, 1]]  # shuffled: sorted by angle
    expected = np.zeros((9, 9), dtype=bool)
    expected[1:7, 1:7] = True
    np.testing.assert_array_equal(polygon_mask(corners, (9, 9)), expected)
    out = PolygonMask(corners)(MetaTensor(np.zeros((1, 9, 9))))
    np.testing.assert_array_equal(_np(out)[0].astype(bool), expected)


def test_polygon_non_convex_l_shape_given_order():
    l_shape = [[0, 0], [0, 2], [2, 2], [2, 5], [5, 5], [5, 0]]
    expected = np.zeros((7, 7), dtype=bool)
    expected[0:6, 0:3] = True
    expected[2:6, 0:6] = True
    np.testing.assert_array_equal(polygon_mask(l_shape, (7, 7), order="given"), expected)
    assert polygon_mask(l_shape, (7, 7)).sum() != expected.sum()  # angle order does not give the L


def test_polygon_boundary_and_degenerate_cases():
    triangle = polygon_mask([[0, 0], [6, 0], [0, 6]], (8, 8))
    assert triangle[6, 0] and triangle[0, 6] and triangle[3, 3]  # hypotenuse voxels included
    assert not triangle[4, 4]
    single = polygon_mask([[2, 3]], (5, 5))
    assert single.sum() == 1 and single[2, 3]
    segment = polygon_mask([[0, 0], [0, 4]], (5, 5))
    np.testing.assert_array_equal(np.argwhere(segment), [[0, j] for j in range(5)])


def test_polygon_3d_same_slice_and_hull():
    in_slice = polygon_mask([[1, 1, 3], [1, 1, 6], [1, 6, 6], [1, 6, 3]], (4, 8, 8))
    expected = np.zeros((4, 8, 8), dtype=bool)
    expected[1, 1:7, 3:7] = True
    np.testing.assert_array_equal(in_slice, expected)
    corners = np.array([[a, b, c] for a in (1, 5) for b in (2, 6) for c in (0, 3)])
    cube = polygon_mask(corners, (8, 8, 8))
    expected = np.zeros((8, 8, 8), dtype=bool)
    expected[1:6, 2:7, 0:4] = True
    np.testing.assert_array_equal(cube, expected)
    tetra = polygon_mask([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 4]], (6, 6, 6))
    assert tetra[1, 1, 1] and tetra[2, 2, 0] and not tetra[2, 2, 2]


# ------------------------------------------------------------------------------------------------ random
def test_random_clicks_inside_label_and_deep():
    label = np.zeros((1, 32, 32), dtype=np.uint8)
    label[0, 4:28, 4:14] = 1  # left object
    label[0, 4:28, 18:28] = 2
    label[0, 8:12, 6:10] = 0  # a hole: boundary inside the object
    obj = label[0] == 1
    depth = distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    counts = set()
    for seed in range(50):
        out = RandClickMarkersd("label", label_value=1, min_distance=3).set_random_state(seed)({"label": label})
        points = out["label_markers_points"]
        assert 4 <= len(points) <= 8 and points.shape[1] == 2
        counts.add(len(points))
        assert obj[tuple(points.T)].all() and (depth[tuple(points.T)] >= 3).all()
        assert len(np.unique(points, axis=0)) == len(points)
        mask = _np(out["label_markers"])[0].astype(bool)
        np.testing.assert_array_equal(np.argwhere(mask), points[np.lexsort(points.T[::-1])])
        np.testing.assert_array_equal(_np(out["label_polygon"])[0].astype(bool), polygon_mask(points, (32, 32)))
    assert len(counts) > 1


def test_random_clicks_reproducible_and_replayable():
    label = _box_label()
    first = RandClickMarkersd("label").set_random_state(7)({"label": label})
    again = RandClickMarkersd("label").set_random_state(7)({"label": label})
    np.testing.assert_array_equal(first["label_markers_points"], again["label_markers_points"])
    replay = AddClickMarkersd("label", points_key="label_markers_points")({"label": label, **first})
    np.testing.assert_array_equal(_np(replay["label_markers"]), _np(first["label_markers"]))
    np.testing.assert_array_equal(_np(replay["label_polygon"]), _np(first["label_polygon"]))


def test_random_clicks_3d_keys_and_count():
    label = MetaTensor(_box_label((1, 16, 16, 16), (slice(2, 14),) * 3, value=3))
    t = RandClickMarkersd(
        "seg", label_value=3, num_clicks=5, marker_keys="clicks", polygon_keys="M", min_distance=2
    ).set_random_state(0)
    out = t({"seg": label})
    assert set(out) == {"seg", "clicks", "M", "clicks_points"}
    assert out["clicks_points"].shape == (5, 3) and int(out["clicks"].sum()) == 5
    assert isinstance(out["M"], MetaTensor) and out["M"].shape == (1, 16, 16, 16)
    assert (_np(label)[0][tuple(out["clicks_points"].T)] == 3).all()


def test_random_clicks_thin_object_warns():
    label = np.zeros((20, 20), dtype=np.uint8)
    label[5:15, 9:11] = 1  # two voxels thick: depth <= 1
    t = RandClickMarkersd("label", num_clicks=4, min_distance=3).set_random_state(0)
    with pytest.warns(UserWarning, match="deepest voxels"):
        out = t({"label": label})
    assert (label[tuple(out["label_markers_points"].T)] == 1).all() and len(out["label_markers_points"]) == 4


def test_random_clicks_empty_label():
    label = MetaTensor(np.zeros((1, 8, 8)), meta={"filename_or_obj": "lung_007.nii.gz"})
    with pytest.raises(ValueError, match=r"key 'label', file 'lung_007.nii.gz'.*label_value=1"):
        RandClickMarkersd("label")({"label": label})


@pytest.mark.parametrize("kwargs", [{"num_clicks": 0}, {"num_clicks": (5, 4)}, {"num_clicks": 2.5},
                                    {"min_distance": -1}, {"marker_keys": ("a", "b")}])
def test_random_ill_opts(kwargs):
    with pytest.raises(ValueError):
        RandClickMarkersd("label", **kwargs)


# ------------------------------------------------------------------------------------------------- files
AFFINE_RAS = np.array([[2.0, 0, 0, -30.0], [0, 2.0, 0, 12.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
AFFINE_LPS_FLIP = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 25.0], [0, 0, 2.0, -7.0], [0, 0, 0, 1]])
VOXELS = np.array([[3, 4, 5], [10, 0, 2], [0, 9, 7]])
SHAPE = (12, 10, 8)


def _world(voxels: np.ndarray, affine: np.ndarray, space: str) -> np.ndarray:
    ras = (affine @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
    return ras * [-1, -1, 1] if space == "LPS" else ras


def _write_csv(path, columns, rows) -> str:
    path.write_text(",".join(columns) + "\n" + "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in rows))
    return str(path)


def _write_slicer(path, points, system) -> str:
    markup = {"type": "Fiducial", "coordinateSystem": system,
              "controlPoints": [{"id": str(i), "position": list(map(float, p))} for i, p in enumerate(points)]}
    path.write_text(json.dumps({"markups": [markup]}))
    return str(path)


def test_read_csv_voxel(tmp_path):
    path = _write_csv(tmp_path / "m.csv", ["label", "i", "j", "k"], np.c_[np.ones(3), VOXELS])
    np.testing.assert_array_equal(read_markers(path, spatial_shape=SHAPE), VOXELS)
    path = _write_csv(tmp_path / "xyz.csv", ["x", "y", "z"], VOXELS)
    np.testing.assert_array_equal(read_markers(path, space="voxel"), VOXELS)
    with pytest.raises(ValueError, match="pass space="):
        read_markers(path)


@pytest.mark.parametrize("affine", [AFFINE_RAS, AFFINE_LPS_FLIP])
@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_read_physical_round_trip(tmp_path, affine, space):
    world = _world(VOXELS, affine, space) + 0.3  # sub-voxel offsets round to the same voxel
    csv_path = _write_csv(tmp_path / "m.csv", ["x", "y", "z"], world)
    np.testing.assert_array_equal(read_markers(csv_path, affine, space=space, spatial_shape=SHAPE), VOXELS)
    slicer_path = _write_slicer(tmp_path / "m.mrk.json", world, space)
    np.testing.assert_array_equal(read_markers(slicer_path, affine, spatial_shape=SHAPE), VOXELS)
    wrong = "LPS" if space == "RAS" else "RAS"
    assert not np.array_equal(read_markers(csv_path, affine, space=wrong), VOXELS)
    with pytest.raises(ValueError, match=f"is in {space} coordinates"):
        read_markers(slicer_path, affine, space=wrong)


def test_read_outside_and_bad_files(tmp_path):
    world = _world(np.r_[VOXELS, [[12, 0, 0]]], AFFINE_RAS, "LPS")
    path = _write_slicer(tmp_path / "far.mrk.json", world, "LPS")
    with pytest.raises(ValueError, match=r"marker \[12, 0, 0\] in markers file '.*far.mrk.json'.*outside"):
        read_markers(path, AFFINE_RAS, spatial_shape=SHAPE)
    with pytest.raises(ValueError, match="affine is needed"):
        read_markers(path)
    bad = _write_csv(tmp_path / "bad.csv", ["a", "b", "c"], VOXELS)
    with pytest.raises(ValueError, match="header with columns"):
        read_markers(bad)
    with pytest.raises(ValueError, match="must be a .csv"):
        read_markers(tmp_path / "m.txt")


def test_load_markersd(tmp_path):
    path = _write_slicer(tmp_path / "m.mrk.json", _world(VOXELS, AFFINE_RAS, "LPS"), "LPS")
    image = MetaTensor(torch.zeros((1, *SHAPE)), affine=torch.as_tensor(AFFINE_RAS), meta={"filename_or_obj": "a.nii"})
    out = LoadMarkersd("image")({"image": image, "markers": path})
    np.testing.assert_array_equal(out["image_markers_points"], VOXELS)
    mask = _np(out["image_markers"])[0].astype(bool)
    np.testing.assert_array_equal(mask, click_mask(VOXELS, SHAPE))
    assert out["image_polygon"].shape == (1, *SHAPE) and out["image_polygon"].meta["filename_or_obj"] == "a.nii"
    np.testing.assert_allclose(_np(out["image_polygon"].affine), AFFINE_RAS)
    small = MetaTensor(torch.zeros((1, 8, 8, 8)), affine=torch.as_tensor(AFFINE_RAS))
    with pytest.raises(ValueError, match=r"marker \[10, 0, 2\] in markers file '.*m.mrk.json'"):
        LoadMarkersd("image")({"image": small, "markers": path})
    with pytest.raises(KeyError, match="markers key 'clicks'"):
        LoadMarkersd("image", markers_key="clicks")({"image": image})


def test_load_markersd_2d_csv(tmp_path):
    path = _write_csv(tmp_path / "m.csv", ["i", "j"], [[1, 2], [5, 2], [5, 6], [1, 6]])
    out = LoadMarkersd("image")({"image": MetaTensor(torch.zeros((1, 8, 8))), "markers": path})
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:6, 2:7] = True
    np.testing.assert_array_equal(_np(out["image_polygon"])[0].astype(bool), expected)
