"""The report's signal-or-noise line for constructed predictions: both verdicts, and the
unpaired fallback."""

from __future__ import annotations

from scipy import stats

from mlpipe.contracts import compare
from mlpipe.workflows.report import Side, significance

BASE = Side("origin/main", None, None, None, None, None)
ACTUAL = tuple(str(i % 10) for i in range(360))


def wrong_at(indices: range) -> tuple[str, ...]:
    return tuple(str((int(a) + 1) % 10) if i in indices else a for i, a in enumerate(ACTUAL))


def test_two_more_right_of_360_reads_within_noise() -> None:
    # the champion got 0..5 wrong, the candidate 0..3: two more right, none newly wrong
    result = compare.compare(ACTUAL, wrong_at(range(6)), ACTUAL, wrong_at(range(4)), None)
    line = significance(result, BASE)
    p_value = stats.binomtest(2, 2).pvalue
    assert line.startswith(
        f"**Signal or noise:** the change (+0.0056) is within noise (p = {p_value:.4f}): McNemar's exact "
        "test on the 2 test examples the models disagree on (0 right → wrong, 2 wrong → right); "
        "95 % interval for the change ["
    )
    assert line.endswith("] (paired bootstrap, 10,000 resamples).")


def test_fifteen_more_right_of_360_reads_significant() -> None:
    result = compare.compare(ACTUAL, wrong_at(range(20)), ACTUAL, wrong_at(range(18, 23)), None)
    line = significance(result, BASE)
    p_value = stats.binomtest(3, 21).pvalue
    assert f"the change (+0.0417) is significant at the 5 % level (p = {p_value:.4f})" in line
    assert "(3 right → wrong, 18 wrong → right)" in line


def test_another_split_reads_not_paired_with_the_unpaired_interval() -> None:
    other = tuple(str(i % 10) for i in range(720))
    reason = compare.unpaired_reason("md5:a.dir", "md5:b.dir", ACTUAL, other)
    result = compare.compare(ACTUAL, wrong_at(range(20)), other, other, reason)
    interval = compare.newcombe(340, 360, 720, 720)
    assert significance(result, BASE) == (
        "**Signal or noise:** a paired comparison is not possible: the prepared data differ "
        "(md5:a.dir vs md5:b.dir): data or split params changed. The change (+0.0556) is significant "
        f"at the 5 % level: the interval excludes 0; 95 % interval for the change [{interval.low:+.4f}, "
        f"{interval.high:+.4f}] (unpaired, Newcombe's score interval)."
    )


def test_no_baseline_predictions_says_so() -> None:
    assert significance(None, BASE) == (
        "**Signal or noise:** no reports/predictions.csv on `origin/main` to compare with."
    )
