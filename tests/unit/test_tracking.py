"""Tracking through an explicit client: a run records what a stage gives it and sets no global
MLflow state; only `Run.active` makes it MLflow's active run, for its block alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlpipe.tracking import runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project root with its embedded SQLite store, MLFLOW_TRACKING_URI unset."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("DVC_ROOT", str(root))
        yield root


def no_global_mlflow_state() -> bool:
    import mlflow

    return not mlflow.tracking.is_tracking_uri_set() and mlflow.active_run() is None


def test_a_run_records_through_the_client_and_sets_no_global_state(store: Path, tmp_path: Path) -> None:
    client = runs.client()
    artifact = tmp_path / "staged-17.csv"
    artifact.write_text("epoch\n1\n")
    with runs.run(client, run_name="train-test", tags={"mlpipe.git_commit": "abc"}) as run:
        assert no_global_mlflow_state()
        run.log_params({"train.lr": 0.003})
        run.log_metrics({"val_accuracy": 0.5}, step=2)
        run.set_tags({"mlpipe.device": "cpu"})
        run.log_artifact(artifact, "train", "train_history.csv")
    assert no_global_mlflow_state()
    recorded = client.get_run(run.run_id)
    assert recorded.info.status == "FINISHED"
    assert recorded.info.run_name == "train-test"
    assert recorded.data.params == {"train.lr": "0.003"}
    assert recorded.data.tags["mlpipe.git_commit"] == "abc"
    assert recorded.data.tags["mlpipe.device"] == "cpu"
    assert "mlflow.user" in recorded.data.tags  # MLflow's own context tags, as its fluent API sets
    assert [m.step for m in client.get_metric_history(run.run_id, "val_accuracy")] == [2]
    assert [a.path for a in client.list_artifacts(run.run_id, "train")] == ["train/train_history.csv"]


def test_a_run_whose_block_fails_is_marked_failed_and_the_error_passes(store: Path) -> None:
    client = runs.client()
    with pytest.raises(ValueError, match="broken"), runs.run(client, run_name="fails") as run:
        raise ValueError("broken")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_active_makes_the_run_mlflows_active_run_for_its_block_only(store: Path) -> None:
    import mlflow

    client = runs.client()
    with runs.run(client, run_name="model-logging") as run:
        with run.active():
            assert mlflow.active_run().info.run_id == run.run_id
            assert mlflow.get_tracking_uri() == client.tracking_uri
        assert no_global_mlflow_state()
    assert client.get_run(run.run_id).info.status == "FINISHED"
