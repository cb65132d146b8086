"""`mlpipe serve` under a stream of valid and malformed requests on the same keep-alive connections.

A fifth of the requests are malformed, in every way a careless client or an attacker sends:
the server answers each with a 4xx ``{"error": ...}`` naming the problem, keeps every connection
open, answers every valid request as `evaluate` did, and stays within a memory bound.
"""

from __future__ import annotations

import http.client
import json
import re
import struct
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
from harness.servers import LOOPBACK, ModelServer, mlpipe_server

from tests.model.serving_cases import PACKAGE, Spec, evaluate_predictions, prepared_test_images

pytestmark = pytest.mark.slow

REQUESTS = 2500
CONNECTIONS = 4
MALFORMED_EVERY = 5  # one request in five is malformed
# The server process's resident memory after the run: a model of a few kB, KServe, FastAPI and
# ONNX Runtime take ~250 MB; a body parsed in full past the limit would add hundreds.
MAX_RSS_BYTES = 450 * 2**20
MAX_BODY_BYTES = 200_000
CHUNK_BYTES = 64 * 1024
# A body far larger than the socket buffers: a server that answers and closes without reading it
# resets the connection of a client still sending it.
UNREAD_BODY_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Call:
    """One HTTP request and what the answer must be: a label (valid) or a 4xx error matching ``error``."""

    kind: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    error: str = ""
    status: int = 400
    chunked: bool = False  # sent in chunks without a Content-Length

    def content(self) -> bytes | Iterator[bytes]:
        if not self.chunked:
            return self.body
        return (self.body[i : i + CHUNK_BYTES] for i in range(0, len(self.body), CHUNK_BYTES))


def binary(
    images: np.ndarray, size: object = None, length: str | None = None, cut: int = 0
) -> tuple[bytes, dict]:
    datatype = {"uint8": "UINT8", "float32": "FP32"}[images.dtype.name]
    tensor = {"name": "pixels", "shape": list(images.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": images.nbytes if size is None else size}
    header = json.dumps({"inputs": [tensor]}).encode()
    data = images.tobytes()[: images.nbytes - cut]
    return header + data, {"inference-header-content-length": length or str(len(header))}


def bytes_binary(length: int, content: bytes) -> tuple[bytes, dict]:
    """A binary request of one BYTES element: the 4-byte ``length`` it announces, then ``content``."""
    element = struct.pack("<I", length) + content
    tensor = {"name": "pixels", "shape": [1], "datatype": "BYTES"}
    header = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(element)}}]}).encode()
    return header + element, {"inference-header-content-length": str(len(header))}


def v2_json(images: np.ndarray, datatype: str = "UINT8", data: object = None, shape: object = None) -> bytes:
    tensor = {"name": "pixels", "shape": shape or list(images.shape), "datatype": datatype}
    tensor["data"] = images.ravel().tolist() if data is None else data
    return json.dumps({"inputs": [tensor]}).encode()


def malformed(spec: Spec, image: np.ndarray) -> list[Call]:
    """Every kind of malformed request, JSON and binary extension, V2 and V1."""
    v2, v1 = f"/v2/models/{spec.model_name}/infer", f"/v1/models/{spec.model_name}:predict"
    js = {"content-type": "application/json"}
    n = image.size
    too_many = np.zeros((spec.max_batch_size + 1, spec.height, spec.width), dtype=np.uint8)
    return [
        Call("binary-short-body", v2, *binary(image, cut=20), error="bytes follow the JSON header"),
        Call("binary-length-abc", v2, *binary(image, length="abc"), error="Inference-Header-Content-Length"),
        Call("binary-size-x", v2, *binary(image, size="x"), error="binary_data_size must be"),
        Call(
            "random-bytes",
            v2,
            bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
            js,
            error="not valid JSON",
        ),
        Call("deep-json", v2, b"[" * 100_000, js, error="not valid JSON"),
        Call("empty-object", v2, b"{}", js, error="inputs: Field required"),
        Call(
            "wrong-content-type",
            v2,
            v2_json(image),
            {"content-type": "text/plain"},
            error="Content-Type 'text/plain'",
        ),
        Call(
            "nan",
            v2,
            v2_json(image, "FP32", ["NaN"] * n).replace(b'"NaN"', b"NaN"),
            js,
            error="finite",
        ),
        Call("infinite", v2, *binary(np.full(image.shape, np.inf, dtype=np.float32)), error="finite"),
        Call("out-of-range", v2, v2_json(image + spec.pixel_max + 1), js, error=rf"in 0\.\.{spec.pixel_max}"),
        Call(
            "wrong-shape",
            v2,
            v2_json(image, shape=[1, spec.height + 1, spec.width]),
            js,
            error="must have shape",
        ),
        Call("wrong-datatype", v2, v2_json(image, "INT32"), js, error="datatype INT32"),
        Call("oversized-batch", v2, v2_json(too_many), js, error="too many images"),
        Call(
            "oversized-body",
            v2,
            b"[" * (MAX_BODY_BYTES + 1),
            js,
            error="larger than this server accepts",
            status=413,
        ),
        Call(
            "oversized-stream",
            v2,
            b"[" * 4 * MAX_BODY_BYTES,
            js,
            error="larger than this server accepts",
            status=413,
            chunked=True,
        ),
        Call("v1-random-bytes", v1, bytes(range(256)), js, error="Unrecognized request format"),
        Call("v1-empty-object", v1, b"{}", js, error='"instances" must be a list'),
        # image files (base64 in JSON, raw in binary BYTES) sent to a model of raw pixels
        Call(
            "v1-b64-file",
            v1,
            json.dumps({"instances": [{"b64": "iVBORw0KGgo="}]}).encode(),
            js,
            error="not image files",
        ),
        Call("v1-b64-garbage", v1, b'{"instances": [{"b64": "\\u0000%%"}, 3]}', js, error="not image files"),
        Call(
            "v2-bytes-json", v2, v2_json(image, "BYTES", ["not base64 %%"], [1]), js, error="not image files"
        ),
        Call("v2-bytes-binary", v2, *bytes_binary(12, b"\x89PNG" * 3), error="not image files"),
        Call("v2-bytes-binary-bad-length", v2, *bytes_binary(2**31, b"x" * 7), error="announces"),
        Call(
            "unknown-version",
            f"/v2/models/{spec.model_name}/versions/nope/infer",
            v2_json(image),
            js,
            error="no version 'nope'",
            status=404,
        ),
    ]


def valid(spec: Spec, images: np.ndarray, labels: list[str], index: int) -> Call:
    """A valid one-image request for test image ``index``, in one of four encodings."""
    image = images[index : index + 1]
    v2 = f"/v2/models/{spec.model_name}/infer"
    label = labels[index]
    match index % 4:
        case 0:
            return Call("v2-json", v2, v2_json(image), {"content-type": "application/json"}, label)
        case 1:  # tritonclient's JSON: no Content-Type
            return Call("v2-json-no-type", v2, v2_json(image), {}, label)
        case 2:
            return Call("v2-binary", v2, *binary(image), label=label)
        case _:
            body = json.dumps({"instances": image.tolist()}).encode()
            return Call(
                "v1",
                f"/v1/models/{spec.model_name}:predict",
                body,
                {"content-type": "application/json"},
                label,
            )


def answer_label(call: Call, body: dict) -> str:
    if call.kind == "v1":
        [prediction] = body["predictions"]
        return str(prediction["label"])
    [label] = next(o for o in body["outputs"] if o["name"] == "label")["data"]
    return str(label)


@pytest.fixture(scope="module")
def server(built_project: Path) -> Iterator[ModelServer]:
    with mlpipe_server(built_project / PACKAGE, ["--max-body-bytes", str(MAX_BODY_BYTES)]) as running:
        yield running


def test_garbage_traffic_gets_4xx_and_valid_requests_get_evaluate_answers(
    server: ModelServer, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    images, labels = prepared_test_images(built_project), evaluate_predictions(built_project)
    bad = malformed(spec, images[:1])
    connections = [http.client.HTTPConnection(LOOPBACK, server.port, timeout=30) for _ in range(CONNECTIONS)]
    sockets: list[object] = [None] * CONNECTIONS
    statuses: Counter[int] = Counter()
    refused: Counter[str] = Counter()
    for i in range(REQUESTS):
        if i % MALFORMED_EVERY == 0:
            call = bad[(i // MALFORMED_EVERY) % len(bad)]
        else:
            call = valid(spec, images, labels, i % len(images))
        n = i % CONNECTIONS
        conn = connections[n]
        conn.request("POST", call.path, body=call.content(), headers=call.headers)
        response = conn.getresponse()
        content = response.read()
        statuses[response.status] += 1
        sockets[n] = sockets[n] or conn.sock
        assert conn.sock is sockets[n], f"request {i} ({call.kind}): the server closed the connection"
        body = json.loads(content)
        if call.label is not None:
            assert response.status == 200, (call.kind, content[:300])
            assert answer_label(call, body) == call.label, call.kind
        else:
            assert response.status == call.status, (call.kind, content[:300])
            assert list(body) == ["error"] and re.search(call.error, body["error"]), (call.kind, body)
            refused[call.kind] += 1
    for conn in connections:
        conn.close()
    assert not [s for s in statuses if s >= 500], statuses
    assert set(refused) == {c.kind for c in bad}  # every kind was sent and refused as it should be
    assert psutil.Process(server.child.pid).memory_info().rss < MAX_RSS_BYTES


def test_refusals_leave_one_log_line_each_and_no_traceback(server: ModelServer) -> None:
    log = server.child.output(limit=None)
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    refusals = [line for line in log.splitlines() if re.search(r'" 4\d\d ', line)]
    assert refusals and all("error=" in line for line in refusals)
    request_lines = [line for line in log.splitlines() if '"POST /v' in line]
    assert len(request_lines) >= REQUESTS  # one access line per request (and not three)
    assert len(request_lines) < REQUESTS + 50


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_that_sends_its_whole_body_before_reading_gets_the_413(
    server: ModelServer, built_project: Path, chunked: bool
) -> None:
    """urllib writes the whole body before it reads the answer, and asks the server to close."""
    body = b"[" * UNREAD_BODY_BYTES
    data = (body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)) if chunked else body
    request = urllib.request.Request(  # noqa: S310 (loopback http only)
        f"{server.url}/v2/models/{Spec.of(built_project).model_name}/infer",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # noqa: S310 (loopback http only)
    assert refused.value.code == 413
    assert "larger than this server accepts" in json.loads(refused.value.read())["error"]
