"""The PromQL of deploy/monitoring/ (dashboard panels and alert rules), and the metric names it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING_DIR = REPO_ROOT / "deploy/monitoring"
RULES_FILE = MONITORING_DIR / "mlpipe-rules.yaml"
PROMETHEUS_RULE = MONITORING_DIR / "prometheusrule.yaml"
POD_MONITOR = MONITORING_DIR / "podmonitor.yaml"
DASHBOARD = MONITORING_DIR / "mlpipe-dashboard.json"
RULES_TESTS = REPO_ROOT / "tests/data/monitoring/rules.test.yaml"
# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"ALERTS", "ALERTS_FOR_STATE", "up"}
# Metrics only one kind of model exports: an image model's input histogram, a table model's columns.
IMAGE_MODEL_METRICS = {"mlpipe_input_mean_intensity_bucket"}
TABLE_MODEL_METRICS = {"mlpipe_column_drift_score"}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}


def rules() -> list[dict]:
    """Every alerting rule of the plain rules file."""
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every panel target's and annotation's PromQL expression."""
    board = dashboard()
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    return exprs + [annotation["expr"] for annotation in board["annotations"]["list"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, grouping labels, functions,
    keywords, durations and numbers left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if not text[match.end() :].lstrip().startswith("("):  # not a function call
            names.add(match[0])
    return names - PROMQL_WORDS


def used_metric_names() -> set[str]:
    """Every metric the dashboard and the rules use, except Prometheus's own series."""
    exprs = dashboard_exprs() + [rule["expr"] for rule in rules()]
    return set().union(*(metric_names(e) for e in exprs)) - PROMETHEUS_OWN


def exported_names(exposition: str) -> set[str]:
    """The series names on a /metrics page (text exposition format)."""
    return {m[1] for m in re.finditer(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", exposition, re.MULTILINE)}


def short_rules(rules_text: str, wait: str = "1s") -> str:
    """The rules file with every alert's `for:` shortened to ``wait``, for a test that cannot
    wait minutes."""
    document = yaml.safe_load(rules_text)
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["for"] = wait
    return yaml.safe_dump(document, sort_keys=False)
