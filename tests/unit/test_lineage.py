"""Lineage: commit, dirty flag and the data hash DVC recorded."""

from pathlib import Path

import pytest
import yaml

from mlpipe import lineage
from tests.conftest import REPO_ROOT, run

INPUTS = ["params.yaml"]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run("git", "init", "-q", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("train: {}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    run("git", "add", "-A", cwd=tmp_path)
    run("git", "commit", "-q", "-m", "init", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_clean_checkout_reports_its_commit(repo: Path) -> None:
    commit = run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert lineage.git_commit(INPUTS) == commit
    assert lineage.git_dirty(INPUTS) is False


def test_changed_params_make_the_tree_dirty(repo: Path) -> None:
    (repo / "params.yaml").write_text("train: {lr: 0.1}\n")
    assert lineage.git_dirty(INPUTS) is True


def test_dvc_lock_updates_do_not_make_the_tree_dirty(repo: Path) -> None:
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert lineage.git_dirty(INPUTS) is False


def test_commits_that_only_record_results_keep_the_inputs_commit(repo: Path) -> None:
    inputs_commit = lineage.git_commit(INPUTS)
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    run("git", "commit", "-qam", "record results", cwd=repo)
    assert lineage.git_commit(INPUTS) == inputs_commit
    assert run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip() != inputs_commit


def test_outside_git_the_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert lineage.git_commit(INPUTS) == "unknown"


def test_data_hash_comes_from_dvc_lock(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n      md5: 0123abcd.dir\n"
    )
    assert lineage.data_hash(Path("data/prepared"), lock) == "md5:0123abcd.dir"


def test_data_hash_falls_back_to_the_files_without_a_lock_entry(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "a.npy").write_bytes(b"a")
    first = lineage.data_hash(prepared, tmp_path / "dvc.lock")
    (prepared / "a.npy").write_bytes(b"b")
    second = lineage.data_hash(prepared, tmp_path / "dvc.lock")
    assert first.startswith("sha256:")
    assert first != second


def test_package_stage_depends_on_every_input_its_lineage_names() -> None:
    """Otherwise the recorded commit could change without the package being rebuilt."""
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    package_deps = set(pipeline["stages"]["package"]["deps"])
    inputs = set(lineage.pipeline_inputs(REPO_ROOT / "dvc.yaml"))
    assert "src/mlpipe/train.py" in inputs
    assert inputs <= package_deps
