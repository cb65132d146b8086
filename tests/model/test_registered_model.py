"""The version the package stage registers: MLflow's pyfunc of it takes the raw pixels as the
prepared arrays hold them (uint8), as its signature says, and predicts like evaluate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpipe.tracking import registry
from tests.model.serving_cases import Spec, evaluate_predictions, prepared_test_images


@pytest.fixture(scope="module")
def candidate(built_project: Path) -> Iterator[Any]:
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(f"sqlite:///{built_project / 'mlruns.db'}")
    try:
        yield mlflow.pyfunc.load_model(f"models:/{Spec.of(built_project).model_name}@{registry.CANDIDATE}")
    finally:
        mlflow.set_tracking_uri(before)


def test_pyfunc_predicts_on_the_raw_uint8_test_split_like_evaluate(
    candidate: Any, built_project: Path
) -> None:
    images = prepared_test_images(built_project)
    assert images.dtype == np.uint8
    probabilities = np.asarray(candidate.predict(images)["probabilities"])
    labels = Spec.of(built_project).labels
    assert [labels[i] for i in probabilities.argmax(1)] == evaluate_predictions(built_project)


def test_signature_declares_raw_pixels_in_and_probabilities_out(candidate: Any, built_project: Path) -> None:
    spec = Spec.of(built_project)
    signature = candidate.metadata.signature
    assert signature.inputs.to_dict() == [
        {
            "type": "tensor",
            "name": "pixels",
            "tensor-spec": {"dtype": "uint8", "shape": (-1, spec.height, spec.width)},
        }
    ]
    assert signature.outputs.to_dict() == [
        {
            "type": "tensor",
            "name": "probabilities",
            "tensor-spec": {"dtype": "float32", "shape": (-1, len(spec.labels))},
        }
    ]
