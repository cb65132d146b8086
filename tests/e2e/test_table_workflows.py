"""A team's own table through the workflows, in a real git + DVC repository: `mlpipe verify`
rebuilds the project on its dvc-added CSV, and `mlpipe report` on a branch that trains longer
compares the two table models, the rows that changed verdict listed with their values."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_TABLE_PARAMS, make_project, run, update_params
from tests.e2e.test_report import changed, images, predictions_at, table

pytestmark = pytest.mark.slow


def write_table(path: Path, count: int = 160) -> None:
    """Two overlapping classes, a number and a category with gaps: a model that errs, on rows
    that carry missing values."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["size", "colour", "weight", "grade"])
        for index in range(count):
            high = index % 2
            size = "" if index % 11 == 0 else f"{rng.normal(2.0 * high, 2.0):.3f}"
            colour = ["", "red", "blue", "green"][int(rng.integers(4))]
            writer.writerow([size, colour, f"{rng.normal(50 + 5 * high, 10):.1f}", ["low", "high"][high]])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: the project on its own dvc-added CSV with the results of `dvc repro`; HEAD: the
    branch `longer` that trains more epochs, with its results."""
    overrides = TINY_TABLE_PARAMS | {"package": {"register_model": False}}
    project = make_project(tmp_path_factory.mktemp("table") / "project", overrides)
    write_table(project / "data/raw/grades.csv")
    run("dvc", "add", "data/raw/grades.csv", cwd=project)
    update_params(
        project,
        {
            "data": {"dataset": "table", "source": "data/raw/grades.csv", "target": "grade"},
            "train": {"epochs": 1},
        },
    )
    run("dvc", "repro", cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-qm", "Our own table, and its results", cwd=project)
    run("git", "switch", "-qc", "longer", cwd=project)
    update_params(project, {"train": {"epochs": 6}})
    run("dvc", "repro", cwd=project)
    run("git", "commit", "-qam", "Train longer", cwd=project)
    return project


def test_verify_rebuilds_a_table_project_on_its_own_dvc_added_csv(project: Path) -> None:
    result = run("mlpipe", "verify", cwd=project)
    assert "every output rebuilt from scratch equals dvc.lock" in result.stdout + result.stderr


def test_the_report_on_a_table_lists_the_rows_that_changed_verdict_and_times_one_row(project: Path) -> None:
    run("mlpipe", "report", "--base", "main", cwd=project)
    markdown = (project / "reports/report.md").read_text()

    assert table(markdown, "Params") == [
        {"Path": "params.yaml", "Param": "train.epochs", "main": "1", "workspace": "6"}
    ]
    assert sorted(row["Class"] for row in table(markdown, "Per-class changes (test split)")) == [
        "high",
        "low",
    ]
    cost = {row[""]: row for row in table(markdown, "Cost")}
    assert float(cost["latency, 1 row (ms, median)"]["main"]) > 0  # the base package came from DVC
    assert float(cost["latency, 1 row (ms, median)"]["workspace"]) > 0

    now_wrong, now_right = changed(predictions_at(project, "main"), predictions_at(project, "HEAD"))
    assert now_wrong + now_right > 0, "the two models should disagree on some test rows"
    section = markdown.split("\n## Examples that changed verdict\n", 1)[1]
    assert section.strip().startswith(f"{now_wrong} right → wrong, {now_right} wrong → right.")
    header = "| Row | size | colour | weight | Class | {} prediction |"
    assert (header.format("New") in section) == (now_wrong > 0)
    assert (header.format("Old") in section) == (now_right > 0)
    assert images(markdown) == [
        "report/training_curves.png",
        "report/confusion_base.png",
        "report/confusion_workspace.png",
    ]
