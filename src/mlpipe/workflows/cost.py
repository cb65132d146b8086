"""What a model costs to serve: parameters, package size, and ONNX Runtime latency.

Packages are timed together, in one process, alternating between them round by round, so
both see the same machine under the same load; the figures are medians. An image model is fed
random pixels, a table model random rows of its columns (`table_rows`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.contracts.manifest import ONNX_INPUT_DTYPES
from mlpipe.contracts.table import Column, model_inputs
from mlpipe.serving.model_package import ModelPackage, TablePackage, read_any_package

WARMUP = 5
SINGLE_ROUNDS = 200
BATCH_ROUNDS = 20
BATCH_SIZE = 256


@dataclass(frozen=True)
class Cost:
    """One package's size and speed (latencies in milliseconds, medians)."""

    parameters: int
    package_bytes: int
    single_ms: float
    batch_ms: float
    batch_size: int
    example: str  # what the model takes one of: "image", or a table's "row"


def parameter_count(model_bytes: bytes) -> int:
    """Weights in the ONNX graph: the elements of its initializers."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    return sum(math.prod(initializer.dims) for initializer in graph.initializer)


def package_bytes(model_dir: Path) -> int:
    """Bytes of every file in the package directory."""
    return sum(file.stat().st_size for file in model_dir.rglob("*") if file.is_file())


def table_rows(columns: Sequence[Column], count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``count`` rows as a table model takes them (mlpipe.contracts.table.model_inputs): each
    number drawn uniformly from its training range, each category from its levels."""
    features = {
        column.name: (
            rng.uniform(column.minimum, column.maximum, count)
            if column.is_number
            else rng.choice(np.asarray(column.levels, dtype=object), count)
        )
        for column in columns
    }
    return model_inputs(columns, features)


def _inputs(
    package: ModelPackage | TablePackage, onnx_type: str, count: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The feed of ``count`` random examples; ``onnx_type`` is an image model's input type."""
    if isinstance(package, TablePackage):
        return table_rows(package.input.columns, count, rng)
    spec = package.input
    shape = (count, *spec.image_shape)
    pixels = np.round(rng.random(shape) * spec.pixel_max).astype(ONNX_INPUT_DTYPES.get(onnx_type, spec.dtype))
    return {spec.name: pixels}


def measure(model_dirs: Mapping[str, Path], batch_size: int = BATCH_SIZE) -> dict[str, Cost]:
    """Size and ONNX Runtime latency (one example; a batch) of each package, measured side by side."""
    import onnxruntime as ort

    packages = {name: read_any_package(path) for name, path in model_dirs.items()}
    sessions = {
        name: ort.InferenceSession(package.model_bytes, providers=["CPUExecutionProvider"])
        for name, package in packages.items()
    }
    rng = np.random.default_rng(0)
    batch = {name: min(batch_size, package.input.max_batch_size) for name, package in packages.items()}
    types = {name: session.get_inputs()[0].type for name, session in sessions.items()}
    single_feed = {name: _inputs(p, types[name], 1, rng) for name, p in packages.items()}
    batch_feed = {name: _inputs(p, types[name], batch[name], rng) for name, p in packages.items()}
    timings: dict[str, dict[str, list[float]]] = {name: {"single": [], "batch": []} for name in packages}

    def timed(name: str, feed: dict[str, np.ndarray]) -> float:
        start = time.perf_counter()
        sessions[name].run(None, feed)
        return (time.perf_counter() - start) * 1000

    for name in packages:
        for _ in range(WARMUP):
            timed(name, single_feed[name])
            timed(name, batch_feed[name])
    for round_ in range(SINGLE_ROUNDS):
        for name in packages:
            timings[name]["single"].append(timed(name, single_feed[name]))
            if round_ < BATCH_ROUNDS:
                timings[name]["batch"].append(timed(name, batch_feed[name]))
    return {
        name: Cost(
            parameters=parameter_count(package.model_bytes),
            package_bytes=package_bytes(model_dirs[name]),
            single_ms=float(np.median(timings[name]["single"])),
            batch_ms=float(np.median(timings[name]["batch"])),
            batch_size=batch[name],
            example="row" if isinstance(package, TablePackage) else "image",
        )
        for name, package in packages.items()
    }
