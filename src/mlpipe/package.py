"""Stage `package`: export the trained model as a self-contained serving bundle and register it.

models/package/ holds model.onnx (raw pixels [N, H, W] -> class probabilities, preprocessing
included in the graph), package.json (labels, input spec, preprocessing, lineage, metrics),
MODEL_CARD.md and profile.json (the training data's drift profile, mlpipe.drift). The same ONNX
model is logged to MLflow and registered with alias `candidate`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlpipe import atomic, drift, lineage, paths, tracking
from mlpipe.data import read_schema, read_split
from mlpipe.errors import ArtifactError
from mlpipe.model import Checkpoint, load_checkpoint
from mlpipe.package_spec import (
    CARD_FILE,
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PACKAGE_FORMAT,
    PROFILE_FILE,
)
from mlpipe.params import Params
from mlpipe.preprocessing import Preprocessing

log = logging.getLogger(__name__)


class ServedModel(nn.Module):
    """Raw pixels [N, H, W] (float) -> class probabilities [N, C], preprocessing included."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        inputs = self.preprocessing.normalise(pixels).unsqueeze(1)
        return torch.softmax(self.network(inputs), dim=1)


def export_onnx(checkpoint: Checkpoint, opset: int) -> bytes:
    """Export with a dynamic batch dimension; the bytes depend only on the weights, not on
    where the code lives."""
    served = ServedModel(checkpoint.build(), checkpoint.preprocessing).eval()
    example = torch.zeros((2, *checkpoint.image_shape))
    batch = torch.export.Dim("batch", min=1, max=65_536)
    # The exporter narrates its steps on stdout and warns about torchvision ops this model
    # never uses (torch resets its loggers on import, so this cannot live in the CLI setup).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            served,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    model = program.model_proto
    # Per-node provenance (source stack traces with absolute paths, FX node names) would make
    # the bytes depend on where the repository is checked out; the graph does not need it.
    for node in model.graph.node:
        del node.metadata_props[:]
    return model.SerializeToString()


def verify_onnx(onnx_bytes: bytes, checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    """Run the exported model with onnxruntime and check it agrees with torch; return its output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    pixels = images.astype(np.float32)
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    with torch.no_grad():
        reference = ServedModel(checkpoint.build(), checkpoint.preprocessing)(
            torch.from_numpy(pixels)
        ).numpy()
    if (
        not np.allclose(exported, reference, atol=1e-5)
        or not (exported.argmax(1) == reference.argmax(1)).all()
    ):
        raise ArtifactError("the exported ONNX model disagrees with the PyTorch model; not packaging it")
    return exported


def manifest(
    params: Params,
    checkpoint: Checkpoint,
    pixel_max: int,
    inputs: lineage.Inputs,
    metrics: dict[str, Any],
    onnx_bytes: bytes,
) -> dict[str, Any]:
    """package.json: everything a server or a reader needs besides the model file."""
    return {
        "format": PACKAGE_FORMAT,
        "name": params.package.model_name,
        "model_file": MODEL_FILE,
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "input": {
            "name": INPUT_NAME,
            "shape": list(checkpoint.image_shape),
            "dtype": "uint8",
            "pixel_range": [0, pixel_max],
            "max_batch_size": params.package.max_batch_size,
        },
        "output": {"name": OUTPUT_NAME, "shape": [len(checkpoint.classes)]},
        "labels": list(checkpoint.classes),
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "architecture": {"family": "ConvNet", **checkpoint.model_params.model_dump()},
        "dataset": params.data.dataset,
        # only what the bytes depend on: the commit and branch are MLflow tags (lineage.py)
        "lineage": inputs.to_dict(),
        "metrics": metrics,
    }


def model_card(info: dict[str, Any], params: Params, per_class_csv: str) -> str:
    """A short markdown model card built from the manifest."""
    metrics = info["metrics"]
    table = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for line in per_class_csv.strip().splitlines()[1:]:
        table.append("| " + " | ".join(line.split(",")) + " |")
    origin = info["lineage"]
    shape = "×".join(map(str, info["input"]["shape"]))
    return "\n".join(
        [
            f"# Model card: {info['name']}",
            "",
            f"Image classifier for the `{info['dataset']}` dataset ({len(info['labels'])} classes), "
            "built by the mlpipe pipeline (prepare → train → evaluate → package).",
            "",
            "## Intended use",
            f"Classifying {shape} grayscale images like those in the training data. Inputs outside that "
            "distribution (other image sizes, colour, other subjects) are not supported.",
            "",
            "## Input and output",
            f"- input `{INPUT_NAME}`: raw pixels, shape [N, {', '.join(map(str, info['input']['shape']))}], "
            f"values {info['input']['pixel_range'][0]}..{info['input']['pixel_range'][1]} "
            f"(at most {info['input']['max_batch_size']} images per request)",
            f"- output `{OUTPUT_NAME}`: [N, {len(info['labels'])}] class probabilities; labels: "
            + ", ".join(f"`{label}`" for label in info["labels"]),
            "- preprocessing (inside the model): "
            f"`(pixels / {info['preprocessing']['pixel_max']:g} - {info['preprocessing']['mean']:g}) "
            f"/ {info['preprocessing']['std']:g}`",
            "",
            "## Evaluation (held-out test split)",
            f"- accuracy: {metrics['test_accuracy']:.4f}",
            f"- macro-F1: {metrics['test_macro_f1']:.4f}",
            f"- log-loss: {metrics['test_loss']:.4f}",
            f"- examples: {metrics['test_examples']}",
            "",
            *table,
            "",
            "## Training",
            f"- architecture: ConvNet, width {params.model.width}, depth {params.model.depth}, "
            f"hidden {params.model.hidden}, dropout {params.model.dropout}",
            f"- optimiser: AdamW, lr {params.train.lr}, weight decay {params.train.weight_decay}, "
            f"{params.train.epochs} epochs, batch size {params.train.batch_size}, seed {params.train.seed}",
            f"- data split seed {params.data.seed}: val fraction {params.data.val_fraction}, "
            f"test fraction {params.data.test_fraction}",
            "",
            "## Lineage",
            f"- data hash (dvc.lock): `{origin['data_hash']}`",
            f"- params hash: `{origin['params_hash']}`",
            f"- model sha256: `{info['model_sha256']}`",
            "- the git commit and branch it was built from: the tags of its MLflow run and version",
            "",
            "## Limitations",
            "Accuracy is measured on a random split of the same source as the training data; "
            "expect lower accuracy under distribution shift. Review per-class recall before relying on "
            "the model for any single class.",
            "",
        ]
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro evaluate` first") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); rerun `dvc repro evaluate`") from e
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text ({e}); rerun `dvc repro evaluate`") from e


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro evaluate` first") from e


def _requirements() -> list[str]:
    return [
        f"onnx=={version('onnx')}",
        f"onnxruntime=={version('onnxruntime')}",
        f"numpy=={version('numpy')}",
    ]


def run(params: Params) -> None:
    """Build models/package/ and register it; the old package stays if anything fails."""
    schema = read_schema()
    checkpoint = load_checkpoint(paths.CHECKPOINT_FILE)
    metrics = _read_json(paths.METRICS_FILE)
    per_class_csv = _read_text(paths.PER_CLASS_FILE)
    test = read_split("test", schema=schema)
    register_model = params.package.register_model and tracking.registers_models()
    if params.package.register_model and not register_model:
        log.info("not registering a version: experiments do not move @%s", tracking.CANDIDATE)
    mlflow_client = tracking.client() if register_model else None
    if mlflow_client is not None:
        tracking.close_abandoned_runs(mlflow_client)

    onnx_bytes = export_onnx(checkpoint, params.package.opset)
    verify_onnx(onnx_bytes, checkpoint, test.images[:256])
    origin = lineage.current(params.digest("data", "model", "train"))
    info = manifest(params, checkpoint, schema.pixel_max, origin.inputs, metrics, onnx_bytes)

    with atomic.replace_dir(paths.PACKAGE_DIR) as staging:
        atomic.write_bytes(staging / MODEL_FILE, onnx_bytes)
        atomic.write_json(staging / MANIFEST_FILE, info)
        atomic.write_text(staging / CARD_FILE, model_card(info, params, per_class_csv))
        profile = drift.Profile.of(read_split("train", schema=schema).images, schema.pixel_max)
        atomic.write_json(staging / PROFILE_FILE, profile.to_json())
        if mlflow_client is not None:
            register(mlflow_client, staging, info, origin, onnx_bytes, test.images[:2])
    log.info(
        "wrote %s (%d bytes of ONNX, sha256 %s)",
        paths.PACKAGE_DIR,
        len(onnx_bytes),
        info["model_sha256"][:12],
    )


def register(
    mlflow_client: Any,
    package_dir: Path,
    info: dict[str, Any],
    origin: lineage.Lineage,
    onnx_bytes: bytes,
    example: np.ndarray,
) -> None:
    """Log the package to the run that trained the checkpoint, and register it as `candidate`."""
    checkpoint_sha = tracking.checkpoint_digest(paths.CHECKPOINT_FILE)
    run_id = tracking.find_run_by_tag(mlflow_client, tracking.CHECKPOINT_TAG, checkpoint_sha)
    tags = tracking.lineage_tags(origin)
    # A resumed training run keeps its own lineage tags; this package's go on the version.
    with tracking.run(
        mlflow_client,
        run_id=run_id,
        run_name=f"package-{origin.git_commit[:8]}",
        tags=None if run_id else tags,
    ) as mlflow_run:
        mlflow_run.log_metrics(info["metrics"])
        for report in (
            paths.METRICS_FILE,
            paths.PER_CLASS_FILE,
            paths.PREDICTIONS_FILE,
            paths.CONFUSION_PNG,
            paths.MISCLASSIFIED_PNG,
        ):
            mlflow_run.log_artifact(report, "evaluate")
        mlflow_run.log_artifacts(package_dir, "package")
        package_uri = mlflow_run.artifact_uri + "/package"
        log.info("logged the package to run %s; registering it", mlflow_run.run_id)
        # Model logging exists only in MLflow's fluent API: the run is active for that call only.
        with mlflow_run.active():
            version = tracking.register_onnx(
                mlflow_client,
                name=info["name"],
                onnx_bytes=onnx_bytes,
                input_example=example.astype(np.float32),
                pip_requirements=_requirements(),
                version_tags={
                    **tags,
                    tracking.CHECKPOINT_TAG: checkpoint_sha,
                    tracking.PACKAGE_URI_TAG: package_uri,
                    "mlpipe.test_accuracy": str(info["metrics"]["test_accuracy"]),
                },
                alias=tracking.CANDIDATE,
            )
    log.info(
        "registered %s version %s as @%s (run %s)",
        info["name"],
        version,
        tracking.CANDIDATE,
        mlflow_run.run_id,
    )
