"""Requests for the model server, shared by the serving-class tests and the HTTP tests.

Bodies are the JSON objects a client sends; the expected errors are the 400 messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from mlpipe.contracts.manifest import MANIFEST_FILE, PackageManifest
from mlpipe.core import paths, tables

PACKAGE = paths.PACKAGE_DIR


@dataclass(frozen=True)
class Spec:
    """The input spec of a built package, as its package.json (PackageManifest) states it."""

    name: str
    height: int
    width: int
    pixel_max: int
    max_batch_size: int
    labels: list[str]
    model_name: str

    @classmethod
    def of(cls, project: Path) -> Spec:
        manifest = PackageManifest.from_json(json.loads((project / PACKAGE / MANIFEST_FILE).read_text()))
        spec = manifest.input
        return cls(
            spec.name, *spec.shape, spec.pixel_max, spec.max_batch_size, list(manifest.labels), manifest.name
        )


def prepared_test_images(project: Path) -> np.ndarray:
    """The prepared test split's images, uint8 [N, H, W]."""
    return np.load(project / "data/prepared/test_images.npy")


def evaluate_predictions(project: Path) -> list[str]:
    """`evaluate`'s predicted label for every test image, in the split's order."""
    return [row["predicted"] for row in tables.read_csv(project / paths.PREDICTIONS_FILE)]


def v1_body(images: np.ndarray) -> dict[str, Any]:
    return {"instances": images.tolist()}


def v2_body(images: np.ndarray, datatype: str = "UINT8", **extra: Any) -> dict[str, Any]:
    tensor = {"name": "pixels", "shape": list(images.shape), "datatype": datatype}
    return {"inputs": [{**tensor, "data": images.ravel().tolist()}], **extra}


def infer_request(body: dict[str, Any], model_name: str) -> InferRequest:
    """A V2 JSON body as the server hands it to the model (parsed and converted by KServe)."""
    return InferRequest.from_inference_request(InferenceRequest.model_validate(body), model_name)


@dataclass(frozen=True)
class BadRequest:
    """A request the server must refuse with HTTP 400 and a message matching ``error``."""

    id: str
    protocol: str  # "v1" | "v2"
    body: Any
    error: str


def bad_requests(spec: Spec) -> list[BadRequest]:
    """Every kind of invalid input: shape, dtype, values, batch size, structure."""
    h, w, top = spec.height, spec.width, spec.pixel_max
    one = np.zeros((1, h, w), dtype=np.uint8)

    def v2(shape: list[int], data: list[Any], datatype: str = "UINT8", name: str = "pixels") -> dict:
        return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}

    size = h * w
    too_many = spec.max_batch_size + 1
    return [
        BadRequest("v2-wrong-width", "v2", v2([1, h, w + 1], [0] * (size + h)), r"must have shape \[N, "),
        BadRequest("v2-missing-batch-axis", "v2", v2([h, w], [0] * size), r"must have shape \[N, "),
        BadRequest("v2-wrong-dtype", "v2", v2([1, h, w], [0] * size, "INT32"), r"datatype INT32; send UINT8"),
        BadRequest("v2-text-data", "v2", v2([1, h, w], ["a"] * size, "FP32"), r"numbers only"),
        BadRequest("v2-nan", "v2", v2([1, h, w], [float("nan")] * size, "FP32"), r"finite"),
        BadRequest("v2-above-range", "v2", v2([1, h, w], [top + 1] * size), rf"in 0\.\.{top}"),
        BadRequest("v2-negative", "v2", v2([1, h, w], [-1.0] * size, "FP32"), rf"in 0\.\.{top}"),
        BadRequest("v2-fractional-uint8", "v2", v2([1, h, w], [0.5] * size), r"whole numbers"),
        BadRequest("v2-value-count", "v2", v2([1, h, w], [0] * (size - 1)), rf"needs {size} values"),
        BadRequest("v2-empty-batch", "v2", v2([0, h, w], []), r"empty batch"),
        BadRequest("v2-too-many", "v2", v2([too_many, h, w], [0] * size * too_many), r"too many images"),
        BadRequest("v2-wrong-input-name", "v2", v2([1, h, w], [0] * size, name="x"), r"named 'pixels'"),
        BadRequest(
            "v2-two-inputs",
            "v2",
            {"inputs": v2_body(one)["inputs"] * 2},
            r"exactly one input tensor",
        ),
        BadRequest("v1-no-instances", "v1", {"images": one.tolist()}, r'"instances" must be a list'),
        BadRequest("v1-one-image-unwrapped", "v1", {"instances": one[0].tolist()}, r"must have shape"),
        BadRequest("v1-ragged", "v1", {"instances": [[[0] * w] * (h - 1) + [[0]]]}, r"not a rectangular"),
        BadRequest("v1-text", "v1", {"instances": [[["a"] * w] * h]}, r"numbers only"),
        BadRequest("v1-booleans", "v1", {"instances": [[[True] * w] * h]}, r"numbers only"),
        BadRequest("v1-above-range", "v1", v1_body(one.astype(int) + top + 1), rf"in 0\.\.{top}"),
        BadRequest("v1-empty-batch", "v1", {"instances": []}, r"empty batch"),
        BadRequest("v1-too-many", "v1", v1_body(np.zeros((too_many, h, w))), r"too many images"),
        BadRequest("v1-not-an-object", "v1", one.tolist(), r"must be a JSON object"),
        # image files go to a model trained on image files only
        BadRequest("v1-image-file", "v1", {"instances": [{"b64": "iVBORw0KGgo="}]}, r"not image files"),
        BadRequest("v2-image-file", "v2", v2([1], ["iVBORw0KGgo="], "BYTES"), r"not image files"),
    ]


# The cases' ids do not depend on the package, so tests can be parametrized by them.
BAD_REQUEST_IDS = [case.id for case in bad_requests(Spec("pixels", 8, 8, 16, 4, [], "model"))]


def bad_request(spec: Spec, case_id: str) -> BadRequest:
    """The case ``case_id`` for a package with ``spec``."""
    return next(case for case in bad_requests(spec) if case.id == case_id)
