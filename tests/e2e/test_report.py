"""`mlpipe report` in a real git + DVC repository: two commits that differ in `train.epochs`,
and one on another test split (`data.seed`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats

from tests.conftest import make_project, run, update_params

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Commit `baseline` holds the results of `dvc repro`; HEAD the results with one more epoch;
    `other-split`, before both, results on another split (its model is not registered)."""
    project = make_project(tmp_path_factory.mktemp("report") / "project")
    params = (project / "params.yaml").read_text()
    update_params(
        project, {"data": {"seed": 7}, "train": {"epochs": 1}, "package": {"register_model": False}}
    )
    run("dvc", "repro", cwd=project)
    run("git", "commit", "-qam", "another split", cwd=project)
    run("git", "tag", "other-split", cwd=project)
    (project / "params.yaml").write_text(params)
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


def significance(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("**Signal or noise:**"))


def predictions_at(repo: Path, rev: str) -> list[dict[str, str]]:
    text = run("git", "show", f"{rev}:reports/predictions.csv", cwd=repo).stdout
    return list(csv.DictReader(io.StringIO(text)))


def changed(old: list[dict[str, str]], new: list[dict[str, str]]) -> tuple[int, int]:
    """How many paired examples went right → wrong, and wrong → right."""
    pairs = [
        (o["actual"] == o["predicted"], n["actual"] == n["predicted"]) for o, n in zip(old, new, strict=True)
    ]
    return sum(o and not n for o, n in pairs), sum(n and not o for o, n in pairs)


def shown(p_value: float) -> str:
    """A p-value as the report writes it: four decimals, or a bound below them."""
    return f"p = {p_value:.4f}" if p_value >= 1e-4 else "p < 0.0001"


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


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
    old, new = predictions_at(repo, "baseline"), predictions_at(repo, "HEAD")
    now_wrong, now_right = changed(old, new)
    assert linked == [
        "report/training_curves.png",
        "report/confusion_base.png",
        "report/confusion_workspace.png",
        *(["report/now_wrong.png"] if now_wrong else []),
        *(["report/now_right.png"] if now_right else []),
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


def first_base_kind(repo: Path, rev: str) -> str:
    files = run("git", "ls-tree", "--name-only", rev, cwd=repo).stdout.split()
    return "empty" if not files else "without-reports"


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
    assert significance(markdown) == (
        f"**Signal or noise:** no reports/predictions.csv on `{first_base}` to compare with."
    )
    cost = {row[""]: row for row in table(markdown, "Cost")}
    assert float(cost["latency, 1 image (ms, median)"]["workspace"]) > 0
    if first_base_kind(repo, first_base) == "empty":
        assert cost["parameters"][first_base] == "-"
        assert f"The package of `{first_base}` is unavailable (" in markdown


def test_an_unknown_base_is_one_clear_error(repo: Path) -> None:
    result = run("mlpipe", "report", "--base", "origin/no-such-branch", cwd=repo, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mlpipe: error: unknown git revision 'origin/no-such-branch'; fetch it first "
        "(e.g. `git fetch origin main`) and pass it with --base"
    )


def test_the_change_is_judged_by_mcnemars_exact_test_and_a_paired_bootstrap(
    repo: Path, baseline_report: str
) -> None:
    old, new = predictions_at(repo, "baseline"), predictions_at(repo, "HEAD")
    now_wrong, now_right = changed(old, new)
    assert now_wrong + now_right > 0, "the two models should disagree on some test examples"
    p_value = stats.binomtest(now_right, now_wrong + now_right).pvalue
    correct = {
        side: np.array([row["actual"] == row["predicted"] for row in rows], dtype=float)
        for side, rows in (("old", old), ("new", new))
    }
    diff = correct["new"] - correct["old"]
    reference = stats.bootstrap(
        (diff,), np.mean, method="percentile", n_resamples=20_000, rng=np.random.default_rng(1)
    ).confidence_interval
    line = significance(baseline_report)
    word = "significant at the 5 % level" if p_value < 0.05 else "within noise"
    assert f"the change ({diff.mean():+.4f}) is {word} ({shown(p_value)}): McNemar's exact test" in line
    assert f"({now_wrong} right → wrong, {now_right} wrong → right)" in line
    low, high = numbers(line.split("95 % interval for the change", 1)[1])[:2]
    assert low == pytest.approx(reference.low, abs=2.5 / len(diff) + 1e-4)
    assert high == pytest.approx(reference.high, abs=2.5 / len(diff) + 1e-4)
    assert "(paired bootstrap, 10,000 resamples)" in line


def test_the_examples_that_changed_verdict_are_drawn_from_the_test_split(
    repo: Path, baseline_report: str
) -> None:
    now_wrong, now_right = changed(predictions_at(repo, "baseline"), predictions_at(repo, "HEAD"))
    section = baseline_report.split("\n## Examples that changed verdict\n", 1)[1]
    assert section.strip().startswith(f"{now_wrong} right → wrong, {now_right} wrong → right.")
    # the files themselves are checked as soon as they are written (test_figures_...)
    linked = images(section)
    assert ("report/now_wrong.png" in linked) == (now_wrong > 0)
    assert ("report/now_right.png" in linked) == (now_right > 0)


def test_a_model_compared_with_itself_is_within_noise(repo: Path) -> None:
    markdown = report(repo, "HEAD")
    assert significance(markdown).startswith(
        "**Signal or noise:** the change (+0.0000) is within noise (p = 1.0000): McNemar's exact test "
        "on the 0 test examples the models disagree on"
    )
    assert "0 right → wrong, 0 wrong → right." in markdown


def wilson(correct: int, total: int) -> tuple[float, float]:
    ci = stats.binomtest(correct, total).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def test_another_split_cannot_be_paired_and_gets_the_unpaired_interval(repo: Path) -> None:
    markdown = report(repo, "other-split")
    line = significance(markdown)
    assert line.startswith(
        "**Signal or noise:** a paired comparison is not possible: the prepared data differ (md5:"
    )
    assert "data or split params changed" in line
    assert "(unpaired, Newcombe's score interval)" in line
    counts = {}
    for rev in ("other-split", "HEAD"):
        rows = predictions_at(repo, rev)
        counts[rev] = (sum(r["actual"] == r["predicted"] for r in rows), len(rows))
    (k_old, n_old), (k_new, n_new) = counts["other-split"], counts["HEAD"]
    p_old, p_new = k_old / n_old, k_new / n_new
    (old_low, old_high), (new_low, new_high) = wilson(k_old, n_old), wilson(k_new, n_new)
    expected_low = p_new - p_old - np.hypot(p_new - new_low, old_high - p_old)
    expected_high = p_new - p_old + np.hypot(new_high - p_new, p_old - old_low)
    assert f"[{expected_low:+.4f}, {expected_high:+.4f}]" in line
    word = "significant at the 5 % level" if expected_low > 0 or expected_high < 0 else "within noise"
    assert f"({p_new - p_old:+.4f}) is {word}" in line
    assert "Not shown: the two sides' test examples cannot be paired." in markdown


def per_class_at(repo: Path, rev: str) -> dict[str, dict[str, str]]:
    text = run("git", "show", f"{rev}:reports/per_class.csv", cwd=repo).stdout
    return {row["class"]: row for row in csv.DictReader(io.StringIO(text))}


def test_per_class_scores_old_and_new_with_the_largest_f1_change_first(
    repo: Path, baseline_report: str
) -> None:
    old, new = per_class_at(repo, "baseline"), per_class_at(repo, "HEAD")
    rows = table(baseline_report, "Per-class changes (test split)")
    assert sorted(row["Class"] for row in rows) == sorted(new)
    for row in rows:
        name = row["Class"]
        for column, score in (("Precision", "precision"), ("Recall", "recall"), ("F1", "f1")):
            assert row[column] == f"{float(old[name][score]):.4f} → {float(new[name][score]):.4f}"
    moves = [abs(float(new[row["Class"]]["f1"]) - float(old[row["Class"]]["f1"])) for row in rows]
    assert moves == sorted(moves, reverse=True)


def locked_size(repo: Path, rev: str, out: str) -> int:
    lock = yaml.safe_load(run("git", "show", f"{rev}:dvc.lock", cwd=repo).stdout)
    return next(
        o["size"] for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == out
    )


def test_cost_table_measures_both_packages(repo: Path, baseline_report: str) -> None:
    import onnx

    rows = {row[""]: row for row in table(baseline_report, "Cost")}
    size = rows["package size (kB)"]
    for side, rev in (("baseline", "baseline"), ("workspace", "HEAD")):
        assert float(size[side].replace(",", "")) == pytest.approx(
            locked_size(repo, rev, "models/package") / 1000, abs=0.051
        )
    graph = onnx.load(repo / "models/package/model.onnx").graph
    parameters = sum(int(np.prod(init.dims)) for init in graph.initializer)
    assert rows["parameters"]["workspace"] == f"{parameters:,}"
    assert rows["parameters"]["baseline"] == f"{parameters:,}"  # same architecture, one more epoch
    for name in ("latency, 1 image (ms, median)", "latency, batch of 256 (ms, median)"):
        old, new = float(rows[name]["baseline"]), float(rows[name]["workspace"])
        assert old > 0 and new > 0
        # the ratio is of the unrounded figures; the cells hold them to three decimals (±0.0005)
        # and the ratio to two (±0.005): it lies within what the rounded cells allow
        ratio = float(rows[name]["Ratio"].rstrip("×"))
        assert (new - 0.0005) / (old + 0.0005) - 0.005 <= ratio <= (new + 0.0005) / (old - 0.0005) + 0.005


def test_the_significance_gate_compares_with_the_champions_logged_predictions(repo: Path) -> None:
    from mlflow import MlflowClient

    registry = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    params = (repo / "params.yaml").read_text()
    update_params(
        repo,
        {"gate": {"min_test_accuracy": 0.0, "min_test_macro_f1": 0.0, "regression_test": "significant"}},
    )
    registry.set_registered_model_alias("mlpipe-classifier", "champion", "1")  # the baseline's version
    try:
        result = run("mlpipe", "gate", cwd=repo, check=False)
    finally:
        registry.delete_registered_model_alias("mlpipe-classifier", "champion")
        (repo / "params.yaml").write_text(params)
    old, new = predictions_at(repo, "baseline"), predictions_at(repo, "HEAD")
    now_wrong, now_right = changed(old, new)
    p_value = stats.binomtest(now_right, now_wrong + now_right).pvalue
    old_accuracy, new_accuracy = (
        metrics_at(repo, "baseline")["test_accuracy"],
        metrics_at(repo, "HEAD")["test_accuracy"],
    )
    regression = p_value < 0.05 and new_accuracy < old_accuracy
    assert result.returncode == (1 if regression else 0)
    outcome = "a significant drop" if regression else "no significant drop"
    change = new_accuracy - old_accuracy
    assert (
        f"test_accuracy {new_accuracy:.4f} vs champion v1 {old_accuracy:.4f}: {change:+.4f}, "
        f"{outcome} (McNemar {shown(p_value)})"
    ) in result.stdout + result.stderr
