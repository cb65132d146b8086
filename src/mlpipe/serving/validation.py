"""Turning V1 and V2 request payloads into checked pixel arrays, or a 400 that says what is wrong.

Every check runs before the model sees the data, against the package's input spec: shape
[N, H, W], 1 <= N <= max_batch_size, numbers only, finite, within 0..pixel_max.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from mlpipe.serving.model_package import InputSpec

# What can be wrong with a request's input: the `reason` label of the rejected-requests metric.
INPUT_PROBLEMS = (
    "batch_size",
    "datatype",
    "input_name",
    "shape",
    "not_numbers",
    "pixel_values",
    "body",
    "content_type",
)


class BadInput(InvalidInput):
    """A refused input (HTTP 400), with what was wrong with it: one of ``INPUT_PROBLEMS``."""

    def __init__(self, problem: str, message: str) -> None:
        if problem not in INPUT_PROBLEMS:
            raise ValueError(f"unknown input problem {problem!r}")
        super().__init__(message)
        self.problem = problem


# V2 datatypes a client may send pixels as; UINT8 is the prepared arrays' own dtype.
V2_DATATYPES = ("UINT8", "FP32")
NUMERIC_KINDS = "iuf"  # NumPy dtype kinds: signed, unsigned, float (not bool, str, object)
KIND_NAMES = {"b": "true/false", "U": "text", "S": "text", "O": "null or mixed"}


def _image_shape(spec: InputSpec) -> str:
    return f"[N, {spec.height}, {spec.width}]"


def _check_batch_size(n: int, spec: InputSpec) -> None:
    if n < 1:
        raise BadInput("batch_size", "empty batch: send at least one image")
    if n > spec.max_batch_size:
        raise BadInput(
            "batch_size",
            f"too many images: {n} in one request, at most {spec.max_batch_size}; split the batch",
        )


def _as_numeric_array(data: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except ValueError as e:  # ragged nested lists
        raise BadInput("shape", f"{what} is not a rectangular array of numbers ({e})") from e
    if array.dtype.kind not in NUMERIC_KINDS:
        found = KIND_NAMES.get(array.dtype.kind, array.dtype.name)
        raise BadInput("not_numbers", f"{what} must hold numbers only; found {found} values")
    return array


def _checked_pixels(array: np.ndarray, spec: InputSpec, whole_numbers: bool) -> np.ndarray:
    """The pixels as contiguous float32, once they are finite and within the pixel range."""
    pixels = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise BadInput("pixel_values", "pixel values must be finite; found NaN or infinity")
        if whole_numbers and not (array == np.round(array)).all():
            raise BadInput("pixel_values", "UINT8 pixel values must be whole numbers")
    low, high = array.min(), array.max()
    if low < 0 or high > spec.pixel_max:
        raise BadInput(
            "pixel_values",
            f"pixel values must be raw pixels in 0..{spec.pixel_max} (the dataset's own scale); "
            f"got values from {low} to {high}",
        )
    return pixels


def v1_images(body: Any, spec: InputSpec) -> np.ndarray:
    """Pixels float32 [N, H, W] from a V1 body ``{"instances": [image, ...]}``."""
    if not isinstance(body, dict):
        raise BadInput(
            "body",
            'the request body must be a JSON object {"instances": [image, ...]} '
            "sent with Content-Type: application/json",
        )
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BadInput(
            "body", f'"instances" must be a list of images, each {spec.height} rows of {spec.width} pixels'
        )
    _check_batch_size(len(instances), spec)
    array = _as_numeric_array(instances, '"instances"')
    if array.shape[1:] != (spec.height, spec.width):
        raise BadInput("shape", f'"instances" must have shape {_image_shape(spec)}; got {list(array.shape)}')
    return _checked_pixels(array, spec, whole_numbers=False)


def _tensor_data(tensor: InferInput) -> Any:
    if tensor.data is not None:
        return tensor.data
    try:  # binary tensor data (gRPC raw contents)
        return tensor.as_numpy()
    except ValueError as e:
        raise BadInput(
            "shape", f"input {tensor.name!r}: the binary data does not match its shape ({e})"
        ) from e


def v2_images(request: InferRequest, spec: InputSpec) -> np.ndarray:
    """Pixels float32 [N, H, W] from a V2 request with one UINT8 or FP32 tensor [N, H, W]."""
    names = [tensor.name for tensor in request.inputs]
    if names != [spec.name]:
        raise BadInput("input_name", f"expected exactly one input tensor named {spec.name!r}; got {names}")
    tensor = request.inputs[0]
    if tensor.datatype not in V2_DATATYPES:
        raise BadInput(
            "datatype",
            f"input {spec.name!r} has datatype {tensor.datatype}; send {' or '.join(V2_DATATYPES)}",
        )
    shape = list(tensor.shape)
    if len(shape) != 3 or shape[1:] != [spec.height, spec.width]:
        raise BadInput("shape", f"input {spec.name!r} must have shape {_image_shape(spec)}; got {shape}")
    _check_batch_size(shape[0], spec)
    array = _as_numeric_array(_tensor_data(tensor), f"the data of input {spec.name!r}")
    if array.size != math.prod(shape):
        raise BadInput(
            "shape", f"input {spec.name!r}: shape {shape} needs {math.prod(shape)} values; got {array.size}"
        )
    return _checked_pixels(array.reshape(shape), spec, whole_numbers=tensor.datatype == "UINT8")
