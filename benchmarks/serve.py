"""Load test of `mlpipe serve` on this machine (`make bench-serve`); prints BENCHMARKS.md's table.

1. Bare forward: the server's own ONNX Runtime session on one test image, no HTTP.
2. Latency: single-image V2 requests sent open-loop at a fixed rate (each at its scheduled time,
   whether or not earlier ones have returned) by the small asyncio HTTP/1.1 client below; a
   request's latency runs from its scheduled time, so a stalled server is not hidden.
3. Throughput: `wrk` (closed loop, one thread) with more and more connections until the
   requests/s stop growing; the best rate without errors is the maximum sustained rate.
The load generators run on the same cores as the server, so the figures are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.data import read_split
from mlpipe.serving.local import LOOPBACK, LocalServer
from mlpipe.serving.server import ImageClassifier

WRK_CONNECTIONS = (1, 2, 4, 8, 16, 32, 64)
GOAL_P99_MS, GOAL_RPS, GOAL_OVERHEAD_MS = 10.0, 300.0, 3.0


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


def machine() -> str:
    """CPU model, cores and memory, for the record."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    mem_kib = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    memory = f"{int(mem_kib[1]) / 2**20:.0f} GiB" if mem_kib else "?"
    return f"{model[1].strip() if model else platform.processor()}, {os.cpu_count()} cores, {memory} RAM"


def bare_forward(model_dir: Path, image: np.ndarray, runs: int = 5000) -> np.ndarray:
    """Milliseconds per forward pass of one image through the server's model, without HTTP."""
    classifier = ImageClassifier(None, model_dir)
    classifier.load()
    pixels = image[None].astype(np.float32)
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


def max_throughput(url: str, body: bytes, seconds: int, script_dir: Path) -> list[WrkRun]:
    """wrk runs with growing concurrency, until throughput grows by less than 5%."""
    runs: list[WrkRun] = []
    for connections in WRK_CONNECTIONS:
        runs.append(wrk(url, body, connections, seconds, script_dir))
        print(f"  wrk -c{connections}: {runs[-1].rps:.0f} req/s, p99 {runs[-1].p99_ms:.2f} ms", flush=True)
        if len(runs) > 2 and runs[-1].rps < 1.05 * max(r.rps for r in runs[:-1]):
            break
    return runs


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary(forward: np.ndarray, latency: Latencies, sustained: Latencies, runs: list[WrkRun]) -> list[str]:
    """The Markdown tables for BENCHMARKS.md: figures against the goals, then every wrk run."""
    forward_p50, forward_p99 = np.percentile(forward, [50, 99])
    overhead = latency.pct(50) - forward_p50
    best = max((r for r in runs if r.errors == 0), key=lambda r: r.rps, default=None)
    rows = [
        ("bare forward, 1 image (ONNX Runtime, p50 / p99)", f"{forward_p50:.3f} / {forward_p99:.3f} ms", ""),
        *(
            (
                f"single-image V2 requests at {run.rate:.0f} req/s for {run.seconds:.0f} s (p50 / p99 / max)",
                f"{run.pct(50):.2f} / {run.pct(99):.2f} / {run.millis.max():.2f} ms, {run.errors} errors "
                f"(sent late: p50 {np.median(run.late):.2f}, p99 {np.percentile(run.late, 99):.2f} ms)",
                goal,
            )
            for run, goal in (
                (latency, f"p99 ≤ {GOAL_P99_MS:g} ms: {verdict(latency.pct(99) <= GOAL_P99_MS)}"),
                (sustained, ""),
            )
        ),
        (
            "server overhead over the bare forward (p50 − p50)",
            f"{overhead:.2f} ms",
            f"≤ {GOAL_OVERHEAD_MS:g} ms: {verdict(overhead <= GOAL_OVERHEAD_MS)}",
        ),
        (
            "maximum sustained throughput (wrk, closed loop, no errors)",
            f"{best.rps:.0f} req/s at {best.connections} connections, p99 {best.p99_ms:.2f} ms"
            if best
            else "-",
            f"≥ {GOAL_RPS:g} req/s: {verdict(best is not None and best.rps >= GOAL_RPS)}",
        ),
    ]
    return [
        "| measure | result | goal |",
        "|---|---|---|",
        *(f"| {measure} | {result} | {goal} |" for measure, result, goal in rows),
        "",
        "| wrk connections | req/s | p50 | p99 | errors |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r.connections} | {r.rps:.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {r.errors} |"
            for r in runs
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/package"))
    parser.add_argument("--data-dir", type=Path, default=Path("data/prepared"))
    parser.add_argument("--rate", type=float, default=100.0, help="Requests/s of the latency run.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of the latency run.")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="Length of each wrk run.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk")

    image = read_split("test", args.data_dir).images[0]
    forward = bare_forward(args.model_dir, image)
    print(f"bare forward: p50 {np.percentile(forward, 50):.4f} ms, p99 {np.percentile(forward, 99):.4f} ms")

    with (
        tempfile.TemporaryDirectory() as scratch,
        LocalServer(args.model_dir, Path(scratch) / "serve.log") as server,
    ):
        model = json.loads((args.model_dir / "package.json").read_text())["name"]
        path = f"/v2/models/{model}/infer"
        tensor = {"name": "pixels", "shape": [1, *image.shape], "datatype": "UINT8"}
        body = json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]}).encode()
        request = http_request(server.port, path, body)
        asyncio.run(open_loop(server.port, request, 200, 2))
        latency = asyncio.run(open_loop(server.port, request, args.rate, args.seconds))
        print(f"{args.rate:.0f} req/s: p50 {latency.pct(50):.2f} ms, p99 {latency.pct(99):.2f} ms")
        sustained = asyncio.run(open_loop(server.port, request, GOAL_RPS, 10))
        print(f"{GOAL_RPS:.0f} req/s: p50 {sustained.pct(50):.2f} ms, p99 {sustained.pct(99):.2f} ms")
        runs = max_throughput(server.url + path, body, args.wrk_seconds, Path(scratch))

    print("\n".join(["", f"Machine: {machine()}; server and load generators share its cores.", ""]))
    print("\n".join(summary(forward, latency, sustained, runs)))


if __name__ == "__main__":
    main()
