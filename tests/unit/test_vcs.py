"""The one runner for git and DVC: which DVC runs, and what a failure says."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import pytest

from mlpipe.core import vcs


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    vcs.git("init", "-q", cwd=tmp_path)
    return tmp_path


def test_a_failed_git_command_is_one_line_naming_it_and_what_git_printed(repository: Path) -> None:
    with pytest.raises(vcs.CommandError) as raised:
        vcs.git("rev-parse", "--verify", "no-such-rev", cwd=repository)
    assert str(raised.value).startswith("`git rev-parse --verify no-such-rev` failed (exit 128): fatal: ")
    assert "\n" not in str(raised.value)
    assert raised.value.returncode == 128


def test_a_failure_that_answers_a_question_reads_none(repository: Path) -> None:
    assert vcs.git_or_none("rev-parse", "--is-inside-work-tree", cwd=repository) == "true"
    assert vcs.git_or_none("rev-parse", "--verify", "--quiet", "HEAD", cwd=repository) is None


def test_a_command_past_its_time_limit_is_named_with_the_limit(repository: Path) -> None:
    with pytest.raises(vcs.CommandError, match=r"^`git -c 'alias.pause=!sleep 2' pause` took over 0.1 s$"):
        vcs.git("-c", "alias.pause=!sleep 2", "pause", cwd=repository, timeout=0.1)


def test_a_command_that_cannot_start_is_named_with_why(tmp_path: Path) -> None:
    with pytest.raises(vcs.CommandError, match=r"^cannot run `git status` \(.*No such file or directory"):
        vcs.git("status", cwd=tmp_path / "absent")


def test_dvc_is_this_environments_even_when_path_has_none(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "DVC_NO_ANALYTICS": "1"}
    assert vcs.dvc("--version", cwd=tmp_path, env=env) == version("dvc")


def test_a_failed_dvc_command_is_named_as_the_user_would_type_it(tmp_path: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    with pytest.raises(vcs.CommandError) as raised:
        vcs.dvc("exp", "remove", "trial-1", cwd=tmp_path, env=env)
    assert str(raised.value).startswith("`dvc exp remove trial-1` failed (exit ")
    assert "ERROR: you are not inside of a DVC repository" in str(raised.value)
