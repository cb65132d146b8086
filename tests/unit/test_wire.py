"""The V2 REST wire format: every malformed body is an InvalidInput that names the problem."""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from mlpipe.serving.wire import HEADER_LENGTH, decode_request, encode_response

MODEL = "digits"
IMAGES = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8) % 17


def json_body(**tensor: object) -> bytes:
    base = {"name": "pixels", "shape": [2, 8, 8], "datatype": "UINT8", "data": IMAGES.ravel().tolist()}
    return json.dumps({"inputs": [base | tensor]}).encode()


def binary_body(size: object = IMAGES.nbytes, data: bytes = IMAGES.tobytes()) -> tuple[bytes, dict]:
    tensor = {
        "name": "pixels",
        "shape": [2, 8, 8],
        "datatype": "UINT8",
        "parameters": {"binary_data_size": size},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + data, {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}


def refusal(body: bytes, headers: dict[str, str]) -> str:
    with pytest.raises(InvalidInput) as error:
        decode_request(body, headers, MODEL)
    return str(error.value)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", None])
def test_json_request_decodes_with_or_without_content_type(content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = decode_request(json_body(), headers, MODEL)
    np.testing.assert_array_equal(np.asarray(request.inputs[0].data).reshape(2, 8, 8), IMAGES)


def test_binary_request_decodes_to_the_sent_pixels() -> None:
    body, headers = binary_body()
    [tensor] = decode_request(body, headers, MODEL).inputs
    np.testing.assert_array_equal(tensor.as_numpy(), IMAGES)


def test_binary_body_shorter_than_announced_is_refused() -> None:
    body, headers = binary_body(data=IMAGES.tobytes()[:50])
    assert "add up to 128 bytes, but 50 bytes follow the JSON header" in refusal(body, headers)


@pytest.mark.parametrize("length", ["abc", "-1", "0", "999999", ""])
def test_header_length_that_is_not_a_length_in_the_body_is_refused(length: str) -> None:
    body, headers = binary_body()
    message = refusal(body, headers | {HEADER_LENGTH: length})
    assert "Inference-Header-Content-Length must be the byte length" in message
    assert repr(length) in message


@pytest.mark.parametrize("size", ["x", -1, 1.5, True, None])
def test_binary_data_size_that_is_not_a_byte_count_is_refused(size: object) -> None:
    body, headers = binary_body(size=size)
    assert "parameters.binary_data_size must be the byte count" in refusal(body, headers)


def test_binary_data_size_that_does_not_fit_the_shape_is_refused() -> None:
    body, headers = binary_body(size=64, data=IMAGES.tobytes()[:64])
    assert "shape [2, 8, 8] of UINT8 needs 128 bytes; binary_data_size says 64" in refusal(body, headers)


@pytest.mark.parametrize("datatype", ["UINT7", ["UINT8"], None])
def test_binary_tensor_of_an_unknown_datatype_is_refused(datatype: object) -> None:
    body, headers = binary_body()
    header_length = int(headers[HEADER_LENGTH])
    header = json.loads(body[:header_length])
    header["inputs"][0]["datatype"] = datatype
    new_header = json.dumps(header).encode()
    message = refusal(new_header + body[header_length:], headers | {HEADER_LENGTH: str(len(new_header))})
    assert "binary data needs a fixed-size datatype (BOOL, INTn, UINTn or FPn) or BYTES" in message


def bytes_body(data: bytes, shape: list[int]) -> tuple[bytes, dict]:
    """A binary request whose one BYTES tensor is ``data`` (elements already length-prefixed)."""
    tensor = {"name": "pixels", "shape": shape, "datatype": "BYTES"}
    header = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {HEADER_LENGTH: str(len(header))}


def test_binary_bytes_tensor_decodes_to_its_elements() -> None:
    files = [b"\x89PNG first", b"", b"third \x00 file"]
    data = b"".join(struct.pack("<I", len(f)) + f for f in files)
    [tensor] = decode_request(*bytes_body(data, [3]), MODEL).inputs
    assert (tensor.datatype, tensor.data) == ("BYTES", files)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x05\x00", "BYTES data ends inside the length of element 0"),
        (
            struct.pack("<I", 2) + b"ab" + struct.pack("<I", 9) + b"abc",
            "element 1 announces 9 bytes, but 3 follow",
        ),
    ],
)
def test_binary_bytes_tensor_whose_lengths_do_not_fit_is_refused(data: bytes, message: str) -> None:
    assert message in refusal(*bytes_body(data, [2]))


def test_binary_header_that_is_not_json_is_refused() -> None:
    assert "JSON header of the binary request is not valid JSON" in refusal(
        b"\xff" * 10, {HEADER_LENGTH: "4"}
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "inputs: Field required"),
        (b"[1, 2]", "got a JSON list"),
        (b"[" * 5000, "not valid JSON"),
        (bytes(range(256)), "not valid JSON"),
        (b"", "the request body is empty"),
        (json_body(shape="8x8"), "inputs.0.shape: Input should be a valid list"),
    ],
)
def test_json_body_that_is_not_a_request_is_refused(body: bytes, message: str) -> None:
    assert message in refusal(body, {"content-type": "application/json"})


def test_other_content_type_is_refused_naming_it() -> None:
    message = refusal(json_body(), {"content-type": "text/plain"})
    assert "Content-Type 'text/plain' is not supported" in message
    assert "application/json" in message


def test_response_has_no_null_fields() -> None:
    output = InferOutput("label", [1], "BYTES", np.array(["7"], dtype=np.object_))
    request = decode_request(json_body(), {}, MODEL)
    body, headers = encode_response(InferResponse("r1", MODEL, [output], model_version="abc"), request)
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {
        "id": "r1",
        "model_name": MODEL,
        "model_version": "abc",
        "outputs": [{"name": "label", "shape": [1], "datatype": "BYTES", "data": ["7"]}],
    }


def classifier_outputs() -> list[InferOutput]:
    return [
        InferOutput("class_index", [2], "INT64", np.array([7, 1], dtype=np.int64)),
        InferOutput("label", [2], "BYTES", np.array(["7", b"1"], dtype=np.object_)),
        InferOutput("probabilities", [2, 3], "FP32", np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)),
    ]


def test_json_outputs_are_written_as_kserve_writes_them() -> None:
    request = decode_request(json_body(), {}, MODEL)
    body, _ = encode_response(InferResponse("r1", MODEL, classifier_outputs(), model_version="abc"), request)
    kserve_body, _ = InferResponse("r1", MODEL, classifier_outputs(), model_version="abc").to_rest()
    assert orjson.loads(body) == kserve_body


def test_binary_outputs_are_kserves_own() -> None:
    request = decode_request(*binary_body(), MODEL)
    request.parameters = {"binary_data_output": True}
    response = InferResponse("r1", MODEL, classifier_outputs(), use_binary_outputs=True)
    body, headers = encode_response(response, request)
    kserve_body, json_length = InferResponse(
        "r1", MODEL, classifier_outputs(), use_binary_outputs=True
    ).to_rest()
    assert (body, headers[HEADER_LENGTH]) == (kserve_body, str(json_length))


@pytest.mark.parametrize(
    "body",
    [
        json_body(),
        json.dumps({"id": "r7", "inputs": [json.loads(json_body())["inputs"][0]]}).encode(),
        json_body(parameters={"content_type": "np"}),
        json_body(shape=[2, 8.0, 8]),
        json.dumps({"inputs": json.loads(json_body())["inputs"], "outputs": [{"name": "label"}]}).encode(),
    ],
    ids=["plain", "with-id", "input-parameters", "float-in-shape", "requested-outputs"],
)
def test_requests_decode_as_kserve_decodes_them(body: bytes) -> None:
    ours = decode_request(body, {"content-type": "application/json"}, MODEL)
    kserves = InferRequest.from_inference_request(InferenceRequest.model_validate_json(body), MODEL)
    assert (ours.id, ours.parameters, ours.request_outputs) == (
        kserves.id,
        kserves.parameters,
        kserves.request_outputs,
    )
    assert [(i.name, i.shape, i.datatype, i.parameters, i.data) for i in ours.inputs] == [
        (i.name, i.shape, i.datatype, i.parameters, i.data) for i in kserves.inputs
    ]


def test_nan_literals_are_read_so_the_pixel_checks_can_name_them() -> None:
    body = b'{"inputs": [{"name": "pixels", "shape": [2], "datatype": "FP32", "data": [NaN, Infinity]}]}'
    [tensor] = decode_request(body, {"content-type": "application/json"}, MODEL).inputs
    assert not np.isfinite(np.asarray(tensor.data)).any()
