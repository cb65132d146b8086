"""The pipeline against a real team tracking server: `mlflow server` with PostgreSQL as its
backend and artifacts in a real S3-compatible bucket (moto), all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness.servers import LOOPBACK, child_process, free_port, http_ok, s3_client, s3_keys

from tests.conftest import (
    MODEL_NAME,
    REPO_ROOT,
    TINY_PARAMS,
    make_project,
    run,
    subprocess_env,
    update_params,
)
from tests.e2e.conftest import TrackingServer
from tests.e2e.test_pipeline import assert_failed_cleanly_and_recovers, snapshot

pytestmark = pytest.mark.slow

# Failure tests: MLflow and boto3 would otherwise retry for minutes before giving up.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture(scope="module")
def tracked_project(tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy after `dvc repro` with MLFLOW_TRACKING_URI set to the server."""
    project = make_project(tmp_path_factory.mktemp("tracked") / "project")
    run("dvc", "repro", cwd=project, env=tracking_server.client_env)
    return project


@pytest.fixture
def client(tracking_server: TrackingServer) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_server.uri)


@pytest.fixture
def project_copy(tracked_project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tracked_project, tmp_path / "project", symlinks=True))


def runs(client: Any, filter_string: str = "") -> list[Any]:
    """The runs of the pipeline's experiment on the server."""
    return client.search_runs([client.get_experiment_by_name("mlpipe").experiment_id], filter_string)


def training_run(client: Any, project: Path) -> Any:
    """The MLflow run that trained ``project``'s checkpoint (tagged with its SHA-256)."""
    digest = hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()
    (found,) = runs(client, f"tags.`mlpipe.checkpoint_sha256` = '{digest}'")
    return found


def versions(client: Any) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name = '{MODEL_NAME}'"))


def test_run_records_params_epochs_and_lineage_on_the_server(
    tracked_project: Path, client: Any, tracking_server: TrackingServer
) -> None:
    tracked = training_run(client, tracked_project)
    manifest = json.loads((tracked_project / "models/package/package.json").read_text())
    assert tracked.info.status == "FINISHED"
    assert tracked.info.artifact_uri.startswith(f"s3://{tracking_server.bucket}/mlartifacts/")
    assert tracked.data.params["train.epochs"] == str(TINY_PARAMS["train"]["epochs"])
    head = run("git", "rev-parse", "HEAD", cwd=tracked_project).stdout.strip()
    assert tracked.data.tags["mlpipe.git_commit"] == head
    assert tracked.data.tags["mlpipe.data_hash"] == manifest["lineage"]["data_hash"]
    history = client.get_metric_history(tracked.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, TINY_PARAMS["train"]["epochs"] + 1))
    assert tracked.data.metrics["test_accuracy"] == manifest["metrics"]["test_accuracy"]


def test_run_artifacts_are_objects_in_the_bucket(
    tracked_project: Path, client: Any, tracking_server: TrackingServer
) -> None:
    tracked = training_run(client, tracked_project)
    prefix = tracked.info.artifact_uri.removeprefix(f"s3://{tracking_server.bucket}/") + "/"
    keys = {
        key.removeprefix(prefix)
        for key in s3_keys(tracking_server.s3_endpoint, tracking_server.bucket, prefix)
    }
    assert {
        "train/model.pt",
        "train/train_history.csv",
        "evaluate/metrics.json",
        "package/model.onnx",
    } <= keys
    for artifact, local in (
        ("package/model.onnx", "models/package/model.onnx"),
        ("train/model.pt", "models/model.pt"),
    ):
        stored = s3_client(tracking_server.s3_endpoint).get_object(
            Bucket=tracking_server.bucket, Key=prefix + artifact
        )
        assert stored["Body"].read() == (tracked_project / local).read_bytes()


def test_candidate_is_registered_and_loads_from_the_bucket_by_alias(
    tracked_project: Path, client: Any, tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    tracked = training_run(client, tracked_project)
    assert version.run_id == tracked.info.run_id
    assert version.tags["mlpipe.package_uri"] == tracked.info.artifact_uri + "/package"
    for name, value in tracking_server.client_env.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(tracking_server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@candidate")
    images = np.load(tracked_project / "data/prepared/test_images.npy")
    probabilities = np.asarray(model.predict(images)["probabilities"])
    classes = json.loads((tracked_project / "data/prepared/schema.json").read_text())["classes"]
    predictions = (tracked_project / "reports/predictions.csv").read_text().splitlines()[1:]
    assert [classes[i] for i in probabilities.argmax(1)] == [line.split(",")[1] for line in predictions]


def test_unreachable_artifact_store_stops_training_before_it_starts(
    project_copy: Path, client: Any, tracking_server: TrackingServer
) -> None:
    before, runs_before = snapshot(project_copy), len(runs(client))
    params = (project_copy / "params.yaml").read_text()
    update_params(project_copy, {"train": {"epochs": 2}})
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**tracking_server.client_env, **NO_RETRIES, "MLFLOW_S3_ENDPOINT_URL": closed}
    result = run("dvc", "repro", cwd=project_copy, env=env, check=False)
    assert result.returncode != 0
    assert f"mlpipe: error: MLflow artifact store s3://{tracking_server.bucket}/mlartifacts/" in result.stderr
    assert f"is unreachable at the S3 endpoint {closed}" in result.stderr
    assert "epoch 1" not in result.stderr
    assert len(runs(client)) == runs_before
    assert_failed_cleanly_and_recovers(project_copy, before, params, env=tracking_server.client_env)


@contextlib.contextmanager
def registry_refuses(database_uri: str, table: str) -> Iterator[None]:
    """Make the tracking server's database reject writes to one registry table (a trigger)."""
    import psycopg2

    connection = psycopg2.connect(database_uri)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION refuse_write() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'registry write refused by the test'; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse_write BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_write()"
            )
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS refuse_write ON {table}")
        connection.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("model_versions", "registering model 'mlpipe-classifier' failed at the MLflow tracking server"),
        ("registered_model_aliases", "; the version was deleted again"),
    ],
)
def test_registry_failure_leaves_the_registry_and_the_package_as_they_were(
    project_copy: Path, client: Any, tracking_server: TrackingServer, table: str, message: str
) -> None:
    before, versions_before = snapshot(project_copy), versions(client)
    params = (project_copy / "params.yaml").read_text()
    candidate = client.get_model_version_by_alias(MODEL_NAME, "candidate").version
    env = {**tracking_server.client_env, **NO_RETRIES}
    with registry_refuses(tracking_server.database_uri, table):
        result = run(
            "dvc", "repro", "--force", "--single-item", "package", cwd=project_copy, env=env, check=False
        )
    assert result.returncode != 0
    assert message in result.stderr
    assert tracking_server.uri in result.stderr
    assert "Traceback" not in result.stderr
    assert versions(client) == versions_before
    outputs = ("models/package/",)
    assert_failed_cleanly_and_recovers(project_copy, before, params, outputs, tracking_server.client_env)
    assert versions(client) == versions_before
    assert client.get_model_version_by_alias(MODEL_NAME, "candidate").version == candidate


def test_make_mlflow_server_on_one_box_keeps_runs_in_sqlite_and_artifacts_in_a_folder(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    port, artifacts = free_port(), tmp_path / "artifacts"
    command = [
        "make",
        "--no-print-directory",
        "--old-file=.venv/.setup-complete",  # the environment under test, not a reinstall
        "mlflow-server",
        f"MLFLOW_BACKEND_STORE_URI=sqlite:///{tmp_path / 'mlflow.db'}",
        f"MLFLOW_ARTIFACTS_DESTINATION={artifacts}",
        f"MLFLOW_PORT={port}",
        "MLFLOW_WORKERS=1",
    ]
    uri = f"http://{LOOPBACK}:{port}"
    with child_process(command, env=subprocess_env(), cwd=REPO_ROOT) as server:
        server.wait_until(lambda: http_ok(f"{uri}/health"), "make mlflow-server", timeout=120)
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("one-box")).info.run_id
        (tmp_path / "note.txt").write_text("kept by the server")
        client.log_artifact(run_id, str(tmp_path / "note.txt"), "notes")
        artifact_uri = client.get_run(run_id).info.artifact_uri
        assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    # clients reach the artifacts through the server, which keeps them in the folder
    assert artifact_uri.startswith("mlflow-artifacts:")
    (kept,) = artifacts.rglob("note.txt")
    assert kept.read_text() == "kept by the server"
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "RUNNING"
