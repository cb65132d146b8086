"""Scaling out on this machine, in throwaway clones of this repository (params as committed).

1. Training throughput with 1 and 2 ranks: `mlpipe train` with train.nproc_per_node = 1, then 2
   (mlpipe launches torchrun itself, gloo on the CPU), each `--repeats` times, alternating.
   samples/s is the run's `train_samples_per_second` metric (epochs × train examples / the fit
   loop's seconds, per-epoch validation included); wall is the whole command (imports, torchrun's
   start, MLflow logging). Scaling efficiency = samples/s with N ranks / (N × samples/s with 1).
2. `mlpipe kfp run --local` against `dvc repro` for the same pipeline: from scratch in fresh
   clones (every stage runs), then with everything up to date (nothing runs), alternating.

Usage: python benchmarks/distributed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    "GLOO_SOCKET_IFNAME": "lo",
}


def timed(*args: str, cwd: Path) -> float:
    """Wall seconds of a command that must succeed."""
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def clone(work: Path, name: str) -> Path:
    project = work / name
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    return project


def set_ranks(project: Path, ranks: int) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["nproc_per_node"] = ranks
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def newest_throughput(project: Path) -> float:
    """train_samples_per_second of the newest training run in the project's MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mlpipe")
    (run,) = client.search_runs(
        [experiment.experiment_id],
        "metrics.train_samples_per_second > 0",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run.data.metrics["train_samples_per_second"]


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}"


def training_throughput(work: Path, repeats: int) -> None:
    project = clone(work, "ranks")
    timed("dvc", "repro", "--quiet", "prepare", cwd=project)
    samples: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for ranks in (1, 2):
            set_ranks(project, ranks)
            walls[ranks].append(timed("mlpipe", "train", cwd=project))
            samples[ranks].append(newest_throughput(project))
    one = statistics.median(samples[1])
    print(f"\n| ranks | samples/s (median of {repeats}) | scaling efficiency | `mlpipe train` wall |")
    print("|---:|---:|---:|---:|")
    for ranks in (1, 2):
        rate = statistics.median(samples[ranks])
        print(f"| {ranks} | {rate:,.0f} | {rate / (ranks * one):.0%} | {median(walls[ranks])} s |")
    print(f"samples/s, each run: {samples}")


def kfp_overhead(work: Path, repeats: int) -> None:
    rows: dict[str, list[float]] = {name: [] for name in ("repro", "kfp", "repro-noop", "kfp-noop")}
    for round_ in range(2):
        repro_project, kfp_project = clone(work, f"repro-{round_}"), clone(work, f"kfp-{round_}")
        rows["repro"].append(timed("dvc", "repro", "--quiet", cwd=repro_project))
        rows["kfp"].append(timed("mlpipe", "kfp", "run", "--local", cwd=kfp_project))
    for _ in range(repeats):
        rows["repro-noop"].append(timed("dvc", "repro", "--quiet", cwd=repro_project))
        rows["kfp-noop"].append(timed("mlpipe", "kfp", "run", "--local", cwd=kfp_project))
    print("\n| pipeline | `dvc repro` | `mlpipe kfp run --local` | overhead |")
    print("|---|---:|---:|---:|")
    for label, repro, kfp in (
        ("from scratch (every stage runs; median of 2)", rows["repro"], rows["kfp"]),
        (f"up to date (nothing runs; median of {repeats})", rows["repro-noop"], rows["kfp-noop"]),
    ):
        a, b = statistics.median(repro), statistics.median(kfp)
        print(f"| {label} | {a:.1f} s | {b:.1f} s | +{b - a:.1f} s ({b / a:.1f}×) |")
    print(f"each run: {rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timed command")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-") as work:
        training_throughput(Path(work), args.repeats)
        kfp_overhead(Path(work), args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
