"""A real Prometheus scraping a real `mlpipe serve`: model metrics, drift and its alert, end to end.

The server serves the built project's package with a drift window of 100 images; Prometheus
scrapes it every second and evaluates deploy/monitoring/mlpipe-rules.yaml every second (the
alerts' `for:` shortened to 1 s). The test sends the prepared test split, then an inverted copy
of it, and reads the results back through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness.monitoring import (
    RULES_FILE,
    TABLE_MODEL_METRICS,
    exported_names,
    short_rules,
    used_metric_names,
)
from harness.servers import ModelServer, mlpipe_server, prometheus_program, prometheus_server

from mlpipe.contracts import drift
from mlpipe.serving.model_package import read_package
from mlpipe.serving.server import default_max_body_bytes
from tests.conftest import require, run
from tests.model.serving_cases import PACKAGE, Spec, prepared_test_images, v2_body

pytestmark = pytest.mark.slow

WINDOW = 100
BATCH = 10


@pytest.fixture(scope="module")
def server(built_project: Path) -> Iterator[ModelServer]:
    with mlpipe_server(built_project / PACKAGE, ["--drift-window", str(WINDOW)]) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(server: ModelServer) -> Iterator[str]:
    require(prometheus_program() is not None, "prometheus (Debian package; .ci/tools/monitoring.sh)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["mlpipe-rules.yaml"],
        "scrape_configs": [
            {"job_name": "mlpipe", "static_configs": [{"targets": [server.url.removeprefix("http://")]}]}
        ],
    }
    rules = {"mlpipe-rules.yaml": short_rules(RULES_FILE.read_text())}
    with prometheus_server(json.dumps(config), rules) as url:
        yield url


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def value(prometheus: str, promql: str) -> float | None:
    """The single value of an instant query (None when it returns nothing)."""
    result = query(prometheus, promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def send(server: ModelServer, spec: Spec, images: np.ndarray) -> list[str]:
    """Send ``images`` in V2 requests of ``BATCH``; return the predicted labels."""
    labels: list[str] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for start in range(0, len(images), BATCH):
            response = client.post(
                f"/v2/models/{spec.model_name}/infer", json=v2_body(images[start : start + BATCH])
            )
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            labels += outputs["label"]["data"]
    return labels


def test_every_metric_the_dashboard_and_rules_use_is_on_the_live_metrics_page(
    server: ModelServer, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    send(server, spec, prepared_test_images(built_project)[:1])  # KServe's histograms appear on use
    exported = exported_names(httpx.get(f"{server.url}/metrics", timeout=10).text)
    assert used_metric_names() - TABLE_MODEL_METRICS - exported == set()


def class_counts(prometheus: str) -> Counter[str]:
    """Images classified per predicted label, as Prometheus last scraped them."""
    result = query(prometheus, "mlpipe_predictions_total")
    return Counter({r["metric"]["label"]: int(float(r["value"][1])) for r in result})


def added(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {label: n - before[label] for label, n in after.items() if n != before[label]}


def test_prometheus_sees_class_counts_drift_and_the_drift_alert(
    server: ModelServer, prometheus: str, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    test_images = prepared_test_images(built_project)
    assert len(test_images) > WINDOW
    eventually(lambda: value(prometheus, 'up{job="mlpipe"}') == 1, "the first scrape")
    start = class_counts(prometheus)
    assert set(start) == set(spec.labels)  # every class is exported, zero or not

    labels = send(server, spec, test_images)
    total = sum(start.values()) + len(test_images)
    eventually(lambda: class_counts(prometheus).total() == total, "Prometheus counting the test images")
    after_test = class_counts(prometheus)
    assert added(after_test, start) == dict(Counter(labels))
    assert value(prometheus, "mlpipe_drift_window_images") == WINDOW
    in_distribution = value(prometheus, "mlpipe_drift_score")
    assert in_distribution is not None and in_distribution < drift.DRIFT_THRESHOLD
    assert query(prometheus, 'ALERTS{alertname="MlpipeInputDrift"}') == []

    shifted_labels = send(server, spec, drift.shifted(test_images, "invert", spec.pixel_max))
    total += len(test_images)
    eventually(lambda: class_counts(prometheus).total() == total, "Prometheus counting the shifted images")
    assert added(class_counts(prometheus), after_test) == dict(Counter(shifted_labels))
    shifted_score = value(prometheus, "mlpipe_drift_score")
    assert shifted_score is not None and shifted_score >= drift.DRIFT_THRESHOLD
    firing = 'ALERTS{alertname="MlpipeInputDrift", alertstate="firing"}'
    eventually(lambda: bool(query(prometheus, firing)), "the drift alert firing")
    [alert] = query(prometheus, firing)
    assert alert["metric"]["model_name"] == spec.model_name
    assert alert["metric"]["severity"] == "warning"


def test_refused_requests_are_counted_by_reason(
    server: ModelServer, prometheus: str, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    wrong_shape = v2_body(np.zeros((1, spec.height, spec.width + 1), dtype=np.uint8))
    wrong_shape["inputs"][0]["shape"] = [1, spec.height, spec.width + 1]
    reason = 'mlpipe_rejected_requests_total{reason="shape"}'
    before = value(prometheus, reason)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            response = client.post(f"/v2/models/{spec.model_name}/infer", json=wrong_shape)
            assert response.status_code == 400, response.text
    eventually(lambda: value(prometheus, reason) == (before or 0) + 3, "Prometheus counting the 400s")


def test_refusals_before_the_model_are_counted_by_reason(
    server: ModelServer, prometheus: str, built_project: Path
) -> None:
    spec = Spec.of(built_project)
    limit = default_max_body_bytes(read_package(built_project / PACKAGE).input)
    refusals = {
        "body": (400, {"content-type": "application/json"}, b'{"inputs": '),
        "content_type": (400, {"content-type": "text/plain"}, b"1 2 3"),
        "body_too_large": (413, {"content-type": "application/json"}, b" " * (limit + 1)),
    }
    before = {r: value(prometheus, f'mlpipe_rejected_requests_total{{reason="{r}"}}') for r in refusals}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for status, headers, body in refusals.values():
            response = client.post(f"/v2/models/{spec.model_name}/infer", content=body, headers=headers)
            assert response.status_code == status, response.text
            assert response.json()["error"]

    def counted() -> bool:
        return all(
            value(prometheus, f'mlpipe_rejected_requests_total{{reason="{r}"}}') == (before[r] or 0) + 1
            for r in refusals
        )

    eventually(counted, "Prometheus counting the refusals the edge answers before the model")


def test_mlpipe_drift_passes_the_test_split_and_fails_a_shifted_copy(built_project: Path) -> None:
    same = run("mlpipe", "drift", cwd=built_project)
    assert "no drift" in same.stdout.splitlines()[-1]
    shifted = run("mlpipe", "drift", "--shift", "brighten", cwd=built_project, check=False)
    assert shifted.returncode == 1
    assert shifted.stdout.splitlines()[-1].endswith("DRIFT")
    assert "mlpipe: error: the inputs drifted: PSI" in shifted.stderr


def test_mlpipe_drift_reads_a_file_of_images(built_project: Path, tmp_path: Path) -> None:
    images = tmp_path / "inputs.npy"
    np.save(images, prepared_test_images(built_project)[:60])
    result = run("mlpipe", "drift", "--images", str(images), cwd=built_project)
    assert "over 60 images" in result.stdout
