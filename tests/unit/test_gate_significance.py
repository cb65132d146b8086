"""`gate.regression_test: significant`: only a significant drop against the champion fails."""

from __future__ import annotations

import pytest
from scipy import stats

from mlpipe.contracts.compare import Predictions
from mlpipe.core.params import GateParams
from mlpipe.workflows.gate import Champion, decide

SIGNIFICANT = GateParams(min_test_accuracy=0.0, min_test_macro_f1=0.0, regression_test="significant")
ACTUAL = tuple(str(i % 10) for i in range(360))


def predictions(
    wrong: range, data_hash: str = "md5:same.dir", actual: tuple[str, ...] = ACTUAL
) -> Predictions:
    """Predictions on ``actual`` that are wrong exactly at the indices in ``wrong``."""
    predicted = tuple(str((int(a) + 1) % 10) if i in wrong else a for i, a in enumerate(actual))
    return Predictions(actual, predicted, data_hash)


def judge(champion_wrong: range, candidate: Predictions, gate: GateParams = SIGNIFICANT):
    champion_predictions = predictions(champion_wrong)
    accuracy = 1 - len(champion_wrong) / len(ACTUAL)
    champion = Champion("3", accuracy, champion_predictions)
    candidate_accuracy = sum(
        a == p for a, p in zip(candidate.actual, candidate.predicted, strict=True)
    ) / len(candidate.actual)
    metrics = {"test_accuracy": candidate_accuracy, "test_macro_f1": candidate_accuracy}
    return decide(metrics, gate, champion, candidate).checks[-1]


def test_a_drop_of_three_examples_is_noise_and_passes_although_above_max_regression() -> None:
    check = judge(range(5), predictions(range(8)))
    assert check.passed
    assert SIGNIFICANT.max_regression < 3 / 360
    p = stats.binomtest(0, 3).pvalue
    assert (
        check.text
        == f"test_accuracy 0.9778 vs champion v3 0.9861: -0.0083, no significant drop (McNemar p = {p:.4f})"
    )


def test_a_drop_of_twelve_examples_is_significant_and_fails() -> None:
    check = judge(range(5), predictions(range(17)))
    assert not check.passed
    assert f"a significant drop (McNemar p = {stats.binomtest(0, 12).pvalue:.4f})" in check.describe()
    assert check.describe().endswith("(gate.regression_test in params.yaml)")


def test_the_threshold_rule_fails_the_same_noisy_drop() -> None:
    gate = SIGNIFICANT.model_copy(update={"regression_test": "threshold"})
    assert not judge(range(5), predictions(range(8)), gate).passed


def test_another_split_is_judged_by_the_unpaired_interval() -> None:
    other = tuple(str(i % 9) for i in range(720))
    check = judge(range(5), predictions(range(12), "md5:other.dir", other))
    assert check.passed
    assert "unpaired 95 % interval" in check.text and "the prepared data differ" in check.text


def test_without_the_champions_predictions_the_threshold_rule_applies_and_says_so() -> None:
    champion = Champion("3", 0.99, None)
    metrics = {"test_accuracy": 0.97, "test_macro_f1": 0.97}
    check = decide(metrics, SIGNIFICANT, champion, predictions(range(5))).checks[-1]
    assert not check.passed
    assert check.text.endswith("no significance test: champion v3's test predictions are missing")


@pytest.mark.parametrize("value", ["sometimes", 1])
def test_regression_test_accepts_only_its_two_rules(value: object) -> None:
    from mlpipe.core.errors import ParamsError
    from mlpipe.core.params import parse_params

    with pytest.raises(ParamsError, match=r"gate\.regression_test"):
        parse_params({"gate": {"regression_test": value}})
