"""Turning V1 and V2 request payloads into checked pixel arrays, or a 400 that says what is wrong.

Every check runs before the model sees the data, against the package's input spec: shape
[N, H, W] (or [N, H, W, 3] for an RGB model), 1 <= N <= max_batch_size, numbers only, finite,
within 0..pixel_max. A model trained on image files also takes the files themselves (V1
``{"b64": ...}`` instances, a V2 BYTES tensor), read by the function `prepare` read its
training images with (mlpipe.contracts.images.decode_image).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from mlpipe.contracts.images import FORMAT_NAMES, ImageDecoding, ImageError, decode_image
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
    "image",
    "column",
    "not_text",
    "number_values",
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
# The V2 datatype of encoded image files: one file per element.
V2_FILES = "BYTES"
NUMERIC_KINDS = "iuf"  # NumPy dtype kinds: signed, unsigned, float (not bool, str, object)
KIND_NAMES = {"b": "true/false", "U": "text", "S": "text", "O": "null or mixed"}
# The largest image file a client may send a resizing model, in pixels: it is decoded in full
# before it is resized (a 6,000 x 4,000 photo fits). Checked on the file's header, before decoding.
MAX_IMAGE_PIXELS = 2**25
V1_FILE = '{"b64": "<base64 of a ' + FORMAT_NAMES + ' file>"}'


def _image_shape(spec: InputSpec) -> str:
    return "[" + ", ".join(["N", *map(str, spec.image_shape)]) + "]"


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


def _file_decoding(spec: InputSpec) -> ImageDecoding:
    """How the model reads an image file; a 400 if it takes raw pixels only."""
    if spec.decoding is None:
        raise BadInput(
            "image",
            f"this model takes raw pixels {_image_shape(spec)}, not image files (it was not trained "
            "on image files); send the pixel values",
        )
    return spec.decoding


def _decoded(files: list[bytes], decoding: ImageDecoding, where: str) -> np.ndarray:
    """Pixels float32 [N, H, W] (or [N, H, W, 3]) of image files, read as `prepare` read the
    training images; ``where`` names the n-th file in a message (``where.format(n)``)."""
    images = []
    for index, data in enumerate(files):
        try:
            images.append(decode_image(data, decoding, MAX_IMAGE_PIXELS))
        except ImageError as e:
            raise BadInput("image", f"{where.format(index)}: {e}") from e
    return np.stack(images).astype(np.float32)


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInput("image", f"{where}: not valid base64 ({e})") from e


def _v1_file(instance: Any, index: int) -> bytes:
    """The bytes of a V1 instance ``{"b64": "..."}``."""
    if not (isinstance(instance, dict) and instance.keys() == {"b64"} and isinstance(instance["b64"], str)):
        raise BadInput(
            "image",
            f"instance {index}: an image file is sent as {V1_FILE}; every instance must be one "
            f"when one is (got {type(instance).__name__})",
        )
    return _base64(instance["b64"], f"instance {index}")


def v1_images(body: Any, spec: InputSpec) -> np.ndarray:
    """Pixels float32 [N, H, W] (or [N, H, W, 3]) from a V1 body ``{"instances": [image, ...]}``,
    each image its pixel rows or, for a model trained on image files, ``{"b64": ...}``."""
    if not isinstance(body, dict):
        raise BadInput(
            "body",
            'the request body must be a JSON object {"instances": [image, ...]} '
            "sent with Content-Type: application/json",
        )
    instances = body.get("instances")
    if not isinstance(instances, list):
        pixels = "pixels" if spec.channels == 1 else f"pixels of {spec.channels} values"
        raise BadInput(
            "body", f'"instances" must be a list of images, each {spec.height} rows of {spec.width} {pixels}'
        )
    _check_batch_size(len(instances), spec)
    if any(isinstance(instance, dict) for instance in instances):
        decoding = _file_decoding(spec)
        files = [_v1_file(instance, index) for index, instance in enumerate(instances)]
        return _decoded(files, decoding, "instance {}")
    array = _as_numeric_array(instances, '"instances"')
    if array.shape[1:] != spec.image_shape:
        raise BadInput("shape", f'"instances" must have shape {_image_shape(spec)}; got {list(array.shape)}')
    return _checked_pixels(array, spec, whole_numbers=False)


def tensor_data(tensor: InferInput) -> Any:
    """A V2 input's values: its JSON data, or a flat array of its binary data."""
    if tensor.data is not None:
        return tensor.data
    try:  # binary tensor data (gRPC raw contents)
        return tensor.as_numpy()
    except ValueError as e:
        raise BadInput(
            "shape", f"input {tensor.name!r}: the binary data does not match its shape ({e})"
        ) from e


def _v2_files(tensor: InferInput, spec: InputSpec) -> np.ndarray:
    """Pixels of a BYTES tensor [N] holding one image file per element: base64 text in JSON,
    the file's own bytes in binary data."""
    decoding = _file_decoding(spec)
    shape = list(tensor.shape)
    if len(shape) != 1:
        raise BadInput(
            "shape",
            f"input {spec.name!r} of {V2_FILES} holds one image file per element: shape [N]; got {shape}",
        )
    _check_batch_size(shape[0], spec)
    elements = tensor_data(tensor)
    if not isinstance(elements, list | np.ndarray) or len(elements) != shape[0]:
        found = len(elements) if isinstance(elements, list | np.ndarray) else type(elements).__name__
        raise BadInput(
            "shape", f"input {spec.name!r}: shape {shape} needs {shape[0]} image files; got {found}"
        )
    files = []
    for index, element in enumerate(elements):
        where = f"input {spec.name!r}, image {index}"
        if isinstance(element, str):
            files.append(_base64(element, where))
        elif isinstance(element, bytes):
            files.append(element)
        else:
            raise BadInput(
                "image", f"{where}: a {V2_FILES} element is a base64 string (or raw bytes in binary data)"
            )
    return _decoded(files, decoding, f"input {spec.name!r}, image {{}}")


def v2_images(request: InferRequest, spec: InputSpec) -> np.ndarray:
    """Pixels float32 [N, H, W] (or [N, H, W, 3]) from a V2 request with one UINT8 or FP32 tensor
    of that shape, or, for a model trained on image files, a BYTES tensor [N] of them."""
    names = [tensor.name for tensor in request.inputs]
    if names != [spec.name]:
        raise BadInput("input_name", f"expected exactly one input tensor named {spec.name!r}; got {names}")
    tensor = request.inputs[0]
    if tensor.datatype == V2_FILES:
        return _v2_files(tensor, spec)
    if tensor.datatype not in V2_DATATYPES:
        files = f", or {V2_FILES} (image files)" if spec.decoding else ""
        raise BadInput(
            "datatype",
            f"input {spec.name!r} has datatype {tensor.datatype}; send {' or '.join(V2_DATATYPES)}{files}",
        )
    shape = list(tensor.shape)
    if shape[1:] != list(spec.image_shape):
        raise BadInput("shape", f"input {spec.name!r} must have shape {_image_shape(spec)}; got {shape}")
    _check_batch_size(shape[0], spec)
    array = _as_numeric_array(tensor_data(tensor), f"the data of input {spec.name!r}")
    if array.size != math.prod(shape):
        raise BadInput(
            "shape", f"input {spec.name!r}: shape {shape} needs {math.prod(shape)} values; got {array.size}"
        )
    return _checked_pixels(array.reshape(shape), spec, whole_numbers=tensor.datatype == "UINT8")
