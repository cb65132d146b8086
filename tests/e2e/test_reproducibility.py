"""The same commit, params and data give the same bytes on any machine, and DVC's run cache
carries a trained model from one clone (a merge request's pipeline) to another (main's)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    TINY_PARAMS,
    TINY_TABLE_PARAMS,
    make_project,
    require,
    run,
    subprocess_env,
    update_params,
)

pytestmark = pytest.mark.slow

MODEL = "models/model.pt"
TRAIN_RESULTS = (MODEL, "reports/train_metrics.json", "reports/train_history.csv")
STAGES = ("prepare", "train", "evaluate", "package")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# What differs between machines, changed for real rather than through variables that
# `numerics.pin()` overrides: the CPU itself and the number of cores. QEMU's user-mode emulator
# runs this environment's Python as another CPU model (its vendor, its instruction sets), which
# is what oneMKL chooses its kernels by; both models have AVX2 and no AVX-512, unlike the AMD EPYC
# machines CI runs on. Emulated vector code is 100-1000x slower, hence the tiny training.
EMULATED_CPUS = {"amd-epyc-rome": "EPYC-Rome", "intel-haswell": "Haswell"}
CPU_PARAMS = {
    "images": {
        "data": {"max_samples": 400},
        "model": TINY_PARAMS["model"],
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
    },
    # the MLP on the bundled table: its preprocessing (gaps, scaling, one-hot) runs in training too
    "table": TINY_TABLE_PARAMS | {"train": {"epochs": 3, "batch_size": 32, "lr": 0.01}},
}


def emulator() -> str:
    qemu = shutil.which("qemu-x86_64")
    require(qemu is not None and platform.machine() == "x86_64", "qemu-x86_64 (Debian qemu-user) on x86-64")
    assert qemu is not None
    return qemu


@pytest.fixture(scope="module", params=sorted(CPU_PARAMS))
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose data are prepared: images, or the bundled table."""
    project = make_project(
        tmp_path_factory.mktemp(f"numerics-{request.param}") / "project", CPU_PARAMS[request.param]
    )
    run("dvc", "repro", "prepare", cwd=project)
    return project


def copy_of(project: Path, name: str) -> Path:
    copy = project.parent / name
    shutil.copytree(project, copy, symlinks=True)
    return copy


def train_results(project: Path) -> dict[str, str]:
    return {name: digest(project / name) for name in TRAIN_RESULTS}


@pytest.fixture(scope="module")
def reference(prepared: Path) -> dict[str, str]:
    """The train results on this machine's own CPU, all its cores."""
    project = copy_of(prepared, "native")
    run("mlpipe", "train", cwd=project)
    return train_results(project)


@pytest.fixture(scope="module")
def emulated(prepared: Path) -> dict[str, dict[str, str]]:
    """The train results under each emulated CPU, the emulations run side by side."""
    qemu = emulator()
    started = {}
    for name, model in EMULATED_CPUS.items():
        project = copy_of(prepared, name)
        log = (project.parent / f"{name}.log").open("w")
        command = [qemu, "-cpu", model, sys.executable, "-m", "mlpipe", "train"]
        started[name] = (
            project,
            log,
            subprocess.Popen(command, cwd=project, env=subprocess_env(), stdout=log, stderr=log),
        )
    results = {}
    for name, (project, log, process) in started.items():
        try:
            process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        output = Path(log.name).read_text()
        assert process.returncode == 0, f"mlpipe train under qemu -cpu {EMULATED_CPUS[name]}:\n{output}"
        results[name] = train_results(project)
    return results


@pytest.mark.parametrize("cpu", sorted(EMULATED_CPUS))
def test_training_writes_the_same_bytes_on_another_vendors_cpu(
    reference: dict[str, str], emulated: dict[str, dict[str, str]], cpu: str
) -> None:
    assert emulated[cpu] == reference


def test_training_writes_the_same_bytes_on_one_core(prepared: Path, reference: dict[str, str]) -> None:
    project = copy_of(prepared, "one-core")
    run("taskset", "-c", "0", "mlpipe", "train", cwd=project)
    assert train_results(project) == reference


# gdb stops at every oneMKL vector-math function once libtorch has loaded and counts the calls.
VECTOR_MATH_WATCH = """\
set pagination off
set confirm off
catch load libtorch_cpu
run
delete 1
rbreak ^vm[sd][A-Z][A-Za-z0-9]*$
commands 2-1000
silent
continue
end
continue
info breakpoints
"""


def test_training_calls_none_of_onemkls_vector_math(prepared: Path, tmp_path: Path) -> None:
    """oneMKL's vector math (where ATen sends ``sqrt``, ``pow(x, 0.5)``, ``erf``, ``tanh`` ... of
    CPU tensors) picks its kernels by the CPU's features even on the COMPATIBLE branch, in ways
    the emulated CPUs above cannot stand in for (AVX-512 Intel CPUs): training must not call it."""
    gdb = shutil.which("gdb")
    require(gdb is not None, "gdb")
    assert gdb is not None
    project = copy_of(prepared, "vector-math")
    script = tmp_path / "watch.gdb"
    script.write_text(VECTOR_MATH_WATCH)
    result = run(
        gdb, "-batch", "-x", str(script), "--args", sys.executable, "-m", "mlpipe", "train", cwd=project
    )
    assert "exited normally" in result.stdout, result.stdout[-3000:]
    assert re.findall(r"<(vms\w+)>", result.stdout), "no vector-math function was watched"
    called = re.findall(r"<(vm[sd]\w+)>\s+breakpoint already hit (\d+) time", result.stdout)
    assert called == []


def test_native_numerics_depend_on_the_machine(tmp_path: Path) -> None:
    """The control: without the pins, what a machine's settings choose does change the bytes."""
    project = make_project(tmp_path / "native", CPU_PARAMS["images"])
    run("dvc", "repro", "prepare", cwd=project)
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
        "model": TINY_PARAMS["model"],
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
