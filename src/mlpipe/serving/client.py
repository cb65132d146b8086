"""`mlpipe predict`: send random images of the prepared test split to a server and score the answers.

CI's smoke test runs it against the deployed InferenceService; it fails on any error.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from mlpipe.contracts.data import LabeledImages, read_split
from mlpipe.core import paths
from mlpipe.core.errors import MlpipeError

log = logging.getLogger(__name__)

Protocol = Literal["v1", "v2"]


class PredictionError(MlpipeError):
    """The server could not be reached, refused a request or answered something unexpected."""


@dataclass(frozen=True)
class Prediction:
    """One test image: its index in the split, the true label and the server's answer."""

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

    @property
    def accuracy(self) -> float:
        return sum(p.correct for p in self.predictions) / len(self.predictions)

    def lines(self) -> list[str]:
        """A human-readable report: one line per image, then the accuracy."""
        rows = [
            f"test[{p.index:>5}]  truth {p.truth:<12} predicted {p.predicted:<12} "
            f"p={p.probability:.3f}  {'ok' if p.correct else 'WRONG'}"
            for p in self.predictions
        ]
        correct = sum(p.correct for p in self.predictions)
        return [
            f"model {self.model_name} ({self.protocol}), {len(self.predictions)} random test images, "
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

    def input_name(self, model: str) -> str:
        """The name of the model's one input tensor (V2 model metadata)."""
        inputs = self._call("GET", f"/v2/models/{model}").get("inputs") or []
        if len(inputs) != 1:
            raise PredictionError(f"model {model} has inputs {inputs}; expected one image tensor")
        return str(inputs[0]["name"])

    def classify(
        self, model: str, input_name: str, images: np.ndarray, protocol: Protocol
    ) -> list[tuple[str, float]]:
        """(label, probability of that label) per image, in one request."""
        if protocol == "v1":
            body = self._call("POST", f"/v1/models/{model}:predict", {"instances": images.tolist()})
            answers = [(str(p["label"]), float(max(p["probabilities"]))) for p in body["predictions"]]
        else:
            tensor = {"name": input_name, "shape": list(images.shape), "datatype": "UINT8"}
            request = {"inputs": [{**tensor, "data": images.ravel().tolist()}]}
            body = self._call("POST", f"/v2/models/{model}/infer", request)
            outputs = {o["name"]: o for o in body["outputs"]}
            probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(len(images), -1)
            labels = [str(label) for label in outputs["label"]["data"]]
            answers = list(zip(labels, probabilities.max(axis=1).tolist(), strict=True))
        if len(answers) != len(images):
            raise PredictionError(f"sent {len(images)} images, got {len(answers)} answers")
        return answers


def predict_samples(
    url: str,
    n: int,
    protocol: Protocol = "v2",
    model_name: str | None = None,
    seed: int | None = None,
    timeout: float = 10.0,
    data_dir: Path = paths.PREPARED_DIR,
) -> PredictionRun:
    """Send ``n`` random test images, one request each, and compare the answers with the labels."""
    test: LabeledImages = read_split("test", data_dir)
    if not 1 <= n <= len(test):
        raise PredictionError(f"--n must be between 1 and the {len(test)} test images; got {n}")
    seed = secrets.randbits(32) if seed is None else seed
    indices = np.random.default_rng(seed).choice(len(test), size=n, replace=False)
    predictions = []
    with InferenceClient(url, timeout) as client:
        model = model_name or client.model_name()
        input_name = client.input_name(model)
        for index in indices.tolist():
            image = test.images[index : index + 1]
            try:
                [(label, probability)] = client.classify(model, input_name, image, protocol)
            except (KeyError, TypeError, ValueError) as e:
                raise PredictionError(f"unexpected {protocol} response from {url}: {e!r}") from e
            truth = test.classes[test.labels[index]]
            predictions.append(Prediction(index, truth, label, probability))
            log.debug("test[%d]: %s -> %s", index, truth, label)
    return PredictionRun(model, protocol, seed, predictions)
