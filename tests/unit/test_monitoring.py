"""deploy/monitoring/ (alert rules, PrometheusRule, PodMonitor, dashboard) and the server's model
metrics (mlpipe.serving.metrics), without a server: promtool, the CRD schemas, prometheus_client."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from harness.monitoring import (
    DASHBOARD,
    POD_MONITOR,
    PROMETHEUS_RULE,
    RULES_FILE,
    RULES_TESTS,
    dashboard,
    exported_names,
    rules,
    used_metric_names,
)
from kserve.errors import InvalidInput
from kubernetes_validate.utils import latest_version
from prometheus_client import REGISTRY, generate_latest

from mlpipe.contracts import drift
from mlpipe.contracts.table import Column, Table
from mlpipe.core.errors import MlpipeError
from mlpipe.serving import edge, metrics, server
from mlpipe.serving.model_package import InputSpec
from mlpipe.serving.validation import BadInput, v1_images, v2_images
from tests.conftest import REPO_ROOT, require
from tests.model.serving_cases import BAD_REQUEST_IDS, Spec, bad_request, infer_request
from tests.unit.test_manifests import strict

CRD_DIR = REPO_ROOT / "tests/data/prometheus-operator"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("promtool")
    require(program is not None, "promtool (Debian package prometheus; .ci/tools/monitoring.sh)")
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60, check=False)


# --- alert rules ------------------------------------------------------------------------------


def test_rules_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_alerts_fire_and_stay_quiet_as_the_promtool_cases_say() -> None:
    result = promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_cases_cover_every_alert() -> None:
    cases = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    tested = {check["alertname"] for check in checks if check["exp_alerts"]}
    assert tested == {rule["alert"] for rule in rules()}


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text(RULES_FILE.read_text().replace("> 0.01", "> > 0.01"))
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize(
    ("alert", "title"), [("MlpipeInputDrift", "Input drift"), ("MlpipeColumnDrift", "Column drift")]
)
def test_drift_alerts_use_the_drift_modules_threshold(alert: str, title: str) -> None:
    [rule] = [rule for rule in rules() if rule["alert"] == alert]
    assert rule["expr"].strip().endswith(f">= {drift.DRIFT_THRESHOLD}")
    [panel] = [panel for panel in dashboard()["panels"] if panel["title"] == title]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == drift.DRIFT_THRESHOLD


def test_prometheusrule_holds_the_rules_file_groups() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["spec"] == yaml.safe_load(RULES_FILE.read_text())


# --- Prometheus Operator resources against the operator's CRD schemas -----------------------


def python_patterns(schema: Any) -> Any:
    """The schema with Go regexps that Python's re rejects rewritten: Go accepts a flag group
    after `^` (the operator's `^(?i)(abort|warn)?$`), Python wants it first."""
    if isinstance(schema, list):
        return [python_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: python_patterns(value) for key, value in schema.items()}
    if isinstance(result.get("pattern"), str) and result["pattern"].startswith("^(?i)"):
        result["pattern"] = "(?i)^" + result["pattern"].removeprefix("^(?i)")
    return result


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    name = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}[kind]
    crd = yaml.safe_load((CRD_DIR / f"monitoring.coreos.com_{name}.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = python_patterns(strict(version["schema"]["openAPIV3Schema"]))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(resource: dict[str, Any]) -> None:
    crd_validator(resource["kind"]).validate(resource)
    # The CRD leaves metadata to the API server: check it as any object's ObjectMeta.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": resource["metadata"]}
    kubernetes_validate.validate(meta, latest_version(), strict=True)


@pytest.mark.parametrize("path", [POD_MONITOR, PROMETHEUS_RULE], ids=lambda p: p.name)
def test_operator_resources_are_valid(path: Path) -> None:
    validate(yaml.safe_load(path.read_text()))


def test_pod_monitor_scrapes_the_inferenceservice_predictor_metrics() -> None:
    monitor = yaml.safe_load(POD_MONITOR.read_text())
    isvc = (REPO_ROOT / "deploy/base/inferenceservice.yaml").read_text()
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels["component"] == "predictor"
    assert "serving.kserve.io/inferenceservice" in labels
    assert {e["path"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"/metrics"}
    assert "name: http1" in isvc
    assert 'serving.kserve.io/enable-prometheus-scraping: "true"' in isvc


@pytest.mark.parametrize(
    ("path", "change"),
    [
        (POD_MONITOR, lambda r: r["spec"].update(podMetricEndpoints=r["spec"].pop("podMetricsEndpoints"))),
        (POD_MONITOR, lambda r: r["spec"]["podMetricsEndpoints"][0].update(interval=15)),
        (PROMETHEUS_RULE, lambda r: r["spec"]["groups"][0]["rules"][0].update(fore="5m")),
        (PROMETHEUS_RULE, lambda r: r["spec"]["groups"][0].pop("name")),
    ],
    ids=["misspelt-endpoints", "interval-as-number", "unknown-rule-field", "group-without-name"],
)
def test_invalid_operator_resources_are_rejected(path: Path, change: Any) -> None:
    resource = yaml.safe_load(path.read_text())
    change(resource)
    with pytest.raises(jsonschema.ValidationError):
        validate(resource)


# --- dashboard --------------------------------------------------------------------------------


def test_dashboard_has_the_panels_an_on_call_engineer_needs() -> None:
    board = dashboard()
    titles = [panel["title"] for panel in board["panels"]]
    assert titles == [
        "Request rate",
        "Predict latency",
        "Errors",
        "Class mix",
        "Confidence",
        "Input drift",
        "Input mean intensity",
        "Replicas",
        "Column drift",
    ]
    assert len({panel["id"] for panel in board["panels"]}) == len(titles)
    assert all(panel["targets"] for panel in board["panels"])
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "model"]
    assert DASHBOARD.read_text().endswith("}\n")


# --- the server's metrics ---------------------------------------------------------------------


PROFILE = drift.Profile.of(np.arange(64 * 100, dtype=np.uint8).reshape(100, 8, 8) % 17, 16)
LABELS = tuple(str(i) for i in range(10))
SIZE = Column("size", "number", mean=5.0, std=2.0, minimum=0.0, maximum=9.0)
COLOUR = Column("colour", "category", levels=("blue", "red"))
ROWS = {
    "size": np.arange(100, dtype=np.float64) % 10,
    "colour": np.array(["blue", "red", None, "red"] * 25, dtype=object),
}
TABLE_PROFILE = drift.TableProfile.of(Table(ROWS, np.zeros(100, dtype=np.int64), ("a",)), (SIZE, COLOUR))


def sample(name: str, model: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"model_name": model, **labels})


def test_monitor_exports_every_model_metric_the_dashboard_and_rules_use() -> None:
    metrics.ModelMonitor("unit-export", LABELS, PROFILE, window=10)
    metrics.ModelMonitor("unit-export-table", LABELS, TABLE_PROFILE, window=10)
    exported = exported_names(generate_latest(REGISTRY).decode())
    ours = {name for name in used_metric_names() if name.startswith("mlpipe_")}
    assert ours and ours <= exported  # KServe's own are checked on a live server (tests/e2e)


def test_monitor_counts_classes_confidence_and_fills_the_drift_window() -> None:
    monitor = metrics.ModelMonitor("unit-counts", LABELS, PROFILE, window=4)
    probabilities = np.full((3, 10), 0.02, dtype=np.float32)
    probabilities[[0, 1, 2], [7, 7, 2]] = 0.82
    assert np.isnan(sample("mlpipe_drift_score", "unit-counts"))
    monitor.observe(np.full((3, 8, 8), 16, dtype=np.float32), probabilities)
    assert sample("mlpipe_predictions_total", "unit-counts", label="7") == 2
    assert sample("mlpipe_predictions_total", "unit-counts", label="2") == 1
    assert sample("mlpipe_prediction_confidence_count", "unit-counts") == 3
    assert sample("mlpipe_prediction_confidence_bucket", "unit-counts", le="0.8") == 0
    assert sample("mlpipe_prediction_confidence_bucket", "unit-counts", le="0.9") == 3
    assert sample("mlpipe_input_mean_intensity_bucket", "unit-counts", le="0.95") == 0
    assert sample("mlpipe_drift_window_images", "unit-counts") == 3
    assert np.isnan(sample("mlpipe_drift_score", "unit-counts"))
    monitor.observe(np.full((1, 8, 8), 16, dtype=np.float32), probabilities[:1])
    assert sample("mlpipe_drift_score", "unit-counts") > drift.DRIFT_THRESHOLD  # all-white images


def test_table_monitor_scores_each_column_and_the_model_by_the_largest() -> None:
    monitor = metrics.ModelMonitor("unit-table", LABELS, TABLE_PROFILE, window=4)
    probabilities = np.full((2, 10), 0.1, dtype=np.float32)
    first = {"size": np.array([9.0, 9.0]), "colour": np.array(["blue", "red"], dtype=object)}
    second = {"size": np.array([9.0, 9.0]), "colour": np.array(["red", None], dtype=object)}
    monitor.observe(first, probabilities)
    assert np.isnan(sample("mlpipe_column_drift_score", "unit-table", column="size"))
    assert sample("mlpipe_drift_window_images", "unit-table") == 2
    # The window is full: every size in the largest bin; the colours in the training mix.
    monitor.observe(second, probabilities)
    window = {name: np.concatenate([first[name], second[name]]) for name in first}
    expected = drift.compare_table(TABLE_PROFILE, window).scores
    scores = {name: sample("mlpipe_column_drift_score", "unit-table", column=name) for name in expected}
    assert scores == pytest.approx(expected)
    assert scores["size"] > max(drift.DRIFT_THRESHOLD, scores["colour"])
    assert sample("mlpipe_drift_score", "unit-table") == pytest.approx(scores["size"])
    assert sample("mlpipe_input_mean_intensity_count", "unit-table") is None  # images' only


SPEC = Spec("pixels", 8, 8, 16, 4, list(LABELS), "model")


@pytest.mark.parametrize("case_id", BAD_REQUEST_IDS)
def test_every_refused_request_gets_a_named_reason(case_id: str) -> None:
    case = bad_request(SPEC, case_id)
    spec = InputSpec(SPEC.name, SPEC.height, SPEC.width, SPEC.pixel_max, SPEC.max_batch_size, "UINT8")
    with pytest.raises(InvalidInput) as refused:
        if case.protocol == "v1":
            v1_images(case.body, spec)
        else:
            v2_images(infer_request(case.body, SPEC.model_name), spec)
    assert metrics.rejection_reason(refused.value) in set(metrics.REJECTION_REASONS)


def test_unknown_refusal_is_counted_as_other() -> None:
    assert metrics.rejection_reason(InvalidInput("something new")) == metrics.OTHER_REASON


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (404, "not_found"),
        (405, "method_not_allowed"),
        (413, "body_too_large"),
        (503, "not_ready"),
        (418, "other"),
    ],
)
def test_refusals_without_an_input_problem_are_named_by_status(status: int, reason: str) -> None:
    assert metrics.rejection_reason(None, status) == reason


def test_reject_counts_in_the_scopes_monitor_and_nowhere_without_one() -> None:
    monitor = metrics.ModelMonitor("unit-reject", LABELS, PROFILE, window=4)
    problem = BadInput("datatype", "input 'pixels' has datatype BOOL; send UINT8 or FP32")
    response = edge.reject({edge.MONITOR_KEY: monitor}, 400, str(problem), problem)
    assert (response.status_code, json.loads(response.body)) == (400, {"error": str(problem)})
    edge.reject({edge.MONITOR_KEY: monitor}, 413, "too large")
    edge.reject({}, 400, str(problem), problem)  # --no-monitoring: refused, not counted
    assert sample("mlpipe_rejected_requests_total", "unit-reject", reason="datatype") == 1
    assert sample("mlpipe_rejected_requests_total", "unit-reject", reason="body_too_large") == 1
    assert sample("mlpipe_rejected_requests_total", "unit-reject", reason="other") == 0


def test_monitoring_is_on_by_default_with_the_default_window() -> None:
    args = server.build_parser().parse_args([])
    assert (args.monitoring, args.drift_window) == (True, drift.DEFAULT_WINDOW)
    args = server.build_parser().parse_args(["--no-monitoring", "--drift-window", "50"])
    assert (args.monitoring, args.drift_window) == (False, 50)


@pytest.mark.parametrize("monitoring", ["--monitoring", "--no-monitoring"])
def test_server_refuses_several_workers(tmp_path: Path, monitoring: str) -> None:
    with pytest.raises(MlpipeError, match=r"--workers 2: .* one process .* scale out with replicas"):
        server.main(["--model-dir", str(tmp_path), "--workers", "2", monitoring])
