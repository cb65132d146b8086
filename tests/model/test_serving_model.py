"""The serving class on a package built by the pipeline: predictions, validation, package checks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from kserve.errors import InvalidInput

from mlpipe.core.errors import ArtifactError
from mlpipe.serving.model import ImageClassifier
from tests.conftest import REPO_ROOT
from tests.model.serving_cases import (
    BAD_REQUEST_IDS,
    PACKAGE,
    Spec,
    bad_request,
    evaluate_predictions,
    infer_request,
    prepared_test_images,
    v1_body,
    v2_body,
)


@pytest.fixture(scope="module")
def spec(built_project: Path) -> Spec:
    return Spec.of(built_project)


@pytest.fixture(scope="module")
def classifier(built_project: Path) -> ImageClassifier:
    model = ImageClassifier(None, built_project / PACKAGE)
    model.load()
    return model


def batches(images: np.ndarray, size: int) -> list[np.ndarray]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def v2_labels(classifier: ImageClassifier, images: np.ndarray) -> list[str]:
    response = classifier.predict(infer_request(v2_body(images), classifier.name))
    return list(response.get_output_by_name("label").data)


def test_load_makes_the_model_ready_under_the_package_name(classifier: ImageClassifier, spec: Spec) -> None:
    assert classifier.ready
    assert classifier.name == spec.model_name


def test_model_name_argument_overrides_the_package_name(built_project: Path) -> None:
    model = ImageClassifier("digits-v2", built_project / PACKAGE)
    model.load()
    assert model.name == "digits-v2"


def test_v1_predictions_equal_evaluate_predictions(
    classifier: ImageClassifier, built_project: Path, spec: Spec
) -> None:
    images = prepared_test_images(built_project)
    labels = [
        p["label"]
        for batch in batches(images, spec.max_batch_size)
        for p in classifier.predict(v1_body(batch))["predictions"]
    ]
    assert labels == evaluate_predictions(built_project)


def test_v2_predictions_equal_evaluate_predictions(
    classifier: ImageClassifier, built_project: Path, spec: Spec
) -> None:
    images = prepared_test_images(built_project)
    batched = batches(images, spec.max_batch_size)
    labels = [label for batch in batched for label in v2_labels(classifier, batch)]
    assert labels == evaluate_predictions(built_project)


def test_v1_prediction_holds_class_index_label_and_probabilities(
    classifier: ImageClassifier, built_project: Path, spec: Spec
) -> None:
    [prediction] = classifier.predict(v1_body(prepared_test_images(built_project)[:1]))["predictions"]
    assert set(prediction) == {"class_index", "label", "probabilities"}
    assert prediction["label"] == spec.labels[prediction["class_index"]]
    assert len(prediction["probabilities"]) == len(spec.labels)
    assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert np.argmax(prediction["probabilities"]) == prediction["class_index"]


def test_v2_fp32_and_uint8_tensors_give_the_same_answer(
    classifier: ImageClassifier, built_project: Path
) -> None:
    images = prepared_test_images(built_project)[:16]
    as_uint8 = classifier.predict(infer_request(v2_body(images), classifier.name))
    as_fp32 = classifier.predict(infer_request(v2_body(images.astype(np.float32), "FP32"), classifier.name))
    for name in ("class_index", "probabilities"):
        np.testing.assert_array_equal(
            as_uint8.get_output_by_name(name).data, as_fp32.get_output_by_name(name).data
        )


def test_v2_response_has_three_outputs_and_the_request_id(
    classifier: ImageClassifier, built_project: Path, spec: Spec
) -> None:
    images = prepared_test_images(built_project)[:3]
    response = classifier.predict(infer_request(v2_body(images, id="req-42"), classifier.name))
    assert response.id == "req-42"
    assert [(o.name, o.datatype, o.shape) for o in response.outputs] == [
        ("class_index", "INT64", [3]),
        ("label", "BYTES", [3]),
        ("probabilities", "FP32", [3, len(spec.labels)]),
    ]


def test_v2_response_without_request_id_gets_a_new_one(
    classifier: ImageClassifier, built_project: Path
) -> None:
    body = v2_body(prepared_test_images(built_project)[:1])
    first, second = (classifier.predict(infer_request(body, classifier.name)).id for _ in range(2))
    assert first and second and first != second


def test_a_request_is_one_forward_pass(
    classifier: ImageClassifier, built_project: Path, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    forward = classifier.probabilities

    def counting(pixels: np.ndarray) -> np.ndarray:
        calls.append(pixels.shape)
        return forward(pixels)

    monkeypatch.setattr(classifier, "probabilities", counting)
    images = prepared_test_images(built_project)[: spec.max_batch_size]
    classifier.predict(v1_body(images))
    assert len(images) > 1
    assert calls == [images.shape]


def test_metadata_describes_the_input_and_outputs(classifier: ImageClassifier, spec: Spec) -> None:
    assert classifier.get_input_types() == [
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, spec.height, spec.width]}
    ]
    assert [o["name"] for o in classifier.get_output_types()] == ["class_index", "label", "probabilities"]


@pytest.mark.parametrize("case_id", BAD_REQUEST_IDS)
def test_invalid_request_is_refused_with_a_precise_message(
    classifier: ImageClassifier, spec: Spec, case_id: str
) -> None:
    case = bad_request(spec, case_id)
    payload = infer_request(case.body, classifier.name) if case.protocol == "v2" else case.body
    with pytest.raises(InvalidInput, match=case.error):
        classifier.predict(payload)


def test_v1_nan_pixels_are_refused(classifier: ImageClassifier, spec: Spec) -> None:
    with pytest.raises(InvalidInput, match="finite"):
        classifier.predict({"instances": np.full((1, spec.height, spec.width), np.nan).tolist()})


def test_v1_body_that_is_not_json_is_refused(classifier: ImageClassifier) -> None:
    with pytest.raises(InvalidInput, match="must be JSON"):
        classifier.predict(b"\x89PNG...")


# --- package checks: a copy of the built package, broken in one way each ---


@pytest.fixture
def package_copy(built_project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_project / PACKAGE, tmp_path / "package"))


def edit_manifest(package: Path, **changes: object) -> None:
    path = package / "package.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def load_error(model_dir: Path) -> str:
    model = ImageClassifier(None, model_dir)
    with pytest.raises(ArtifactError) as error:
        model.load()
    assert not model.ready
    return str(error.value)


def test_missing_model_dir_is_reported(tmp_path: Path) -> None:
    assert "model directory not found" in load_error(tmp_path / "nowhere")


def test_dir_without_manifest_is_not_a_package(package_copy: Path) -> None:
    (package_copy / "package.json").unlink()
    assert re.search(r"package\.json: not found; .* is not a model package", load_error(package_copy))


def test_unknown_package_format_is_refused(package_copy: Path) -> None:
    edit_manifest(package_copy, format=3)
    assert "package format 3, this server reads formats 1, 2" in load_error(package_copy)


def test_a_package_made_before_format_2_is_served_alike(
    package_copy: Path, built_project: Path, spec: Spec
) -> None:
    """A rollback serves a package whose package.json is format 1 (the architecture as
    {"family": ..., <params>}): same answers."""
    old = json.loads((REPO_ROOT / "tests/data/packages/package-format-1.json").read_text())
    new = json.loads((package_copy / "package.json").read_text())
    assert (old["input"], old["labels"]) == (new["input"], new["labels"])  # digits, like the built one
    (package_copy / "package.json").write_text(json.dumps(old | {"model_sha256": new["model_sha256"]}))
    older = ImageClassifier(None, package_copy)
    older.load()
    batched = batches(prepared_test_images(built_project), spec.max_batch_size)
    assert [label for batch in batched for label in v2_labels(older, batch)] == evaluate_predictions(
        built_project
    )


def test_malformed_manifest_is_reported(package_copy: Path) -> None:
    edit_manifest(package_copy, input="pixels")
    assert "malformed manifest" in load_error(package_copy)


def test_missing_model_file_is_reported(package_copy: Path) -> None:
    (package_copy / "model.onnx").unlink()
    assert "expected exactly one model file, 'model.onnx'" in load_error(package_copy)


def test_extra_model_file_is_reported(package_copy: Path) -> None:
    shutil.copy(package_copy / "model.onnx", package_copy / "old.onnx")
    assert "found ['model.onnx', 'old.onnx']" in load_error(package_copy)


def test_model_file_with_another_checksum_is_refused(package_copy: Path) -> None:
    with (package_copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert "does not match package.json" in load_error(package_copy)


def test_corrupt_onnx_file_is_reported(package_copy: Path) -> None:
    garbage = b"this is not an ONNX model"
    (package_copy / "model.onnx").write_bytes(garbage)
    edit_manifest(package_copy, model_sha256=hashlib.sha256(garbage).hexdigest())
    assert "the ONNX model cannot be loaded" in load_error(package_copy)


def with_input_type(package: Path, elem_type: int) -> None:
    """Rewrite the package's graph to declare another input type (its first op casts anyway)."""
    import onnx

    model = onnx.load_model_from_string((package / "model.onnx").read_bytes())
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (package / "model.onnx").write_bytes(data)
    edit_manifest(package, model_sha256=hashlib.sha256(data).hexdigest())


def test_a_package_whose_graph_takes_float32_is_served_alike(
    package_copy: Path, built_project: Path, spec: Spec
) -> None:
    """A rollback serves a package made when graphs took float32 pixels: same answers."""
    import onnx

    with_input_type(package_copy, onnx.TensorProto.FLOAT)
    older = ImageClassifier(None, package_copy)
    older.load()
    batched = batches(prepared_test_images(built_project), spec.max_batch_size)
    assert [label for batch in batched for label in v2_labels(older, batch)] == evaluate_predictions(
        built_project
    )


def test_a_graph_taking_another_input_type_is_refused(package_copy: Path) -> None:
    import onnx

    with_input_type(package_copy, onnx.TensorProto.INT32)
    assert "the ONNX model takes tensor(int32)" in load_error(package_copy)
