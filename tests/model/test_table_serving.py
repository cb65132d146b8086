"""The serving class on a table package built by the pipeline: rows in (V1 records, V2 columns),
evaluate's answers out, gaps and unseen levels served, every bad row refused naming its column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kserve.errors import InvalidInput
from prometheus_client import REGISTRY

from mlpipe.contracts import drift, table
from mlpipe.contracts.manifest import PROFILE_FILE
from mlpipe.core.errors import ArtifactError
from mlpipe.serving.metrics import REJECTION_REASONS
from mlpipe.serving.model import ImageClassifier, TableClassifier, classifier_class
from mlpipe.serving.model_package import read_package
from mlpipe.serving.server import default_max_body_bytes
from tests.model.serving_cases import PACKAGE, evaluate_predictions, infer_request

PREPARED = "data/prepared"
NUMBER = "bill_length_mm"  # a number column of the bundled penguins, with gaps
CATEGORY = "island"  # a category column without gaps


@pytest.fixture(scope="module")
def classifier(built_table_project: Path) -> TableClassifier:
    model = TableClassifier(None, built_table_project / PACKAGE, drift_window=50)
    model.load()
    return model


@pytest.fixture(scope="module")
def test_rows(built_table_project: Path) -> list[dict[str, Any]]:
    return table.read_split("test", built_table_project / PREPARED).records()


def v2_body(rows: list[dict[str, Any]], classifier: TableClassifier, shape_1: bool = False) -> dict:
    """One input per column, as the model's metadata types them; shape [N, 1] if ``shape_1``."""
    inputs = []
    for tensor in classifier.get_input_types():
        values = [row[tensor["name"]] for row in rows]
        shape = [len(rows), 1] if shape_1 else [len(rows)]
        inputs.append(
            {"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": values}
        )
    return {"inputs": inputs}


def v1_labels(classifier: TableClassifier, rows: list[dict[str, Any]]) -> list[str]:
    return [p["label"] for p in classifier.predict({"instances": rows})["predictions"]]


def v1_probabilities(classifier: TableClassifier, rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([p["probabilities"] for p in classifier.predict({"instances": rows})["predictions"]])


def test_a_table_package_is_served_by_the_table_classifier(
    built_table_project: Path, classifier: TableClassifier
) -> None:
    assert classifier_class(built_table_project / PACKAGE) is TableClassifier
    assert classifier.ready
    columns = table.read_schema(built_table_project / PREPARED).columns
    assert classifier.get_input_types() == [
        {"name": c.name, "datatype": "FP32" if c.is_number else "BYTES", "shape": [-1]} for c in columns
    ]


def test_v1_records_get_the_answers_evaluate_gave(
    built_table_project: Path, classifier: TableClassifier, test_rows: list[dict[str, Any]]
) -> None:
    assert v1_labels(classifier, test_rows) == evaluate_predictions(built_table_project)


@pytest.mark.parametrize("shape_1", [False, True], ids=["shape-N", "shape-N-1"])
def test_v2_columns_get_the_answers_of_v1_records(
    classifier: TableClassifier, test_rows: list[dict[str, Any]], shape_1: bool
) -> None:
    response = classifier.predict(infer_request(v2_body(test_rows, classifier, shape_1), classifier.name))
    assert list(response.get_output_by_name("label").data) == v1_labels(classifier, test_rows)
    np.testing.assert_allclose(
        response.get_output_by_name("probabilities").data, v1_probabilities(classifier, test_rows)
    )


@pytest.mark.parametrize("datatype", ["FP64", "INT32", "INT64"])
def test_a_number_column_takes_any_numeric_v2_datatype(
    classifier: TableClassifier, test_rows: list[dict[str, Any]], datatype: str
) -> None:
    rows = [row | {"year": None if row["year"] is None else int(row["year"])} for row in test_rows[:5]]
    body = v2_body(rows, classifier)
    [year] = [tensor for tensor in body["inputs"] if tensor["name"] == "year"]
    year["datatype"] = datatype
    response = classifier.predict(infer_request(body, classifier.name))
    assert list(response.get_output_by_name("label").data) == v1_labels(classifier, rows)


def test_gaps_are_answered_as_the_graph_fills_them(
    classifier: TableClassifier, test_rows: list[dict[str, Any]]
) -> None:
    rows = [dict.fromkeys(row) for row in test_rows[:3]] + [row | {NUMBER: None} for row in test_rows[:3]]
    served = v1_probabilities(classifier, rows)
    package, session = classifier._ready_parts()
    features = {name: [row[name] for row in rows] for name in rows[0]}
    graph = session.run(["probabilities"], table.model_inputs(package.input.columns, features))[0]
    np.testing.assert_allclose(served, graph, rtol=1e-6)
    assert np.isfinite(served).all()


def test_an_unseen_level_takes_the_path_of_a_missing_one(
    classifier: TableClassifier, test_rows: list[dict[str, Any]]
) -> None:
    unseen = [row | {CATEGORY: "Atlantis"} for row in test_rows[:5]]
    missing = [row | {CATEGORY: None} for row in test_rows[:5]]
    np.testing.assert_allclose(v1_probabilities(classifier, unseen), v1_probabilities(classifier, missing))


def bad_v1(row: dict[str, Any]) -> dict[str, tuple[Any, str, str]]:
    """id -> (V1 body, reason, message pattern): each message names the column or what is wrong."""
    without = {k: v for k, v in row.items() if k != NUMBER}

    def one(**change: Any) -> dict[str, Any]:
        return {"instances": [row | change]}

    finite = f"'{NUMBER}' must be a finite number"
    return {
        "text-in-a-number": (one(**{NUMBER: "41.5"}), "not_numbers", f"column '{NUMBER}' is a number"),
        "bool-in-a-number": (one(**{NUMBER: True}), "not_numbers", f"'{NUMBER}'.*true/false"),
        "list-in-a-number": (one(**{NUMBER: [1]}), "not_numbers", f"'{NUMBER}'.*a list"),
        "number-in-a-category": (one(**{CATEGORY: 3}), "not_text", f"'{CATEGORY}' is a category"),
        "bool-in-a-category": (one(**{CATEGORY: False}), "not_text", f"'{CATEGORY}' is a category"),
        "unknown-column": (one(beak_colour="red"), "column", 'unknown column "beak_colour"'),
        "missing-column": ({"instances": [without]}, "column", f"column '{NUMBER}' is missing"),
        "infinite-number": (one(**{NUMBER: float("inf")}), "number_values", finite),
        "nan-number": (one(**{NUMBER: float("nan")}), "number_values", finite),
        "beyond-float32": (one(**{NUMBER: 10**39}), "number_values", finite),
        "empty-batch": ({"instances": []}, "batch_size", "empty batch"),
        "oversized-batch": ({"instances": [row] * 257}, "batch_size", "too many rows: 257"),
        "not-an-object": ({"instances": [list(row.values())]}, "body", "instance 0: a row is a JSON object"),
        "instances-not-a-list": ({"instances": row}, "body", '"instances" must be a list of rows'),
        "body-not-an-object": ([row], "body", "must be a JSON object"),
    }


BAD_V1_IDS = list(bad_v1({}))


@pytest.mark.parametrize("case_id", BAD_V1_IDS)
def test_a_bad_v1_row_is_refused_naming_what_is_wrong(
    classifier: TableClassifier, test_rows: list[dict[str, Any]], case_id: str
) -> None:
    body, reason, pattern = bad_v1(test_rows[0])[case_id]
    with pytest.raises(InvalidInput, match=pattern) as refused:
        classifier.predict(body)
    assert refused.value.problem == reason and reason in REJECTION_REASONS


def bad_v2(body: dict[str, Any]) -> dict[str, tuple[Any, str, str]]:
    """id -> (V2 body, reason, message pattern), each a change of a valid one-row ``body``."""
    tensors = {tensor["name"]: tensor for tensor in body["inputs"]}
    others = [tensor for tensor in body["inputs"] if tensor["name"] != NUMBER]

    def changed(name: str, **change: Any) -> dict[str, Any]:
        return {"inputs": [t | change if t["name"] == name else t for t in body["inputs"]]}

    doubled = [t | {"shape": [2], "data": t["data"] * 2} for t in others]
    return {
        "text-in-a-number": (changed(NUMBER, datatype="BYTES"), "datatype", f"'{NUMBER}' .*BYTES"),
        "text-data-in-fp32": (changed(NUMBER, data=["41.5"]), "not_numbers", f"'{NUMBER}' is a number"),
        "number-in-a-category": (changed(CATEGORY, datatype="FP32"), "datatype", f"'{CATEGORY}'"),
        "number-data-in-bytes": (changed(CATEGORY, data=[3]), "not_text", f"'{CATEGORY}' is a category"),
        "unknown-input": ({"inputs": [*others, tensors[NUMBER] | {"name": "x"}]}, "column", 'column "x"'),
        "missing-input": ({"inputs": others}, "column", f"'{NUMBER}' is missing"),
        "twice": ({"inputs": [*body["inputs"], tensors[NUMBER]]}, "column", "appears twice"),
        "wrong-shape": (changed(NUMBER, shape=[1, 2], data=[1.0, 2.0]), "shape", r"shape \[N\] or \[N, 1\]"),
        "too-few-values": (changed(NUMBER, shape=[2]), "shape", "needs 2 values; got 1"),
        "unequal-rows": ({"inputs": [*doubled, tensors[NUMBER]]}, "shape", "different numbers of rows"),
        "bool-datatype": (changed(NUMBER, datatype="BOOL", data=[True]), "datatype", "send FP32 or FP64"),
        "oversized-batch": (changed(NUMBER, shape=[257]), "batch_size", "too many rows: 257"),
    }


BAD_V2_IDS = list(bad_v2({"inputs": [{"name": NUMBER, "data": []}, {"name": CATEGORY, "data": []}]}))


@pytest.mark.parametrize("case_id", BAD_V2_IDS)
def test_a_bad_v2_column_is_refused_naming_what_is_wrong(
    classifier: TableClassifier, test_rows: list[dict[str, Any]], case_id: str
) -> None:
    body, reason, pattern = bad_v2(v2_body(test_rows[:1], classifier))[case_id]
    with pytest.raises(InvalidInput, match=pattern) as refused:
        classifier.predict(infer_request(body, classifier.name))
    assert refused.value.problem == reason


def test_the_drift_window_scores_each_column_as_mlpipe_drift_does(built_table_project: Path) -> None:
    test = table.read_split("test", built_table_project / PREPARED)
    model = TableClassifier("table-drift", built_table_project / PACKAGE, drift_window=len(test))
    model.load()
    scaled = test.features | {"body_mass_g": test.features["body_mass_g"] * 1.5}
    model.predict({"instances": table.Table(scaled, test.labels, test.classes).records()})
    profile = drift.read_table_profile(built_table_project / PACKAGE, model.input_spec.columns)
    expected = drift.compare_table(profile, scaled).scores

    def served(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"model_name": "table-drift", **labels})

    assert {c: served("mlpipe_column_drift_score", column=c) for c in expected} == pytest.approx(expected)
    assert expected["body_mass_g"] >= drift.DRIFT_THRESHOLD
    assert served("mlpipe_drift_score") == pytest.approx(max(expected.values()))


def test_an_image_reader_refuses_a_table_package_and_says_so(built_table_project: Path) -> None:
    with pytest.raises(ArtifactError, match="a table model's package"):
        read_package(built_table_project / PACKAGE)
    with pytest.raises(ArtifactError, match="a table model's package"):
        ImageClassifier(None, built_table_project / PACKAGE).load()


def test_a_profile_of_other_columns_is_refused(built_table_project: Path, tmp_path: Path) -> None:
    package = shutil.copytree(built_table_project / PACKAGE, tmp_path / "package")
    profile = json.loads((package / PROFILE_FILE).read_text())
    profile["columns"] = profile["columns"][1:]
    (package / PROFILE_FILE).write_text(json.dumps(profile))
    with pytest.raises(ArtifactError, match=r"profile\.json: does not profile the columns the model takes"):
        TableClassifier(None, package).load()


def test_the_default_body_limit_holds_a_full_batch_of_verbose_rows(
    classifier: TableClassifier, test_rows: list[dict[str, Any]]
) -> None:
    spec = classifier.input_spec
    verbose = {c.name: -1.2345678901234567e-300 if c.is_number else "x" * 40 for c in spec.columns}
    body = json.dumps({"instances": [verbose] * spec.max_batch_size})
    assert len(body) <= default_max_body_bytes(spec)
