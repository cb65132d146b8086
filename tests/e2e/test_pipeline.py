"""The pipeline end to end: real `dvc` in throwaway git repositories, real MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpipe.core import lineage
from tests.conftest import MODEL_NAME, TINY_PARAMS, make_project, run, update_params

pytestmark = pytest.mark.slow

OUTPUTS = (
    "data/prepared",
    "models/model.pt",
    "models/package",
    "reports/metrics.json",
    "reports/train_metrics.json",
    "reports/train_history.csv",
    "reports/per_class.csv",
    "reports/predictions.csv",
    "reports/confusion_matrix.png",
    "reports/misclassified.png",
)


def snapshot(project: Path) -> dict[str, bytes]:
    """Every output file's bytes, by path."""
    files = {}
    for output in OUTPUTS:
        path = project / output
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(project).as_posix()] = file.read_bytes()
    return files


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlruns.db'}")


def test_repro_writes_metrics_for_every_test_example(built_project: Path) -> None:
    metrics = json.loads((built_project / "reports/metrics.json").read_text())
    schema = json.loads((built_project / "data/prepared/schema.json").read_text())
    predictions = (built_project / "reports/predictions.csv").read_text().splitlines()
    assert metrics["test_examples"] == schema["splits"]["test"]["count"] == len(predictions) - 1
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    history = (built_project / "reports/train_history.csv").read_text().splitlines()
    assert len(history) == 1 + TINY_PARAMS["train"]["epochs"]


def test_status_is_clean_after_repro(built_project: Path) -> None:
    assert json.loads(run("dvc", "status", "--json", cwd=built_project).stdout) == {}


def test_second_repro_runs_nothing(built_project: Path) -> None:
    out = run("dvc", "repro", cwd=built_project).stdout
    assert "Running stage" not in out
    for stage in ("prepare", "train", "evaluate", "package"):
        assert f"Stage '{stage}' didn't change, skipping" in out


def test_package_records_only_the_inputs_its_bytes_depend_on(built_project: Path) -> None:
    manifest = json.loads((built_project / "models/package/package.json").read_text())
    lock = yaml.safe_load((built_project / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert manifest["lineage"] == {
        "data_hash": f"md5:{prepared_md5}",
        "params_hash": manifest["lineage"]["params_hash"],
    }
    assert len(manifest["lineage"]["params_hash"]) == 64
    assert manifest["metrics"] == json.loads((built_project / "reports/metrics.json").read_text())


def test_mlflow_run_carries_params_epochs_lineage_and_artifacts(built_project: Path) -> None:
    client = mlflow_client(built_project)
    experiment = client.get_experiment_by_name("mlpipe")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    tags, params = mlflow_run.data.tags, mlflow_run.data.params
    manifest = json.loads((built_project / "models/package/package.json").read_text())
    head = run("git", "rev-parse", "HEAD", cwd=built_project).stdout.strip()
    assert tags["mlpipe.git_commit"] == tags["mlflow.source.git.commit"] == head
    assert tags["mlpipe.git_branch"] == "main"
    assert tags["mlpipe.data_hash"] == manifest["lineage"]["data_hash"]
    assert tags["mlpipe.git_dirty"] == "false"
    (dataset_input,) = mlflow_run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "data/prepared"
    assert manifest["lineage"]["data_hash"].endswith(dataset_input.dataset.digest)
    assert params["train.epochs"] == str(TINY_PARAMS["train"]["epochs"])
    val_accuracy = client.get_metric_history(mlflow_run.info.run_id, "val_accuracy")
    assert [m.step for m in val_accuracy] == list(range(1, TINY_PARAMS["train"]["epochs"] + 1))
    assert mlflow_run.data.metrics["test_accuracy"] == manifest["metrics"]["test_accuracy"]
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "package")}
    assert artifacts == {
        "package/model.onnx",
        "package/package.json",
        "package/MODEL_CARD.md",
        "package/profile.json",
    }


def test_registered_candidate_loads_and_predicts_like_evaluate(built_project: Path) -> None:
    import mlflow

    client = mlflow_client(built_project)
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert version.tags["mlpipe.package_uri"].endswith("/package")
    mlflow.set_tracking_uri(f"sqlite:///{built_project / 'mlruns.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@candidate")
    images = np.load(built_project / "data/prepared/test_images.npy")
    assert images.dtype == np.uint8  # the prepared arrays as they are: the signature says uint8
    probabilities = model.predict(images)["probabilities"]
    classes = json.loads((built_project / "data/prepared/schema.json").read_text())["classes"]
    predicted = [classes[i] for i in np.asarray(probabilities).argmax(1)]
    expected = [
        line.split(",")[1]
        for line in (built_project / "reports/predictions.csv").read_text().splitlines()[1:]
    ]
    assert predicted == expected


def test_experiment_run_shows_up_in_exp_show_and_mlflow(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1", cwd=project)
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=project).stdout)
    experiments = [exp for row in shown for exp in (row.get("experiments") or [])]
    (experiment,) = [e for e in experiments if e.get("name") == "one-epoch"]
    (rev,) = experiment["revs"]
    data = rev["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert 0 < data["metrics"]["reports/metrics.json"]["data"]["test_accuracy"] <= 1
    (mlflow_run,) = mlflow_client(project).search_runs(
        [mlflow_client(project).get_experiment_by_name("mlpipe").experiment_id]
    )
    assert mlflow_run.data.tags["mlpipe.dvc_experiment"] == "one-epoch"
    assert mlflow_run.info.run_name == "one-epoch"


def test_rebuild_from_scratch_is_byte_identical(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "repro", cwd=project)
    first = snapshot(project)
    for output in ("data/prepared", "models", ".dvc/cache", "reports"):
        shutil.rmtree(project / output)
    run("dvc", "repro", cwd=project)
    second = snapshot(project)
    assert sorted(second) == sorted(first)
    assert [name for name in first if first[name] != second[name]] == []


TRAIN_OUTPUTS = ("models/model.pt", "reports/train_metrics.json", "reports/train_history.csv")


def assert_failed_cleanly_and_recovers(
    project: Path,
    before: dict[str, bytes],
    params: str,
    outputs: tuple[str, ...] = TRAIN_OUTPUTS,
    env: dict[str, str] | None = None,
) -> None:
    """A failed stage leaves its outputs whole or absent (never half-written or mixed), every
    other output as it was, and reverting the param restores the rest from the run cache."""
    after = snapshot(project)

    def ours(name: str) -> bool:
        return name.startswith(outputs)

    assert {n: d for n, d in after.items() if not ours(n)} == {n: d for n, d in before.items() if not ours(n)}
    left = {n: d for n, d in after.items() if ours(n)}
    assert left in ({}, {n: d for n, d in before.items() if ours(n)})
    staging = [p.name for d in (project, project / "models", project / "reports") for p in d.glob(".*.tmp")]
    assert staging == []
    (project / "params.yaml").write_text(params)
    out = run("dvc", "repro", cwd=project, env=env).stdout
    assert "Running stage" not in out
    assert snapshot(project) == before


def test_invalid_param_stops_the_stage_and_loses_nothing(built_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(built_project, project, symlinks=True)
    before, params = snapshot(project), (project / "params.yaml").read_text()
    update_params(project, {"train": {"lr": -1}})
    result = run("dvc", "repro", cwd=project, check=False)
    assert result.returncode != 0
    assert "mlpipe: error: params.yaml: train.lr: Input should be greater than 0 (got -1)" in result.stderr
    assert_failed_cleanly_and_recovers(project, before, params)


def test_unreachable_tracking_server_fails_before_training(built_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(built_project, project, symlinks=True)
    before, params = snapshot(project), (project / "params.yaml").read_text()
    update_params(project, {"train": {"epochs": 2}})
    result = run("dvc", "repro", cwd=project, check=False, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert result.returncode != 0
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in result.stderr
    assert "epoch 1" not in result.stderr
    assert_failed_cleanly_and_recovers(project, before, params)


def test_lineage_inputs_cover_the_code_and_the_dataset_the_stages_run(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    inputs = lineage.pipeline_inputs(project / "dvc.yaml")
    assert {
        "params.yaml",
        TINY_PARAMS["data"]["source"],
        "src/mlpipe/ml/train.py",
        "src/mlpipe/ml/package.py",
    } <= set(inputs)


def test_experiments_are_tracked_but_register_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "repro", cwd=project)
    client = mlflow_client(project)
    before = client.get_registered_model(MODEL_NAME)
    run("dvc", "exp", "run", "-n", "lr-probe", "-S", "train.lr=0.02", cwd=project)
    after = client.get_registered_model(MODEL_NAME)
    assert after.aliases == before.aliases
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 1
    runs = client.search_runs([client.get_experiment_by_name("mlpipe").experiment_id])
    assert sorted(r.info.run_name for r in runs if r.info.run_name == "lr-probe") == ["lr-probe"]


def test_a_gate_threshold_edit_changes_no_stage(built_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(built_project, project, symlinks=True)
    update_params(project, {"gate": {"min_test_accuracy": 0.5, "max_regression": 0.1}})
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}
