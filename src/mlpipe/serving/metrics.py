"""The model's own Prometheus metrics, served on `/metrics` beside KServe's latency histograms.

KServe serves prometheus_client's default registry, so the metrics defined here appear there.
Every label is bounded: ``model_name`` (one per server), ``label`` (the package's classes),
``column`` (a table package's columns) and ``reason`` (the fixed ``REJECTION_REASONS`` and
``OTHER_REASON``); nothing taken from a request becomes a label value.

An image model's drift statistic is each image's mean intensity (``mlpipe_input_mean_intensity``);
a table model's are its columns' values, each column with its own window and score
(``mlpipe_column_drift_score``). Either way ``mlpipe_drift_score`` is the model's drift score (a
table's: its largest column's), which the drift alert watches.

One process only: with several uvicorn workers each scrape would see one worker's counters and
drift window (kserve/kserve#2979), so `mlpipe serve` refuses ``--workers > 1``; scale out with
replicas instead (each pod is scraped on its own and PromQL sums them).

A request's inputs are recorded in batches: ``ModelMonitor.observe`` queues them, and they are
recorded together every ``BATCH_REQUESTS`` requests and whenever the registry is read (a scrape
of /metrics), so a scrape always sees every request answered before it. Recording each small
request on its own cost a fifth of the server's time per request, more than the model's forward
pass (BENCHMARKS.md, "Serving").
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from mlpipe.contracts.drift import (
    DEFAULT_WINDOW,
    DriftWindow,
    Profile,
    TableDriftWindow,
    TableProfile,
    mean_intensity,
)
from mlpipe.serving.validation import INPUT_PROBLEMS

BATCH_REQUESTS = 64  # requests whose inputs wait to be recorded together, at most
MONITORS: weakref.WeakSet[ModelMonitor] = weakref.WeakSet()


class _RecordBeforeCollection:
    """Records every monitor's queued requests when the registry is read.

    It is registered before this module's metrics, and the registry collects in the order of
    registration, so the metrics are read after the queued requests are recorded in them."""

    def collect(self) -> list[Any]:
        for monitor in list(MONITORS):
            monitor.record()
        return []


REGISTRY.register(_RecordBeforeCollection())

REQUESTS = Counter(
    "mlpipe_requests", "Inference requests that reached the model, whatever their outcome.", ["model_name"]
)
REJECTED = Counter(
    "mlpipe_rejected_requests",
    "Requests refused (HTTP 4xx, or 503 before the model is ready), by what was wrong with them.",
    ["model_name", "reason"],
)
FAILED = Counter(
    "mlpipe_failed_requests", "Requests that failed inside the server (HTTP 5xx).", ["model_name"]
)
PREDICTIONS = Counter("mlpipe_predictions", "Inputs classified, by predicted class.", ["model_name", "label"])
CONFIDENCE = Histogram(
    "mlpipe_prediction_confidence",
    "Top class probability of each classified input.",
    ["model_name"],
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
INTENSITY = Histogram(
    "mlpipe_input_mean_intensity",
    "Per-image mean pixel as a fraction of the pixel range (the drift statistic's input).",
    ["model_name"],
    buckets=tuple(round(0.05 * i, 2) for i in range(1, 21)),
)
DRIFT_SCORE = Gauge(
    "mlpipe_drift_score",
    "PSI of the last window of inputs against the training profile, a table's largest column's "
    "(NaN until full).",
    ["model_name"],
)
COLUMN_DRIFT_SCORE = Gauge(
    "mlpipe_column_drift_score",
    "A table model's column: PSI of its last window of values against the training profile (NaN until full).",
    ["model_name", "column"],
)
DRIFT_WINDOW_IMAGES = Gauge(
    "mlpipe_drift_window_images",
    "Inputs (images or rows) in the drift window (it is scored when full).",
    ["model_name"],
)
DRIFT_WINDOW_SIZE = Gauge(
    "mlpipe_drift_window_size", "Inputs (images or rows) a full drift window holds.", ["model_name"]
)

# The refusals that are not about a request's input: by their HTTP status.
STATUS_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 503: "not_ready"}
REJECTION_REASONS: tuple[str, ...] = (*INPUT_PROBLEMS, *STATUS_REASONS.values())
OTHER_REASON = "other"


def rejection_reason(error: BaseException | None, status: int = 400) -> str:
    """The bounded reason label of a refused request: the input problem it names, else its status."""
    problem = getattr(error, "problem", None)
    if problem in INPUT_PROBLEMS:
        return problem
    if isinstance(error, RequestValidationError):  # a V1 body FastAPI could not read
        return "body"
    return STATUS_REASONS.get(status, OTHER_REASON)


class ImageDrift:
    """An image model's drift window over its inputs' mean intensity, and their histogram."""

    def __init__(self, model_name: str, profile: Profile, size: int) -> None:
        self.window = DriftWindow(profile, size)
        self.pixel_max = profile.pixel_max
        self.intensity = INTENSITY.labels(model_name)

    def record(self, batches: list[np.ndarray]) -> None:
        """Slide the window over requests' raw pixels [N, H, W] (or [N, H, W, 3]), in order."""
        values = mean_intensity(np.concatenate(batches), self.pixel_max)
        for value in values.tolist():
            self.intensity.observe(value)
        self.window.add(values)


class TableDrift:
    """A table model's drift windows, one per column, each column's score a gauge."""

    def __init__(self, model_name: str, profile: TableProfile, size: int, lock: threading.Lock) -> None:
        self.window = TableDriftWindow(profile, size)
        self._lock = lock  # the monitor's: a scrape reads a score while a request slides the window
        for name in self.window.windows:
            COLUMN_DRIFT_SCORE.labels(model_name, name).set_function(functools.partial(self.score, name))

    def score(self, column: str) -> float:
        """PSI of the column's window against the training profile; NaN until the window is full."""
        with self._lock:
            score = self.window.windows[column].score()
        return math.nan if score is None else score

    def record(self, batches: list[dict[str, np.ndarray]]) -> None:
        """Slide the windows over requests' columns (column -> values [N]), in order."""
        names = self.window.windows
        self.window.add({name: np.concatenate([batch[name] for batch in batches]) for name in names})


class ModelMonitor:
    """The metrics of one served model, and its drift window over recent inputs: an image
    model's when ``profile`` is a `Profile`, a table model's when it is a `TableProfile`."""

    def __init__(
        self,
        model_name: str,
        labels: tuple[str, ...],
        profile: Profile | TableProfile,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.labels = labels
        self.requests = REQUESTS.labels(model_name)
        self.failed = FAILED.labels(model_name)
        self.rejected = {name: REJECTED.labels(model_name, name) for name in REJECTION_REASONS}
        self.rejected[OTHER_REASON] = REJECTED.labels(model_name, OTHER_REASON)
        self.predictions = [PREDICTIONS.labels(model_name, label) for label in labels]
        self.confidence = CONFIDENCE.labels(model_name)
        self._queued: list[tuple[Any, np.ndarray]] = []
        self._lock = threading.Lock()
        self.drift: ImageDrift | TableDrift = (
            TableDrift(model_name, profile, window, self._lock)
            if isinstance(profile, TableProfile)
            else ImageDrift(model_name, profile, window)
        )
        # The window's size and score are computed when they are read (a scrape), not per request.
        DRIFT_WINDOW_SIZE.labels(model_name).set(window)
        DRIFT_WINDOW_IMAGES.labels(model_name).set_function(lambda: len(self.drift.window))
        DRIFT_SCORE.labels(model_name).set_function(self.drift_score)
        MONITORS.add(self)

    def drift_score(self) -> float:
        """PSI of the drift window against the training profile (a table's: its largest column's);
        NaN until the window is full."""
        with self._lock:
            score = self.drift.window.score()
        return math.nan if score is None else score

    def observe(self, inputs: np.ndarray | dict[str, np.ndarray], probabilities: np.ndarray) -> None:
        """Queue one request's inputs (an image model's raw pixels [N, H, W]; a table model's
        columns, column -> values [N]) and the model's output [N, C] to be recorded; see the
        module's docstring."""
        with self._lock:
            self._queued.append((inputs, probabilities))
            full = len(self._queued) >= BATCH_REQUESTS
        if full:
            self.record()

    def record(self) -> None:
        """Record the queued requests' inputs in the metrics and the drift window, in order."""
        with self._lock:
            queued, self._queued = self._queued, []
            if not queued:
                return
            self.drift.record([inputs for inputs, _ in queued])
            probabilities = np.concatenate([p for _, p in queued])
            counts = np.bincount(probabilities.argmax(axis=1), minlength=len(self.labels))
            for index, count in enumerate(counts.tolist()):
                if count:
                    self.predictions[index].inc(count)
            for confidence in probabilities.max(axis=1).tolist():
                self.confidence.observe(confidence)

    def reject(self, reason: str) -> None:
        """Count one refused request (`mlpipe.serving.edge.reject` is the one caller)."""
        self.rejected.get(reason, self.rejected[OTHER_REASON]).inc()


Predict = TypeVar("Predict", bound=Callable[..., Any])


def monitored(predict: Predict) -> Predict:
    """Count a model's ``predict`` calls and its failures in its ``monitor`` (when it has one).

    Refusals are counted where they are answered, in `mlpipe.serving.edge.reject`, with the
    ones that never reach the model (body limit, V2 decoding, routing)."""

    @functools.wraps(predict)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        monitor: ModelMonitor | None = self.monitor
        if monitor is None:
            return predict(self, *args, **kwargs)
        monitor.requests.inc()
        try:
            return predict(self, *args, **kwargs)
        except InvalidInput:
            raise
        except Exception:
            monitor.failed.inc()
            raise

    return counted  # type: ignore[return-value]
