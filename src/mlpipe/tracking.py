"""MLflow tracking: where runs go, lineage tags, per-epoch logging, registration.

With MLFLOW_TRACKING_URI unset, runs go to an embedded SQLite store at the project root
(mlruns.db, artifacts in mlartifacts/), shared by `dvc repro` and every `dvc exp run`,
including queued ones that execute in temporary copies of the repository.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.errors import TrackingError
from mlpipe.lineage import Lineage

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mlpipe"
TAG_PREFIX = "mlpipe."
CHECKPOINT_TAG = TAG_PREFIX + "checkpoint_sha256"
PACKAGE_URI_TAG = TAG_PREFIX + "package_uri"


def project_root() -> Path:
    """The repository root; under `dvc exp run --queue`, the original one, not the temp copy."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the embedded SQLite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlruns.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, naming the endpoint, when a remote tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:  # noqa: S310 (http only)
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({problem}); start it, fix "
        "MLFLOW_TRACKING_URI, or unset it to track in the local mlruns.db"
    )


def client() -> MlflowClient:
    """A client for the configured store; the remote server is checked before it is used."""
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def experiment_id(mlflow_client: MlflowClient) -> str:
    """Get or create the experiment; local stores keep artifacts beside mlruns.db."""
    from mlflow.exceptions import MlflowException

    name = experiment_name()
    for _ in range(3):
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if tracking_uri().startswith("sqlite:"):
            location = (project_root() / "mlartifacts").as_uri()
        try:
            return mlflow_client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # a parallel queued experiment created it first
            time.sleep(0.5)
    raise TrackingError(f"could not create MLflow experiment {name!r} at {tracking_uri()}")


def lineage_tags(lineage: Lineage) -> dict[str, str]:
    """Run tags: ours under `mlpipe.`, plus MLflow's own git tag so the UI links the commit."""
    tags = {
        TAG_PREFIX + key: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in lineage.to_dict().items()
    }
    tags["mlflow.source.git.commit"] = lineage.git_commit
    return tags


def flatten(sections: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """{"train": {"lr": 0.1}} -> {"train.lr": "0.1"} for mlflow params."""
    return {
        f"{section}.{key}": str(value)
        for section, values in sections.items()
        for key, value in values.items()
    }


@contextmanager
def run(
    mlflow_client: MlflowClient,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start a run (or resume ``run_id``) as MLflow's active run; FAILED if the block raises."""
    import mlflow

    if run_id:  # resuming keeps the run's name
        experiment, run_name = None, None
    else:
        experiment = experiment_id(mlflow_client)
    with mlflow.start_run(
        run_id=run_id, experiment_id=experiment, run_name=run_name, tags=dict(tags or {})
    ) as active:
        yield active.info.run_id


def log_metrics(
    mlflow_client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    """Log several metrics in one call (one round trip per epoch, not per value)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    mlflow_client.log_batch(run_id, metrics=batch, synchronous=True)


def log_params(mlflow_client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params in one call."""
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], synchronous=True)


def find_run_by_tag(mlflow_client: MlflowClient, key: str, value: str) -> str | None:
    """The newest run in the experiment tagged ``key=value``, if any."""
    runs = mlflow_client.search_runs(
        [experiment_id(mlflow_client)],
        filter_string=f"tags.`{key}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def register_onnx(
    mlflow_client: MlflowClient,
    *,
    name: str,
    onnx_bytes: bytes,
    input_example: object,
    pip_requirements: list[str],
    version_tags: Mapping[str, str],
    alias: str,
) -> str:
    """Log the ONNX model to the active run, register a version and point ``alias`` at it.

    All or nothing: if tagging or aliasing fails, the new version is deleted again.
    """
    import mlflow
    import onnx
    from mlflow.exceptions import MlflowException

    info = mlflow.onnx.log_model(
        onnx.load_model_from_string(onnx_bytes),
        name="model",
        input_example=input_example,
        pip_requirements=pip_requirements,
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    try:
        version = mlflow.register_model(info.model_uri, name, tags=dict(version_tags)).version
    except MlflowException as e:
        raise TrackingError(f"could not register model {name!r} at {tracking_uri()}: {e.message}") from e
    try:
        mlflow_client.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        mlflow_client.delete_model_version(name, version)
        raise TrackingError(f"could not set alias {alias!r} on {name} v{version}: {e.message}") from e
    return str(version)
