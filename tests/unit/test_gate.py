"""The gate's rules: thresholds from params.yaml, tolerance against the champion."""

import json
from pathlib import Path

import pytest

from mlpipe.core.errors import ArtifactError
from mlpipe.core.params import GateParams
from mlpipe.workflows.gate import Champion, decide, read_metrics

GATE = GateParams(min_test_accuracy=0.9, min_test_macro_f1=0.85, max_regression=0.005)


def metrics(accuracy: float, macro_f1: float = 0.9) -> dict[str, float]:
    return {"test_accuracy": accuracy, "test_macro_f1": macro_f1}


def test_metrics_exactly_at_the_thresholds_pass() -> None:
    decision = decide(metrics(0.9, 0.85), GATE, champion=None)
    assert decision.passed
    assert decision.summary() == (
        "gate passed: test_accuracy 0.9000 ≥ 0.9; test_macro_f1 0.8500 ≥ 0.85; no champion to compare with"
    )


@pytest.mark.parametrize(
    ("accuracy", "macro_f1", "failure"),
    [
        (0.899999, 0.9, "test_accuracy 0.9000 < 0.9 (gate.min_test_accuracy in params.yaml)"),
        (0.95, 0.849, "test_macro_f1 0.8490 < 0.85 (gate.min_test_macro_f1 in params.yaml)"),
    ],
)
def test_a_metric_below_its_threshold_fails_naming_it(accuracy: float, macro_f1: float, failure: str) -> None:
    decision = decide(metrics(accuracy, macro_f1), GATE, champion=None)
    assert not decision.passed
    assert decision.summary() == f"gate failed: {failure}"


def test_a_drop_within_the_tolerance_passes() -> None:
    decision = decide(metrics(0.945), GATE, Champion("3", 0.95))
    assert decision.passed
    assert "vs champion v3 0.9500: -0.0050 (allowed drop 0.005)" in decision.summary()


def test_a_drop_beyond_the_tolerance_fails_even_above_the_thresholds() -> None:
    decision = decide(metrics(0.944), GATE, Champion("3", 0.95))
    assert not decision.passed
    assert decision.summary() == (
        "gate failed: test_accuracy 0.9440 vs champion v3 0.9500: -0.0060 (allowed drop 0.005) "
        "(gate.max_regression in params.yaml)"
    )


def test_an_improvement_on_the_champion_passes() -> None:
    decision = decide(metrics(0.97), GATE, Champion("3", 0.95))
    assert decision.passed
    assert decision.champion == Champion("3", 0.95)
    assert "+0.0200" in decision.summary()


def test_missing_metrics_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"metrics\.json: not found; run `dvc repro`"):
        read_metrics(tmp_path / "metrics.json")


def test_metrics_without_a_gated_metric_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test_accuracy": 0.9, "test_macro_f1": "high"}))
    with pytest.raises(ArtifactError, match="no numeric test_macro_f1"):
        read_metrics(path)
