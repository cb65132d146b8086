"""Lineage: commit, branch, dirty flag and the data hash DVC recorded."""

from pathlib import Path

import pytest

from mlpipe.core import lineage
from tests.conftest import run

INPUTS = ["params.yaml"]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run("git", "init", "-q", "-b", "feature", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("train: {}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    run("git", "add", "-A", cwd=tmp_path)
    run("git", "commit", "-q", "-m", "init", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    for variable in ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_BRANCH", "CI_COMMIT_REF_NAME"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def test_clean_checkout_reports_its_commit_and_branch(repo: Path) -> None:
    assert lineage.git_commit() == run("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert lineage.git_branch() == "feature"
    assert lineage.git_dirty(INPUTS) is False


def test_ci_names_the_branch_of_a_detached_checkout(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("git", "checkout", "-q", "--detach", cwd=repo)
    assert lineage.git_branch() == ""
    monkeypatch.setenv("CI_COMMIT_BRANCH", "main")
    assert lineage.git_branch() == "main"


def test_changed_params_make_the_tree_dirty(repo: Path) -> None:
    (repo / "params.yaml").write_text("train: {lr: 0.1}\n")
    assert lineage.git_dirty(INPUTS) is True


def test_dvc_lock_updates_do_not_make_the_tree_dirty(repo: Path) -> None:
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert lineage.git_dirty(INPUTS) is False


def test_outside_git_the_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert lineage.git_commit() == "unknown"


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


def test_the_git_commit_is_in_no_output_of_the_pipeline() -> None:
    """Outputs hold only their inputs' hashes: the same inputs on another commit reuse them."""
    assert set(lineage.Inputs("p", "d").to_dict()) == {"params_hash", "data_hash"}


def test_pipeline_inputs_are_templated_from_params_and_hold_the_dvc_file_of_tracked_data(
    tmp_path: Path,
) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    deps: ['${data.source}', src/prepare.py]\n    outs: [data/prepared]\n"
        "  train:\n    deps: [data/prepared]\n"
    )
    (tmp_path / "params.yaml").write_text("data: {source: data/raw/shapes}\n")
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/shapes.dvc").write_text("outs:\n- path: shapes\n")
    assert lineage.pipeline_inputs(tmp_path / "dvc.yaml") == [
        "data/raw/shapes",
        "data/raw/shapes.dvc",
        "dvc.yaml",
        "params.yaml",
        "src/prepare.py",
    ]
