"""The model registry: the aliases a version moves through, and every operation on them.

The registry is the configured MLflow store (MLFLOW_TRACKING_URI, or the local mlruns.db when
it exists). The package stage registers each new version as `candidate`; promotion moves
`champion` to a version and gives the one it replaces the alias `previous`; rollback points
`champion` back at `previous`. A version's tags name its package (`mlpipe.package_uri`), the
checkpoint it was trained as and its test accuracy.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.contracts import compare
from mlpipe.contracts.data import LabeledImages
from mlpipe.contracts.manifest import PackageManifest, TableInput
from mlpipe.contracts.table import Table
from mlpipe.core import lineage, paths
from mlpipe.core.errors import ArtifactError, MlpipeError, TrackingError
from mlpipe.tracking import runs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION, PREVIOUS = "candidate", "champion", "previous"
PACKAGE_URI_TAG = runs.TAG_PREFIX + "package_uri"
# The metric each version records as a tag: what a candidate is compared with the champion on.
ACCURACY_METRIC = "test_accuracy"
ACCURACY_TAG = runs.TAG_PREFIX + ACCURACY_METRIC
DATA_HASH_TAG = runs.TAG_PREFIX + "data_hash"
# The evaluate stage's reports, logged beside the package in the version's run.
REPORTS = (
    paths.METRICS_FILE,
    paths.PER_CLASS_FILE,
    paths.PREDICTIONS_FILE,
    paths.CONFUSION_PNG,
    paths.MISCLASSIFIED_PNG,
)
REPORTS_FOLDER, PACKAGE_FOLDER = "evaluate", "package"
PREDICTIONS_ARTIFACT = f"{REPORTS_FOLDER}/{paths.PREDICTIONS_FILE.name}"


class RegistryError(MlpipeError):
    """The registry has no such model version or alias, or cannot do what was asked of it."""


@dataclass(frozen=True)
class Champion:
    """The registered version holding the `champion` alias."""

    version: str
    test_accuracy: float
    # its test predictions, read only for `gate.regression_test: significant`; None if not logged
    predictions: compare.Predictions | None = None


def open_registry() -> MlflowClient | None:
    """A client for the configured registry; None when there is none yet.

    A local SQLite store that does not exist is not created: without one there is no champion.
    """
    uri = runs.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return runs.client()


def require_registry() -> MlflowClient:
    """The configured registry; an error says how to set one up when there is none."""
    client = open_registry()
    if client is None:
        raise RegistryError(
            f"no model registry at {runs.tracking_uri()}: set MLFLOW_TRACKING_URI, "
            "or run `dvc repro` to register a model in the local store"
        )
    return client


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """The registered model's aliases (alias -> version); empty when the model is not registered."""
    from mlflow.exceptions import MlflowException

    with runs.reported(f"reading model {name!r}"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(client: MlflowClient, name: str, alias: str) -> str:
    """The version holding ``alias``; an error names the model, alias and registry if none does."""
    version = aliases(client, name).get(alias)
    if version is None:
        raise RegistryError(f"model {name!r} has no version with alias @{alias} at {runs.tracking_uri()}")
    return version


def training_run(client: MlflowClient, checkpoint: Path = paths.CHECKPOINT_FILE) -> str | None:
    """The newest run that trained ``checkpoint`` (its digest tag); None if no run did."""
    try:
        digest = runs.checkpoint_digest(checkpoint)
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{checkpoint}: not found; it names the model's training run (`dvc pull {checkpoint}`)"
        ) from e
    with runs.reported(f"looking up the run that trained {checkpoint}"):
        trained = client.search_runs(
            [runs.experiment_id(client)],
            filter_string=f"tags.`{runs.CHECKPOINT_TAG}` = '{digest}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return trained[0].info.run_id if trained else None


def checkout_version(client: MlflowClient, name: str) -> str:
    """The version registered from this checkout's models/model.pt: the one whose metrics were judged.

    Normally @candidate; on a shared server another pipeline may have moved that alias since.
    """
    run_id = training_run(client)
    with runs.reported(f"looking up the version of {name} trained as {paths.CHECKPOINT_FILE}"):
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'") if run_id else []
    if not versions:
        digest = runs.checkpoint_digest(paths.CHECKPOINT_FILE)
        raise RegistryError(
            f"no version of {name!r} at {runs.tracking_uri()} was registered from "
            f"{paths.CHECKPOINT_FILE} (sha256 {digest[:12]}); "
            "run `dvc repro` with package.register_model: true"
        )
    version = str(max(int(v.version) for v in versions))
    candidate = aliases(client, name).get(CANDIDATE)
    if candidate != version:
        log.warning("@candidate is v%s, but this checkout's model is v%s: promoting that", candidate, version)
    return version


def _logged_predictions(
    client: MlflowClient, run_id: str, data_hash: str | None
) -> compare.Predictions | None:
    """A run's logged test predictions; None when it logged none (versions from before they were)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="mlpipe-registry-") as tmp:
        try:
            local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        except (MlflowException, OSError) as e:
            log.warning(
                "run %s has no %s (%s): judging by gate.max_regression", run_id, PREDICTIONS_ARTIFACT, e
            )
            return None
        text = Path(local).read_text(encoding="utf-8")
    try:
        return compare.Predictions.from_csv(text, data_hash)
    except ValueError as e:
        raise TrackingError(f"{PREDICTIONS_ARTIFACT} of run {run_id}: {e}") from e


def find_champion(client: MlflowClient, name: str, with_predictions: bool = False) -> Champion | None:
    """The champion and its test accuracy (version tag, else its run's metric), with its run's
    test predictions if asked; None if unset."""
    version = aliases(client, name).get(CHAMPION)
    if version is None:
        return None
    with runs.reported(f"reading {name} v{version} (@{CHAMPION})"):
        model_version = client.get_model_version(name, version)
        value: str | float | None = model_version.tags.get(ACCURACY_TAG)
        if value is None and model_version.run_id:
            value = client.get_run(model_version.run_id).data.metrics.get(ACCURACY_METRIC)
        predictions = None
        if with_predictions and model_version.run_id:
            data_hash = model_version.tags.get(DATA_HASH_TAG)
            predictions = _logged_predictions(client, model_version.run_id, data_hash)
    if value is None:
        raise TrackingError(f"{name} v{version} (@{CHAMPION}) records no {ACCURACY_METRIC} to compare with")
    return Champion(version, float(value), predictions)


def _set_alias(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``; None removes the alias."""
    with runs.reported(f"moving @{alias} of {name} to v{version}"):
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)


def promote(client: MlflowClient, name: str, version: str) -> None:
    """Make ``version`` the champion and give the version it replaces the alias `previous`.

    `previous` moves first, then `champion` in one call, so `champion` is never unset; if that
    call fails, `previous` is put back where it was.
    """
    current = aliases(client, name)
    replaced, old_previous = current.get(CHAMPION), current.get(PREVIOUS)
    if replaced == version:
        log.info("%s v%s already holds @%s", name, version, CHAMPION)
        return
    if replaced is not None:
        _set_alias(client, name, PREVIOUS, replaced)
    try:
        _set_alias(client, name, CHAMPION, version)
    except TrackingError:
        if replaced is not None:
            _set_alias(client, name, PREVIOUS, old_previous)
        raise
    log.info("promoted %s v%s to @%s (@%s: v%s)", name, version, CHAMPION, PREVIOUS, replaced)


def rollback(client: MlflowClient, name: str) -> tuple[str | None, str]:
    """Point `champion` back at `previous` and drop `previous`; return (rolled back, restored)."""
    restored = alias_version(client, name, PREVIOUS)
    rolled_back = aliases(client, name).get(CHAMPION)
    _set_alias(client, name, CHAMPION, restored)
    _set_alias(client, name, PREVIOUS, None)
    log.info("rolled @%s of %s back from v%s to v%s", CHAMPION, name, rolled_back, restored)
    return rolled_back, restored


def package_uri(client: MlflowClient, name: str, alias: str) -> str:
    """Where the package of the version holding ``alias`` is stored (its `mlpipe.package_uri` tag)."""
    version = alias_version(client, name, alias)
    with runs.reported(f"reading {name} v{version} (@{alias})"):
        uri = client.get_model_version(name, version).tags.get(PACKAGE_URI_TAG)
    if not uri:
        raise RegistryError(f"{name} v{version} (@{alias}) has no {PACKAGE_URI_TAG} tag")
    log.info("%s v%s (@%s): %s", name, version, alias, uri)
    return uri


def signature(manifest: PackageManifest) -> ModelSignature:
    """The MLflow signature of a package's model, from its manifest: raw pixels in, probabilities
    out; for a table, one column per feature in, the label and each class's probability out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    spec = manifest.input
    if isinstance(spec, TableInput):
        from mlpipe.tracking.table_pyfunc import LABEL_COLUMN, probability_column

        # A number column is Any: pandas reads whole numbers as int64, which MLflow does not convert
        # to double; the wrapper reads every number as a float (and refuses text).
        inputs: list[ColSpec | TensorSpec] = [
            ColSpec(AnyType() if c.is_number else "string", c.name, required=False) for c in spec.columns
        ]
        outputs: list[ColSpec | TensorSpec] = [ColSpec("string", LABEL_COLUMN)]
        outputs += [ColSpec("float", probability_column(label)) for label in manifest.labels]
        return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))
    pixels = TensorSpec(np.dtype(spec.dtype), (-1, *spec.shape), spec.name)
    probabilities = TensorSpec(np.dtype(np.float32), (-1, len(manifest.labels)), manifest.output_name)
    return ModelSignature(inputs=Schema([pixels]), outputs=Schema([probabilities]))


def _requirements(table: bool = False) -> list[str]:
    """What MLflow's pyfunc of the ONNX model needs installed (a table's: the pandas wrapper's too)."""
    names = ("onnx", "onnxruntime", "numpy", *(("pandas", "pydantic", "pyyaml") if table else ()))
    return [f"{name}=={installed_version(name)}" for name in names]


def _log_model(package_dir: Path, manifest: PackageManifest, example: LabeledImages | Table) -> str:
    """Log the package's model to the active run, with its signature and an input example; its URI."""
    import mlflow
    import onnx

    if isinstance(example, Table):
        import pandas as pd

        from mlpipe.tracking.table_pyfunc import PACKAGE_ARTIFACT, TableModel

        # The pyfunc wrapper is mlpipe code: its package goes along, so loading needs no mlpipe.
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=TableModel(),
            artifacts={PACKAGE_ARTIFACT: str(package_dir)},
            code_paths=[str(Path(__file__).parents[1])],
            signature=signature(manifest),
            input_example=pd.DataFrame(example.records()),
            pip_requirements=_requirements(table=True),
        )
        return logged.model_uri
    model = onnx.load_model_from_string((package_dir / manifest.model_file).read_bytes())
    logged = mlflow.onnx.log_model(
        model,
        name="model",
        signature=signature(manifest),
        input_example=example.images,
        pip_requirements=_requirements(),
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    return logged.model_uri


def _register_version(client: MlflowClient, name: str, model_uri: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` as a version of ``name`` with ``tags`` (one request) and point
    `candidate` at it; if the alias cannot be set, delete the version again."""
    import mlflow

    with runs.reported(f"registering model {name!r}"):
        version = str(mlflow.register_model(model_uri, name, tags=dict(tags)).version)
    try:
        client.set_registered_model_alias(name, CANDIDATE, version)
    except runs.store_errors() as e:
        endpoint, reason = runs.failed_endpoint(e)
        problem = f"setting alias {CANDIDATE!r} on {name} version {version} failed at the {endpoint}"
        problem += f": {reason}"
        try:
            client.delete_model_version(name, version)
        except runs.store_errors() as cleanup:
            raise TrackingError(
                f"{problem}; deleting that version failed too ({runs.failed_endpoint(cleanup)[1]}), "
                "so it stays registered without the alias: delete it once the server is back"
            ) from e
        raise TrackingError(f"{problem}; the version was deleted again") from e
    return version


def register(
    client: MlflowClient,
    package_dir: Path,
    manifest: PackageManifest,
    origin: lineage.Lineage,
    example: LabeledImages | Table,
) -> str:
    """Log the package and the evaluate reports to the run that trained the checkpoint, register
    its ONNX model (with its signature) as a new version and point `candidate` at it.

    All or nothing for the alias: the version is created with its tags in one request and deleted
    again if `candidate` cannot be set, so `candidate` keeps pointing at the previous version.
    """

    run_id = training_run(client)
    tags = runs.lineage_tags(origin)
    # A resumed training run keeps its own lineage tags; this package's go on the version.
    with runs.run(
        client, run_id=run_id, run_name=f"package-{origin.git_commit[:8]}", tags=None if run_id else tags
    ) as mlflow_run:
        mlflow_run.log_metrics(manifest.metrics)
        for report in REPORTS:
            mlflow_run.log_artifact(report, REPORTS_FOLDER)
        mlflow_run.log_artifacts(package_dir, PACKAGE_FOLDER)
        stored_at = mlflow_run.artifact_uri.rstrip("/") + "/" + PACKAGE_FOLDER
        log.info("logged the package to run %s; registering it", mlflow_run.run_id)
        version_tags = {
            **tags,
            runs.CHECKPOINT_TAG: runs.checkpoint_digest(paths.CHECKPOINT_FILE),
            PACKAGE_URI_TAG: stored_at,
            ACCURACY_TAG: str(manifest.metrics[ACCURACY_METRIC]),
        }
        # Model logging and registration exist only in MLflow's fluent API: the run is active
        # (and the tracking URI set) for these calls only.
        with mlflow_run.active():
            with runs.reported(f"logging model {manifest.name!r}"):
                model_uri = _log_model(package_dir, manifest, example)
            version = _register_version(client, manifest.name, model_uri, version_tags)
    log.info("registered %s version %s as @%s (run %s)", manifest.name, version, CANDIDATE, mlflow_run.run_id)
    return version
