"""The V2 (Open Inference Protocol) REST wire format: request bodies in, response bodies out.

A request body is JSON, or JSON followed by raw tensor bytes (the binary tensor data extension,
with the JSON's length in ``Inference-Header-Content-Length``; a BYTES tensor's elements each as
a 4-byte little-endian length and that many bytes). Every way a body can be
malformed raises ``BadInput`` naming what is wrong, where, and how to fix it; KServe's own
decoder lets some of them escape as server errors (a short binary body, a non-numeric length).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.utils.numpy_codec import to_np_dtype
from pydantic import ValidationError

from mlpipe.serving.validation import BadInput

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPES = ("", "application/json")  # no Content-Type is JSON too: tritonclient sends none
BINARY_TYPES = ("", "application/octet-stream", "application/json")
REQUEST_FORMAT = 'a JSON object {"inputs": [{"name", "shape", "datatype", "data"}]}'
MAX_ERRORS_SHOWN = 3
JSON_HEADERS = {"content-type": "application/json"}
# The keys of a request (and of its inputs) that `_plain_request` decodes without pydantic.
PLAIN_REQUEST_KEYS = {"id", "inputs"}
PLAIN_INPUT_KEYS = {"name", "shape", "datatype", "data"}


def media_type(headers: Mapping[str, str]) -> str:
    """The request's Content-Type without parameters, lower case; empty when there is none."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _json(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        error = e
    # Python's json writes NaN and Infinity as bare literals, which strict JSON (orjson) refuses:
    # read them, so that the pixel checks can say which values are wrong.
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise BadInput("body", f"{what} is not valid JSON ({error}); send {REQUEST_FORMAT}") from error


def validation_problems(errors: Sequence[Mapping[str, Any]], root: str) -> str:
    """Pydantic's errors as `key: message` (``root`` for the whole input), the first
    MAX_ERRORS_SHOWN of them and how many more there are."""
    problems = [f"{'.'.join(str(part) for part in e['loc']) or root}: {e['msg']}" for e in errors]
    more = len(problems) - MAX_ERRORS_SHOWN
    return "; ".join(problems[:MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def _inference_request(body: Any, what: str) -> InferenceRequest:
    if not isinstance(body, dict):
        raise BadInput("body", f"{what} must be {REQUEST_FORMAT}; got a JSON {type(body).__name__}")
    try:
        return InferenceRequest.model_validate(body)
    except ValidationError as e:
        shown = validation_problems(e.errors(include_url=False), "body")
        raise BadInput(
            "body", f"{what} is not a V2 inference request ({shown}); send {REQUEST_FORMAT}"
        ) from e


def _plain_request(body: Any, model_name: str) -> InferRequest | None:
    """The InferRequest of a JSON body whose fields all have exactly the types the request model
    asks for (what clients send), built without validating it with pydantic; None for any other
    body, which `_inference_request` then validates and explains."""
    if (
        type(body) is not dict
        or not body.keys() <= PLAIN_REQUEST_KEYS
        or type(body.get("inputs")) is not list
    ):
        return None
    request_id = body.get("id")
    if request_id is not None and type(request_id) is not str:
        return None
    inputs = []
    for tensor in body["inputs"]:
        if type(tensor) is not dict or tensor.keys() != PLAIN_INPUT_KEYS:
            return None
        name, shape, datatype, data = tensor["name"], tensor["shape"], tensor["datatype"], tensor["data"]
        if not (type(name) is str and type(datatype) is str and type(data) is list and type(shape) is list):
            return None
        if datatype == "FP16" or not all(type(n) is int for n in shape):
            return None
        inputs.append(InferInput(name=name, shape=shape, datatype=datatype, data=data, parameters={}))
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=request_id)


def _header_length(value: str, body_size: int) -> int:
    if not value.isdigit() or not 0 < int(value) <= body_size:
        raise BadInput(
            "body",
            f"header Inference-Header-Content-Length must be the byte length of the JSON at the "
            f"start of the body, a whole number from 1 to {body_size}; got {value!r}",
        )
    return int(value)


BYTES = "BYTES"
BYTES_LENGTH = struct.Struct("<I")  # the length before each element of a binary BYTES tensor


def _binary_layout(tensor: Mapping[str, Any]) -> tuple[np.dtype | None, int]:
    """The element type (None: BYTES, elements of their own length) and byte count of a binary
    tensor, checked against its shape."""
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if type(size) is not int or size < 0:
        raise BadInput(
            "body",
            f"input {name!r}: parameters.binary_data_size must be the byte count of its data after "
            f"the JSON header, a whole number >= 0; got {size!r}",
        )
    if datatype == BYTES:  # its elements carry their own length: checked as they are read
        return None, size
    dtype = to_np_dtype(datatype) if isinstance(datatype, str) else None
    if dtype is None or dtype is np.object_:
        raise BadInput(
            "datatype",
            f"input {name!r}: binary data needs a fixed-size datatype (BOOL, INTn, UINTn or FPn) "
            f"or BYTES; got {datatype!r}",
        )
    dtype = np.dtype(dtype)
    if isinstance(shape, list) and size != math.prod(shape) * dtype.itemsize:
        raise BadInput(
            "body",
            f"input {name!r}: shape {shape} of {datatype} needs {math.prod(shape) * dtype.itemsize} "
            f"bytes; binary_data_size says {size}",
        )
    return dtype, size


def _binary_request(body: bytes, header_length: int, model_name: str) -> InferRequest:
    """A request in the binary tensor data extension: JSON header, then each tensor's bytes."""
    header = _json(body[:header_length], "the JSON header of the binary request")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadInput("body", f"the JSON header of the binary request must be {REQUEST_FORMAT}")
    binary = [t for t in header["inputs"] if isinstance(t, dict) and "data" not in t]
    layouts = {id(t): _binary_layout(t) for t in binary}
    announced = sum(size for _, size in layouts.values())
    available = len(body) - header_length
    if announced != available:
        raise BadInput(
            "body",
            f"the binary inputs' binary_data_size add up to {announced} bytes, but {available} "
            "bytes follow the JSON header; send exactly the bytes the header announces",
        )
    # Validate the header as a JSON request whose binary tensors are empty, then attach the bytes.
    for tensor in binary:
        tensor["data"] = []
    request = InferRequest.from_inference_request(
        _inference_request(header, "the JSON header of the binary request"), model_name
    )
    offset = header_length
    for tensor, infer_input in zip(header["inputs"], request.inputs, strict=True):
        if id(tensor) in layouts:
            dtype, size = layouts[id(tensor)]
            if dtype is None:
                infer_input.data = _bytes_elements(body[offset : offset + size], infer_input.name)
            else:
                # A flat view of the tensor's bytes: the model checks them against the shape.
                infer_input.data = np.frombuffer(body, dtype, size // dtype.itemsize, offset)
            offset += size
    return request


def _bytes_elements(data: bytes, name: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + BYTES_LENGTH.size > len(data):
            raise BadInput(
                "body", f"input {name!r}: BYTES data ends inside the length of element {len(elements)}"
            )
        (length,) = BYTES_LENGTH.unpack_from(data, offset)
        offset += BYTES_LENGTH.size
        if offset + length > len(data):
            raise BadInput(
                "body",
                f"input {name!r}: BYTES element {len(elements)} announces {length} bytes, but "
                f"{len(data) - offset} follow; each element is a 4-byte little-endian length, then "
                "that many bytes",
            )
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def decode_request(body: bytes, headers: Mapping[str, str], model_name: str) -> InferRequest:
    """The InferRequest in a V2 REST body; raise BadInput saying what is wrong and how to fix it."""
    content_type = media_type(headers)
    length = headers.get(HEADER_LENGTH)
    if length is not None:
        if content_type not in BINARY_TYPES:
            raise BadInput(
                "content_type",
                f"Content-Type {content_type!r} does not fit a binary tensor request; "
                "send application/octet-stream (or none)",
            )
        return _binary_request(body, _header_length(length, len(body)), model_name)
    if content_type not in JSON_TYPES:
        raise BadInput(
            "content_type",
            f"Content-Type {content_type!r} is not supported for V2 inference: send JSON with "
            "Content-Type: application/json, or binary tensors with an "
            "Inference-Header-Content-Length header",
        )
    if not body:
        raise BadInput("body", f"the request body is empty; send {REQUEST_FORMAT}")
    decoded = _json(body, "the request body")
    plain = _plain_request(decoded, model_name)
    if plain is not None:
        return plain
    request = _inference_request(decoded, "the request body")
    return InferRequest.from_inference_request(request, model_name)


def _json_outputs(response: InferResponse) -> list[dict[str, Any]] | None:
    """The outputs as the response's JSON holds them, when every one is a NumPy array without
    parameters (what `model.Classifier` answers); None otherwise."""
    outputs = []
    for output in response.outputs:
        data = output.data
        if not isinstance(data, np.ndarray) or output.parameters or output.datatype == "FP16":
            return None
        values = data.ravel().tolist()
        if output.datatype == "BYTES":
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        outputs.append(
            {"name": output.name, "shape": output.shape, "datatype": output.datatype, "data": values}
        )
    return outputs


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a V2 REST response to ``request``; absent optional fields are left
    out, not null."""
    # KServe's InferResponse.to_rest() turns each output to a list element by element and back
    # (a quarter of a small request's time): JSON outputs of NumPy arrays are written directly.
    outputs = None
    if not (request.use_binary_outputs or request.request_outputs or response.parameters):
        outputs = _json_outputs(response)
    if outputs is not None:
        body = {"id": response.id, "model_name": response.model_name, "model_version": response.model_version}
        body = {k: v for k, v in body.items() if v is not None} | {"outputs": outputs}
        return orjson.dumps(body), JSON_HEADERS
    rest, json_length = response.to_rest()
    if isinstance(rest, bytes):
        headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(json_length)}
        return rest, headers
    body = {k: v for k, v in rest.items() if v is not None}
    body["outputs"] = [{k: v for k, v in o.items() if v is not None} for o in body["outputs"]]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), JSON_HEADERS
