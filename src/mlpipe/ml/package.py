"""Stage `package`: build the serving bundle models/package/ from the trained model, and register it.

models/package/ holds model.onnx (raw pixels [N, H, W] -> class probabilities, preprocessing
included in the graph: mlpipe.ml.export), package.json (mlpipe.contracts.manifest.PackageManifest),
MODEL_CARD.md (templates/model_card.md) and profile.json (the training data's drift profile,
mlpipe.contracts.drift). The same ONNX model is registered in MLflow as `candidate`
(mlpipe.tracking.registry).
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.resources import files
from string import Template

import numpy as np

from mlpipe.contracts import drift
from mlpipe.contracts.data import LabeledImages, Schema, read_any_schema, read_examples
from mlpipe.contracts.manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    Architecture,
    PackageInput,
    PackageManifest,
    TableInput,
)
from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.contracts.table import Table, TableSchema
from mlpipe.core import atomic, lineage, paths, tables
from mlpipe.core.params import Params
from mlpipe.ml import export
from mlpipe.ml.model import Checkpoint, load_checkpoint
from mlpipe.tracking import registry, runs

log = logging.getLogger(__name__)

CARD_TEMPLATE = files("mlpipe.ml") / "templates" / "model_card.md"
# The metrics the card shows; evaluate writes each of them.
CARD_METRICS = ("test_accuracy", "test_macro_f1", "test_loss", "test_examples")
VERIFY_EXAMPLES = 256  # test images the exported model must classify exactly as PyTorch does
PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")


def architecture(checkpoint: Checkpoint) -> Architecture:
    """What the checkpoint holds, read off the network it rebuilds: whatever class
    mlpipe.ml.model.build_model made, with the params it was trained with."""
    network = checkpoint.build()
    network_class = type(network)
    return Architecture(
        class_name=f"{network_class.__module__}.{network_class.__qualname__}",
        params=checkpoint.model_params.model_dump(mode="json"),
        parameter_count=sum(p.numel() for p in network.parameters()),
    )


def build_manifest(
    params: Params,
    checkpoint: Checkpoint,
    schema: Schema | TableSchema,
    inputs: lineage.Inputs,
    metrics: dict[str, float],
    onnx_bytes: bytes,
) -> PackageManifest:
    """package.json: everything a server or a reader needs besides the model file."""
    spec: PackageInput | TableInput
    if isinstance(schema, TableSchema):
        spec = TableInput(schema.columns, params.package.max_batch_size)
    else:
        spec = PackageInput(
            shape=checkpoint.input_shape,
            pixel_max=schema.pixel_max,
            max_batch_size=params.package.max_batch_size,
            decoding=schema.decoding,
        )
    return PackageManifest(
        name=params.package.model_name,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        input=spec,
        labels=checkpoint.classes,
        preprocessing=checkpoint.preprocessing,
        architecture=architecture(checkpoint),
        dataset=params.data.dataset,
        lineage=inputs,
        metrics=metrics,
    )


def _image_card(spec: PackageInput, pre: Preprocessing) -> dict[str, str]:
    colour = "grayscale" if spec.channels == 1 else "RGB"
    return {
        "kind": "Image",
        "intended_use": (
            f"Classifying {spec.height}×{spec.width} {colour} images like those in the training data. "
            "Inputs outside that distribution (other image sizes or colours, other subjects) are not "
            "supported."
        ),
        "inputs": (
            f"- input `{spec.name}`: raw pixels, {spec.dtype}, shape [N, {', '.join(map(str, spec.shape))}], "
            f"values 0..{spec.pixel_max} (at most {spec.max_batch_size} images per request)"
        ),
        "preprocessing": (
            f"- preprocessing (inside the model): `(pixels / {pre.pixel_max:g} - {_per_channel(pre.mean)}) / "
            f"{_per_channel(pre.std)}`"
        ),
    }


def _table_card(spec: TableInput) -> dict[str, str]:
    lines = []
    for column in spec.columns:
        if column.is_number:
            seen = f"training range {column.minimum:g}..{column.maximum:g}"
            seen += f", mean {column.mean:g}, std {column.std:g}"
            lines.append(f"- input `{column.name}`: number (float32 [N]; null where missing), {seen}")
        else:
            levels = ", ".join(f"`{level}`" for level in column.levels)
            lines.append(f"- input `{column.name}`: category (text [N]; null where missing), levels {levels}")
    return {
        "kind": "Table",
        "intended_use": (
            f"Classifying rows of the {len(spec.columns)} columns below, like those in the training data "
            f"(at most {spec.max_batch_size} rows per request). Rows from another population, or "
            "numbers far outside the training ranges, are not supported."
        ),
        "inputs": "\n".join(lines),
        "preprocessing": (
            "- preprocessing (inside the model, learnt on the training split): a missing number becomes "
            "its column's training mean; numbers are standardised with the training mean and std; each "
            "category is one-hot encoded over its training levels (all zero for a missing or unseen level)"
        ),
    }


def model_card(manifest: PackageManifest, params: Params, per_class: list[dict[str, str]]) -> str:
    """MODEL_CARD.md: the template filled in from the manifest, the params and the per-class scores."""
    table = [
        "| " + " | ".join(PER_CLASS_COLUMNS) + " |",
        "|---|---:|---:|---:|---:|",
        *("| " + " | ".join(row[c] for c in PER_CLASS_COLUMNS) + " |" for row in per_class),
    ]
    spec, metrics, pre = manifest.input, manifest.metrics, manifest.preprocessing
    if isinstance(spec, TableInput):
        kind = _table_card(spec)
    elif isinstance(pre, Preprocessing):
        kind = _image_card(spec, pre)
    else:
        raise TypeError("an image package needs the images' preprocessing")
    network = manifest.architecture
    return Template(CARD_TEMPLATE.read_text(encoding="utf-8")).substitute(
        kind,
        name=manifest.name,
        dataset=manifest.dataset,
        class_count=len(manifest.labels),
        output_name=manifest.output_name,
        labels=", ".join(f"`{label}`" for label in manifest.labels),
        test_accuracy=f"{metrics['test_accuracy']:.4f}",
        test_macro_f1=f"{metrics['test_macro_f1']:.4f}",
        test_loss=f"{metrics['test_loss']:.4f}",
        test_examples=metrics["test_examples"],
        per_class_table="\n".join(table),
        model_class=network.class_name,
        parameter_count=f"{network.parameter_count:,}",
        model_params=", ".join(f"{key} {json.dumps(value)}" for key, value in network.params.items()),
        lr=params.train.lr,
        weight_decay=params.train.weight_decay,
        epochs=params.train.epochs,
        batch_size=params.train.batch_size,
        train_seed=params.train.seed,
        data_seed=params.data.seed,
        val_fraction=params.data.val_fraction,
        test_fraction=params.data.test_fraction,
        data_hash=manifest.lineage.data_hash,
        params_hash=manifest.lineage.params_hash,
        model_sha256=manifest.model_sha256,
    )


def _per_channel(values: tuple[float, ...]) -> str:
    """One channel's value as a number, several as a list."""
    shown = ", ".join(f"{value:g}" for value in values)
    return shown if len(values) == 1 else f"[{shown}]"


def run(params: Params) -> None:
    """Build models/package/ and register it; the old package stays if anything fails."""
    schema = read_any_schema()
    checkpoint = load_checkpoint(paths.CHECKPOINT_FILE)
    metrics = tables.read_metrics(paths.METRICS_FILE, required=CARD_METRICS)
    per_class = tables.read_csv(paths.PER_CLASS_FILE)
    test_split = read_examples(paths.TEST_SPLIT, schema)
    test = test_split.subset(np.arange(min(VERIFY_EXAMPLES, len(test_split))))
    register_model = params.package.register_model and runs.registers_models()
    if params.package.register_model and not register_model:
        log.info("not registering a version: experiments do not move @%s", registry.CANDIDATE)
    mlflow_client = runs.client() if register_model else None
    if mlflow_client is not None:
        runs.close_abandoned_runs(mlflow_client)

    onnx_bytes = export.export_onnx(checkpoint, params.package.opset)
    export.verify_onnx(onnx_bytes, checkpoint, test if isinstance(test, Table) else test.images)
    origin = lineage.current(params.digest("data", "model", "train"))
    manifest = build_manifest(params, checkpoint, schema, origin.inputs, metrics, onnx_bytes)

    with atomic.replace_dir(paths.PACKAGE_DIR) as staging:
        atomic.write_bytes(staging / MODEL_FILE, onnx_bytes)
        atomic.write_json(staging / MANIFEST_FILE, manifest.to_json())
        atomic.write_text(staging / CARD_FILE, model_card(manifest, params, per_class))
        train = read_examples(paths.TRAIN_SPLIT, schema)
        profile: drift.Profile | drift.TableProfile
        if isinstance(train, Table) and isinstance(schema, TableSchema):
            profile = drift.TableProfile.of(train, schema.columns)
        elif isinstance(train, LabeledImages) and isinstance(schema, Schema):
            profile = drift.Profile.of(train.images, schema.pixel_max)
        atomic.write_json(staging / PROFILE_FILE, profile.to_json())
        if mlflow_client is not None:
            example = test.subset(np.arange(min(2, len(test))))
            registry.register(mlflow_client, staging, manifest, origin, example)
    sha = manifest.model_sha256[:12]
    log.info("wrote %s (%d bytes of ONNX, sha256 %s)", paths.PACKAGE_DIR, len(onnx_bytes), sha)
