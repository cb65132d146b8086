"""The report's statistics against scipy's independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlpipe.contracts import compare


@pytest.mark.parametrize(
    ("now_wrong", "now_right"), [(0, 0), (1, 0), (2, 7), (7, 2), (5, 5), (0, 12), (40, 61)]
)
def test_mcnemar_exact_equals_scipys_two_sided_binomial_test(now_wrong: int, now_right: int) -> None:
    expected = 1.0 if now_wrong + now_right == 0 else stats.binomtest(now_right, now_wrong + now_right).pvalue
    assert compare.mcnemar_exact(now_wrong, now_right) == pytest.approx(expected, rel=1e-12)


def correctness(
    now_wrong: int, now_right: int, both_right: int, both_wrong: int
) -> tuple[list[bool], list[bool]]:
    old = [True] * now_wrong + [False] * now_right + [True] * both_right + [False] * both_wrong
    new = [False] * now_wrong + [True] * now_right + [True] * both_right + [False] * both_wrong
    return old, new


@pytest.mark.parametrize("counts", [(1, 3, 340, 16), (9, 2, 300, 49), (0, 0, 350, 10), (20, 40, 800, 140)])
def test_paired_bootstrap_matches_scipys_percentile_bootstrap(counts: tuple[int, int, int, int]) -> None:
    old, new = correctness(*counts)
    interval = compare.paired_bootstrap(old, new)
    diff = np.array(new, dtype=float) - np.array(old, dtype=float)
    reference = stats.bootstrap(
        (diff,), np.mean, method="percentile", n_resamples=20_000, rng=np.random.default_rng(1)
    ).confidence_interval
    # two Monte Carlo estimates of the same percentiles: equal within a resample's granularity
    tolerance = 2.5 / len(diff) + 1e-9
    assert interval.low == pytest.approx(reference.low, abs=tolerance)
    assert interval.high == pytest.approx(reference.high, abs=tolerance)
    assert interval.low <= diff.mean() <= interval.high


def test_the_paired_bootstrap_is_reproducible() -> None:
    old, new = correctness(4, 9, 300, 20)
    assert compare.paired_bootstrap(old, new) == compare.paired_bootstrap(old, new)


@pytest.mark.parametrize(("correct", "total"), [(0, 10), (355, 360), (360, 360), (170, 340), (3, 7)])
def test_wilson_equals_scipys_wilson_interval(correct: int, total: int) -> None:
    reference = stats.binomtest(correct, total).proportion_ci(0.95, method="wilson")
    assert compare.wilson(correct, total) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_newcombe_combines_the_two_wilson_intervals() -> None:
    old_ci = stats.binomtest(340, 360).proportion_ci(0.95, method="wilson")
    new_ci = stats.binomtest(700, 720).proportion_ci(0.95, method="wilson")
    p_old, p_new = 340 / 360, 700 / 720
    interval = compare.newcombe(340, 360, 700, 720)
    assert interval.low == pytest.approx(
        p_new - p_old - np.hypot(p_new - new_ci.low, old_ci.high - p_old), abs=1e-12
    )
    assert interval.high == pytest.approx(
        p_new - p_old + np.hypot(new_ci.high - p_new, p_old - old_ci.low), abs=1e-12
    )


def predictions(now_wrong: int, now_right: int, both_right: int, both_wrong: int) -> tuple[list[str], ...]:
    """Labels and two models' predictions with these counts of (dis)agreement."""
    old, new = correctness(now_wrong, now_right, both_right, both_wrong)
    actual = [str(i % 10) for i in range(len(old))]
    wrong = [str((i + 1) % 10) for i in range(len(old))]
    return (
        actual,
        [a if ok else w for a, ok, w in zip(actual, old, wrong, strict=True)],
        [a if ok else w for a, ok, w in zip(actual, new, wrong, strict=True)],
    )


def test_two_more_right_of_360_is_within_noise() -> None:
    actual, old, new = predictions(1, 3, 352, 4)
    result = compare.compare(actual, old, actual, new, compare.unpaired_reason(None, None, actual, actual))
    assert result.paired
    assert (result.now_wrong, result.now_right) == (1, 3)
    assert result.p_value == pytest.approx(stats.binomtest(3, 4).pvalue)
    assert not result.significant
    assert result.change == pytest.approx(2 / 360)


def test_eleven_more_wrong_of_360_is_a_significant_regression() -> None:
    actual, old, new = predictions(12, 1, 330, 17)
    result = compare.compare(actual, old, actual, new, None)
    assert result.p_value == pytest.approx(stats.binomtest(1, 13).pvalue)
    assert result.p_value < 0.05
    assert result.significant_regression
    assert result.interval.high < 0


def test_different_splits_fall_back_to_the_unpaired_interval() -> None:
    actual, old, _ = predictions(0, 0, 330, 30)
    new_actual, _, new = predictions(0, 0, 700, 20)
    reason = compare.unpaired_reason("md5:a.dir", "md5:b.dir", actual, new_actual)
    assert reason is not None and "md5:a.dir vs md5:b.dir" in reason
    result = compare.compare(actual, old, new_actual, new, reason)
    assert not result.paired
    assert result.interval == compare.newcombe(330, 360, 700, 720)
    assert result.significant == result.interval.excludes_zero


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (["1", "2"], ["1", "2", "3"], "differ in size (2 vs 3 examples)"),
        (["1", "2"], ["2", "1"], "the true labels differ in order"),
    ],
)
def test_splits_with_other_labels_cannot_be_paired(old: list[str], new: list[str], expected: str) -> None:
    assert expected in (compare.unpaired_reason("md5:x", "md5:x", old, new) or "")
    assert compare.unpaired_reason(None, "md5:x", old, old) is None


def test_changed_verdicts_lists_both_directions() -> None:
    actual = ["0", "1", "2", "3", "4"]
    old = ["0", "7", "2", "8", "9"]
    new = ["5", "1", "2", "8", "4"]
    assert compare.changed_verdicts(actual, old, new) == ([0], [1, 4])


def test_class_changes_put_the_largest_movers_first() -> None:
    old = {"a": (0.9, 0.9, 0.9), "b": (0.8, 0.8, 0.8), "c": (1.0, 1.0, 1.0)}
    new = {"a": (0.9, 0.95, 0.92), "b": (0.6, 0.8, 0.7), "c": (1.0, 1.0, 1.0), "d": (0.5, 0.5, 0.5)}
    assert [change.name for change in compare.class_changes(old, new)] == ["d", "b", "a", "c"]


def test_a_p_value_below_four_decimals_is_shown_as_a_bound() -> None:
    assert compare.p_text(compare.mcnemar_exact(0, 20)) == "p < 0.0001"
    assert compare.p_text(compare.mcnemar_exact(0, 12)) == "p = 0.0005"
