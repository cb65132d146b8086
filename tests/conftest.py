"""Shared fixtures: throwaway copies of this project as real git + DVC repositories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlpipe.core.paths import NO_LOCAL_SOURCE
from mlpipe.workflows.verify import checkout_files

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent

MODEL_NAME = "mlpipe-classifier"
# All of the data section: scikit-learn's digits, which ship with it (offline), whatever dataset
# the project itself trains on; small enough that the whole pipeline runs in seconds.
TINY_DATA: dict[str, Any] = {
    "dataset": "digits",
    "source": NO_LOCAL_SOURCE.as_posix(),
    "image_size": None,
    "channels": None,
    "classes": None,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "max_samples": 600,
    "seed": 42,
}
# What every copy of the project runs on, whatever its own params.yaml selects: the tests check
# the pipeline, not the project's current choices (its dataset, its model's name).
COPY_PARAMS: dict[str, dict[str, Any]] = {
    "data": TINY_DATA,
    "package": {"model_name": MODEL_NAME, "register_model": True},
}
# Small enough that the whole pipeline runs in seconds, large enough to learn something.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "data": TINY_DATA,
    "model": {"width": 8, "hidden": 32},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.01},
    "evaluate": {"misclassified_examples": 8},
}

# A table: palmerpenguins' CSV, which ships with the package (offline): 344 rows, 3 species,
# categories with gaps and numbers with gaps. Every key of the data section, as TINY_DATA.
TINY_TABLE_DATA: dict[str, Any] = TINY_DATA | {
    "dataset": "penguins",
    "max_samples": None,
    "target": None,
    "features": None,
    "columns": None,
}
# The MLP on the table: seconds to train, well above chance.
TINY_TABLE_PARAMS: dict[str, dict[str, Any]] = {
    "data": TINY_TABLE_DATA,
    "model": {"width": None, "depth": 1, "hidden": 16, "dropout": 0.0},
    "train": {"epochs": 6, "batch_size": 32, "lr": 0.01},
    "evaluate": {"misclassified_examples": 8},
}


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for commands under test: our venv first, no outside tracking server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))}
    env.update(
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="mlpipe tests",
        GIT_AUTHOR_EMAIL="tests@mlpipe.invalid",
        GIT_COMMITTER_NAME="mlpipe tests",
        GIT_COMMITTER_EMAIL="tests@mlpipe.invalid",
        DVC_NO_ANALYTICS="1",
        PYTHONHASHSEED="0",
    )
    env.update(extra or {})
    return env


def run(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails unexpectedly."""
    result = subprocess.run(
        args, cwd=cwd, env=subprocess_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def project_files(root: Path = REPO_ROOT) -> list[str]:
    """What a clone of the repository at ``root`` contains: tracked files plus new, unignored ones."""
    return checkout_files(root)


def update_params(project: Path, overrides: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge ``overrides`` into the project's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(
    dest: Path, overrides: Mapping[str, Mapping[str, Any]] = TINY_PARAMS, root: Path = REPO_ROOT
) -> Path:
    """A fresh git repository holding the project at ``root`` on COPY_PARAMS, with ``overrides``
    applied and committed."""
    for name in project_files(root):
        # A `dvc add`-ed dataset is gitignored, so a copy would hold its `.dvc` file without the
        # data, which DVC fails to reproduce; the copy trains on COPY_PARAMS' dataset anyway.
        if name.endswith(".dvc"):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    update_params(dest, COPY_PARAMS)
    update_params(dest, overrides)
    run("git", "init", "-q", "-b", "main", cwd=dest)
    run("git", "add", "-A", cwd=dest)
    run("git", "commit", "-q", "-m", "project under test", cwd=dest)
    return dest


@pytest.fixture(autouse=True)
def _mlflow_global_state_reset() -> Iterator[None]:
    """A test that points MLflow's process-wide tracking URI somewhere (to load a pyfunc by its
    `models:/` URI) leaves it unset again, so later tests start from a clean process state."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.tracking.is_tracking_uri_set():
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on tiny params after one `dvc repro` (shared: do not modify it)."""
    project = make_project(tmp_path_factory.mktemp("built") / "project")
    run("dvc", "repro", cwd=project)
    return project


def require(available: bool, what: str) -> None:
    """Skip a test whose outside tool is missing, except in CI (MLPIPE_REQUIRE_ALL_TESTS=1) where
    every test must run: there a missing tool is a failure, not a silent skip."""
    if available:
        return
    if os.environ.get("MLPIPE_REQUIRE_ALL_TESTS") == "1":
        pytest.fail(f"{what} is required (MLPIPE_REQUIRE_ALL_TESTS=1); install it as .ci/run does")
    pytest.skip(f"{what} is not installed")
