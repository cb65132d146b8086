"""`mlpipe serve` as a local child process on 127.0.0.1: started, waited for, stopped by PID.

Used by the load benchmark and the end-to-end tests; handy in a notebook too:
``with LocalServer(Path("models/package"), Path("serve.log")) as server: ...server.url...``
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from mlpipe.errors import MlpipeError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """A model server process serving ``model_dir`` on 127.0.0.1, with its output in ``log_path``."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server has not been started")
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote, for error messages."""
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> LocalServer:
        """Start the process and return once /v2/health/ready answers; raise if it never does."""
        command = [sys.executable, "-m", "mlpipe", "serve", "--model-dir", str(self.model_dir)]
        command += ["--host", LOOPBACK, "--http-port", str(self.port), *self.extra_args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MlpipeError(
                    f"mlpipe serve exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise MlpipeError(
            f"mlpipe serve was not ready within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID (a graceful shutdown), then SIGKILL if it is still running after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
