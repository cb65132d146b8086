"""package.json and the model card describe the network actually trained, whatever its class;
packages made before that (format 1) still read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mlpipe.contracts.data import Schema
from mlpipe.contracts.manifest import PACKAGE_FORMAT, PackageManifest
from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.core.lineage import Inputs
from mlpipe.core.params import ModelParams, Params, parse_params
from mlpipe.ml import export, model, package
from tests.conftest import REPO_ROOT, TINY_PARAMS

CLASSES = ("a", "b", "c")
IMAGE_SHAPE = (8, 8)
FORMAT_1_MANIFEST = REPO_ROOT / "tests/data/packages/package-format-1.json"


class ResidualNet(nn.Module):
    """Another model than the template's: a 5-channel stem, two residual blocks and a pooled
    linear head (its shape fixed here, so that it fits whatever `model:` params the project has)."""

    def __init__(self, params: ModelParams, image_shape: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 5, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(5, 5, 3, padding=1) for _ in range(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x)


def _checkpoint(model_params: ModelParams) -> model.Checkpoint:
    torch.manual_seed(0)
    network = model.build_model(model_params, IMAGE_SHAPE, len(CLASSES))
    preprocessing = Preprocessing.from_dict({"pixel_max": 16, "mean": 0.3, "std": 0.4})
    return model.Checkpoint(model_params, IMAGE_SHAPE, CLASSES, preprocessing, network.state_dict())


def _manifest(params: Params, checkpoint: model.Checkpoint, onnx_bytes: bytes) -> PackageManifest:
    schema = Schema("digits", CLASSES, IMAGE_SHAPE, 16, (0.3,), (0.4,), {})
    metrics = {"test_accuracy": 0.5, "test_macro_f1": 0.5, "test_loss": 1.0, "test_examples": 6}
    return package.build_manifest(params, checkpoint, schema, Inputs("p" * 64, "md5:d"), metrics, onnx_bytes)


def _card(params: Params, manifest: PackageManifest) -> str:
    per_class = [
        {"class": c, "precision": "1.0", "recall": "1.0", "f1": "1.0", "support": "2"} for c in CLASSES
    ]
    return package.model_card(manifest, params, per_class)


@pytest.fixture
def residual_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """ResidualNet plugged in where a team plugs its model: mlpipe.ml.model.build_model."""
    monkeypatch.setattr(model, "build_model", ResidualNet)


@pytest.mark.usefixtures("residual_net")
def test_a_model_of_another_class_is_exported_and_described_as_itself() -> None:
    params = parse_params(TINY_PARAMS)
    checkpoint = _checkpoint(params.model)
    onnx_bytes = export.export_onnx(checkpoint, opset=18)
    pixels = np.random.default_rng(0).integers(0, 17, size=(4, *IMAGE_SHAPE)).astype(np.uint8)
    export.verify_onnx(onnx_bytes, checkpoint, pixels)

    manifest = _manifest(params, checkpoint, onnx_bytes)
    written = json.loads(json.dumps(manifest.to_json()))
    residual_net = f"{__name__}.ResidualNet"
    parameter_count = (5 * 9 + 5) + 2 * (5 * 5 * 9 + 5) + (5 * len(CLASSES) + len(CLASSES))
    assert written["architecture"] == {
        "class": residual_net,
        "params": params.model.model_dump(mode="json"),
        "parameter_count": parameter_count,
    }
    assert PackageManifest.from_json(written) == manifest
    card = _card(params, manifest)
    assert f"- model: `{residual_net}`, {parameter_count:,} parameters" in card
    trained = written["architecture"]["params"].items()
    assert "- model params: " + ", ".join(f"{key} {json.dumps(value)}" for key, value in trained) in card


def test_a_format_1_manifest_reads_with_its_family_as_the_class() -> None:
    raw = json.loads(FORMAT_1_MANIFEST.read_text())
    manifest = PackageManifest.from_json(raw)
    assert raw["format"] == 1
    assert manifest.architecture.class_name == "ConvNet"
    assert manifest.architecture.params == {
        key: v for key, v in raw["architecture"].items() if key != "family"
    }
    assert manifest.architecture.parameter_count is None
    assert manifest.to_json()["format"] == PACKAGE_FORMAT


def test_a_manifest_of_an_unknown_format_is_refused() -> None:
    raw = json.loads(FORMAT_1_MANIFEST.read_text()) | {"format": PACKAGE_FORMAT + 1}
    with pytest.raises(ValueError, match=f"package format {PACKAGE_FORMAT + 1}"):
        PackageManifest.from_json(raw)


def test_a_manifest_read_from_format_1_is_written_back_in_the_current_format() -> None:
    manifest = PackageManifest.from_json(json.loads(FORMAT_1_MANIFEST.read_text()))
    assert PackageManifest.from_json(manifest.to_json()) == manifest
