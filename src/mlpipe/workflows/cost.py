"""What a model costs to serve: parameters, package size, and ONNX Runtime latency.

Packages are timed together, in one process, alternating between them round by round, so
both see the same machine under the same load; the figures are medians.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe.contracts.manifest import ONNX_INPUT_DTYPES
from mlpipe.serving.model_package import ModelPackage, read_package

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


def parameter_count(model_bytes: bytes) -> int:
    """Weights in the ONNX graph: the elements of its initializers."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    return sum(math.prod(initializer.dims) for initializer in graph.initializer)


def package_bytes(model_dir: Path) -> int:
    """Bytes of every file in the package directory."""
    return sum(file.stat().st_size for file in model_dir.rglob("*") if file.is_file())


def _inputs(package: ModelPackage, onnx_type: str, count: int, rng: np.random.Generator) -> np.ndarray:
    spec = package.input
    shape = (count, *spec.image_shape)
    return np.round(rng.random(shape) * spec.pixel_max).astype(ONNX_INPUT_DTYPES.get(onnx_type, spec.dtype))


def measure(model_dirs: Mapping[str, Path], batch_size: int = BATCH_SIZE) -> dict[str, Cost]:
    """Size and ONNX Runtime latency (one image; a batch) of each package, measured side by side."""
    import onnxruntime as ort

    packages = {name: read_package(path) for name, path in model_dirs.items()}
    sessions = {
        name: ort.InferenceSession(package.model_bytes, providers=["CPUExecutionProvider"])
        for name, package in packages.items()
    }
    rng = np.random.default_rng(0)
    batch = {name: min(batch_size, package.input.max_batch_size) for name, package in packages.items()}
    types = {name: session.get_inputs()[0].type for name, session in sessions.items()}
    single_feed = {name: {p.input.name: _inputs(p, types[name], 1, rng)} for name, p in packages.items()}
    batch_feed = {
        name: {p.input.name: _inputs(p, types[name], batch[name], rng)} for name, p in packages.items()
    }
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
        )
        for name, package in packages.items()
    }
