"""`mlpipe kfp submit` against a stand-in for the Kubeflow Pipelines API: a real HTTP server on
127.0.0.1 that answers the part of the v2beta1 REST API the kfp client uses (health, experiments,
runs) and records every request it receives."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.servers import LOOPBACK, free_port, threaded_http_server

from mlpipe.integrations.kfp_pipeline import compile_pipeline
from tests.conftest import REPO_ROOT, run

pytestmark = pytest.mark.slow

API = "/apis/v2beta1"
TOKEN = "testing-kfp-token"
RUN_ID = "3f0c9a52-run"
TRAIN_FAILURE = "task 'train' failed: dvc repro --single-item train exited 1"


@dataclass
class FakeKfp:
    """One KFP deployment: its experiments and runs, what it was asked, and how the run ends."""

    final_state: str = "SUCCEEDED"
    error: dict[str, Any] | None = None
    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[HTTPStatus, Any]:
        if path == f"{API}/healthz" and method == "GET":
            return HTTPStatus.OK, {"multi_user": False}
        if path == f"{API}/experiments" and method == "GET":
            (predicate,) = json.loads(query["filter"])["predicates"]
            wanted = predicate["string_value"] if "string_value" in predicate else predicate["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return HTTPStatus.OK, {"experiments": found} if found else {}
        if path == f"{API}/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"experiment-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return HTTPStatus.OK, experiment
        if path == f"{API}/runs" and method == "POST":
            if body.get("experiment_id") not in {e["experiment_id"] for e in self.experiments}:
                return HTTPStatus.NOT_FOUND, {"code": 5, "message": "experiment not found"}
            self.runs[RUN_ID] = {**body, "run_id": RUN_ID, "state": "PENDING"}
            return HTTPStatus.OK, self.runs[RUN_ID]
        if path == f"{API}/runs/{RUN_ID}" and method == "GET" and RUN_ID in self.runs:
            # the run is RUNNING when first looked at, then ends
            self.polls += 1
            done = self.polls > 1
            state = {"state": self.final_state if done else "RUNNING"}
            if done and self.error:
                state["error"] = self.error
            self.runs[RUN_ID].update(state)
            return HTTPStatus.OK, self.runs[RUN_ID]
        return HTTPStatus.NOT_FOUND, {"code": 5, "message": f"no route {method} {path}"}


def handler(state: FakeKfp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = dict(urllib.parse.parse_qsl(url.query))
            with state.lock:
                state.calls.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "authorization": self.headers.get("Authorization"),
                        "body": body,
                    }
                )
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, answer = HTTPStatus.UNAUTHORIZED, {"code": 16, "message": "unauthenticated"}
                else:
                    status, answer = state.answer(self.command, url.path, query, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _handle  # noqa: N815 (http.server's naming)
        do_POST = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(state: FakeKfp) -> Iterator[FakeKfp]:
    with threaded_http_server(handler(state)) as url:
        state.url = url
        yield state


@pytest.fixture
def kfp_ok() -> Iterator[FakeKfp]:
    yield from serve(FakeKfp())


@pytest.fixture
def kfp_failing() -> Iterator[FakeKfp]:
    yield from serve(FakeKfp(final_state="FAILED", error={"code": 2, "message": TRAIN_FAILURE}))


@pytest.fixture
def compiled(tmp_path: Path) -> Path:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(out, REPO_ROOT / "dvc.yaml")
    return out


def submit(compiled: Path, host: str, *, check: bool = True):
    return run(
        "mlpipe",
        "kfp",
        "submit",
        *("--pipeline", str(compiled), "--run-name", "mlpipe-test", "--poll", "0.2", "--timeout", "60"),
        cwd=compiled.parent,
        env={"KFP_HOST": host, "KFP_TOKEN": TOKEN, "HOME": str(compiled.parent)},
        check=check,
        timeout=120,
    )


def test_submit_sends_the_compiled_pipeline_and_waits_for_it_to_succeed(
    compiled: Path, kfp_ok: FakeKfp
) -> None:
    result = submit(compiled, kfp_ok.url)
    assert f"KFP run {RUN_ID} succeeded" in result.stdout
    assert {call["authorization"] for call in kfp_ok.calls} == {f"Bearer {TOKEN}"}
    (created,) = [c["body"] for c in kfp_ok.calls if c["method"] == "POST" and c["path"] == f"{API}/runs"]
    assert created["pipeline_spec"] == yaml.safe_load(compiled.read_text())
    assert created["display_name"] == "mlpipe-test"
    assert created["experiment_id"] == kfp_ok.experiments[0]["experiment_id"]
    assert kfp_ok.experiments[0]["display_name"] == "mlpipe"
    assert kfp_ok.polls == 2  # looked again while RUNNING, stopped at SUCCEEDED


def test_a_failed_run_exits_non_zero_with_the_runs_error(compiled: Path, kfp_failing: FakeKfp) -> None:
    result = submit(compiled, kfp_failing.url, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"mlpipe: error: KFP run {RUN_ID} at {kfp_failing.url} ended FAILED: {TRAIN_FAILURE}"
    )
    assert "Traceback" not in result.stderr


def test_an_unreachable_host_is_one_line_naming_it(compiled: Path) -> None:
    host = f"http://{LOOPBACK}:{free_port()}"
    result = submit(compiled, host, check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("mlpipe: error:")]
    assert line.startswith(f"mlpipe: error: KFP_HOST {host} is unreachable")
    assert "Traceback" not in result.stderr


def test_submit_without_kfp_host_says_what_to_set(compiled: Path) -> None:
    result = run(
        "mlpipe",
        "kfp",
        "submit",
        "--pipeline",
        str(compiled),
        cwd=compiled.parent,
        env={"KFP_HOST": ""},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("mlpipe: error: KFP_HOST is not set")
