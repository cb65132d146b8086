"""Load test of `mlpipe serve` and the servers a user would pick instead (`make bench-serve`).

The same ONNX model (models/package/model.onnx), one test image per request, on this machine:
- `mlpipe serve` (KServe behind `mlpipe.serving.edge`, V2 JSON);
- `mlflow models serve` of the model saved with MLflow's ONNX flavor (`/invocations`);
- MLServer with its MLflow runtime, from its own virtual environment (``--mlserver-venv``;
  it cannot share one with kserve), V2 JSON;
- the floor: Starlette + uvicorn + ONNX Runtime and nothing else (benchmarks/floor_server.py).
For each: 1. latency of requests sent open-loop at a fixed rate (each at its scheduled time,
whether or not earlier ones have returned; a stalled server is not hidden); 2. `wrk` closed
loop, 1 connection, then 8: the best rate without errors is the maximum. Then a py-spy profile
of `mlpipe serve` under wrk (when py-spy is installed), by the library each sample is in.
The load generators share the cores with the server, so the figures are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from benchmarks.machine import describe
from harness.servers import LOOPBACK, Child, ServerError, child_process, free_port, http_ok

from mlpipe.contracts.data import read_split
from mlpipe.serving.model import ImageClassifier

BENCHMARKS_DIR = Path(__file__).resolve().parent
BIN_DIR = Path(sys.executable).parent
WRK_CONNECTIONS = (1, 8)


@dataclass(frozen=True)
class Latencies:
    """One open-loop run: each request's milliseconds from send to response, how late the
    generator sent it after its scheduled time (asyncio timers wake up to ~1 ms late), errors."""

    rate: float
    seconds: float
    millis: np.ndarray
    late: np.ndarray
    errors: int

    def pct(self, q: float) -> float:
        return float(np.percentile(self.millis, q))


def bare_forward(model_dir: Path, image: np.ndarray, runs: int = 5000) -> np.ndarray:
    """Milliseconds per forward pass of one image through the server's model, without HTTP."""
    classifier = ImageClassifier(None, model_dir)
    classifier.load()
    pixels = image[None]
    for _ in range(200):
        classifier.probabilities(pixels)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        classifier.probabilities(pixels)
        times[i] = time.perf_counter() - start
    return times * 1000


def http_request(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads the response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection(LOOPBACK, port))

    async def send(self, request: bytes) -> int:
        """The response's status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        await self.reader.readexactly(int(length[1]))
        return int(head.split(b" ", 2)[1])


async def open_loop(port: int, request: bytes, rate: float, seconds: float) -> Latencies:
    """Send ``request`` ``rate`` times a second for ``seconds``, on as many connections as needed."""
    idle: list[Connection] = [await Connection.open(port) for _ in range(4)]
    millis: list[float] = []
    late: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        connection = idle.pop() if idle else await Connection.open(port)
        sent = time.perf_counter()
        status = await connection.send(request)
        millis.append((time.perf_counter() - sent) * 1000)
        late.append((sent - scheduled) * 1000)
        errors += status != 200
        idle.append(connection)

    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.writer.close()
    return Latencies(rate, seconds, np.array(millis), np.array(late), errors)


@dataclass(frozen=True)
class WrkRun:
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _wrk_millis(out: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk's output:\n{out}")
    return float(match[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]


def wrk(url: str, body: bytes, connections: int, seconds: int, script_dir: Path) -> WrkRun:
    """One closed-loop wrk run posting ``body``."""
    script = script_dir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    errors = int(non_2xx[1]) if non_2xx else 0
    errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[0])) if socket_errors else 0
    return WrkRun(connections, float(rps[1]), _wrk_millis(out, "50"), _wrk_millis(out, "99"), errors)


@dataclass(frozen=True)
class Server:
    """A model server to start as a child process, and the one-image request it answers."""

    name: str
    command: list[str]
    path: str
    body: bytes
    ready_path: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@contextlib.contextmanager
def running(server: Server, timeout: float = 180.0) -> Iterator[Child]:
    """The server's process, once ``ready_path`` answers and it answers the benchmark request."""
    with child_process(server.command, env=os.environ | server.env) as child:
        child.wait_until(lambda: http_ok(server.url + server.ready_path), server.name, timeout)
        probe = httpx.post(server.url + server.path, content=server.body, timeout=10,
                           headers={"content-type": "application/json"})  # fmt: skip
        if probe.status_code != 200:
            raise ServerError(f"{server.name} refused the benchmark request: {probe.text[:500]}")
        yield child


@dataclass(frozen=True)
class Result:
    name: str
    latency: Latencies
    runs: list[WrkRun]

    @property
    def best(self) -> WrkRun | None:
        return max((r for r in self.runs if r.errors == 0), key=lambda r: r.rps, default=None)


def measure(server: Server, rate: float, seconds: float, wrk_seconds: int, scratch: Path) -> Result:
    request = http_request(server.port, server.path, server.body)
    asyncio.run(open_loop(server.port, request, min(rate, 100), 2))  # warm up
    latency = asyncio.run(open_loop(server.port, request, rate, seconds))
    print(f"{server.name}: {rate:.0f} req/s: p50 {latency.pct(50):.2f} ms, p99 {latency.pct(99):.2f} ms, "
          f"{latency.errors} errors", flush=True)  # fmt: skip
    runs = []
    for connections in WRK_CONNECTIONS:
        runs.append(wrk(server.url + server.path, server.body, connections, wrk_seconds, scratch))
        print(f"  wrk -c{connections}: {runs[-1].rps:.0f} req/s, p99 {runs[-1].p99_ms:.2f} ms", flush=True)
    return Result(server.name, latency, runs)


def mlflow_model(onnx_path: Path, image: np.ndarray, dest: Path) -> Path:
    """The package's ONNX model saved with MLflow's ONNX flavor, with a tensor signature of its
    input (the raw uint8 pixels) and its output (mlserver-mlflow fails to load a model whose signature has no
    outputs: "'NoneType' object has no attribute 'inputs'")."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    example = {session.get_inputs()[0].name: image[None]}
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, example), strict=True))
    mlflow.onnx.save_model(onnx.load(onnx_path), dest, signature=infer_signature(example, outputs))
    return dest


def v2_body(image: np.ndarray, datatype: str) -> bytes:
    tensor = {"name": "pixels", "shape": [1, *image.shape], "datatype": datatype}
    return json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]}).encode()


def servers(model_dir: Path, image: np.ndarray, scratch: Path, mlserver_venv: Path | None) -> list[Server]:
    """The four servers of the comparison (MLServer only if its virtual environment exists)."""
    model = json.loads((model_dir / "package.json").read_text())["name"]
    saved = mlflow_model(model_dir / "model.onnx", image, scratch / "mlflow-model")
    ports = [free_port() for _ in range(6)]
    result = [
        Server(
            "mlpipe serve",
            [sys.executable, "-m", "mlpipe", "serve", "--model-dir", str(model_dir), "--host", LOOPBACK,
             "--http-port", str(ports[0])],
            f"/v2/models/{model}/infer", v2_body(image, "UINT8"), "/v2/health/ready", ports[0],
        ),
        Server(
            "mlflow models serve",
            [str(BIN_DIR / "mlflow"), "models", "serve", "-m", str(saved), "--env-manager", "local",
             "-h", LOOPBACK, "-p", str(ports[1]), "-w", "1"],
            "/invocations",
            json.dumps({"inputs": {"pixels": image[None].tolist()}}).encode(),
            "/ping", ports[1],
        ),
        Server(
            "Starlette + uvicorn + ONNX Runtime (floor)",
            [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCHMARKS_DIR), "floor_server:app",
             "--host", LOOPBACK, "--port", str(ports[2]), "--no-access-log"],
            "/v2/models/floor/infer", v2_body(image, "UINT8"), "/v2/health/ready", ports[2],
            {"MLPIPE_FLOOR_MODEL": str(model_dir / "model.onnx")},
        ),
    ]  # fmt: skip
    if mlserver_venv is not None:
        (scratch / "mlserver" / "model").mkdir(parents=True)
        (scratch / "mlserver" / "settings.json").write_text(json.dumps(
            # One process: with parallel inference workers (the default) the model is loaded in a
            # worker, whose errors only show as "Worker process stopped unexpectedly".
            {"host": LOOPBACK, "http_port": ports[3], "grpc_port": ports[4], "metrics_port": ports[5],
             "parallel_workers": 0}
        ))  # fmt: skip
        (scratch / "mlserver" / "model" / "model-settings.json").write_text(json.dumps(
            {"name": "mlpipe", "implementation": "mlserver_mlflow.MLflowRuntime",
             "parameters": {"uri": str(saved)}}
        ))  # fmt: skip
        result.insert(2, Server(
            "MLServer + mlserver-mlflow",
            [str(mlserver_venv / "bin" / "mlserver"), "start", str(scratch / "mlserver")],
            "/v2/models/mlpipe/infer", v2_body(image, "UINT8"), "/v2/models/mlpipe/ready",
            ports[3],
        ))  # fmt: skip
    return result


# What a profile sample of a request is doing: the first of these found among the frames below
# uvicorn's ASGI entry (run_asgi), so a sample counts once, in the most specific place.
PROFILE_GROUPS = (
    ("onnxruntime", "the model's forward pass (ONNX Runtime)"),
    ("mlpipe/serving/validation", "mlpipe: request checks"),
    ("mlpipe/serving/wire", "mlpipe: V2 decoding and encoding"),
    ("logging/__init__", "the access line (logging)"),
    ("ModelMonitor.observe", "mlpipe: the model's metrics and drift window"),
    ("prometheus_client", "KServe's Prometheus metrics"),
    ("ImageClassifier._v2_response", "mlpipe: the model class (response building)"),
    ("kserve/", "KServe: dataplane, model call, InferRequest/InferResponse"),
    ("RequestResponseCycle.send", "writing the response (uvicorn, uvloop socket)"),
    ("mlpipe/serving/edge", "mlpipe: the HTTP edge"),
    ("starlette", "Starlette"),
)


def _profile_group(frames: list[str]) -> str:
    entry = next((i for i, f in enumerate(frames) if "run_asgi" in f), None)
    if entry is None:
        if any("httptools_impl" in f for f in frames):
            return "HTTP parsing (uvicorn, httptools)"
        return "event loop (uvloop: polling, socket reads)"
    below = frames[entry + 1 :]
    return next((g for key, g in PROFILE_GROUPS if any(key in f for f in below)), "ASGI plumbing (uvicorn)")


def profile(server: Server, seconds: int, scratch: Path) -> list[tuple[str, float]]:
    """Share of py-spy's samples of the server under wrk -c1, by what the request is doing."""
    raw = scratch / "profile.txt"
    with running(server) as process:
        spy = subprocess.Popen(
            ["py-spy", "record", "--format", "raw", "--rate", "500", "--duration", str(seconds + 1),
             "--nonblocking", "-o", str(raw), "--pid", str(process.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        wrk(server.url + server.path, server.body, 1, seconds, scratch)
        spy.wait(60)
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[_profile_group(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return [(group, 100 * n / total) for group, n in counts.most_common()]


def table(results: list[Result], rate: float) -> list[str]:
    """BENCHMARKS.md's four-server table."""
    rows = [
        f"| server | p50 / p99 at {rate:.0f} req/s | errors | req/s, 1 connection (p99) "
        "| req/s, 8 connections (p99) | max req/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c1, c8 = r.runs
        best = f"{r.best.rps:.0f}" if r.best else "-"
        rows.append(
            f"| {r.name} | {r.latency.pct(50):.2f} / {r.latency.pct(99):.2f} ms | {r.latency.errors} | "
            f"{c1.rps:.0f} ({c1.p99_ms:.1f} ms) | {c8.rps:.0f} ({c8.p99_ms:.1f} ms) | {best} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/package"))
    parser.add_argument("--data-dir", type=Path, default=Path("data/prepared"))
    parser.add_argument("--rate", type=float, default=200.0, help="Requests/s of the latency runs.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each latency run.")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="Length of each wrk run.")
    parser.add_argument(
        "--mlserver-venv",
        type=Path,
        default=Path(".cache/mlserver"),
        help="A virtual environment with mlserver and mlserver-mlflow (skipped if absent).",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")
    mlserver = args.mlserver_venv if (args.mlserver_venv / "bin" / "mlserver").exists() else None
    if mlserver is None:
        print(f"MLServer skipped: no {args.mlserver_venv}/bin/mlserver", flush=True)

    image = read_split("test", args.data_dir).images[0]
    forward = bare_forward(args.model_dir, image)
    print(f"bare forward: p50 {np.percentile(forward, 50):.4f} ms, p99 {np.percentile(forward, 99):.4f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        results = []
        candidates = servers(args.model_dir, image, scratch, mlserver)
        for server in candidates:
            try:
                with running(server):
                    results.append(measure(server, args.rate, args.seconds, args.wrk_seconds, scratch))
            except RuntimeError as e:  # one server that does not start does not void the others
                print(f"{server.name}: not measured: {e}", flush=True)
        shares = profile(candidates[0], args.wrk_seconds, scratch) if shutil.which("py-spy") else []

    print("\n".join(["", f"Machine: {describe()}; server and load generators share its cores.", ""]))
    print(f"Bare forward of one image: p50 {np.percentile(forward, 50):.3f} ms, "
          f"p99 {np.percentile(forward, 99):.3f} ms\n")  # fmt: skip
    print("\n".join(table(results, args.rate)))
    if shares:
        print("\n| what `mlpipe serve` is doing under wrk -c1 (py-spy samples) | share |")
        print("|---|---:|")
        print("\n".join(f"| {group} | {share:.0f} % |" for group, share in shares))


if __name__ == "__main__":
    main()
