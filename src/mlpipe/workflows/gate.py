"""The evaluation gate: does the candidate pass, judged by params.yaml's `gate` thresholds and
the registered champion?

A candidate passes when its test metrics (reports/metrics.json) meet the `gate` thresholds and,
where the model registry holds a `champion`, its test accuracy is at most `gate.max_regression`
below the champion's (or, with `gate.regression_test: significant`, is not significantly below
it: mlpipe.contracts.compare on both models' test predictions). Reading the champion and moving the
aliases is mlpipe.tracking.registry's; with no registry there is no champion check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.contracts import compare
from mlpipe.core import lineage, paths, tables
from mlpipe.core.errors import ArtifactError, MlpipeError
from mlpipe.core.params import GateParams, Params
from mlpipe.tracking import registry
from mlpipe.tracking.registry import Champion

if TYPE_CHECKING:
    from mlflow import MlflowClient

HEADLINE = registry.ACCURACY_METRIC
# metric -> the GateParams field holding its minimum
THRESHOLDS = {HEADLINE: "min_test_accuracy", "test_macro_f1": "min_test_macro_f1"}


class GateError(MlpipeError):
    """The candidate failed the gate."""


@dataclass(frozen=True)
class Check:
    """One rule of the gate and how the candidate fared; ``param`` names the threshold."""

    passed: bool
    text: str
    param: str

    def describe(self) -> str:
        """The text, naming the threshold when the check failed."""
        return self.text if self.passed else f"{self.text} ({self.param} in {paths.PARAMS_FILE})"


@dataclass(frozen=True)
class Decision:
    """The gate's verdict: every check, and the champion it compared with (if any)."""

    checks: tuple[Check, ...]
    champion: Champion | None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def summary(self) -> str:
        """One line: the outcome, then each failed check (or every check when all passed)."""
        if self.passed:
            compared = "" if self.champion else "; no champion to compare with"
            return "gate passed: " + "; ".join(c.text for c in self.checks) + compared
        return "gate failed: " + "; ".join(c.describe() for c in self.checks if not c.passed)


def read_metrics(path: Path = paths.METRICS_FILE) -> dict[str, float]:
    """The candidate's test metrics, each gated one a number."""
    return tables.read_metrics(path, required=THRESHOLDS)


def _at_least(metric: str, value: float, minimum: float, param: str) -> Check:
    passed = value >= minimum
    return Check(passed, f"{metric} {value:.4f} {'≥' if passed else '<'} {minimum:g}", param)


def threshold_checks(metrics: Mapping[str, float], gate: GateParams) -> list[Check]:
    """The candidate's metrics against the fixed thresholds."""
    return [
        _at_least(metric, metrics[metric], getattr(gate, field), f"gate.{field}")
        for metric, field in THRESHOLDS.items()
    ]


def champion_check(test_accuracy: float, champion: Champion, gate: GateParams) -> Check:
    """The candidate against the champion: a drop of at most ``gate.max_regression`` passes."""
    # metrics are rounded to 6 places; so is the change, or 0.895 - 0.9 would exceed the 0.005
    change = round(test_accuracy - champion.test_accuracy, 6)
    passed = -change <= gate.max_regression
    text = (
        f"{HEADLINE} {test_accuracy:.4f} vs champion v{champion.version} {champion.test_accuracy:.4f}: "
        f"{change:+.4f} (allowed drop {gate.max_regression:g})"
    )
    return Check(passed, text, "gate.max_regression")


def significance_check(
    test_accuracy: float, champion: Champion, candidate: compare.Predictions | None, gate: GateParams
) -> Check:
    """The candidate against the champion: only a significant drop fails (5 % level).

    Without both models' predictions it falls back to the ``max_regression`` rule, saying so.
    """
    if champion.predictions is None or candidate is None:
        missing = f"{paths.PREDICTIONS_FILE}" if candidate is None else f"champion v{champion.version}'s"
        fallback = champion_check(test_accuracy, champion, gate)
        text = f"{fallback.text}; no significance test: {missing} test predictions are missing"
        return Check(fallback.passed, text, fallback.param)
    result = compare.compare_predictions(champion.predictions, candidate)
    if result.p_value is not None:
        evidence = f"McNemar {compare.p_text(result.p_value)}"
    else:
        evidence = (
            f"unpaired 95 % interval [{result.interval.low:+.4f}, {result.interval.high:+.4f}]: "
            f"{result.unpaired_reason}"
        )
    passed = not result.significant_regression
    outcome = "a significant drop" if not passed else "no significant drop"
    text = (
        f"{HEADLINE} {result.new_accuracy:.4f} vs champion v{champion.version} "
        f"{result.old_accuracy:.4f}: {result.change:+.4f}, {outcome} ({evidence})"
    )
    return Check(passed, text, "gate.regression_test")


def decide(
    metrics: Mapping[str, float],
    gate: GateParams,
    champion: Champion | None,
    candidate: compare.Predictions | None = None,
) -> Decision:
    """The gate's decision from the metrics, thresholds, champion and (for the significance
    test) the candidate's test predictions; no I/O."""
    checks = threshold_checks(metrics, gate)
    if champion is not None and gate.regression_test == "significant":
        checks.append(significance_check(metrics[HEADLINE], champion, candidate, gate))
    elif champion is not None:
        checks.append(champion_check(metrics[HEADLINE], champion, gate))
    return Decision(tuple(checks), champion)


def candidate_predictions() -> compare.Predictions | None:
    """This checkout's test predictions (reports/predictions.csv) and its data hash; None if absent."""
    try:
        text = paths.PREDICTIONS_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return compare.Predictions.from_csv(text, lineage.data_hash())
    except ValueError as e:
        raise ArtifactError(f"{paths.PREDICTIONS_FILE}: {e}; rerun `dvc repro evaluate`") from e


def evaluate(params: Params, metrics: Mapping[str, float], client: MlflowClient | None) -> Decision:
    """Judge ``metrics`` against params.yaml's thresholds and the champion in ``client``'s registry."""
    significant = params.gate.regression_test == "significant"
    champion = (
        registry.find_champion(client, params.package.model_name, with_predictions=significant)
        if client is not None
        else None
    )
    candidate = candidate_predictions() if significant and champion is not None else None
    return decide(metrics, params.gate, champion, candidate)


def run(params: Params, promote_on_pass: bool = False) -> str:
    """Judge this checkout's candidate; raise GateError if it fails; promote it if asked."""
    metrics = read_metrics()
    client = registry.require_registry() if promote_on_pass else registry.open_registry()
    decision = evaluate(params, metrics, client)
    if not decision.passed:
        raise GateError(decision.summary())
    if promote_on_pass and client is not None:
        name = params.package.model_name
        registry.promote(client, name, registry.checkout_version(client, name))
    return decision.summary()
