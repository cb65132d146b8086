"""The workflows on a table model: its cost is timed on rows, the report lists the rows that
changed verdict, and the gate promotes it and judges the next candidate against it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from mlpipe.contracts import compare, table
from mlpipe.contracts.manifest import MANIFEST_FILE, PackageManifest, TableInput
from mlpipe.core import tables
from mlpipe.core.params import parse_params
from mlpipe.tracking import registry
from mlpipe.workflows import cost, gate, report
from tests.conftest import MODEL_NAME, TINY_TABLE_PARAMS


@pytest.fixture(scope="module")
def project(built_table_project: Path) -> Path:
    return built_table_project


def columns(project: Path) -> tuple[table.Column, ...]:
    raw = tables.read_json(project / "models/package" / MANIFEST_FILE, "", "")
    spec = PackageManifest.from_json(raw).input
    assert isinstance(spec, TableInput)
    return spec.columns


def test_random_rows_hold_values_of_the_training_split_in_the_types_the_model_takes(project: Path) -> None:
    rows = cost.table_rows(columns(project), 50, np.random.default_rng(0))
    for column in columns(project):
        values = rows[column.name]
        assert values.shape == (50,)
        if column.is_number:
            assert values.dtype == np.float32
            assert np.all((column.minimum <= values) & (values <= column.maximum))
        else:
            assert set(values.tolist()) <= set(column.levels)
    model = (project / "models/package/model.onnx").read_bytes()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], rows)[0]
    assert probabilities.shape == (50, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_table_package_is_timed_on_rows(project: Path) -> None:
    package = project / "models/package"
    costs = cost.measure({"base": package, "workspace": package})
    manifest = PackageManifest.from_json(tables.read_json(package / MANIFEST_FILE, "", ""))
    for measured in costs.values():
        assert measured.example == "row"
        assert measured.batch_size == min(cost.BATCH_SIZE, manifest.input.max_batch_size)
        assert measured.parameters == cost.parameter_count((package / "model.onnx").read_bytes())
        assert measured.package_bytes == cost.package_bytes(package)
        assert measured.single_ms > 0
        assert measured.batch_ms > 0


def test_the_reports_cost_table_gives_the_latency_of_one_row(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)  # a project without DVC: no base package to fetch
    lines = report.cost_table("main", "0" * 40)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert "latency, 1 row (ms, median)" in rows
    assert "latency, 1 image (ms, median)" not in rows
    assert any(line.startswith("The package of `main` is unavailable (") for line in lines)


def predictions(actual: list[str], wrong: set[int], classes: tuple[str, ...]) -> compare.Predictions:
    """``actual`` predicted right except at ``wrong``, where the prediction is another class."""
    other = {name: next(c for c in classes if c != name) for name in classes}
    predicted = [other[label] if i in wrong else label for i, label in enumerate(actual)]
    return compare.Predictions(tuple(actual), tuple(predicted))


def changed_rows(project: Path, old_wrong: set[int], new_wrong: set[int]) -> list[report.Block]:
    schema = table.read_schema(project / "data/prepared")
    test = table.read_split("test", project / "data/prepared", schema)
    actual = [schema.classes[label] for label in test.labels]
    old = predictions(actual, old_wrong, schema.classes)
    new = predictions(actual, new_wrong, schema.classes)
    return report.changed_examples(old, new, compare.compare_predictions(old, new))


def markdown_rows(lines: list[str]) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines]


def test_the_rows_that_changed_verdict_are_listed_with_their_values_from_the_test_split(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    blocks = changed_rows(project, old_wrong={3}, new_wrong={7, 9})
    assert all(isinstance(block, str) for block in blocks), "a table's rows travel as text, not figures"
    text = "\n".join(str(block) for block in blocks)
    assert text.startswith("2 right → wrong, 1 wrong → right.")
    wrong, right = text.split("**right → wrong (true → new prediction)**:\n\n", 1)[1].split(
        "\n\n**wrong → right (true → old prediction)**:\n\n"
    )
    with (project / "data/prepared/test.csv").open(newline="") as file:
        header, *file_rows = list(csv.reader(file))
    schema = table.read_schema(project / "data/prepared")
    for section, indices, prediction in ((wrong, [7, 9], "New prediction"), (right, [3], "Old prediction")):
        head, _, *body = markdown_rows(section.splitlines())
        assert head == ["Row", *header[:-1], "Class", prediction]
        assert [int(row[0]) for row in body] == [i + 1 for i in indices]  # the file's row, after its header
        for row, index in zip(body, indices, strict=True):
            fields = file_rows[index]
            for column, cell, field in zip(schema.columns, row[1:-2], fields[:-1], strict=True):
                if column.is_number and field:
                    assert float(cell) == pytest.approx(float(field), rel=1e-5)
                else:
                    assert cell == field  # blank where missing
            assert row[-2] == fields[-1]
            assert row[-1] != fields[-1]


def test_rows_of_another_test_split_are_not_shown(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    old = compare.Predictions(("Adelie", "Gentoo"), ("Adelie", "Adelie"))
    new = compare.Predictions(("Adelie", "Gentoo"), ("Adelie", "Gentoo"))
    blocks = report.changed_examples(old, new, compare.compare_predictions(old, new))
    assert blocks[-1] == "Rows unavailable: data/prepared does not hold these predictions' test split."


def test_the_gate_promotes_a_table_model_and_judges_the_next_candidate_by_significance(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "project"
    shutil.copytree(project, copy)  # the shared project's registry stays as it is
    monkeypatch.chdir(copy)
    gate_params = {"min_test_accuracy": 0.5, "min_test_macro_f1": 0.5, "regression_test": "significant"}
    params = parse_params(TINY_TABLE_PARAMS | {"package": {"model_name": MODEL_NAME}, "gate": gate_params})
    gate.run(params, promote_on_pass=True)

    client = registry.require_registry()
    assert registry.aliases(client, MODEL_NAME)[registry.CHAMPION] == registry.checkout_version(
        client, MODEL_NAME
    )
    decision = gate.evaluate(params, gate.read_metrics(), client)
    assert decision.passed
    assert decision.champion is not None and decision.champion.predictions is not None
    assert "no significant drop (McNemar p = 1.0000)" in decision.checks[-1].text
