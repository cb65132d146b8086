"""MLflow tracking: where runs go, lineage tags, per-epoch logging (the registry: mlpipe.tracking.registry).

With MLFLOW_TRACKING_URI unset, runs go to an embedded SQLite store at the project root
(mlruns.db, artifacts in mlartifacts/), shared by `dvc repro` and every `dvc exp run`,
including queued ones that execute in temporary copies of the repository.

With a tracking server, a stage checks the server and its artifact store before it starts
its work and stops, naming the endpoint, if either does not answer. A failure during a run
becomes a TrackingError that names the endpoint; the stages then keep their previous outputs.

Every call goes through an explicit ``MlflowClient`` for the configured store (``client()``),
and a stage records through a ``Run``; nothing here sets MLflow's global tracking URI, except
``Run.active`` for the length of a model logging call that has no client form.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.core import atomic, lineage, paths
from mlpipe.core.errors import TrackingError
from mlpipe.core.lineage import Lineage

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.entities import Metric

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mlpipe"
TAG_PREFIX = "mlpipe."
CHECKPOINT_TAG = TAG_PREFIX + "checkpoint_sha256"
OWNER_TAG = TAG_PREFIX + "owner"


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


def store_errors() -> tuple[type[Exception], ...]:
    """The exceptions MLflow and its S3 artifact store raise when they fail or are unreachable."""
    from mlflow.exceptions import MlflowException

    errors: list[type[Exception]] = [MlflowException]
    try:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 support installed, so no S3 artifact store either
        return tuple(errors)
    return (*errors, Boto3Error, BotoCoreError, ClientError)


def failed_endpoint(error: Exception) -> tuple[str, str]:
    """(the endpoint that failed, why) for an error from ``store_errors``."""
    from mlflow.exceptions import MlflowException

    # The first line: a server's message can go on with the SQL statement that failed.
    if isinstance(error, MlflowException):
        uri = tracking_uri()
        kind = "server" if uri.startswith(("http://", "https://")) else "store"
        return f"MLflow tracking {kind} {uri}", error.message.strip().split("\n")[0]
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return (f"S3 endpoint {endpoint}" if endpoint else "AWS S3 endpoint"), str(error).strip().split("\n")[0]


@contextmanager
def reported(action: str) -> Iterator[None]:
    """Turn a tracking or artifact store failure inside the block into a TrackingError."""
    try:
        yield
    except store_errors() as e:
        endpoint, reason = failed_endpoint(e)
        raise TrackingError(f"{action} failed at the {endpoint}: {reason}") from e


def check_artifact_store(location: str) -> None:
    """Fail fast, naming the endpoint, when the artifact store at ``location`` cannot be listed."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(location).list_artifacts()
    except store_errors() as e:
        endpoint, reason = failed_endpoint(e)
        raise TrackingError(
            f"MLflow artifact store {location} is unreachable at the {endpoint}: {reason}; start it, "
            "or fix MLFLOW_S3_ENDPOINT_URL and the AWS credentials"
        ) from e


def client() -> MlflowClient:
    """A client for the configured store. The tracking server and the experiment's artifact
    store are checked first, so that a stage fails before it starts its work."""
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow_client = mlflow.MlflowClient(uri)
    with reported("looking up the experiment"):
        location = mlflow_client.get_experiment(experiment_id(mlflow_client)).artifact_location
    check_artifact_store(location)
    return mlflow_client


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
    """Run tags: ours under `mlpipe.`, plus MLflow's own git tags so the UI links the commit."""
    tags = {TAG_PREFIX + key: value for key, value in lineage.tags().items()}
    tags["mlflow.source.git.commit"] = lineage.git_commit
    if lineage.git_branch:
        tags["mlflow.source.git.branch"] = lineage.git_branch
    tags[OWNER_TAG] = owner()
    return tags


def owner() -> str:
    """``host:pid`` of this process: how a later run recognises a run whose process died."""
    return f"{socket.gethostname()}:{os.getpid()}"


def close_abandoned_runs(mlflow_client: MlflowClient) -> list[str]:
    """Mark KILLED the RUNNING runs (and FAILED their PENDING logged models) that a killed
    process on this host left behind; return their ids."""
    from mlflow.entities import LoggedModelStatus

    host = socket.gethostname()
    closed = []
    with reported("closing runs of killed processes"):
        experiment = experiment_id(mlflow_client)
        runs = mlflow_client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
        for stale in runs:
            run_host, _, pid = stale.data.tags.get(OWNER_TAG, "").rpartition(":")
            if run_host != host or not pid.isdigit() or atomic.process_alive(int(pid)):
                continue
            mlflow_client.set_terminated(stale.info.run_id, status="KILLED")
            closed.append(stale.info.run_id)
        if closed:
            pending = mlflow_client.search_logged_models(
                experiment_ids=[experiment], filter_string="status = 'PENDING'"
            )
            for model in pending:
                if model.source_run_id in closed:
                    mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    for run_id in closed:
        log.warning("marked run %s KILLED: the process that ran it is gone", run_id)
    return closed


def _dvc_source() -> HTTPDatasetSource:
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    # Where the data lives is DVC's business (the key in its cache and remotes is the digest);
    # the source names the path in the repository.
    return HTTPDatasetSource(url=f"dvc://{paths.PREPARED_DIR.as_posix()}")


def registers_models() -> bool:
    """Whether this pipeline run may register a version: not under `dvc exp run` (queued or not).

    Experiments are tracked like any run, but only a branch's own pipeline (`dvc repro`, as CI
    runs it) moves the `candidate` alias; otherwise it would point at whichever experiment of a
    queue finished last.
    """
    return not lineage.dvc_experiment()


def flatten(sections: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """{"train": {"lr": 0.1}} -> {"train.lr": "0.1"} for mlflow params."""
    return {
        f"{section}.{key}": str(value)
        for section, values in sections.items()
        for key, value in values.items()
    }


class Run:
    """One MLflow run and everything a stage records on it (params, metrics, tags, inputs,
    artifacts), each through the explicit client the stage checked at its start."""

    def __init__(self, mlflow_client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = mlflow_client, run_id

    @property
    def artifact_uri(self) -> str:
        """Where the run's artifacts live (``s3://…``, ``file://…``), without a trailing slash."""
        return self.client.get_run(self.run_id).info.artifact_uri.rstrip("/")

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log params in one call."""
        from mlflow.entities import Param

        batch = [Param(key, str(value)) for key, value in params.items()]
        self.client.log_batch(self.run_id, params=batch, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log several metrics in one call (one round trip, not one per value)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set several tags in one call."""
        from mlflow.entities import RunTag

        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        self.client.log_batch(self.run_id, tags=batch, synchronous=True)

    def log_dataset(self, data_hash: str, context: str) -> None:
        """Record the DVC data version as the run's dataset input (the MLflow UI shows it)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        # MLflow's Dataset is not an ABC: MetaDataset need not define the optional `profile`
        described = MetaDataset(  # type: ignore[abstract]
            source=_dvc_source(), name=paths.PREPARED_DIR.as_posix(), digest=data_hash.split(":")[-1][:36]
        ).to_dict()
        dataset = Dataset(
            name=described["name"],
            digest=described["digest"],
            source_type=described["source_type"],
            source=described["source"],
        )
        inputs = [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        self.client.log_inputs(self.run_id, datasets=inputs)

    def log_artifact(self, local: Path, folder: str, name: str | None = None) -> None:
        """Log ``local`` under ``folder/name`` (default: its own name); a staged file's
        temporary name is not its real one."""
        if name is None or name == local.name:
            self.client.log_artifact(self.run_id, str(local), folder)
            return
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            named = Path(tmp) / name
            shutil.copyfile(local, named)
            self.client.log_artifact(self.run_id, str(named), folder)

    def log_artifacts(self, local_dir: Path, folder: str) -> None:
        """Log every file under ``local_dir`` below ``folder``."""
        self.client.log_artifacts(self.run_id, str(local_dir), folder)

    @contextmanager
    def active(self) -> Iterator[None]:
        """This run as MLflow's active run, on this client's store, for the block only.

        For the few MLflow APIs that exist only in the fluent form and take no client (logging a
        model: ``mlflow.<flavor>.log_model``, ``mlflow.register_model``). The global tracking URI
        they read is set for the block and restored after it. Leaving the block ends the fluent
        run as MLflow does (FINISHED, or FAILED on an error), so use it last in a ``run`` block.
        """
        import mlflow

        previous = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            with mlflow.start_run(run_id=self.run_id):
                yield
        finally:
            # None unsets it again: MLflow handles it, though its annotation leaves it out
            mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]


@contextmanager
def run(
    mlflow_client: MlflowClient,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Run]:
    """Start a run (or resume ``run_id``); FINISHED when the block ends, FAILED if it raises.

    A new run gets MLflow's own context tags (user, source) besides ``tags``, as the fluent
    ``mlflow.start_run`` would give it. A tracking or artifact store failure in the block is
    raised as a TrackingError.
    """
    from mlflow.tracking.context.registry import resolve_tags

    with reported(f"tracking run {run_id or run_name}"):
        if run_id:  # resuming keeps the run's name and tags; this process holds it now
            mlflow_client.update_run(run_id, status="RUNNING")
            current = Run(mlflow_client, run_id)
            current.set_tags({OWNER_TAG: owner(), **(tags or {})})
        else:
            created = mlflow_client.create_run(
                experiment_id(mlflow_client), run_name=run_name, tags=resolve_tags(dict(tags or {}))
            )
            current = Run(mlflow_client, created.info.run_id)
        try:
            yield current
        except BaseException:
            # The block's error is the one to report; a store that cannot take the status
            # either leaves the run RUNNING, for close_abandoned_runs to end later.
            with suppress(*store_errors()):
                mlflow_client.set_terminated(current.run_id, status="FAILED")
            raise
        mlflow_client.set_terminated(current.run_id, status="FINISHED")


class EpochLog:
    """Per-epoch metrics, sent in one call at most every ``interval`` seconds and on ``flush``.

    Every epoch is recorded under its own step; short epochs just share a round trip, so a
    30-epoch run of a few seconds makes a handful of calls, and a server that goes away is
    still noticed within ``interval`` seconds.
    """

    def __init__(self, run: Run, interval: float = 2.0) -> None:
        self._run, self._interval = run, interval
        self._pending: list[Metric] = []
        self._last_sent = time.monotonic()

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one epoch's metrics; send the backlog if ``interval`` has passed."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if time.monotonic() - self._last_sent >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Send whatever is pending."""
        if self._pending:
            self._run.client.log_batch(self._run.run_id, metrics=self._pending, synchronous=True)
            self._pending = []
        self._last_sent = time.monotonic()


def checkpoint_digest(path: Path) -> str:
    """The ``CHECKPOINT_TAG`` value of a checkpoint file: how its training run is found again."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
