"""The evaluation gate, and the registry aliases it moves.

A candidate passes when its test metrics (reports/metrics.json) meet the `gate` thresholds in
params.yaml and, where the model registry holds a `champion`, its test accuracy is at most
`gate.max_regression` below the champion's (or, with `gate.regression_test: significant`, is
not significantly below it: mlpipe.compare on both models' test predictions, the champion's
from its run's `evaluate/predictions.csv` artifact). The registry is the configured MLflow store:
MLFLOW_TRACKING_URI, or the local mlruns.db when it exists (no store, no champion check).

Promotion moves `champion` to the version registered from this checkout's models/model.pt
(the `candidate` the pipeline just registered) and gives the version it replaces the alias
`previous`; rollback points `champion` back at `previous`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe import compare, lineage, paths, tracking
from mlpipe.errors import ArtifactError, MlpipeError, TrackingError
from mlpipe.params import GateParams, Params
from mlpipe.tracking import CANDIDATE, CHAMPION, PREVIOUS

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

HEADLINE = "test_accuracy"
# metric -> the GateParams field holding its minimum
THRESHOLDS = {HEADLINE: "min_test_accuracy", "test_macro_f1": "min_test_macro_f1"}


class GateError(MlpipeError):
    """The candidate failed the gate, or the registry cannot do what was asked of it."""


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
class Champion:
    """The registered version holding the `champion` alias."""

    version: str
    test_accuracy: float
    # its test predictions, read only for `gate.regression_test: significant`; None if not logged
    predictions: compare.Predictions | None = None


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
    """The candidate's test metrics; an error names the file and how to produce it."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro` (or `dvc pull`) first") from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); rerun `dvc repro evaluate`") from e
    missing = [k for k in THRESHOLDS if not isinstance(metrics.get(k), int | float)]
    if missing:
        raise ArtifactError(f"{path}: no numeric {', '.join(missing)}; rerun `dvc repro evaluate`")
    return metrics


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


def registry() -> MlflowClient | None:
    """A client for the configured MLflow store; None when there is none yet.

    A local SQLite store that does not exist is not created: without one there is no champion.
    """
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return tracking.client()


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """The registered model's aliases (alias -> version); empty when the model is not registered."""
    from mlflow.exceptions import MlflowException

    with tracking.reported(f"reading model {name!r}"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def _alias_version(client: MlflowClient, name: str, alias: str) -> str:
    version = aliases(client, name).get(alias)
    if version is None:
        raise GateError(f"model {name!r} has no version with alias @{alias} at {tracking.tracking_uri()}")
    return version


# where the package stage logs reports/predictions.csv in the version's run
PREDICTIONS_ARTIFACT = f"evaluate/{paths.PREDICTIONS_FILE.name}"


def _logged_predictions(
    client: MlflowClient, run_id: str, data_hash: str | None
) -> compare.Predictions | None:
    """A run's logged test predictions; None when it logged none (versions from before they were)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="mlpipe-gate-") as tmp:
        try:
            local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        except (MlflowException, OSError) as e:
            log.warning(
                "run %s has no %s (%s): judging by gate.max_regression", run_id, PREDICTIONS_ARTIFACT, e
            )
            return None
        text = Path(local).read_text(encoding="utf-8")
    try:
        return compare.Predictions.from_csv(text, data_hash)
    except ValueError as e:
        raise TrackingError(f"{PREDICTIONS_ARTIFACT} of run {run_id}: {e}") from e


def find_champion(client: MlflowClient, name: str, with_predictions: bool = False) -> Champion | None:
    """The champion and its test accuracy (version tag, else its run's metric), with its run's
    test predictions if asked; None if unset."""
    version = aliases(client, name).get(CHAMPION)
    if version is None:
        return None
    with tracking.reported(f"reading {name} v{version} (@{CHAMPION})"):
        model_version = client.get_model_version(name, version)
        value = model_version.tags.get(tracking.TAG_PREFIX + HEADLINE)
        if value is None and model_version.run_id:
            value = client.get_run(model_version.run_id).data.metrics.get(HEADLINE)
        predictions = None
        if with_predictions and model_version.run_id:
            data_hash = model_version.tags.get(tracking.TAG_PREFIX + "data_hash")
            predictions = _logged_predictions(client, model_version.run_id, data_hash)
    if value is None:
        raise TrackingError(f"{name} v{version} (@{CHAMPION}) records no {HEADLINE} to compare with")
    return Champion(version, float(value), predictions)


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
        find_champion(client, params.package.model_name, with_predictions=significant)
        if client is not None
        else None
    )
    candidate = candidate_predictions() if significant and champion is not None else None
    return decide(metrics, params.gate, champion, candidate)


def checkout_version(client: MlflowClient, name: str) -> str:
    """The version registered from this checkout's models/model.pt: the one whose metrics were judged.

    Normally @candidate; on a shared server another pipeline may have moved that alias since.
    """
    try:
        digest = tracking.checkpoint_digest(paths.CHECKPOINT_FILE)
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{paths.CHECKPOINT_FILE}: not found; promotion needs the model the gate judged "
            f"(`dvc pull {paths.CHECKPOINT_FILE}`)"
        ) from e
    with tracking.reported(f"looking up the version of {name} trained as {paths.CHECKPOINT_FILE}"):
        run_id = tracking.find_run_by_tag(client, tracking.CHECKPOINT_TAG, digest)
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'") if run_id else []
    if not versions:
        raise GateError(
            f"no version of {name!r} at {tracking.tracking_uri()} was registered from "
            f"{paths.CHECKPOINT_FILE} (sha256 {digest[:12]}); "
            "run `dvc repro` with package.register_model: true"
        )
    version = str(max(int(v.version) for v in versions))
    candidate = aliases(client, name).get(CANDIDATE)
    if candidate != version:
        log.warning("@candidate is v%s, but this checkout's model is v%s: promoting that", candidate, version)
    return version


def _set_alias(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``; None removes the alias."""
    with tracking.reported(f"moving @{alias} of {name} to v{version}"):
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)


def promote(client: MlflowClient, name: str, version: str) -> None:
    """Make ``version`` the champion and give the version it replaces the alias `previous`.

    `previous` moves first, then `champion` in one call, so `champion` is never unset; if that
    call fails, `previous` is put back where it was.
    """
    current = aliases(client, name)
    replaced, old_previous = current.get(CHAMPION), current.get(PREVIOUS)
    if replaced == version:
        log.info("%s v%s already holds @%s", name, version, CHAMPION)
        return
    if replaced is not None:
        _set_alias(client, name, PREVIOUS, replaced)
    try:
        _set_alias(client, name, CHAMPION, version)
    except TrackingError:
        if replaced is not None:
            _set_alias(client, name, PREVIOUS, old_previous)
        raise
    log.info("promoted %s v%s to @%s (@%s: v%s)", name, version, CHAMPION, PREVIOUS, replaced)


def rollback(client: MlflowClient, name: str) -> tuple[str | None, str]:
    """Point `champion` back at `previous` and drop `previous`; return (rolled back, restored)."""
    restored = _alias_version(client, name, PREVIOUS)
    rolled_back = aliases(client, name).get(CHAMPION)
    _set_alias(client, name, CHAMPION, restored)
    _set_alias(client, name, PREVIOUS, None)
    log.info("rolled @%s of %s back from v%s to v%s", CHAMPION, name, rolled_back, restored)
    return rolled_back, restored


def package_uri(client: MlflowClient, name: str, alias: str) -> str:
    """Where the package of the version holding ``alias`` is stored (its `mlpipe.package_uri` tag)."""
    version = _alias_version(client, name, alias)
    with tracking.reported(f"reading {name} v{version} (@{alias})"):
        uri = client.get_model_version(name, version).tags.get(tracking.PACKAGE_URI_TAG)
    if not uri:
        raise GateError(f"{name} v{version} (@{alias}) has no {tracking.PACKAGE_URI_TAG} tag")
    log.info("%s v%s (@%s): %s", name, version, alias, uri)
    return uri


def require_registry() -> MlflowClient:
    """The configured registry; an error says how to set one up when there is none."""
    client = registry()
    if client is None:
        raise GateError(
            f"no model registry at {tracking.tracking_uri()}: set MLFLOW_TRACKING_URI, "
            "or run `dvc repro` to register a model in the local store"
        )
    return client


def run(params: Params, promote_on_pass: bool = False) -> str:
    """Judge this checkout's candidate; raise GateError if it fails; promote it if asked."""
    metrics = read_metrics()
    client = require_registry() if promote_on_pass else registry()
    decision = evaluate(params, metrics, client)
    if not decision.passed:
        raise GateError(decision.summary())
    if promote_on_pass and client is not None:
        name = params.package.model_name
        promote(client, name, checkout_version(client, name))
    return decision.summary()
