"""Warm processes: a server that has imported the stages' libraries forks one per command.

A stage command is a fresh Python process that spends seconds importing torch, MLflow,
scikit-learn and matplotlib before it does any work; a study runs the same stages dozens of
times. `mlpipe tune` therefore starts ``python -m mlpipe.workflows.tuning.prefork serve SOCKET``
once and sets ``MLPIPE_PREFORK=SOCKET`` for its trials. A stage command that finds the variable
(``mlpipe train`` as DVC runs it) connects, hands over its argv, its entry point, working
directory, environment and standard streams, and waits: the server forks a child that takes
them on and runs the command through that entry point, then sends back the child's exit
status. A trial's DVC process itself is forked the same way (``python -m
mlpipe.workflows.tuning.prefork run mlpipe.workflows.tuning.experiment ...``). The command
forwards SIGINT, SIGTERM and SIGHUP to the child's process group (the child and what it
started), and a child whose command went away is sent SIGTERM.

A child gives the same bytes as a fresh process: it runs the same code, it pins the same
numerics (the server imports torch pinned as ``train.numerics`` says, and a child whose
params ask for the other numerics declines, so the command runs in a fresh process after
all), and nothing has run torch, MLflow or a random generator before the fork. Any failure to
reach the server also means a fresh process: the warm path only ever saves time.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ENV = "MLPIPE_PREFORK"
STAGES = frozenset({"prepare", "train", "evaluate", "package"})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAY_PREFIX = "mlpipe prefork: "  # the server's verbose lines: one per fork and exit
REQUEST_TIMEOUT = 10.0  # seconds a command has to send its request once it connected
_LENGTH = struct.Struct("!I")
_SIGNAL = struct.Struct("!i")


# --- the command's side ------------------------------------------------------------------------
def delegate(argv: Sequence[str], entry: str) -> int | None:
    """Run ``mlpipe ARGV`` in a child of the server ``$MLPIPE_PREFORK`` names, through ``entry``
    (``module:function``, the command's own entry point), and return its exit status; ``None``
    when there is no server, the command is not a stage, or the child declined."""
    command = [arg for arg in argv if arg not in ("-v", "--verbose")]
    if len(command) != 1 or command[0] not in STAGES:
        return None
    return _request({"argv": list(argv), "entry": entry})


def delegate_module(module: str, argv: Sequence[str]) -> int | None:
    """Run ``MODULE.main(ARGV)`` in a child of the server; ``None`` when there is no server."""
    return _request({"module": module, "argv": list(argv)})


def _request(command: dict[str, object]) -> int | None:
    path = os.environ.get(ENV)
    if not path:
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        request = json.dumps({**command, "cwd": str(Path.cwd()), "env": dict(os.environ)}).encode()
        socket.send_fds(connection, [_LENGTH.pack(len(request))], [0, 1, 2])
        connection.sendall(request)
    except OSError:
        connection.close()
        return None

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            connection.sendall(_SIGNAL.pack(signum))

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        reply = connection.makefile("rb").readline()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        connection.close()
    if not reply:
        return 128 + signal.SIGKILL  # the server went away mid-command
    answer = json.loads(reply)
    return None if answer.get("declined") else int(answer["exit"])


# --- the server's side -------------------------------------------------------------------------
@contextlib.contextmanager
def warm_server(
    numerics: str, verbose: bool = False, log: Path | None = None, ready_timeout: float = 60.0
) -> Iterator[str]:
    """Run a server for as long as the block runs; yields the socket path for ``$MLPIPE_PREFORK``.

    It prints to ``log`` (default: this process's stderr). Commands that connect while it is
    still importing wait for it; if it never comes up they run in fresh processes."""
    directory = Path(tempfile.mkdtemp(prefix="mlpipe-prefork-"))
    path = directory / "socket"
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("a")) if log is not None else None
        # -P: no working directory on sys.path, as for the `mlpipe` script
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", __name__, "serve", str(path), f"--numerics={numerics}"]
            + (["--verbose"] if verbose else []),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # the terminal's Ctrl-C goes to the commands, which forward it
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield str(path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# What the stage commands import, slowest first; the SQLite store's modules alone take ~1.7 s.
PRELOADED = (
    "torch",
    "torch._inductor",  # what torch.use_deterministic_algorithms imports on first call: ~3.5 s
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "sklearn.metrics",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",  # what a figure's first savefig imports
    "PIL.PngImagePlugin",
    "mlpipe.cli",
    "mlpipe.ml.prepare",
    "mlpipe.ml.train",
    "mlpipe.ml.evaluate",
    "mlpipe.tracking.runs",
    "dvc.repo",  # a trial's experiment (mlpipe.workflows.tuning.experiment)
    "dvc.repo.experiments",
    "dvc.repo.experiments.executor.local",
    "dvc.repo.experiments.queue.tempdir",
    "mlpipe.workflows.tuning.experiment",
)


def preload(numerics: str) -> None:
    """Import what the stage commands import, torch pinned to ``numerics``; run nothing."""
    from mlpipe.core import numerics as pinning

    pinning.pin(numerics)  # type: ignore[arg-type]
    import matplotlib

    matplotlib.use("Agg")
    for module in PRELOADED:
        importlib.import_module(module)


def serve(path: Path, numerics: str, verbose: bool = False) -> None:
    """Listen on ``path``, fork a child per request, until stopped or the parent exits."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)  # requests wait here while the preload runs
    preload(numerics)
    # What the imports allocated is never collected: the collector ignores it in the children
    # (no full collection walks the whole preloaded heap) and leaves its pages shared.
    gc.freeze()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command's Ctrl-C is forwarded, not ours
    waiting: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    try:
        while not stop.is_set() and os.getppid() == parent:
            if selector.select(timeout=0.5):
                connection, _ = listener.accept()
                child = _fork(connection, verbose)
                if child is None:
                    connection.close()
                else:
                    waiting[child] = connection
            _reap(waiting, block=False, verbose=verbose)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for child in waiting:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        _reap(waiting, block=True, verbose=verbose)


def _fork(connection: socket.socket, verbose: bool) -> int | None:
    """Fork a child for the request on ``connection``; its pid, or None for a malformed request."""
    connection.settimeout(REQUEST_TIMEOUT)  # a command that connects and stalls cannot block us
    fds: list[int] = []
    try:
        header, fds, _, _ = socket.recv_fds(connection, _LENGTH.size, 3)
        (length,) = _LENGTH.unpack(header)
        body = b""
        while len(body) < length:
            chunk = connection.recv(length - len(body))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        request = json.loads(body)
        if len(fds) != 3:
            raise ValueError("a request carries the command's stdin, stdout and stderr")
    except (OSError, ValueError, struct.error):  # socket.timeout is an OSError
        for fd in fds:
            os.close(fd)
        return None
    connection.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        program = f"python -m {request['module']}" if "module" in request else "mlpipe"
        _say(verbose, f"{pid}: {program} {' '.join(request['argv'])} in {request['cwd']}")
        return pid
    status = 1
    try:
        status = _child(connection, fds, request, verbose)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _child(connection: socket.socket, fds: list[int], request: dict, verbose: bool) -> int:
    """In the forked child: become the command, run it, return its exit status."""
    os.setpgid(0, 0)  # a group of its own, as the processes it starts join: signals reach them all
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    module = request.get("module")
    if module is None:
        os.environ.pop(ENV, None)  # what a stage starts itself (torchrun's workers) starts fresh
        if not _numerics_match():
            _say(verbose, f"{os.getpid()}: declined: params.yaml asks for other numerics than the server's")
            connection.sendall(json.dumps({"declined": True}).encode() + b"\n")
            return 0
    threading.Thread(target=_relay_signals, args=(connection,), daemon=True).start()
    try:
        if module is None:
            entry_module, _, entry_function = request["entry"].partition(":")
            sys.argv = ["mlpipe", *request["argv"]]
            getattr(importlib.import_module(entry_module), entry_function)()
            status = 0
        else:
            sys.argv = [module, *request["argv"]]
            status = importlib.import_module(module).main(request["argv"])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # what a fresh process would run on its way out (MLflow's, logging's)
    return status


def _numerics_match() -> bool:
    """Whether the params in the working directory ask for the numerics torch was imported with."""
    from mlpipe.core import numerics
    from mlpipe.core.errors import MlpipeError
    from mlpipe.core.params import load_params

    try:
        numerics.pin(load_params().train.numerics)
    except numerics.NumericsError:
        return False
    except MlpipeError:
        return True  # the command itself reports a bad params.yaml, as it would in a fresh process
    return True


def _relay_signals(connection: socket.socket) -> None:
    """Deliver the signals the command forwards; stop if the command is gone."""
    while True:
        try:
            data = connection.recv(_SIGNAL.size)
        except OSError:
            data = b""
        if len(data) < _SIGNAL.size:
            os.killpg(0, signal.SIGTERM)
            return
        os.killpg(0, _SIGNAL.unpack(data)[0])


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(f"{SAY_PREFIX}{message}", file=sys.__stderr__, flush=True)


def _reap(waiting: dict[int, socket.socket], block: bool, verbose: bool) -> None:
    """Send each finished child's exit status to its command."""
    while waiting:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = waiting.pop(pid, None)
        if connection is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
        _say(verbose, f"{pid}: exit {code}")
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
        connection.close()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.workflows.tuning.prefork", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run a server")
    serving.add_argument("socket", type=Path, help="the Unix socket to listen on (must not exist)")
    serving.add_argument("--numerics", choices=("portable", "native"), default="portable")
    serving.add_argument("-v", "--verbose", action="store_true", help="a line on stderr per command and exit")
    running = commands.add_parser("run", help="run MODULE.main(ARGS) through $MLPIPE_PREFORK's server")
    running.add_argument("module")
    running.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.socket, args.numerics, args.verbose)
        return 0
    status = delegate_module(args.module, args.args)
    if status is None:  # no server: run it here
        status = importlib.import_module(args.module).main(args.args)
    return status


if __name__ == "__main__":
    sys.exit(_main())
