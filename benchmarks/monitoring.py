"""Monitoring on a live server (`make bench-monitoring`): its cost, and the dashboard drawn from real data.

1. Cost: `mlpipe serve` with its default settings, once with the model metrics and the drift
   window and once with `--no-monitoring`: single-image V2 requests open-loop at 300 req/s for
   10 s (p50/p99), then `wrk -t1 -c2` closed loop for 10 s (req/s, p99). Same client code as
   benchmarks/serve.py.
2. Dashboard: a real Prometheus (scraping every second) watches a server (default drift window)
   while this script sends the test split for a while, then an inverted copy of it,
   with an invalid request now and then; each panel of deploy/monitoring/mlpipe-dashboard.json
   is then queried over that time (`$__rate_interval` = 10 s) and drawn with matplotlib, with
   the drift alert's firing time shaded: docs/monitoring/dashboard.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
import numpy as np
from benchmarks.machine import describe
from benchmarks.serve import http_request, open_loop, wrk
from harness.monitoring import DASHBOARD, RULES_FILE, short_rules
from harness.servers import mlpipe_server, prometheus_server

from mlpipe.contracts import drift
from mlpipe.contracts.data import read_split

RATE_INTERVAL = "10s"
PICTURE = Path("docs/monitoring/dashboard.png")


def v2_request(images: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "pixels", "shape": list(images.shape), "datatype": "UINT8"}
    return {"inputs": [{**tensor, "data": images.ravel().tolist()}]}


def cost(model_dir: Path, image: np.ndarray, scratch: Path) -> list[str]:
    """BENCHMARKS.md's table rows: the server with and without monitoring."""
    rows = []
    for label, extra in (
        ("with model metrics and drift window", []),
        ("`--no-monitoring`", ["--no-monitoring"]),
    ):
        with mlpipe_server(model_dir, extra) as server:
            model = json.loads((model_dir / "package.json").read_text())["name"]
            path = f"/v2/models/{model}/infer"
            body = json.dumps(v2_request(image[None])).encode()
            request = http_request(server.port, path, body)
            asyncio.run(open_loop(server.port, request, 200, 2))  # warm up
            latency = asyncio.run(open_loop(server.port, request, 300, 10))
            closed = wrk(server.url + path, body, 2, 10, scratch)
        rows.append(
            f"| {label} | {latency.pct(50):.2f} / {latency.pct(99):.2f} ms | "
            f"{closed.rps:,.0f} req/s, p99 {closed.p99_ms:.2f} ms | {latency.errors + closed.errors} |"
        )
        print(rows[-1], flush=True)
    return rows


def traffic(url: str, model: str, images: np.ndarray, seconds: float, rate: float) -> None:
    """One random image per request at ``rate`` requests/s, and an invalid request every 2 s."""
    rng = np.random.default_rng(0)
    bad = v2_request(np.zeros((1, images.shape[1], images.shape[2] + 1), dtype=np.uint8))
    with httpx.Client(base_url=url, timeout=10) as client:
        start = time.monotonic()
        for i in range(int(seconds * rate)):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            body = bad if i % int(2 * rate) == 0 else v2_request(images[rng.integers(len(images))][None])
            client.post(f"/v2/models/{model}/infer", json=body)


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    promql = expr.replace("$__rate_interval", RATE_INTERVAL).replace('=~"$model"', '=~".*"')
    params = {"query": promql, "start": start, "end": end, "step": "1s"}
    body = httpx.get(f"{prometheus}/api/v1/query_range", params=params, timeout=30).json()
    if body["status"] != "success":
        raise RuntimeError(f"{promql}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def draw(prometheus: str, start: float, end: float, shift_at: float, out: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = sorted(board["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows = (len(panels) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(13, 3.1 * rows), sharex=True)
    firing = query_range(prometheus, 'ALERTS{alertname="MlpipeInputDrift", alertstate="firing"}', start, end)
    fired = [float(t) - start for series in firing for t, _ in series["values"]]
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end):
                t = np.array([float(x) for x, _ in series["values"]]) - start
                v = np.array([float(y) for _, y in series["values"]])
                ax.plot(t, v, lw=1.2, label=legend(target["legendFormat"], series["metric"]))
        if panel["title"] == "Input drift":
            ax.axhline(drift.DRIFT_THRESHOLD, color="red", ls="--", lw=1, label="alert threshold")
            ax.set_yscale("symlog", linthresh=0.5)  # the threshold and a PSI of 5 on one axis
        if fired:
            ax.axvspan(min(fired), max(fired), color="red", alpha=0.08)
        ax.axvline(shift_at - start, color="grey", ls=":", lw=1)
        ax.set_title(f"{panel['title']} ({panel['fieldConfig']['defaults']['unit']})", fontsize=10)
        ax.grid(alpha=0.3)
        _, names = ax.get_legend_handles_labels()
        if names:
            ax.legend(fontsize=7, ncol=min(5, len(names)), loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("seconds (dotted: inputs switch to an inverted copy; shaded: drift alert firing)")
    figure.suptitle(f"{board['title']}: the dashboard's panels queried from Prometheus", fontsize=12)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    print(f"wrote {out}")


def dashboard_picture(model_dir: Path, images: np.ndarray, pixel_max: int, scratch: Path, out: Path) -> None:
    model = json.loads((model_dir / "package.json").read_text())["name"]
    with mlpipe_server(model_dir) as server:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["mlpipe-rules.yaml"],
            "scrape_configs": [
                {"job_name": "mlpipe", "static_configs": [{"targets": [server.url.removeprefix("http://")]}]}
            ],
        }
        rules = {"mlpipe-rules.yaml": short_rules(RULES_FILE.read_text(), "10s")}
        with prometheus_server(json.dumps(config), rules) as prometheus:
            time.sleep(3)
            start = time.time()
            traffic(server.url, model, images, 60, 20)
            shift_at = time.time()
            traffic(server.url, model, drift.shifted(images, "invert", pixel_max), 40, 20)
            time.sleep(3)
            draw(prometheus, start, time.time(), shift_at, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/package"))
    parser.add_argument("--data-dir", type=Path, default=Path("data/prepared"))
    parser.add_argument("--picture", type=Path, default=PICTURE)
    parser.add_argument("--skip-cost", action="store_true", help="Only draw the dashboard.")
    args = parser.parse_args()
    test = read_split("test", args.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        if not args.skip_cost:
            rows = cost(args.model_dir, test.images[0], Path(scratch))
            print(f"\nMachine: {describe()}; server and load generators share its cores.\n")
            print("| server | 300 req/s open loop: p50 / p99 | wrk -c2, 10 s | errors |")
            print("|---|---:|---:|---:|")
            print("\n".join(rows))
        dashboard_picture(args.model_dir, test.images, test.pixel_max, Path(scratch), args.picture)


if __name__ == "__main__":
    main()
