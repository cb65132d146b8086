"""The package the package stage writes: its manifest through PackageManifest, and its model card."""

from __future__ import annotations

import json
from pathlib import Path

from mlpipe.contracts.manifest import CARD_FILE, MANIFEST_FILE, PACKAGE_FORMAT, PackageManifest
from mlpipe.core import paths, tables
from mlpipe.ml.model import load_checkpoint
from tests.model.serving_cases import PACKAGE


def test_manifest_reads_back_to_the_same_json(built_project: Path) -> None:
    raw = json.loads((built_project / PACKAGE / MANIFEST_FILE).read_text())
    assert PackageManifest.from_json(raw).to_json() == raw


def test_manifest_declares_raw_uint8_pixels_and_the_preprocessing_in_the_graph(built_project: Path) -> None:
    manifest = PackageManifest.from_json(json.loads((built_project / PACKAGE / MANIFEST_FILE).read_text()))
    schema = json.loads((built_project / paths.SCHEMA_FILE).read_text())
    assert manifest.input.dtype == schema["dtype"] == "uint8"
    assert manifest.input.pixel_max == schema["pixel_range"][1]
    preprocessing = manifest.preprocessing.to_dict()
    assert (preprocessing["mean"], preprocessing["std"]) == (schema["pixel_mean"], schema["pixel_std"])


def test_manifest_describes_the_network_in_the_checkpoint(built_project: Path) -> None:
    raw = json.loads((built_project / PACKAGE / MANIFEST_FILE).read_text())
    checkpoint = load_checkpoint(built_project / paths.CHECKPOINT_FILE)
    network = checkpoint.build()
    assert raw["format"] == PACKAGE_FORMAT
    assert raw["architecture"] == {
        "class": f"{type(network).__module__}.{type(network).__qualname__}",
        "params": checkpoint.model_params.model_dump(mode="json"),
        "parameter_count": sum(p.numel() for p in network.parameters()),
    }


def test_model_card_states_the_model_its_params_and_size(built_project: Path) -> None:
    card = (built_project / PACKAGE / CARD_FILE).read_text()
    architecture = PackageManifest.from_json(
        json.loads((built_project / PACKAGE / MANIFEST_FILE).read_text())
    ).architecture
    assert f"- model: `{architecture.class_name}`, {architecture.parameter_count:,} parameters" in card
    for key, value in architecture.params.items():
        assert f"{key} {json.dumps(value)}" in card


def test_model_card_states_the_metrics_and_every_class(built_project: Path) -> None:
    card = (built_project / PACKAGE / CARD_FILE).read_text()
    metrics = tables.read_metrics(built_project / paths.METRICS_FILE)
    assert f"- accuracy: {metrics['test_accuracy']:.4f}" in card
    assert f"- examples: {metrics['test_examples']}" in card
    for row in tables.read_csv(built_project / paths.PER_CLASS_FILE):
        assert f"| {row['class']} | {row['precision']} | {row['recall']} |" in card
    assert "$" not in card  # every placeholder of the template is filled in
