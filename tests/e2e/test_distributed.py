"""Data-parallel training with the same code: real torchrun (gloo, CPU) and real `dvc repro`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow

TWO_RANKS = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "nproc_per_node": 2}}
# Tiny params on 2 ranks reach ~0.9 on val; far above chance (0.1) and below what one rank gets.
VAL_ACCURACY_FLOOR = 0.7
CPU_ENV = {"GLOO_SOCKET_IFNAME": "lo"}


def written(directory: Path) -> list[str]:
    """What the run left in a directory, beside the project's own .gitignore."""
    return sorted(p.name for p in directory.iterdir() if p.name != ".gitignore")


def runs(project: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def torchrun_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data, then `torchrun --standalone --nproc_per_node=2 -m mlpipe train`."""
    project = make_project(tmp_path_factory.mktemp("torchrun") / "project", TWO_RANKS)
    run("dvc", "repro", "prepare", cwd=project)
    run("torchrun", "--standalone", "--nproc_per_node=2", "-m", "mlpipe", "train", cwd=project, env=CPU_ENV)
    return project


@pytest.fixture(scope="module")
def repro_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dvc repro train` with train.nproc_per_node: 2 (mlpipe launches torchrun itself)."""
    project = make_project(tmp_path_factory.mktemp("repro") / "project", TWO_RANKS)
    run("dvc", "repro", "train", cwd=project)
    return project


def test_two_ranks_write_one_set_of_outputs(torchrun_project: Path) -> None:
    assert written(torchrun_project / "models") == ["model.pt"]  # no rank's staging left behind
    history = (torchrun_project / "reports/train_history.csv").read_text().splitlines()
    assert len(history) == 1 + TINY_PARAMS["train"]["epochs"]
    metrics = json.loads((torchrun_project / "reports/train_metrics.json").read_text())
    assert metrics["val_accuracy"] >= VAL_ACCURACY_FLOOR


def test_two_ranks_log_one_mlflow_run_tagged_with_the_world(torchrun_project: Path) -> None:
    (only,) = runs(torchrun_project)
    assert only.data.tags["mlpipe.world_size"] == "2"
    assert only.data.tags["mlpipe.backend"] == "gloo"
    assert only.data.params["train.nproc_per_node"] == "2"
    assert only.info.status == "FINISHED"


def test_dvc_repro_launches_the_ranks_and_two_runs_give_identical_bytes(
    torchrun_project: Path, repro_project: Path
) -> None:
    (only,) = runs(repro_project)
    assert only.data.tags["mlpipe.world_size"] == "2"
    for output in ("models/model.pt", "reports/train_history.csv", "reports/train_metrics.json"):
        assert (repro_project / output).read_bytes() == (torchrun_project / output).read_bytes(), output
    assert json.loads(run("dvc", "status", "train", "--json", cwd=repro_project).stdout) == {}
