"""The V2 (Open Inference Protocol) REST wire format: request bodies in, response bodies out.

A request body is JSON, or JSON followed by raw tensor bytes (the binary tensor data extension,
with the JSON's length in ``Inference-Header-Content-Length``). Every way a body can be
malformed raises ``BadInput`` naming what is wrong, where, and how to fix it; KServe's own
decoder lets some of them escape as server errors (a short binary body, a non-numeric length).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from mlpipe.serving.validation import BadInput

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPES = ("", "application/json")  # no Content-Type is JSON too: tritonclient sends none
BINARY_TYPES = ("", "application/octet-stream", "application/json")
# Bytes per element of the fixed-size V2 datatypes (BYTES is length-prefixed, so variable).
DATATYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
REQUEST_FORMAT = 'a JSON object {"inputs": [{"name", "shape", "datatype", "data"}]}'
MAX_ERRORS_SHOWN = 3


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


def _validation_message(error: ValidationError, what: str) -> str:
    problems = [
        f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
        for e in error.errors(include_url=False)
    ]
    more = len(problems) - MAX_ERRORS_SHOWN
    shown = "; ".join(problems[:MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
    return f"{what} is not a V2 inference request ({shown}); send {REQUEST_FORMAT}"


def _inference_request(body: Any, what: str) -> InferenceRequest:
    if not isinstance(body, dict):
        raise BadInput("body", f"{what} must be {REQUEST_FORMAT}; got a JSON {type(body).__name__}")
    try:
        return InferenceRequest.model_validate(body)
    except ValidationError as e:
        raise BadInput("body", _validation_message(e, what)) from e


def _header_length(value: str, body_size: int) -> int:
    if not value.isdigit() or not 0 < int(value) <= body_size:
        raise BadInput(
            "body",
            f"header Inference-Header-Content-Length must be the byte length of the JSON at the "
            f"start of the body, a whole number from 1 to {body_size}; got {value!r}",
        )
    return int(value)


def _binary_size(tensor: Mapping[str, Any]) -> int:
    name = tensor.get("name")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if type(size) is not int or size < 0:
        raise BadInput(
            "body",
            f"input {name!r}: parameters.binary_data_size must be the byte count of its data after "
            f"the JSON header, a whole number >= 0; got {size!r}",
        )
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype in DATATYPE_SIZES and isinstance(shape, list):
        needed = math.prod(shape) * DATATYPE_SIZES[datatype]
        if size != needed:
            raise BadInput(
                "body",
                f"input {name!r}: shape {shape} of {datatype} needs {needed} bytes; "
                f"binary_data_size says {size}",
            )
    return size


def _binary_request(body: bytes, header_length: int, model_name: str) -> InferRequest:
    """A request in the binary tensor data extension: JSON header, then each tensor's bytes."""
    header = _json(body[:header_length], "the JSON header of the binary request")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadInput("body", f"the JSON header of the binary request must be {REQUEST_FORMAT}")
    binary = [t for t in header["inputs"] if isinstance(t, dict) and "data" not in t]
    sizes = [_binary_size(t) for t in binary]
    available = len(body) - header_length
    if sum(sizes) != available:
        raise BadInput(
            "body",
            f"the binary inputs' binary_data_size add up to {sum(sizes)} bytes, but {available} "
            "bytes follow the JSON header; send exactly the bytes the header announces",
        )
    # Validate the header as a JSON request whose binary tensors are empty, then attach the bytes.
    for tensor in binary:
        tensor["data"] = []
    request = InferRequest.from_inference_request(
        _inference_request(header, "the JSON header of the binary request"), model_name
    )
    offset = header_length
    binary_ids = {id(t) for t in binary}
    for tensor, infer_input in zip(header["inputs"], request.inputs, strict=True):
        if id(tensor) in binary_ids:
            size = tensor["parameters"]["binary_data_size"]
            infer_input._data = None
            infer_input._raw_data = body[offset : offset + size]
            offset += size
    return request


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
    request = _inference_request(_json(body, "the request body"), "the request body")
    return InferRequest.from_inference_request(request, model_name)


def encode_response(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a V2 REST response; absent optional fields are left out, not null."""
    rest, json_length = response.to_rest()
    if isinstance(rest, bytes):
        headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(json_length)}
        return rest, headers
    body = {k: v for k, v in rest.items() if v is not None}
    body["outputs"] = [{k: v for k, v in o.items() if v is not None} for o in body["outputs"]]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": "application/json"}
