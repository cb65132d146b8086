"""Storage and tracking benchmark (`make bench-storage`, i.e. `python -m benchmarks.storage`).

1. `dvc push` and `dvc pull` of a prepared dataset the size of Fashion-MNIST (70,000 28×28
   uint8 images and their labels in the train/val/test .npy files `mlpipe prepare` writes) to a
   moto S3 server on 127.0.0.1: wall time of the `dvc` command, median of --runs runs, each
   push to a new bucket and each pull into an empty cache and workspace.
2. MLflow's share of the train stage: `mlpipe train`'s code runs in this process against a
   real `mlflow server` (PostgreSQL when its programs are installed, else SQLite; artifacts in
   the S3 server), with every MlflowClient method and the stage's connection checks timed.
   The share is the time spent inside those calls over the stage's wall time; separately, the
   per-epoch metric logging inside the training loop over the loop's wall time. The median of
   --tracking-runs trainings with the default params, and one training of --epochs epochs on
   Fashion-MNIST-sized data. Other processes on the machine skew it: the load is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks.machine import describe
from harness import servers

from mlpipe.contracts.data import LabeledImages, Schema, write_split
from mlpipe.core import atomic, paths
from mlpipe.core.lineage import directory_digest
from mlpipe.core.params import Params, load_params
from mlpipe.ml import prepare, train
from mlpipe.tracking import runs

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_IMAGES, IMAGE_SHAPE, CLASSES = 70_000, (28, 28), 10


def write_fashion_mnist_sized(root: Path, params: Params) -> int:
    """Write Fashion-MNIST-shaped random data in the prepared layout; return its size in bytes."""
    rng = np.random.default_rng(0)
    test = round(FASHION_MNIST_IMAGES * params.data.test_fraction)
    val = round(FASHION_MNIST_IMAGES * params.data.val_fraction)
    counts = {"train": FASHION_MNIST_IMAGES - test - val, "val": val, "test": test}
    classes = tuple(f"class_{i}" for i in range(CLASSES))
    class_counts = {}
    for split, count in counts.items():
        images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, CLASSES, count).astype(np.int64)
        write_split(root, split, LabeledImages(images, labels, classes, 255))
        class_counts[split] = dict(zip(classes, np.bincount(labels, minlength=CLASSES).tolist(), strict=True))
    # uniform pixels scaled to [0, 1]: mean 1/2, standard deviation sqrt(1/12)
    schema = Schema("fashion-mnist", classes, IMAGE_SHAPE, 255, (0.5,), (round(12**-0.5, 6),), class_counts)
    atomic.write_json(root / paths.SCHEMA_FILE.name, schema.to_json())
    return sum(f.stat().st_size for f in root.iterdir())


def timed_command(*args: str, cwd: Path, env: dict[str, str]) -> float:
    """Seconds the command took; it must succeed."""
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return time.perf_counter() - started


def bench_dvc(runs: int, params: Params) -> dict[str, Any]:
    """Median, min and max seconds of `dvc push` and `dvc pull` of the dataset."""
    path = f"{servers.BIN_DIR}{os.pathsep}{os.environ['PATH']}"
    env = servers.clean_env({**servers.S3_TEST_ENV, "PATH": path})
    with tempfile.TemporaryDirectory() as tmp, servers.s3_server() as endpoint:
        repo = Path(tmp)
        for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            timed_command(*command, cwd=repo, env=env)
        prepared = repo / paths.PREPARED_DIR
        size = write_fashion_mnist_sized(prepared, params)
        files = len(list(prepared.iterdir()))
        expected = directory_digest(prepared)
        timed_command("dvc", "add", "-q", str(paths.PREPARED_DIR), cwd=repo, env=env)
        push, pull = [], []
        for _ in range(runs):
            bucket = servers.new_bucket(endpoint)
            for command in (
                ["dvc", "remote", "add", "--force", "--default", "data", f"s3://{bucket}/data"],
                ["dvc", "remote", "modify", "data", "endpointurl", endpoint],
            ):
                timed_command(*command, cwd=repo, env=env)
            push.append(timed_command("dvc", "push", "-q", cwd=repo, env=env))
            shutil.rmtree(repo / ".dvc/cache")
            shutil.rmtree(prepared)
            pull.append(timed_command("dvc", "pull", "-q", cwd=repo, env=env))
            if directory_digest(prepared) != expected:
                raise RuntimeError("dvc pull did not restore the dataset byte for byte")
    return {"bytes": size, "files": files, "push": push, "pull": pull}


class CallTimer:
    """Adds up the wall time of calls to the functions it wraps; nested calls count once."""

    def __init__(self) -> None:
        self.seconds, self.calls, self._depth = 0.0, 0, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return function(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1
                self._depth -= 1

        return timed

    def wrap_iteration(self, function: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """For a generator: the time from its first item to its end, the consumer's included."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                yield from function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


@contextlib.contextmanager
def timing_mlflow() -> Iterator[tuple[CallTimer, CallTimer, CallTimer]]:
    """Time every MlflowClient method (the fluent API goes through them too) and the stage's
    connection checks; separately, the per-epoch metric logging and the training loop.
    Restored on exit."""
    from mlflow import MlflowClient

    every, epochs, loop = CallTimer(), CallTimer(), CallTimer()
    originals: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, timer: CallTimer, iterates: bool = False) -> None:
        originals.append((owner, name, getattr(owner, name)))
        wrap = timer.wrap_iteration if iterates else timer.wrap
        setattr(owner, name, wrap(getattr(owner, name)))

    for name, member in vars(MlflowClient).items():
        if inspect.isfunction(member) and not name.startswith("_"):
            patch(MlflowClient, name, every)
    patch(runs, "client", every)
    patch(runs.EpochLog, "flush", epochs)
    patch(train, "fit", loop, iterates=True)
    try:
        yield every, epochs, loop
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


@contextlib.contextmanager
def tracking_backend() -> Iterator[str]:
    """PostgreSQL when its server programs are installed, else SQLite in a temporary directory."""
    if servers.postgres_bin_dir() is not None:
        with servers.postgres_server() as uri:
            yield servers.sqlalchemy_url(uri)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/mlflow.db"


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def bench_tracking(params: Params, fashion_mnist_sized: bool) -> dict[str, Any]:
    """Run the train stage against a real tracking server, timing the MLflow calls."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        servers.s3_server() as endpoint,
        tracking_backend() as backend,
        servers.mlflow_server(
            backend, f"s3://{servers.new_bucket(endpoint)}/mlartifacts", servers.mlflow_s3_env(endpoint)
        ) as uri,
        working_directory(Path(tmp)),
    ):
        if fashion_mnist_sized:
            write_fashion_mnist_sized(paths.PREPARED_DIR, params)
        else:
            prepare.run(params)
        saved = dict(os.environ)
        os.environ.update({**servers.mlflow_s3_env(endpoint), "MLFLOW_TRACKING_URI": uri})
        try:
            with timing_mlflow() as (every, epochs, loop):
                started = time.perf_counter()
                train.run(params)
                stage = time.perf_counter() - started
        finally:
            os.environ.clear()
            os.environ.update(saved)
        backend_name = backend.split(":", 1)[0].split("+", 1)[0]
    return {
        "backend": backend_name,
        "epochs": params.train.epochs,
        "stage": stage,
        "mlflow": every.seconds,
        "mlflow_calls": every.calls,
        "epoch_logging": epochs.seconds,
        "epoch_calls": epochs.calls,
        "loop": loop.seconds,
    }


def import_seconds(runs: int = 3) -> float:
    """Median extra seconds a fresh process spends importing mlflow after torch and numpy."""

    def median(code: str) -> float:
        return statistics.median(
            timed_command(sys.executable, "-c", code, cwd=REPO_ROOT, env=dict(os.environ))
            for _ in range(runs)
        )

    return median("import torch, numpy, mlflow") - median("import torch, numpy")


def report_dvc(result: dict[str, Any]) -> None:
    print(
        f"\n## dvc push / pull: {result['files']} files, {result['bytes'] / 1e6:.1f} MB, "
        f"loopback moto S3, {len(result['push'])} runs"
    )
    print("| command | median (s) | min (s) | max (s) |\n|---|---:|---:|---:|")
    for command in ("push", "pull"):
        times = result[command]
        print(f"| dvc {command} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


def report_tracking(name: str, results: list[dict[str, Any]]) -> None:
    """Report the run with the median share of ``results``."""
    result = sorted(results, key=lambda r: r["mlflow"] / r["stage"])[len(results) // 2]
    share = result["mlflow"] / result["stage"]

    print(
        f"\n## MLflow in the train stage: {name}, {result['epochs']} epochs, "
        f"mlflow server on {result['backend']} + S3 artifacts, median of {len(results)} run(s)"
    )
    print(f"- train stage wall time: {result['stage']:.2f} s")
    print(
        f"- inside MLflow calls: {result['mlflow']:.3f} s over {result['mlflow_calls']} calls = {share:.2%}"
    )
    print(
        f"- per-epoch metric logging: {result['epoch_logging'] * 1000:.1f} ms in "
        f"{result['epoch_calls']} calls = {result['epoch_logging'] / result['loop']:.2%} "
        f"of the training loop ({result['loop']:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each dvc command")
    parser.add_argument("--tracking-runs", type=int, default=3, help="runs of the default training")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the Fashion-MNIST-sized training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(REPO_ROOT / paths.PARAMS_FILE)
    print(f"machine: {describe()}")
    report_dvc(bench_dvc(args.runs, params))
    digits = [bench_tracking(params, fashion_mnist_sized=False) for _ in range(args.tracking_runs)]
    report_tracking("default params (digits)", digits)
    sized = params.model_copy(update={"train": params.train.model_copy(update={"epochs": args.epochs})})
    report_tracking("Fashion-MNIST-sized random data", [bench_tracking(sized, fashion_mnist_sized=True)])
    print(
        f"\n(one-off, not counted above: importing mlflow adds {import_seconds():.2f} s to a stage's start)"
    )
    print(f"machine at the end: {describe()}")


if __name__ == "__main__":
    main()
