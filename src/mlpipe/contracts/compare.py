"""Is a change in test accuracy signal or noise? Statistics over two models' test predictions.

Paired (both models scored on the same test examples): McNemar's exact test on the examples
exactly one model gets right, and a bootstrap interval for the accuracy change that resamples
examples, both models together. Unpaired (the test split differs): Newcombe's interval for a
difference of two proportions, built from Wilson score intervals. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mlpipe.core import tables

ALPHA = 0.05
LEVEL = 1 - ALPHA
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A confidence interval for the accuracy change (new - old) and how it was computed."""

    low: float
    high: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Comparison:
    """Old vs new accuracy on the test split; ``p_value`` is None when the examples are unpaired."""

    old_accuracy: float
    new_accuracy: float
    interval: Interval
    p_value: float | None
    now_wrong: int  # paired: right before, wrong now
    now_right: int  # paired: wrong before, right now
    unpaired_reason: str | None = None

    @property
    def paired(self) -> bool:
        return self.p_value is not None

    @property
    def change(self) -> float:
        return self.new_accuracy - self.old_accuracy

    @property
    def significant(self) -> bool:
        """Paired: McNemar's p below 5 %; unpaired: the 95 % interval excludes zero."""
        return self.p_value < ALPHA if self.p_value is not None else self.interval.excludes_zero

    @property
    def significant_regression(self) -> bool:
        return self.significant and self.change < 0


def mcnemar_exact(now_wrong: int, now_right: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against Binomial(b + c, 1/2)."""
    discordant = now_wrong + now_right
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(now_wrong, now_right) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def p_text(p_value: float) -> str:
    """A p-value for people: `p = 0.0312`, or `p < 0.0001` below four decimals."""
    return f"p = {p_value:.4f}" if p_value >= 1e-4 else "p < 0.0001"


def paired_bootstrap(
    old_correct: Sequence[bool], new_correct: Sequence[bool], resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """Percentile bootstrap interval for mean(new_correct - old_correct), examples resampled.

    Each example's difference is -1, 0 or +1, so a resample is fully described by how many
    of each it draws: a multinomial draw per resample, the same distribution as drawing
    indices, in O(resamples) instead of O(resamples * examples).
    """
    diff = np.asarray(new_correct, dtype=np.int8) - np.asarray(old_correct, dtype=np.int8)
    n = len(diff)
    if n == 0:
        raise ValueError("no test examples to compare")
    shares = [np.count_nonzero(diff == -1) / n, np.count_nonzero(diff == 1) / n]
    counts = np.random.default_rng(seed).multinomial(n, [*shares, 1 - sum(shares)], size=resamples)
    means = (counts[:, 1] - counts[:, 0]) / n
    low, high = np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Interval(float(low), float(high), f"paired bootstrap, {resamples:,} resamples")


def wilson(correct: int, total: int) -> tuple[float, float]:
    """Wilson score interval for a proportion at the 95 % level."""
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return centre - half, centre + half


def newcombe(old_correct: int, old_total: int, new_correct: int, new_total: int) -> Interval:
    """Newcombe's hybrid score interval for new - old accuracy of two independent samples."""
    p_old, p_new = old_correct / old_total, new_correct / new_total
    (old_low, old_high), (new_low, new_high) = wilson(old_correct, old_total), wilson(new_correct, new_total)
    change = p_new - p_old
    low = change - math.sqrt((p_new - new_low) ** 2 + (old_high - p_old) ** 2)
    high = change + math.sqrt((new_high - p_new) ** 2 + (p_old - old_low) ** 2)
    return Interval(low, high, "unpaired, Newcombe's score interval")


def unpaired_reason(
    old_data: str | None, new_data: str | None, old_actual: Sequence[str], new_actual: Sequence[str]
) -> str | None:
    """Why the two sides' test examples cannot be paired one to one; None when they can.

    ``*_data`` identify the prepared data (DVC's hash of data/prepared), None where unknown;
    the labels in file order must match too.
    """
    if old_data is not None and new_data is not None and old_data != new_data:
        return f"the prepared data differ ({old_data} vs {new_data}): data or split params changed"
    if len(old_actual) != len(new_actual):
        return f"the test splits differ in size ({len(old_actual)} vs {len(new_actual)} examples)"
    if list(old_actual) != list(new_actual):
        return "the test splits hold other examples (the true labels differ in order)"
    return None


def compare(
    old_actual: Sequence[str],
    old_predicted: Sequence[str],
    new_actual: Sequence[str],
    new_predicted: Sequence[str],
    reason: str | None,
) -> Comparison:
    """Compare two models' test predictions: paired when ``reason`` (see unpaired_reason) is None."""
    old_correct = [a == p for a, p in zip(old_actual, old_predicted, strict=True)]
    new_correct = [a == p for a, p in zip(new_actual, new_predicted, strict=True)]
    if not old_correct or not new_correct:
        raise ValueError("no test examples to compare")
    old_accuracy, new_accuracy = sum(old_correct) / len(old_correct), sum(new_correct) / len(new_correct)
    if reason is not None:
        interval = newcombe(sum(old_correct), len(old_correct), sum(new_correct), len(new_correct))
        return Comparison(old_accuracy, new_accuracy, interval, None, 0, 0, reason)
    now_wrong = sum(o and not n for o, n in zip(old_correct, new_correct, strict=True))
    now_right = sum(n and not o for o, n in zip(old_correct, new_correct, strict=True))
    return Comparison(
        old_accuracy,
        new_accuracy,
        paired_bootstrap(old_correct, new_correct),
        mcnemar_exact(now_wrong, now_right),
        now_wrong,
        now_right,
    )


@dataclass(frozen=True)
class Predictions:
    """One model's test predictions (reports/predictions.csv) and the prepared data they are on."""

    actual: tuple[str, ...]
    predicted: tuple[str, ...]
    data_hash: str | None = None

    @classmethod
    def from_csv(cls, text: str, data_hash: str | None = None) -> Predictions:
        """Parse predictions.csv (columns `actual`, `predicted`); ValueError if malformed."""
        try:
            rows = [(row["actual"], row["predicted"]) for row in tables.rows(text)]
        except KeyError as e:
            raise ValueError(f"no column {e} in the predictions") from e
        if not rows:
            raise ValueError("no predictions in it")
        actual, predicted = zip(*rows, strict=True)
        return cls(actual, predicted, data_hash)


def compare_predictions(old: Predictions, new: Predictions) -> Comparison:
    """Compare two models' predictions, paired when they are on the same test split."""
    reason = unpaired_reason(old.data_hash, new.data_hash, old.actual, new.actual)
    return compare(old.actual, old.predicted, new.actual, new.predicted, reason)


def changed_verdicts(
    actual: Sequence[str], old_predicted: Sequence[str], new_predicted: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Indices of the paired examples that went right → wrong, and wrong → right."""
    rows = list(zip(actual, old_predicted, new_predicted, strict=True))
    now_wrong = [i for i, (a, o, n) in enumerate(rows) if o == a != n]
    now_right = [i for i, (a, o, n) in enumerate(rows) if n == a != o]
    return now_wrong, now_right


@dataclass(frozen=True)
class ClassChange:
    """One class's precision, recall and F1 on each side (None where that side lacks the class)."""

    name: str
    old: tuple[float, float, float] | None
    new: tuple[float, float, float] | None

    @property
    def movement(self) -> float:
        """How far F1 moved (infinite when a side lacks the class)."""
        if self.old is None or self.new is None:
            return math.inf
        return abs(self.new[2] - self.old[2])


def class_changes(
    old: Mapping[str, tuple[float, float, float]], new: Mapping[str, tuple[float, float, float]]
) -> list[ClassChange]:
    """Every class of either side, those whose F1 moved most first (ties in class order)."""
    names = list(dict.fromkeys([*new, *old]))
    changes = [ClassChange(name, old.get(name), new.get(name)) for name in names]
    return sorted(changes, key=lambda change: -change.movement)
