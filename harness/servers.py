"""Real servers on 127.0.0.1 for tests and benchmarks: `mlpipe serve`, S3 (moto), PostgreSQL,
MLflow and Prometheus; the benchmarks start their other servers with ``child_process`` too.

Each launcher is a context manager: it starts the server as a child process on a free port,
waits with a deadline until the server answers, yields its address, and stops the server's
process group by its id (the server's PID) when the block ends, also when the block fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
BIN_DIR = Path(sys.executable).parent

# moto accepts any key; these make the fake obvious to readers and credential scanners.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
POSTGRES_USER = "mlpipe"
POSTGRES_PROGRAMS = ("initdb", "postgres")


class ServerError(RuntimeError):
    """A server did not start or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without outside MLflow/AWS settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Child:
    """A server process started by ``child_process``, with its output in a temporary file."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, limit: int | None = 4000) -> str:
        """What the process printed so far: the last ``limit`` characters (None: all of it)."""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return text[-limit:] if limit else text

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``ready`` until it holds; fail with the output if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise ServerError(f"{what} exited with status {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{what} did not answer within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.1)


@contextmanager
def child_process(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    user: pwd.struct_passwd | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[Child]:
    """Run ``args`` in a process group of its own; stop the group by its id (the leader's PID)
    on exit, so that helpers the server forks (e.g. MLflow's uvicorn) stop too."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_user(user),
        )
        try:
            yield Child(process, log)
        finally:
            stop(process, stop_signal)


def stop(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM, grace: float = 15) -> None:
    """Send ``stop_signal`` to the process group that ``child_process`` started; after the leader
    exits, or ``grace`` seconds, kill whatever is left of the group."""
    _signal_group(process.pid, stop_signal)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a child as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def http_ok(url: str) -> bool:
    """Whether ``url`` answers a GET with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback http only)
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class ModelServer:
    """A running `mlpipe serve`: its address and its process."""

    port: int
    child: Child

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@contextmanager
def mlpipe_server(model_dir: Path, args: Sequence[str] = (), timeout: float = 60) -> Iterator[ModelServer]:
    """`mlpipe serve` of the package in ``model_dir`` (plus ``args``), once it is ready."""
    port = free_port()
    command = [sys.executable, "-m", "mlpipe", "serve", "--model-dir", str(model_dir)]
    command += ["--host", LOOPBACK, "--http-port", str(port), *args]
    with child_process(command, env=os.environ) as child:
        server = ModelServer(port, child)
        ready = server.url + "/v2/health/ready"
        child.wait_until(lambda: http_ok(ready), f"mlpipe serve at {server.url}", timeout)
        yield server


@contextmanager
def threaded_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in HTTP API: ``handler`` served on 127.0.0.1 from a thread of this process;
    yields its base URL (``http://127.0.0.1:PORT``) and stops it when the block ends."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def s3_server(port: int | None = None, timeout: float = 30) -> Iterator[str]:
    """moto's standalone S3-compatible server; yields its endpoint URL. It keeps everything in
    memory: after a restart on the same ``port`` the buckets are gone."""
    port = port or free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    args = [str(BIN_DIR / "moto_server"), "-H", LOOPBACK, "-p", str(port)]
    with child_process(args, env=clean_env()) as server:
        server.wait_until(lambda: http_ok(endpoint + "/moto-api/"), f"moto S3 server at {endpoint}", timeout)
        yield endpoint


def mlflow_s3_env(endpoint: str) -> dict[str, str]:
    """The environment an MLflow client or server needs to use S3 at ``endpoint`` directly."""
    return {**S3_TEST_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for ``endpoint`` with the fake test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"],
    )


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket with a fresh name on ``endpoint``; return its name."""
    name = f"mlpipe-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key in ``bucket`` under ``prefix``, sorted."""
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def postgres_bin_dir() -> Path | None:
    """Where PostgreSQL's server programs are: Debian's newest /usr/lib/postgresql/*/bin, or PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(debian):
        if all((candidate / program).is_file() for program in POSTGRES_PROGRAMS):
            return candidate
    found = shutil.which("postgres")
    if found and shutil.which("initdb", path=str(Path(found).parent)):
        return Path(found).parent
    return None


def _postgres_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerError("running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextmanager
def postgres_server(database: str = "mlflow", timeout: float = 60) -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temporary directory (trust authentication, loopback
    only, no fsync); yields ``postgresql://mlpipe@127.0.0.1:PORT/<database>``."""
    import psycopg2

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise ServerError("PostgreSQL server programs (initdb, postgres) are not installed")
    user = _postgres_user()
    root = Path(tempfile.mkdtemp(prefix="mlpipe-postgres-"))
    try:
        if user:
            os.chown(root, user.pw_uid, user.pw_gid)
        data_dir = root / "data"
        initdb = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", POSTGRES_USER]
        initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(
            initdb, cwd=root, env=clean_env(), capture_output=True, text=True, check=False, **_as_user(user)
        )
        if result.returncode != 0:
            raise ServerError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        port = free_port()
        args = [str(bin_dir / "postgres"), "-D", str(data_dir), "-h", LOOPBACK, "-p", str(port)]
        args += ["-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off"]
        admin = {"host": LOOPBACK, "port": port, "user": POSTGRES_USER, "dbname": "postgres"}

        def accepts_connections() -> bool:
            try:
                psycopg2.connect(connect_timeout=2, **admin).close()
            except psycopg2.OperationalError:
                return False
            return True

        # SIGINT is PostgreSQL's "fast shutdown": it does not wait for clients to disconnect.
        with child_process(args, env=clean_env(), cwd=root, user=user, stop_signal=signal.SIGINT) as server:
            server.wait_until(accepts_connections, f"PostgreSQL on port {port}", timeout)
            connection = psycopg2.connect(**admin)
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{database}"')
            connection.close()
            yield f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{port}/{database}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sqlalchemy_url(postgres_uri: str) -> str:
    """The SQLAlchemy URL (psycopg2 driver) of a ``postgresql://`` URI, as MLflow takes it."""
    return postgres_uri.replace("postgresql://", "postgresql+psycopg2://", 1)


@contextmanager
def mlflow_server(
    backend_uri: str,
    artifact_root: str,
    env: Mapping[str, str] | None = None,
    *,
    serve_artifacts: bool = False,
    timeout: float = 120,
) -> Iterator[str]:
    """``mlflow server`` with one worker and no job runner; yields its tracking URI.

    ``env`` reaches the server (e.g. MLFLOW_S3_ENDPOINT_URL and AWS credentials for an S3
    ``artifact_root``). Without ``serve_artifacts`` clients write artifacts to the store directly.
    """
    port = free_port()
    uri = f"http://{LOOPBACK}:{port}"
    args = [str(BIN_DIR / "mlflow"), "server", "--backend-store-uri", backend_uri]
    args += ["--default-artifact-root", artifact_root, "--host", LOOPBACK, "--port", str(port)]
    args += ["--workers", "1", "--serve-artifacts" if serve_artifacts else "--no-serve-artifacts"]
    server_env = clean_env({**(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    with child_process(args, env=server_env) as server:
        server.wait_until(lambda: http_ok(uri + "/health"), f"MLflow server at {uri}", timeout)
        yield uri


def prometheus_program() -> str | None:
    """Where Prometheus's server program is (Debian's `prometheus` package), if installed."""
    return shutil.which("prometheus")


@contextmanager
def prometheus_server(
    config: str, rules: Mapping[str, str] | None = None, timeout: float = 60
) -> Iterator[str]:
    """Prometheus on 127.0.0.1 with ``config`` (prometheus.yml text) and rule files ``rules``
    (name -> text, beside the config), its data in a temporary directory; yields its URL."""
    program = prometheus_program()
    if program is None:
        raise ServerError("prometheus is not installed (Debian package `prometheus`)")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    with tempfile.TemporaryDirectory(prefix="mlpipe-prometheus-") as root:
        for name, text in {"prometheus.yml": config, **(rules or {})}.items():
            (Path(root) / name).write_text(text)
        args = [program, f"--config.file={root}/prometheus.yml", f"--storage.tsdb.path={root}/data"]
        args += [f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"]
        with child_process(args, env=clean_env(), cwd=Path(root)) as server:
            server.wait_until(lambda: http_ok(url + "/-/ready"), f"Prometheus at {url}", timeout)
            yield url
