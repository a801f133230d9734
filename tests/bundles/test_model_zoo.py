"""Model-zoo checks of every bundle: metadata schema, ``verify_net_in_out``, TorchScript export, data licence.

The metadata is validated with ``jsonschema`` against ``tests/data/meta_schema_20240725.json``, a verbatim copy of the
MONAI model-zoo schema its ``schema`` URL names (MONAI-extra-test-data release 0.8.1, also served as
https://project-monai.github.io/schema/meta_schema_20240725.json), so nothing is downloaded. The export tests use a
freshly initialised network (random batch-norm statistics) saved to a temporary checkpoint, not a trained one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "tests" / "data" / "meta_schema_20240725.json"

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings(
    "ignore:`torch.jit.save` is deprecated:DeprecationWarning",
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning",
)]

# bundle -> (config files that define ``network_def``, extra verify_net_in_out arguments, test input shape)
BUNDLES: dict[str, tuple[list[str], dict[str, int], tuple[int, ...]]] = {
    "lits": (["inference.json"], {"n": 2}, (2, 3, 32, 48)),
    "lung": (["inference.json"], {"n": 2}, (2, 2, 32, 48)),
    "spect": (["inference.json"], {"any": 23}, (2, 1, 23, 31)),
    "brats": (["inference.json"], {"n": 2}, (2, 12, 32, 48)),
}
TOP_LEVEL_KEYS = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "supported_apps", "name", "task", "description", "authors", "copyright", "data_source", "data_type",
    "image_classes", "label_classes", "pred_classes", "eval_metrics", "intended_use", "references",
    "network_data_format",
)
TENSOR_KEYS = (
    "type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def",
)


def _bundle_root(bundle: str) -> Path:
    return REPO / "bundles" / bundle


def _meta_file(bundle: str) -> str:
    return str(_bundle_root(bundle) / "configs" / "metadata.json")


def _config_files(bundle: str) -> list[str]:
    return [str(_bundle_root(bundle) / "configs" / name) for name in BUNDLES[bundle][0]]


def _metadata(bundle: str) -> dict:
    return json.loads(Path(_meta_file(bundle)).read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_metadata_validates_against_model_zoo_schema(bundle: str, schema: dict) -> None:
    meta = _metadata(bundle)
    errors = [error.message for error in jsonschema.Draft201909Validator(schema).iter_errors(meta)]
    assert errors == []
    assert meta["schema"].endswith("/" + SCHEMA_FILE.name)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_metadata_keys_versions_and_tensor_formats(bundle: str) -> None:
    meta = _metadata(bundle)
    assert [key for key in TOP_LEVEL_KEYS if key not in meta] == []
    assert meta["version"] in meta["changelog"]
    assert next(iter(meta["changelog"])) == meta["version"], "the newest changelog entry comes first"
    for name in ("monai_version", "pytorch_version", "numpy_version"):
        assert meta[name] and isinstance(meta[name], str)
    for package, version in meta["required_packages_version"].items():
        assert isinstance(version, str) and version
        importlib_metadata.version(package)  # a real, installed distribution name (raises PackageNotFoundError)
    fmt = meta["network_data_format"]
    for tensor in (fmt["inputs"]["image"], fmt["outputs"]["pred"]):
        assert [key for key in TENSOR_KEYS if key not in tensor] == []
        assert len(tensor["channel_def"]) == tensor["num_channels"]
        assert len(tensor["spatial_shape"]) == 2  # every network reads 2D (multi-channel) slices


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_eval_metrics_are_finite_numbers(bundle: str) -> None:
    metrics = _metadata(bundle)["eval_metrics"]
    assert metrics
    for name, value in metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
        assert math.isfinite(value), name


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_verify_net_in_out(bundle: str) -> None:
    extra = BUNDLES[bundle][1]
    common = dict(
        net_id="network_def", meta_file=_meta_file(bundle), config_file=_config_files(bundle), device="cpu", **extra
    )
    verify_net_in_out(bundle_root=str(_bundle_root(bundle)), **common)
    # the check is real: a wrong output channel count in the metadata fails it
    with pytest.raises(ValueError, match="output channel number"):
        wrong = {"_meta_#network_data_format#outputs#pred#num_channels": 99}
        verify_net_in_out(bundle_root=str(_bundle_root(bundle)), **common, **wrong)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_inference_config_runs_on_its_own_from_the_bundle_folder(bundle: str) -> None:
    """The model-zoo command, as a user types it in the bundle's folder: inference.json alone defines the network."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
           "configs/metadata.json", "--config_file", "configs/inference.json", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=_bundle_root(bundle), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified with no error" in proc.stdout + proc.stderr


def _fresh_network(bundle: str) -> torch.nn.Module:
    """``network_def`` of the bundle, seeded, with random batch-norm statistics so that eval mode is not trivial."""
    parser = ConfigParser()
    parser.read_config(_config_files(bundle))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.3)
    return net.eval()


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_ckpt_export_torchscript_matches_eager(bundle: str, tmp_path: Path) -> None:
    net = _fresh_network(bundle)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    filepath = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(filepath),
        ckpt_file=str(ckpt),
        meta_file=_meta_file(bundle),
        config_file=_config_files(bundle),
        bundle_root=str(_bundle_root(bundle)),
    )
    assert filepath.is_file()
    extra_files = {"metadata.json": ""}
    scripted = torch.jit.load(str(filepath), map_location="cpu", _extra_files=extra_files)
    assert json.loads(extra_files["metadata.json"])["version"] == _metadata(bundle)["version"]
    x = torch.rand(BUNDLES[bundle][2], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        actual = scripted(x)
    out_channels = _metadata(bundle)["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert actual.shape == expected.shape == (x.shape[0], out_channels, *x.shape[2:])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_data_licence_and_export_docs(bundle: str) -> None:
    licence = _bundle_root(bundle) / "docs" / "data_license.txt"
    assert licence.is_file() and licence.read_text().strip()
    assert "Apache" in licence.read_text()
    readme = (_bundle_root(bundle) / "docs" / "README.md").read_text()
    assert "verify_net_in_out" in readme and "ckpt_export" in readme
