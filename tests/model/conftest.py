"""A package built in-process: the stages' own functions on tiny params, in a temporary project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlpipe.core.params import parse_params
from mlpipe.ml import evaluate, package, prepare, train
from tests.conftest import TINY_PARAMS, TINY_TABLE_PARAMS


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test-fast`), one worker runs every test here: it builds the
    package once while the other worker runs the unit tests."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("built_project"))


def _build(project: Path, raw_params: dict) -> Path:
    params = parse_params(raw_params)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(project)
        for name in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
            env.delenv(name)
        for stage in (prepare, train, evaluate, package):
            stage.run(params)
    return project


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory after prepare → train → evaluate → package on tiny params, with the model
    registered as @candidate in its own MLflow store (mlruns.db); shared: do not modify it."""
    return _build(tmp_path_factory.mktemp("packaged"), TINY_PARAMS)


@pytest.fixture(scope="session")
def built_table_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same on the bundled table (palmerpenguins, TINY_TABLE_PARAMS): data/prepared/ holds
    the table's CSV splits, models/package/ a table package; shared: do not modify it."""
    return _build(tmp_path_factory.mktemp("table-packaged"), TINY_TABLE_PARAMS)
