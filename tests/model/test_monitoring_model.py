"""The serving class's monitoring on a package built by the pipeline: the drift profile it needs,
and serving without it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kserve.errors import InvalidInput
from prometheus_client import REGISTRY

from mlpipe.contracts import drift
from mlpipe.contracts.manifest import PROFILE_FILE
from mlpipe.core.errors import ArtifactError
from mlpipe.serving.edge import MONITOR_KEY, reject
from mlpipe.serving.model import ImageClassifier
from tests.model.serving_cases import PACKAGE, infer_request, prepared_test_images, v2_body


def test_package_ships_the_training_profile(built_project: Path) -> None:
    profile = drift.read_profile(built_project / PACKAGE)
    train = drift.load_split(built_project / "data/prepared", "train")
    assert profile == drift.Profile.of(train, profile.pixel_max)


def test_without_a_profile_the_server_says_to_rebuild_or_turn_monitoring_off(
    built_project: Path, tmp_path: Path
) -> None:
    package = shutil.copytree(built_project / PACKAGE, tmp_path / "package")
    (package / PROFILE_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"profile\.json: not found; rebuild .* --no-monitoring"):
        ImageClassifier("no-profile", package).load()
    unmonitored = ImageClassifier("no-profile", package, monitoring=False)
    unmonitored.load()
    images = prepared_test_images(built_project)[:3]
    response = unmonitored.predict(infer_request(v2_body(images), unmonitored.name))
    assert len(response.get_output_by_name("label").data) == 3
    assert REGISTRY.get_sample_value("mlpipe_requests_total", {"model_name": "no-profile"}) is None


def test_predict_counts_requests_images_and_refusals(built_project: Path) -> None:
    model = ImageClassifier("counted", built_project / PACKAGE, drift_window=5)
    model.load()

    def count(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"model_name": "counted", **labels})

    images = prepared_test_images(built_project)[:6]
    model.predict(infer_request(v2_body(images), model.name))
    model.predict({"instances": images[:1].tolist()})
    with pytest.raises(InvalidInput) as refused:
        model.predict({"instances": []})
    assert count("mlpipe_requests_total") == 3
    # A refusal is counted where it is answered, by the edge's reject, with the model's monitor.
    assert count("mlpipe_rejected_requests_total", reason="batch_size") == 0
    reject({MONITOR_KEY: model.monitor}, 400, str(refused.value), refused.value)
    assert count("mlpipe_rejected_requests_total", reason="batch_size") == 1
    assert count("mlpipe_failed_requests_total") == 0
    labels = {label: count("mlpipe_predictions_total", label=label) for label in model.package.labels}
    assert sum(labels.values()) == 7
    assert count("mlpipe_drift_window_images") == 5
    assert count("mlpipe_drift_score") >= 0
