"""The same commit, params and data give the same bytes on any machine, and DVC's run cache
carries a trained model from one clone (a merge request's pipeline) to another (main's)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run, subprocess_env, update_params

pytestmark = pytest.mark.slow

MODEL = "models/model.pt"
TRAIN_RESULTS = (MODEL, "reports/train_metrics.json", "reports/train_history.csv")
STAGES = ("prepare", "train", "evaluate", "package")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


# What differs between machines, simulated on this one: the kernels chosen by instruction set,
# the libraries' thread settings, and the number of cores.
MACHINES: dict[str, tuple[dict[str, str], list[str]]] = {
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, []),
    "onednn-sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"}, []),
    "mkl-compatible": ({"MKL_CBWR": "COMPATIBLE"}, []),
    "omp-1-thread": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, []),
    "omp-2-threads": ({"OMP_NUM_THREADS": "2"}, []),
    "one-core": ({}, ["taskset", "-c", "0"]),
}
if "avx512f" in cpu_flags():
    MACHINES["aten-avx512"] = ({"ATEN_CPU_CAPABILITY": "avx512"}, [])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("numerics") / "project")
    run("dvc", "repro", "prepare", cwd=project)
    return project


def train_as(project: Path, machine: str) -> dict[str, str]:
    """Train in a copy of ``project`` as ``machine`` would; the train results' digests."""
    env, prefix = MACHINES[machine]
    copy = project.parent / machine
    shutil.copytree(project, copy, symlinks=True)
    run(*prefix, "mlpipe", "train", cwd=copy, env=env)
    return {name: digest(copy / name) for name in TRAIN_RESULTS}


@pytest.fixture(scope="module")
def reference(prepared: Path) -> dict[str, str]:
    return train_as(prepared, "aten-avx2")


@pytest.mark.parametrize("machine", sorted(set(MACHINES) - {"aten-avx2"}))
def test_training_writes_the_same_bytes_on_every_machine(
    prepared: Path, reference: dict[str, str], machine: str
) -> None:
    assert train_as(prepared, machine) == reference


def test_native_numerics_depend_on_the_machine(prepared: Path, tmp_path: Path) -> None:
    """The control: without the pins, the settings above do change the bytes."""
    project = tmp_path / "native"
    shutil.copytree(prepared, project, symlinks=True)
    update_params(project, {"train": {"numerics": "native"}})
    results = set()
    for env in ({"ATEN_CPU_CAPABILITY": "default"}, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}):
        run("mlpipe", "train", cwd=project, env=env)
        results.add(digest(project / MODEL))
    assert len(results) > 1


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def test_reverting_a_param_restores_the_outputs_from_the_run_cache(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "repro", cwd=project)
    original = {name: digest(project / name) for name in TRAIN_RESULTS}
    params = (project / "params.yaml").read_text()
    update_params(project, {"train": {"lr": 0.02}})
    assert "train" in stages_run(run("dvc", "repro", cwd=project).stdout)
    assert digest(project / MODEL) != original[MODEL]
    (project / "params.yaml").write_text(params)
    out = run("dvc", "repro", cwd=project).stdout
    assert stages_run(out) == []
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert {name: digest(project / name) for name in TRAIN_RESULTS} == original


def origin_with_remotes(tmp_path: Path) -> Path:
    """A project whose commit names the two DVC remotes of the template (data, the default, and
    models), both directories under ``tmp_path / "remote"``: what the clones share."""
    origin = make_project(tmp_path / "origin")
    remote = tmp_path / "remote"
    run("dvc", "remote", "add", "-f", "-d", "data", str(remote / "data"), cwd=origin)
    run("dvc", "remote", "add", "-f", "models", str(remote / "models"), cwd=origin)
    run("git", "commit", "-qam", "remotes", cwd=origin)
    return origin


def test_the_main_clone_restores_what_the_merge_request_clone_trained(tmp_path: Path) -> None:
    """The merge request → main path: clone A (the MR) runs the pipeline, pushes its outputs and
    run cache and commits its results; clone B (main, after the merge) pulls and runs no stage."""
    origin = origin_with_remotes(tmp_path)
    clone_a, clone_b = tmp_path / "a", tmp_path / "b"
    run("git", "clone", "-q", str(origin), str(clone_a), cwd=tmp_path)
    run("dvc", "repro", cwd=clone_a)
    run("mlpipe", "runcache", "push", cwd=clone_a)
    run("git", "add", "dvc.lock", "reports", cwd=clone_a)
    run("git", "commit", "-qm", "results", cwd=clone_a)
    run("git", "push", "-q", "origin", "HEAD:merged", cwd=clone_a)
    run("git", "clone", "-q", "-b", "merged", str(origin), str(clone_b), cwd=tmp_path)
    run("dvc", "pull", "--run-cache", "--allow-missing", cwd=clone_b)
    out = run("dvc", "repro", "--pull", cwd=clone_b).stdout
    assert stages_run(out) == []
    for name in (*TRAIN_RESULTS, "reports/metrics.json", "models/package/model.onnx"):
        assert digest(clone_b / name) == digest(clone_a / name), name
    assert json.loads(run("dvc", "status", "--json", cwd=clone_b).stdout) == {}


def test_a_clone_of_the_same_commit_restores_every_stage_from_the_shared_remote(tmp_path: Path) -> None:
    """Same commit, only the DVC remotes shared, nothing committed after the run: clone A runs
    the pipeline and pushes (what CI runs), clone B pulls the run cache and runs no stage."""
    origin = origin_with_remotes(tmp_path)
    clone_a, clone_b = tmp_path / "a", tmp_path / "b"
    for clone in (clone_a, clone_b):
        run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert stages_run(run("dvc", "repro", cwd=clone_a).stdout) == list(STAGES)
    run("mlpipe", "runcache", "push", cwd=clone_a)
    run("dvc", "pull", "--run-cache", "--allow-missing", cwd=clone_b, check=False)
    out = run("dvc", "repro", "--pull", cwd=clone_b).stdout
    assert stages_run(out) == []
    for stage in STAGES:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out
    assert locked_outs(clone_b) == locked_outs(clone_a)
    for name in locked_outs(clone_a):
        if (clone_a / name).is_file():
            assert digest(clone_b / name) == digest(clone_a / name), name


def kill_midway(project: Path, stage: str, marker: str) -> None:
    """Start `mlpipe <stage>`, SIGKILL it once its log shows ``marker``."""
    log = project / f"{stage}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["mlpipe", stage], cwd=project, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while marker not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"{stage} ended before {marker!r}:\n{log.read_text()}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    log.unlink()


def locked_outs(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


@pytest.mark.parametrize(("stage", "marker"), [("train", "epoch 2:"), ("package", "registering it")])
def test_a_killed_stage_leaves_complete_outputs_and_the_next_run_cleans_up(
    tmp_path: Path, stage: str, marker: str
) -> None:
    from mlflow import MlflowClient

    project = make_project(tmp_path / "project", {**_tiny_slow_params()})
    run("dvc", "repro", cwd=project)
    before = {name: digest(project / name) for name in TRAIN_RESULTS}
    package_before = (project / "models/package/model.onnx").read_bytes()
    update_params(project, {"train": {"lr": 0.02}})
    if stage == "package":
        run("mlpipe", "train", cwd=project)
        run("mlpipe", "evaluate", cwd=project)
        before = {name: digest(project / name) for name in TRAIN_RESULTS}
    kill_midway(project, stage, marker)
    # old or new, never a mix: the train outputs still match each other and nothing is half-written
    assert {name: digest(project / name) for name in TRAIN_RESULTS} == before
    assert (project / "models/package/model.onnx").read_bytes() == package_before
    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mlpipe").experiment_id
    running = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
    assert running, "the kill came too late to leave a run behind"

    run("dvc", "repro", cwd=project)
    leftovers = [p.name for d in (project, project / "models", project / "reports") for p in d.glob(".*.tmp")]
    assert leftovers == []
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}
    assert client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'") == []
    assert client.search_logged_models(experiment_ids=[experiment], filter_string="status = 'PENDING'") == []
    for version in client.search_model_versions("name = 'mlpipe-classifier'"):
        assert client.list_artifacts(version.run_id, "package"), (
            f"version {version.version} lacks its package"
        )


def _tiny_slow_params() -> dict[str, dict[str, object]]:
    """Tiny data, but enough epochs that a kill lands inside training."""
    return {
        "data": {"max_samples": 600},
        "model": {"width": 8, "hidden": 32},
        "train": {"epochs": 40, "batch_size": 32, "lr": 0.01},
        "evaluate": {"misclassified_examples": 8},
    }


@pytest.mark.parametrize(
    ("stage", "broken", "content"),
    [
        ("train", "data/prepared/train_images.npy", b""),
        ("train", "data/prepared/train_images.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|u1'"),
        ("train", "data/prepared/train_labels.npy", b"not an array"),
        ("train", "data/prepared/schema.json", b""),
        ("train", "data/prepared/schema.json", b'{"version": 1'),
        ("evaluate", "models/model.pt", b""),
        ("evaluate", "models/model.pt", b"PK\x03\x04truncated"),
        ("evaluate", "data/prepared/test_images.npy", b""),
        ("package", "reports/metrics.json", b""),
        ("package", "reports/metrics.json", b"\xff\xfe"),
        ("package", "models/model.pt", b""),
    ],
)
def test_a_corrupt_input_stops_the_stage_naming_the_file(
    built_project: Path, tmp_path: Path, stage: str, broken: str, content: bytes
) -> None:
    project = tmp_path / "project"
    shutil.copytree(built_project, project, symlinks=True)
    target = project / broken
    target.unlink()
    target.write_bytes(content)
    result = run("mlpipe", stage, cwd=project, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"mlpipe: error: {broken}: "), result.stderr
    assert "Traceback" not in result.stderr
