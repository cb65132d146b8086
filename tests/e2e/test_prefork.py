"""Warm stage processes (mlpipe.workflows.tuning.prefork): a real server forking real stage commands in a
throwaway project on tiny params, compared with the same commands in fresh processes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlpipe.workflows.tuning import prefork
from tests.conftest import make_project, run, subprocess_env, update_params

SAYS = re.escape(prefork.SAY_PREFIX)
CLI_ENTRY = "mlpipe.cli:main"

pytestmark = pytest.mark.slow

OUTPUTS = (
    "models/model.pt",
    "reports/train_metrics.json",
    "reports/train_history.csv",
    "reports/per_class.csv",
    "reports/confusion_matrix.png",
    "reports/misclassified.png",
    "reports/metrics.json",
    "reports/predictions.csv",
)


@dataclass(frozen=True)
class Server:
    """The module's verbose server: its socket and the lines it prints, one per fork and exit."""

    socket: str
    log: Path

    def env(self) -> dict[str, str]:
        return {prefork.ENV: self.socket}

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def forked(self, command: str, cwd: Path) -> list[int]:
        """The pids of the children forked for `mlpipe COMMAND` in ``cwd`` or below it."""
        pattern = re.compile(rf"{SAYS}(\d+): mlpipe {command} in {re.escape(str(cwd))}\b")
        return [int(m[1]) for line in self.lines() if (m := pattern.match(line))]

    def exits(self, pids: list[int]) -> list[int]:
        """The exit statuses sent back for ``pids``, in their order."""
        status = {
            int(m[1]): int(m[2])
            for line in self.lines()
            if (m := re.match(rf"{SAYS}(\d+): exit (-?\d+)$", line))
        }
        return [status.get(pid, -999) for pid in pids]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("prefork-server") / "server.log"
    with prefork.warm_server("portable", verbose=True, log=log) as socket_path:
        assert Path(socket_path).exists(), f"the server never listened: {log.read_text()}"
        yield Server(socket_path, log)
    assert "Traceback" not in log.read_text(), log.read_text()


def digests(project: Path) -> dict[str, str]:
    return {name: hashlib.sha256((project / name).read_bytes()).hexdigest() for name in OUTPUTS}


def prepared_project(dest: Path, **overrides: dict[str, object]) -> Path:
    project = make_project(dest)
    if overrides:
        update_params(project, overrides)
    run("dvc", "repro", "prepare", cwd=project)
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project on tiny params with its data prepared."""
    return prepared_project(tmp_path_factory.mktemp("prefork") / "project")


def test_a_forked_stage_writes_the_same_bytes_as_a_fresh_process(project: Path, server: Server) -> None:
    for stage in ("train", "evaluate"):
        result = run("mlpipe", stage, cwd=project, env=server.env())
        assert "declined" not in result.stderr
    warm = digests(project)
    children = server.forked("train", project) + server.forked("evaluate", project)
    assert len(children) == 2, server.lines()
    assert server.exits(children) == [0, 0]
    for stage in ("train", "evaluate"):
        run("mlpipe", stage, cwd=project)
    assert digests(project) == warm


def test_dvc_runs_its_stages_through_the_server_and_gets_the_locked_outputs(
    project: Path, server: Server
) -> None:
    """`dvc repro --force` with the server set: every stage forked, dvc.lock as the fresh run's."""
    run("dvc", "repro", "--force", "evaluate", cwd=project)
    fresh_lock = (project / "dvc.lock").read_text()
    before = {stage: len(server.forked(stage, project)) for stage in ("prepare", "train", "evaluate")}
    run("dvc", "repro", "--force", "evaluate", cwd=project, env=server.env())
    after = {stage: len(server.forked(stage, project)) for stage in ("prepare", "train", "evaluate")}
    assert {stage: after[stage] - before[stage] for stage in after} == {
        "prepare": 1,
        "train": 1,
        "evaluate": 1,
    }
    assert (project / "dvc.lock").read_text() == fresh_lock


def test_a_stage_whose_params_ask_for_other_numerics_runs_in_a_fresh_process(
    tmp_path: Path, server: Server
) -> None:
    project = prepared_project(tmp_path / "project", train={"numerics": "native"})
    result = run("mlpipe", "train", cwd=project, env=server.env())
    assert "declined: params.yaml asks for other numerics" in result.stderr
    assert "wrote models/model.pt" in result.stderr
    assert server.exits(server.forked("train", project)) == [0]  # the declining child


def test_errors_and_exit_status_are_the_commands_own(tmp_path: Path, server: Server) -> None:
    broken = make_project(tmp_path / "broken")
    update_params(broken, {"train": {"lr": -1.0}})
    fresh = run("mlpipe", "train", cwd=broken, check=False)
    warm = run("mlpipe", "train", cwd=broken, env=server.env(), check=False)
    assert fresh.returncode == warm.returncode == 1
    assert warm.stderr.strip().splitlines()[-1] == fresh.stderr.strip().splitlines()[-1]
    assert "train.lr" in warm.stderr
    assert server.exits(server.forked("train", broken)) == [1]


def test_non_stage_commands_and_a_missing_server_run_in_this_process(tmp_path: Path) -> None:
    os.environ[prefork.ENV] = str(tmp_path / "no-such-socket")
    try:
        assert prefork.delegate(["train"], entry=CLI_ENTRY) is None  # nobody listens: run it here
        assert prefork.delegate(["serve", "--help"], entry=CLI_ENTRY) is None  # not a stage
    finally:
        del os.environ[prefork.ENV]


@pytest.fixture(scope="module")
def long_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose training runs long enough to be interrupted."""
    return prepared_project(tmp_path_factory.mktemp("prefork-long") / "project", train={"epochs": 500})


def start_training(project: Path, server: Server) -> tuple[subprocess.Popen[str], int]:
    """`mlpipe train` through the server, once its first epoch is done; and the child's pid."""
    process = subprocess.Popen(
        ["mlpipe", "train"],
        cwd=project,
        env=subprocess_env(server.env()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "epoch 1:" in line:
            break
    children = server.forked("train", project)
    assert process.poll() is None and children, server.lines()
    return process, children[-1]


def gone(pid: int, within: float = 30) -> bool:
    """Whether ``pid`` has exited (and been reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_sigint_to_the_command_reaches_the_forked_stage(long_project: Path, server: Server) -> None:
    process, child = start_training(long_project, server)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert gone(child)
    assert server.exits([child]) == [130]
    assert not (long_project / "models" / "model.pt").exists()


def test_a_killed_command_takes_its_forked_stage_with_it(long_project: Path, server: Server) -> None:
    process, child = start_training(long_project, server)
    process.kill()
    process.wait(timeout=30)
    assert gone(child)
    assert server.exits([child]) == [128 + signal.SIGTERM]


def test_a_malformed_or_stalled_request_is_dropped_and_the_server_goes_on(
    project: Path, server: Server
) -> None:
    import socket

    before = server.forked("prepare", project)
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    garbage.connect(server.socket)
    garbage.sendall(b"\x00\x00\x00\x05no fds")  # a length, then a body, but no standard streams
    garbage.close()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(server.socket)  # and never sends anything
    try:
        run("mlpipe", "prepare", cwd=project, env=server.env())
    finally:
        stalled.close()
    (child,) = [pid for pid in server.forked("prepare", project) if pid not in before]
    assert server.exits([child]) == [0]
