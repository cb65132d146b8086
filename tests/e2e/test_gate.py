"""`mlpipe gate`, `rollback` and `model-uri` on real metrics files and a real team MLflow server
(PostgreSQL registry, S3 artifacts), as CI runs them with MLFLOW_TRACKING_URI set."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.servers import s3_client

from tests.conftest import TINY_PARAMS, make_project, run, update_params
from tests.e2e.conftest import TrackingServer

pytestmark = pytest.mark.slow

# A model and an experiment of their own: the server is shared with other tests.
MODEL = "gate-e2e"


@pytest.fixture(scope="module")
def server_env(tracking_server: TrackingServer) -> dict[str, str]:
    return {**tracking_server.client_env, "MLFLOW_EXPERIMENT_NAME": MODEL}


@pytest.fixture(scope="module")
def registry_project(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after `dvc repro` and a second `mlpipe package`: versions 1 and 2 of one model."""
    overrides = {**TINY_PARAMS, "package": {"model_name": MODEL}}
    project = make_project(tmp_path_factory.mktemp("gate") / "project", overrides)
    run("dvc", "repro", cwd=project, env=server_env)
    run("mlpipe", "package", cwd=project, env=server_env)
    return project


@pytest.fixture
def project(registry_project: Path) -> Iterator[Path]:
    """The shared project; params.yaml and the metrics are restored after each test."""
    kept = {name: (registry_project / name).read_bytes() for name in ("params.yaml", "reports/metrics.json")}
    yield registry_project
    for name, data in kept.items():
        (registry_project / name).write_bytes(data)


@pytest.fixture
def registry(server_env: dict[str, str]) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(server_env["MLFLOW_TRACKING_URI"])


def set_aliases(registry: Any, **versions: str | None) -> None:
    """Arrange the registry: point each alias at a version, or remove it (None)."""
    for alias, version in versions.items():
        if version is None:
            registry.delete_registered_model_alias(MODEL, alias)
        else:
            registry.set_registered_model_alias(MODEL, alias, version)


def aliases(registry: Any) -> dict[str, str]:
    return {alias: str(v) for alias, v in registry.get_registered_model(MODEL).aliases.items()}


def metric_values(project: Path) -> dict[str, float]:
    return json.loads((project / "reports/metrics.json").read_text())


def set_gate(project: Path, **thresholds: float) -> None:
    update_params(project, {"gate": thresholds})


def mlpipe(project: Path, env: dict[str, str], *args: str, ok: bool = True) -> str:
    """Run an `mlpipe` command; return its stdout if it succeeded, else its error (stderr's last line)."""
    result = run("mlpipe", *args, cwd=project, env=env, check=False)
    assert result.returncode == (0 if ok else 1), result.stderr
    return result.stdout if ok else result.stderr.strip().splitlines()[-1]


def write_metrics(directory: Path, accuracy: float, macro_f1: float) -> None:
    (directory / "reports").mkdir(parents=True, exist_ok=True)
    (directory / "reports/metrics.json").write_text(
        json.dumps({"test_accuracy": accuracy, "test_macro_f1": macro_f1, "test_loss": 0.1})
    )


@pytest.mark.parametrize(
    ("accuracy", "macro_f1", "passes"),
    [(0.95, 0.95, True), (0.9499, 0.99, False), (0.99, 0.9499, False)],
)
def test_without_a_registry_the_gate_judges_the_metrics_file_against_the_thresholds(
    tmp_path: Path, accuracy: float, macro_f1: float, passes: bool
) -> None:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"gate": {"min_test_accuracy": 0.95, "min_test_macro_f1": 0.95}})
    )
    write_metrics(tmp_path, accuracy, macro_f1)
    result = run("mlpipe", "gate", cwd=tmp_path, check=False)
    assert result.returncode == (0 if passes else 1)
    if passes:
        assert result.stdout.strip().endswith("no champion to compare with")
    else:
        assert result.stderr.startswith("mlpipe: error: gate failed: ")
        assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "mlruns.db").exists(), "the gate created a tracking store"


def test_gate_fails_when_the_pipeline_metrics_miss_a_threshold(
    project: Path, server_env: dict[str, str], registry: Any
) -> None:
    accuracy = metric_values(project)["test_accuracy"]
    set_aliases(registry, champion=None, previous=None)
    set_gate(project, min_test_accuracy=round(accuracy + 0.001, 6), min_test_macro_f1=0.0)
    error = mlpipe(project, server_env, "gate", "--promote", ok=False)
    assert f"test_accuracy {accuracy:.4f} < {accuracy + 0.001:g} (gate.min_test_accuracy" in error
    assert "champion" not in aliases(registry), "a failed gate promoted the model"


def test_first_promotion_makes_the_candidate_champion(
    project: Path, server_env: dict[str, str], registry: Any
) -> None:
    set_aliases(registry, champion=None, previous=None)
    set_gate(project, min_test_accuracy=0.0, min_test_macro_f1=0.0)
    assert aliases(registry) == {"candidate": "2"}
    assert "no champion to compare with" in mlpipe(project, server_env, "gate", "--promote")
    assert aliases(registry) == {"candidate": "2", "champion": "2"}


def test_promotion_keeps_the_replaced_champion_as_previous(
    project: Path, server_env: dict[str, str], registry: Any
) -> None:
    set_aliases(registry, champion="1", previous=None)
    set_gate(project, min_test_accuracy=0.0, min_test_macro_f1=0.0)
    assert "vs champion v1" in mlpipe(project, server_env, "gate", "--promote")
    assert aliases(registry) == {"candidate": "2", "champion": "2", "previous": "1"}


def test_without_promote_the_gate_moves_no_alias(
    project: Path, server_env: dict[str, str], registry: Any
) -> None:
    set_aliases(registry, champion="1", previous=None)
    set_gate(project, min_test_accuracy=0.0, min_test_macro_f1=0.0)
    mlpipe(project, server_env, "gate")
    assert aliases(registry) == {"candidate": "2", "champion": "1"}


@pytest.mark.parametrize(("drop", "passes"), [(0.005, True), (0.0051, False)])
def test_a_candidate_worse_than_the_champion_fails_beyond_the_tolerance(
    project: Path, server_env: dict[str, str], registry: Any, drop: float, passes: bool
) -> None:
    set_aliases(registry, champion="1", previous=None)
    set_gate(project, min_test_accuracy=0.0, min_test_macro_f1=0.0, max_regression=0.005)
    champion_accuracy = float(registry.get_model_version(MODEL, "1").tags["mlpipe.test_accuracy"])
    write_metrics(project, round(champion_accuracy - drop, 6), 0.9)
    out = mlpipe(project, server_env, "gate", "--promote", ok=passes)
    assert f"vs champion v1 {champion_accuracy:.4f}: {-drop:+.4f}" in out
    assert aliases(registry)["champion"] == ("2" if passes else "1")


def test_rollback_restores_the_previous_champion(
    project: Path, server_env: dict[str, str], registry: Any
) -> None:
    set_aliases(registry, champion="2", previous="1")
    assert mlpipe(project, server_env, "rollback").strip() == "@champion: v2 -> v1"
    assert aliases(registry) == {"candidate": "2", "champion": "1"}
    error = mlpipe(project, server_env, "rollback", ok=False)
    assert f"mlpipe: error: model '{MODEL}' has no version with alias @previous" in error


def test_model_uri_names_the_champions_package_in_s3(
    project: Path, server_env: dict[str, str], registry: Any, tracking_server: TrackingServer
) -> None:
    set_aliases(registry, champion="2", previous=None)
    uri = mlpipe(project, server_env, "model-uri", "--alias", "champion").strip()
    bucket = f"s3://{tracking_server.bucket}/"
    assert uri.startswith(bucket)
    assert uri.endswith("/package")
    s3 = s3_client(tracking_server.s3_endpoint)
    for name in ("package.json", "model.onnx"):
        stored = s3.get_object(Bucket=tracking_server.bucket, Key=f"{uri.removeprefix(bucket)}/{name}")
        assert stored["Body"].read() == (project / "models/package" / name).read_bytes()
    error = mlpipe(project, server_env, "model-uri", "--alias", "previous", ok=False)
    assert error.startswith(f"mlpipe: error: model '{MODEL}' has no version with alias @previous")
