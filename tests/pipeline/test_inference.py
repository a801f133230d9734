"""Tests of the inference inputs/outputs: list_volumes, mask_path and plan_outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.inference import list_volumes, mask_path, plan_outputs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")
    return path


# ----------------------------------------------------------------------------------------------- list_volumes
@pytest.mark.parametrize("name, case", [("volume-3.nii.gz", "volume-3"), ("ct.nii", "ct"), ("a.b.nii.gz", "a.b")])
def test_list_single_file(tmp_path: Path, name: str, case: str) -> None:
    path = _touch(tmp_path / name)
    assert list_volumes(path) == [{"image": str(path.resolve()), "case": case}]
    assert list_volumes(str(path)) == [{"image": str(path.resolve()), "case": case}]


def test_list_folder_sorted_nifti_only(tmp_path: Path) -> None:
    for name in ("volume-10.nii.gz", "volume-2.nii.gz", "b.nii", "notes.txt", "scan.mha", "x.nii.gz.bak",
                 "seg.gz", "niigz"):
        _touch(tmp_path / name)
    (tmp_path / "folder.nii.gz").mkdir()  # a folder with a NIfTI-like name is not a volume
    _touch(tmp_path / "sub" / "inner.nii.gz")  # not recursive
    got = list_volumes(tmp_path)
    names = ["b.nii", "volume-10.nii.gz", "volume-2.nii.gz"]  # sorted by path
    assert [d["image"] for d in got] == [str((tmp_path / n).resolve()) for n in names]
    assert [d["case"] for d in got] == ["b", "volume-10", "volume-2"]
    assert all(set(d) == {"image", "case"} for d in got)


def test_list_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / "data" / "c.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert list_volumes("data") == [{"image": str((tmp_path / "data" / "c.nii.gz").resolve()), "case": "c"}]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert list_volumes("~/data/c.nii.gz")[0]["image"] == str((tmp_path / "data" / "c.nii.gz").resolve())


def test_list_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_volumes(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        list_volumes(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("name", ["scan.mha", "volume.nii.gz.txt", "image.nrrd", "README"])
def test_list_non_nifti_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a NIfTI file"):
        list_volumes(_touch(tmp_path / name))


def test_list_empty_or_nifti_free_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no .nii"):
        list_volumes(tmp_path)
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "sub" / "deep.nii.gz")
    with pytest.raises(ValueError, match="holds no .nii"):
        list_volumes(tmp_path)


@pytest.mark.parametrize("value", [None, ""])
def test_list_no_input(value) -> None:
    with pytest.raises(ValueError, match="no input"):
        list_volumes(value)


# ----------------------------------------------------------------------------------------------- mask_path
@pytest.mark.parametrize(
    "image, expected",
    [
        ("/data/volume-3.nii.gz", "volume-3_seg.nii.gz"),
        ("/data/ct.nii", "ct_seg.nii.gz"),
        ("relative/a.b.nii.gz", "a.b_seg.nii.gz"),
        ("/data/scan.mha", "scan_seg.nii.gz"),
    ],
)
def test_mask_path(tmp_path: Path, image: str, expected: str) -> None:
    assert mask_path(image, tmp_path, "seg") == tmp_path / expected
    assert mask_path(Path(image), str(tmp_path / "out"), "seg") == tmp_path / "out" / expected


def test_mask_path_postfix() -> None:
    assert mask_path("x/liver.nii.gz", "masks", "liver_mask") == Path("masks/liver_liver_mask.nii.gz")


# ----------------------------------------------------------------------------------------------- plan_outputs
def _datalist(tmp_path: Path, n: int) -> list[dict[str, str]]:
    for i in range(n):
        _touch(tmp_path / "in" / f"case{i}.nii.gz")
    return list_volumes(tmp_path / "in")


def test_plan_creates_folder_and_returns_datalist(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 2)
    out = tmp_path / "a" / "b" / "masks"
    assert plan_outputs(datalist, out, "seg") is datalist
    assert out.is_dir() and not any(out.iterdir())
    assert plan_outputs(datalist, out, "seg") is datalist  # an existing, mask-free folder is fine


def test_plan_refuses_existing_masks(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 2)
    out = tmp_path / "masks"
    existing = _touch(mask_path(datalist[1]["image"], out, "seg"))
    with pytest.raises(FileExistsError, match=r"1 mask\(s\) already exist") as info:
        plan_outputs(datalist, out, "seg")
    assert str(existing) in str(info.value) and "--overwrite" in str(info.value)
    assert existing.read_bytes() == b"\0"  # untouched
    # another postfix does not collide
    assert plan_outputs(datalist, out, "other") is datalist


def test_plan_overwrite(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 2)
    out = tmp_path / "masks"
    for d in datalist:
        _touch(mask_path(d["image"], out, "seg"))
    assert plan_outputs(datalist, out, "seg", overwrite=True) is datalist


def test_plan_message_names_first_few(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 5)
    out = tmp_path / "masks"
    paths = [_touch(mask_path(d["image"], out, "seg")) for d in datalist]
    with pytest.raises(FileExistsError, match=r"5 mask\(s\)") as info:
        plan_outputs(datalist, out, "seg")
    message = str(info.value)
    assert all(str(p) in message for p in paths[:3])
    assert str(paths[3]) not in message and " ..." in message


def test_plan_empty_datalist(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    assert plan_outputs([], out, "seg") == []
    assert out.is_dir()
