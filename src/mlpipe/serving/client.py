"""`mlpipe predict`: send random images (or rows) of the prepared test split to a server and score
the answers. A table's rows go as V1 records or as V2 columns, one input per column, null where a
value is missing.

CI's smoke test runs it against the deployed InferenceService; it fails on any error.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from mlpipe.contracts import table
from mlpipe.contracts.data import LabeledImages, read_any_schema, read_split
from mlpipe.contracts.table import TableSchema
from mlpipe.core import paths
from mlpipe.core.errors import MlpipeError

log = logging.getLogger(__name__)

Protocol = Literal["v1", "v2"]


class PredictionError(MlpipeError):
    """The server could not be reached, refused a request or answered something unexpected."""


@dataclass(frozen=True)
class Prediction:
    """One test image (or row): its index in the split, the true label and the server's answer."""

    index: int
    truth: str
    predicted: str
    probability: float

    @property
    def correct(self) -> bool:
        return self.truth == self.predicted


@dataclass(frozen=True)
class PredictionRun:
    """All answers of one `mlpipe predict` run."""

    model_name: str
    protocol: Protocol
    seed: int
    predictions: list[Prediction]
    inputs: str = "images"  # what was sent: "images" or "rows"

    @property
    def accuracy(self) -> float:
        return sum(p.correct for p in self.predictions) / len(self.predictions)

    def lines(self) -> list[str]:
        """A human-readable report: one line per image (or row), then the accuracy."""
        rows = [
            f"test[{p.index:>5}]  truth {p.truth:<12} predicted {p.predicted:<12} "
            f"p={p.probability:.3f}  {'ok' if p.correct else 'WRONG'}"
            for p in self.predictions
        ]
        correct = sum(p.correct for p in self.predictions)
        return [
            f"model {self.model_name} ({self.protocol}), {len(self.predictions)} random test {self.inputs}, "
            f"seed {self.seed}",
            *rows,
            f"accuracy {correct}/{len(self.predictions)} = {self.accuracy:.3f}",
        ]


class InferenceClient:
    """A V1/V2 REST client for one model on a KServe server."""

    def __init__(self, url: str, timeout: float) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise PredictionError(f"{method} {self.http.base_url}{path} failed: {e}") from e
        if response.status_code != 200:
            raise PredictionError(
                f"{method} {self.http.base_url}{path} returned HTTP {response.status_code}: "
                f"{response.text[:500]}"
            )
        try:
            return response.json()
        except ValueError as e:
            raise PredictionError(f"{method} {self.http.base_url}{path} returned invalid JSON: {e}") from e

    def model_name(self) -> str:
        """The one model the server serves (V2 model repository listing)."""
        models = self._call("GET", "/v2/models").get("models", [])
        if len(models) != 1:
            raise PredictionError(
                f"{self.http.base_url} serves models {models}; choose one with --model-name"
            )
        return str(models[0])

    def model_inputs(self, model: str) -> list[dict[str, Any]]:
        """The model's input tensors, each with its name, datatype and shape (V2 model metadata)."""
        return list(self._call("GET", f"/v2/models/{model}").get("inputs") or [])

    def input_name(self, model: str) -> str:
        """The name of the model's one input tensor (V2 model metadata)."""
        inputs = self.model_inputs(model)
        if len(inputs) != 1:
            raise PredictionError(f"model {model} has inputs {inputs}; expected one image tensor")
        return str(inputs[0]["name"])

    def classify(
        self, model: str, input_name: str, images: np.ndarray, protocol: Protocol
    ) -> list[tuple[str, float]]:
        """(label, probability of that label) per image, in one request."""
        if protocol == "v1":
            body = {"instances": images.tolist()}
        else:
            tensor = {"name": input_name, "shape": list(images.shape), "datatype": "UINT8"}
            body = {"inputs": [{**tensor, "data": images.ravel().tolist()}]}
        return self._answers(model, protocol, body, len(images))

    def classify_rows(
        self,
        model: str,
        inputs: list[dict[str, Any]],
        rows: list[dict[str, float | str | None]],
        protocol: Protocol,
    ) -> list[tuple[str, float]]:
        """(label, probability of that label) per row (column -> value, None where missing), in
        one request: V1 records, or V2 columns as the model's ``inputs`` (`model_inputs`) name them."""
        if protocol == "v1":
            body: dict[str, Any] = {"instances": rows}
        else:
            body = {
                "inputs": [
                    {
                        "name": tensor["name"],
                        "shape": [len(rows)],
                        "datatype": tensor["datatype"],
                        "data": [row[tensor["name"]] for row in rows],
                    }
                    for tensor in inputs
                ]
            }
        return self._answers(model, protocol, body, len(rows))

    def _answers(
        self, model: str, protocol: Protocol, body: dict[str, Any], n: int
    ) -> list[tuple[str, float]]:
        """Send one request of ``n`` inputs; (label, probability of that label) per input."""
        if protocol == "v1":
            answer = self._call("POST", f"/v1/models/{model}:predict", body)
            answers = [(str(p["label"]), float(max(p["probabilities"]))) for p in answer["predictions"]]
        else:
            answer = self._call("POST", f"/v2/models/{model}/infer", body)
            outputs = {o["name"]: o for o in answer["outputs"]}
            probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(n, -1)
            labels = [str(label) for label in outputs["label"]["data"]]
            answers = list(zip(labels, probabilities.max(axis=1).tolist(), strict=True))
        if len(answers) != n:
            raise PredictionError(f"sent {n} inputs, got {len(answers)} answers")
        return answers


Send = Callable[[int], list[tuple[str, float]]]


def _sender(
    client: InferenceClient, model: str, test: LabeledImages | table.Table, protocol: Protocol
) -> Send:
    """A function that sends test input ``index`` in one request and returns the answer."""
    if isinstance(test, table.Table):
        inputs, rows = client.model_inputs(model), test.records()
        return lambda index: client.classify_rows(model, inputs, rows[index : index + 1], protocol)
    input_name = client.input_name(model)
    return lambda index: client.classify(model, input_name, test.images[index : index + 1], protocol)


def predict_samples(
    url: str,
    n: int,
    protocol: Protocol = "v2",
    model_name: str | None = None,
    seed: int | None = None,
    timeout: float = 10.0,
    data_dir: Path = paths.PREPARED_DIR,
) -> PredictionRun:
    """Send ``n`` random test images (or a table's rows), one request each, and compare the answers
    with the labels."""
    schema = read_any_schema(data_dir)
    test: LabeledImages | table.Table = (
        table.read_split("test", data_dir, schema)
        if isinstance(schema, TableSchema)
        else read_split("test", data_dir, schema)
    )
    what = "rows" if isinstance(test, table.Table) else "images"
    if not 1 <= n <= len(test):
        raise PredictionError(f"--n must be between 1 and the {len(test)} test {what}; got {n}")
    seed = secrets.randbits(32) if seed is None else seed
    indices = np.random.default_rng(seed).choice(len(test), size=n, replace=False)
    predictions = []
    with InferenceClient(url, timeout) as client:
        model = model_name or client.model_name()
        send = _sender(client, model, test, protocol)
        for index in indices.tolist():
            try:
                [(label, probability)] = send(index)
            except (KeyError, TypeError, ValueError) as e:
                raise PredictionError(f"unexpected {protocol} response from {url}: {e!r}") from e
            truth = test.classes[test.labels[index]]
            predictions.append(Prediction(index, truth, label, probability))
            log.debug("test[%d]: %s -> %s", index, truth, label)
    return PredictionRun(model, protocol, seed, predictions, what)
