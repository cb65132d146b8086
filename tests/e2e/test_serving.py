"""`mlpipe serve` as a real process on 127.0.0.1 answering real HTTP, and `mlpipe predict` against it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import psutil
import pytest
import tritonclient.http as triton
import yaml
from harness.servers import LOOPBACK, ModelServer, free_port, mlpipe_server
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import MODEL_NAME, REPO_ROOT, run
from tests.model.serving_cases import (
    BAD_REQUEST_IDS,
    PACKAGE,
    Spec,
    bad_request,
    evaluate_predictions,
    prepared_test_images,
    v1_body,
    v2_body,
)

pytestmark = pytest.mark.slow

# The Open Inference Protocol's REST API (source and commit in the file's header).
PROTOCOL_SCHEMA = REPO_ROOT / "tests/data/open-inference/open_inference_rest.yaml"


@pytest.fixture(scope="module")
def server(built_project: Path) -> Iterator[ModelServer]:
    with mlpipe_server(built_project / PACKAGE) as running:
        yield running
    assert running.child.process.returncode is not None, "server still running"


@pytest.fixture(scope="module")
def spec(built_project: Path) -> Spec:
    return Spec.of(built_project)


@pytest.fixture(scope="module")
def http(server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def v1_predict(http: httpx.Client, spec: Spec, body: object) -> httpx.Response:
    return http.post(f"/v1/models/{spec.model_name}:predict", json=body)


def v2_infer(http: httpx.Client, spec: Spec, body: object) -> httpx.Response:
    # json.dumps, not httpx's encoder: it writes NaN as the literal some clients send.
    content = json.dumps(body).encode()
    return http.post(
        f"/v2/models/{spec.model_name}/infer", content=content, headers={"content-type": "application/json"}
    )


def assert_still_serving(http: httpx.Client, spec: Spec, images: np.ndarray) -> None:
    response = v2_infer(http, spec, v2_body(images[:1]))
    assert response.status_code == 200, response.text


def test_server_listens_on_loopback_only(server: ModelServer) -> None:
    process = psutil.Process(server.child.pid)
    connections = getattr(process, "net_connections", process.connections)  # psutil >= 6 renamed it
    listening = [c.laddr for c in connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening == [(LOOPBACK, server.port)]


def test_health_endpoints_and_metrics(server: ModelServer, http: httpx.Client, spec: Spec) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{spec.model_name}/ready").json()["ready"] is True
    assert http.get("/v2/models").json() == {"models": [spec.model_name]}
    v2_infer(http, spec, v2_body(np.zeros((1, spec.height, spec.width), dtype=np.uint8)))
    metrics = http.get("/metrics").text
    assert re.search(rf'request_predict_seconds_count{{model_name="{spec.model_name}"}} [1-9]', metrics)


def test_v1_predictions_equal_evaluate_predictions(
    http: httpx.Client, spec: Spec, built_project: Path
) -> None:
    images = prepared_test_images(built_project)[: spec.max_batch_size]
    response = v1_predict(http, spec, v1_body(images))
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == evaluate_predictions(built_project)[: len(images)]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_v2_predictions_equal_evaluate_predictions(
    http: httpx.Client, spec: Spec, built_project: Path, datatype: str
) -> None:
    images = prepared_test_images(built_project)[: spec.max_batch_size]
    response = v2_infer(http, spec, v2_body(images, datatype, id="e2e-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "e2e-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == evaluate_predictions(built_project)[: len(images)]
    assert outputs["class_index"]["data"] == [spec.labels.index(x) for x in outputs["label"]["data"]]
    assert outputs["probabilities"]["shape"] == [len(images), len(spec.labels)]


@pytest.mark.parametrize("case_id", BAD_REQUEST_IDS)
def test_invalid_request_gets_400_and_the_server_keeps_serving(
    http: httpx.Client, spec: Spec, built_project: Path, case_id: str
) -> None:
    case = bad_request(spec, case_id)
    send = v1_predict if case.protocol == "v1" else v2_infer
    response = send(http, spec, case.body)
    assert response.status_code == 400, response.text
    assert re.search(case.error, response.json()["error"])
    assert_still_serving(http, spec, prepared_test_images(built_project))


@pytest.mark.parametrize(
    ("path", "content_type", "status", "error"),
    [
        ("/v1/models/{}:predict", "application/json", 400, "Unrecognized request format"),
        ("/v1/models/{}:predict", "text/plain", 400, "must be JSON"),
        ("/v2/models/{}/infer", "application/json", 400, "the request body is not valid JSON"),
    ],
)
def test_body_that_is_not_json_gets_4xx(
    http: httpx.Client,
    spec: Spec,
    built_project: Path,
    path: str,
    content_type: str,
    status: int,
    error: str,
) -> None:
    headers = {"content-type": content_type}
    response = http.post(path.format(spec.model_name), content=b"{not json", headers=headers)
    assert response.status_code == status
    assert error in response.text
    assert_still_serving(http, spec, prepared_test_images(built_project))


def test_v1_nan_literal_gets_400(http: httpx.Client, spec: Spec) -> None:
    body = json.dumps({"instances": np.full((1, spec.height, spec.width), np.nan).tolist()})
    response = http.post(
        f"/v1/models/{spec.model_name}:predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "Unrecognized request format" in response.json()["error"]


def test_predict_cli_scores_random_test_images(server: ModelServer, built_project: Path) -> None:
    out = run("mlpipe", "predict", "--url", server.url, "--n", "10", "--seed", "7", cwd=built_project).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"model {MODEL_NAME} (v2), 10 random test images, seed 7")
    assert len([line for line in lines if line.startswith("test[")]) == 10
    assert re.fullmatch(r"accuracy \d+/10 = \d\.\d{3}", lines[-1])


def test_predict_cli_speaks_v1_too(server: ModelServer, built_project: Path) -> None:
    out = run("mlpipe", "predict", "--url", server.url, "--n", "3", "--protocol", "v1", cwd=built_project)
    assert "(v1), 3 random test images" in out.stdout


def test_predict_cli_fails_when_the_server_refuses(server: ModelServer, built_project: Path) -> None:
    result = run(
        "mlpipe", "predict", "--url", server.url, "--model-name", "nope", cwd=built_project, check=False
    )
    assert result.returncode == 1
    assert re.search(r"mlpipe: error: GET .*/v2/models/nope returned HTTP 404", result.stderr)
    assert "Traceback" not in result.stderr


def test_predict_cli_fails_when_no_server_answers(built_project: Path) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    result = run("mlpipe", "predict", "--url", url, "--timeout", "2", cwd=built_project, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mlpipe: error: GET {url}/v2/models failed:")


def test_serve_refuses_a_broken_package_with_one_line(tmp_path: Path, built_project: Path) -> None:
    command = ("mlpipe", "serve", "--model-dir", str(tmp_path), "--host", LOOPBACK)
    result = run(*command, cwd=built_project, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"mlpipe: error: {tmp_path / 'package.json'}")
    assert "Traceback" not in result.stderr


# --- protocol conformance: every response type against the published schema, real clients ---


@pytest.fixture(scope="module")
def protocol_schemas() -> dict[str, Any]:
    return yaml.safe_load(PROTOCOL_SCHEMA.read_text())["components"]["schemas"]


def assert_conforms(schemas: dict[str, Any], schema: str, body: Any) -> None:
    """``body`` is a valid ``schema`` object of the protocol and has no null anywhere."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": {"schemas": schemas}}
    jsonschema.Draft202012Validator(root).validate(body)
    assert "null" not in json.dumps(body), body


def package_version(built_project: Path) -> str:
    manifest = json.loads((built_project / PACKAGE / "package.json").read_text())
    return manifest["model_sha256"][:12]


def test_metadata_responses_conform_to_the_protocol(
    http: httpx.Client, spec: Spec, built_project: Path, protocol_schemas: dict[str, Any]
) -> None:
    assert_conforms(protocol_schemas, "metadata_server_response", http.get("/v2").json())
    version = package_version(built_project)
    for path in (f"/v2/models/{spec.model_name}", f"/v2/models/{spec.model_name}/versions/{version}"):
        metadata = http.get(path).json()
        assert_conforms(protocol_schemas, "metadata_model_response", metadata)
        assert metadata["versions"] == [version]
        assert metadata["inputs"] == [
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, spec.height, spec.width]}
        ]
    missing = http.get("/v2/models/nope")
    assert missing.status_code == 404
    assert_conforms(protocol_schemas, "metadata_model_error_response", missing.json())


def test_inference_responses_conform_to_the_protocol(
    http: httpx.Client, spec: Spec, built_project: Path, protocol_schemas: dict[str, Any]
) -> None:
    images = prepared_test_images(built_project)[:2]
    version = package_version(built_project)
    answers = [
        v2_infer(http, spec, v2_body(images)),
        v2_infer(http, spec, v2_body(images, id="conformance", outputs=[{"name": "label"}])),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert_conforms(protocol_schemas, "inference_response", response.json())
        assert response.json()["model_version"] == version
    assert [o["name"] for o in answers[1].json()["outputs"]] == ["label"]
    refused = v2_infer(http, spec, {"inputs": []})
    assert refused.status_code == 400
    assert_conforms(protocol_schemas, "inference_error_response", refused.json())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_works_unmodified(
    server: ModelServer, spec: Spec, built_project: Path, binary: bool
) -> None:
    images = prepared_test_images(built_project)[:8]
    client = triton.InferenceServerClient(url=f"{LOOPBACK}:{server.port}")
    try:
        assert client.is_server_live() and client.is_model_ready(spec.model_name)
        assert client.get_model_metadata(spec.model_name)["inputs"][0]["datatype"] == "UINT8"
        tensor = triton.InferInput("pixels", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")
        ]
        result = client.infer(spec.model_name, [tensor], outputs=outputs)
    finally:
        client.close()
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("label")]
    assert labels == evaluate_predictions(built_project)[: len(images)]
    assert result.as_numpy("probabilities").shape == (len(images), len(spec.labels))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_kserve_rest_client_works_unmodified(
    server: ModelServer, spec: Spec, built_project: Path, binary: bool
) -> None:
    images = prepared_test_images(built_project)[:8]

    async def infer() -> list[str]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            assert await client.is_server_ready(server.url)
            tensor = InferInput("pixels", list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images, binary_data=binary)
            request = InferRequest(spec.model_name, [tensor])
            response = await client.infer(server.url, request, model_name=spec.model_name)
        finally:
            await client.close()
        return [str(x) for x in response.get_output_by_name("label").as_numpy()]

    assert asyncio.run(infer()) == evaluate_predictions(built_project)[: len(images)]
