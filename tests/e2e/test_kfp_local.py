"""`mlpipe kfp run --local`: the compiled pipeline on KFP's subprocess runner, in a throwaway
copy of the project; each task runs its DVC stage, so DVC decides what is up to date."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_PARAMS, make_project, require, run

pytestmark = pytest.mark.slow

OUTPUT_DIRS = ("data/prepared", "models", "reports")
STAGES = ("prepare", "train", "evaluate", "package")


@pytest.fixture(autouse=True)
def _kfp() -> None:
    require(find_spec("kfp") is not None, "the kfp SDK (the `kfp` extra)")


def layout(project: Path) -> list[str]:
    """Every file the pipeline wrote, relative to the project."""
    return sorted(
        file.relative_to(project).as_posix()
        for directory in OUTPUT_DIRS
        for file in (project / directory).rglob("*")
        if file.is_file() and file.name != ".gitignore"
    )


def locked_stages(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


@pytest.fixture(scope="module")
def local_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("kfp-local") / "project")
    run("mlpipe", "kfp", "run", "--local", cwd=project)
    return project


def test_a_local_run_writes_what_dvc_repro_writes(local_project: Path, built_project: Path) -> None:
    assert layout(local_project) == layout(built_project)
    assert (local_project / "reports/metrics.json").read_bytes() == (
        built_project / "reports/metrics.json"
    ).read_bytes()
    # the same md5 for every dependency and output of every stage: the same results, recorded alike
    assert locked_stages(local_project) == locked_stages(built_project)
    assert list(locked_stages(local_project)) == list(STAGES)


def test_a_second_local_run_reruns_nothing(local_project: Path) -> None:
    out = run("mlpipe", "kfp", "run", "--local", cwd=local_project).stdout
    assert "Running stage" not in out
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert run("dvc", "status", "--quiet", cwd=local_project).returncode == 0
    # KFP's bookkeeping is kept outside the project: the checkout stays clean but for the outputs
    assert (
        run("git", "status", "--porcelain", "--untracked-files=all", cwd=local_project).stdout.count("??")
        == 0
    )


def test_a_failing_stage_fails_the_run_with_one_line_naming_it(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {**TINY_PARAMS, "data": {"val_fraction": 2}})
    result = run("mlpipe", "kfp", "run", "--local", cwd=project, check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("mlpipe: error:")]
    assert line.startswith(f"mlpipe: error: kfp local run in {project.resolve()}: ")
    assert line.startswith(f"mlpipe: error: kfp local run in {project.resolve()}: stage prepare failed; ")
    assert "\x1b[" not in line
    assert not (project / "data/prepared/schema.json").exists()
