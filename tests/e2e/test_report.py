"""`mlpipe report` in a real git + DVC repository: two commits that differ in `train.epochs`."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_project, run, update_params

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Commit `baseline` holds the results of `dvc repro`; HEAD the results with one more epoch."""
    project = make_project(tmp_path_factory.mktemp("report") / "project")
    run("dvc", "repro", cwd=project)
    run("git", "commit", "-qam", "baseline", cwd=project)
    run("git", "tag", "baseline", cwd=project)
    update_params(project, {"train": {"epochs": 5}})
    run("dvc", "repro", cwd=project)
    run("git", "commit", "-qam", "train one epoch more", cwd=project)
    return project


def report(project: Path, base: str) -> str:
    run("mlpipe", "report", "--base", base, cwd=project)
    return (project / "reports/report.md").read_text()


@pytest.fixture(scope="module")
def baseline_report(repo: Path) -> str:
    return report(repo, "baseline")


def table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the markdown table under ``## heading``, keyed by column name."""
    section = markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip().strip("|") for line in section.splitlines() if line.startswith("|")]
    header, *rows = ([cell.strip() for cell in line.split("|")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]  # rows[0]: |---|---|


def metrics_at(repo: Path, rev: str) -> dict[str, float]:
    return json.loads(run("git", "show", f"{rev}:reports/metrics.json", cwd=repo).stdout)


def images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)


def verdict(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("**Verdict:**"))


def test_params_table_shows_the_changed_param_with_both_values(baseline_report: str) -> None:
    assert table(baseline_report, "Params") == [
        {"Path": "params.yaml", "Param": "train.epochs", "baseline": "4", "workspace": "5"}
    ]


def test_metrics_table_holds_the_values_of_both_metrics_files(repo: Path, baseline_report: str) -> None:
    rows = {row["Metric"]: row for row in table(baseline_report, "Metrics")}
    old, new = metrics_at(repo, "baseline"), metrics_at(repo, "HEAD")
    changed = [name for name in new if new[name] != old[name]]
    assert "test_accuracy" in changed or "test_loss" in changed
    for name in changed:
        assert rows[name]["Path"] == "reports/metrics.json"
        assert float(rows[name]["baseline"]) == pytest.approx(old[name], abs=1e-5)
        assert float(rows[name]["workspace"]) == pytest.approx(new[name], abs=1e-5)
    assert {"train_loss", "val_loss"} <= rows.keys()  # train_metrics.json is diffed too


def test_figures_are_valid_pngs_linked_by_relative_path(repo: Path, baseline_report: str) -> None:
    linked = images(baseline_report)
    assert linked == [
        "report/training_curves.png",
        "report/confusion_base.png",
        "report/confusion_workspace.png",
    ]
    for link in linked:
        path = repo / "reports" / link
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.load()
            assert image.width > 100
            assert image.height > 100


@contextlib.contextmanager
def gate_thresholds(repo: Path, min_test_accuracy: float) -> Iterator[None]:
    """params.yaml with these gate thresholds inside the block."""
    params = (repo / "params.yaml").read_text()
    update_params(repo, {"gate": {"min_test_accuracy": min_test_accuracy, "min_test_macro_f1": 0.0}})
    try:
        yield
    finally:
        (repo / "params.yaml").write_text(params)


@pytest.mark.parametrize(("minimum", "passes"), [(0.0, True), (0.999, False)])
def test_verdict_gives_the_headline_change_and_the_gates_decision(
    repo: Path, minimum: float, passes: bool
) -> None:
    with gate_thresholds(repo, minimum):
        markdown = report(repo, "baseline")
        gate_status = run("mlpipe", "gate", cwd=repo, check=False).returncode
    old, new = metrics_at(repo, "baseline")["test_accuracy"], metrics_at(repo, "HEAD")["test_accuracy"]
    assert verdict(markdown) == (
        f"**Verdict:** test_accuracy {old:.4f} → {new:.4f} ({new - old:+.4f}) · "
        f"gate {'✅ passes' if passes else '❌ fails'}"
    )
    assert gate_status == (0 if passes else 1)
    assert f"{'✅' if passes else '❌'} test_accuracy {new:.4f}" in markdown
    assert "no `champion` in the model registry" in markdown


def test_after_a_promotion_in_the_local_store_the_report_compares_with_the_champion(repo: Path) -> None:
    from mlflow import MlflowClient

    registry = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    with gate_thresholds(repo, 0.0):
        run("mlpipe", "gate", "--promote", cwd=repo)
        try:
            markdown = report(repo, "baseline")
        finally:
            champion = registry.get_registered_model("mlpipe-classifier").aliases["champion"]
            registry.delete_registered_model_alias("mlpipe-classifier", "champion")
    assert champion == 2  # the version registered by HEAD's `dvc repro`
    new = metrics_at(repo, "HEAD")["test_accuracy"]
    assert f"- ✅ test_accuracy {new:.4f} vs champion v2 {new:.4f}: +0.0000 (allowed drop 0.005)" in markdown


def empty_commit(repo: Path) -> str:
    """A commit with nothing in it: a repository before the pipeline existed."""
    empty_tree = run("git", "hash-object", "-t", "tree", "/dev/null", cwd=repo).stdout.strip()
    return run("git", "commit-tree", empty_tree, "-m", "empty", cwd=repo).stdout.strip()


def commit_without_reports(repo: Path, tmp_path: Path) -> str:
    """HEAD's tree minus reports/: the pipeline is there, its results are not yet."""
    index = {"GIT_INDEX_FILE": str(tmp_path / "index")}
    run("git", "read-tree", "HEAD", cwd=repo, env=index)
    run("git", "rm", "-r", "-q", "--cached", "reports", cwd=repo, env=index)
    tree = run("git", "write-tree", cwd=repo, env=index).stdout.strip()
    return run("git", "commit-tree", tree, "-m", "pipeline without results", cwd=repo).stdout.strip()


@pytest.fixture(params=["empty", "without-reports"])
def first_base(request: pytest.FixtureRequest, repo: Path, tmp_path: Path) -> Iterator[str]:
    yield empty_commit(repo) if request.param == "empty" else commit_without_reports(repo, tmp_path)


def test_first_merge_request_says_there_is_no_baseline(repo: Path, first_base: str) -> None:
    markdown = report(repo, first_base)
    new = metrics_at(repo, "HEAD")
    assert verdict(markdown).startswith(
        f"**Verdict:** test_accuracy {new['test_accuracy']:.4f} (no baseline: `{first_base}` has no "
        "reports/metrics.json yet"
    )
    rows = {row["Metric"]: row for row in table(markdown, "Metrics")}
    assert rows["test_accuracy"][first_base] == "-"
    assert float(rows["test_accuracy"]["workspace"]) == pytest.approx(new["test_accuracy"], abs=1e-5)
    assert images(markdown) == ["report/training_curves.png", "report/confusion_workspace.png"]
    for link in images(markdown):
        assert (repo / "reports" / link).read_bytes()[:8] == PNG_SIGNATURE
    assert not (repo / "reports/report/confusion_base.png").exists(), "a stale figure was left behind"


def test_an_unknown_base_is_one_clear_error(repo: Path) -> None:
    result = run("mlpipe", "report", "--base", "origin/no-such-branch", cwd=repo, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mlpipe: error: unknown git revision 'origin/no-such-branch'; fetch it first "
        "(e.g. `git fetch origin main`) and pass it with --base"
    )
