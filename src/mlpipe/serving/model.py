"""The models `mlpipe serve` serves: KServe `Model`s over a package built by the pipeline.

`Classifier` follows KServe's sklearnserver: `__init__` stores settings, `load()` reads and
checks the package and sets `ready`, `predict()` runs the ONNX model on a request's inputs in one
forward pass; a bad payload raises `InvalidInput` (HTTP 400). What differs by the kind of input
is its subclasses': `ImageClassifier` takes images (raw pixels, or image files), `TableClassifier`
rows of named columns. The protocols it answers and their request-latency metrics are KServe's;
its own metrics and drift window are `metrics`'.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import onnxruntime
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from mlpipe.contracts import drift
from mlpipe.contracts.manifest import INPUT_DTYPE, ONNX_INPUT_DTYPES, TableInput
from mlpipe.contracts.table import CATEGORY, NUMBER, model_inputs
from mlpipe.core.errors import ArtifactError
from mlpipe.serving.metrics import ModelMonitor, monitored
from mlpipe.serving.model_package import (
    InputSpec,
    ModelPackage,
    Package,
    TablePackage,
    is_table_package,
    read_package,
    read_table_package,
)
from mlpipe.serving.table_inputs import Features, v1_rows, v2_rows
from mlpipe.serving.validation import BadInput, v1_images, v2_images

log = logging.getLogger(__name__)

# One intra-op thread: a single small image is fastest on one core, and the other core of a
# 2-core pod stays free for the HTTP server (see BENCHMARKS.md, "Serving").
DEFAULT_THREADS = 1
# What ONNX Runtime raises for a model file it cannot parse or run.
MODEL_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)
# A table model's graph input per column type (mlpipe.contracts.table.model_inputs), and its V2 datatype.
ONNX_COLUMN_TYPES = {NUMBER: "tensor(float)", CATEGORY: "tensor(string)"}
V2_COLUMN_DATATYPES = {NUMBER: "FP32", CATEGORY: "BYTES"}

P = TypeVar("P", bound=Package)
X = TypeVar("X", bound=np.ndarray | dict[str, np.ndarray])  # a request's checked inputs


class Classifier(Model, Generic[P, X]):
    """Classifies a request's inputs; returns class index, label, probabilities. Subclasses say
    how a package and a request's inputs are read, and what the graph takes."""

    name: str  # kserve's Model sets it

    def __init__(
        self,
        name: str | None,
        model_dir: Path,
        threads: int = DEFAULT_THREADS,
        monitoring: bool = True,
        drift_window: int = drift.DEFAULT_WINDOW,
    ) -> None:
        super().__init__(name or "")  # empty: take the package's name in load()
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.monitoring = monitoring
        self.drift_window = drift_window
        self.monitor: ModelMonitor | None = None
        self.package: P | None = None
        self.session: onnxruntime.InferenceSession | None = None

    # What a subclass says about its kind of input.
    def _read_package(self) -> P:
        raise NotImplementedError

    def _graph_inputs(self, package: P) -> dict[str, tuple[str, ...]]:
        """The graph's inputs, in order, each with the ONNX types it may take."""
        raise NotImplementedError

    def _read_profile(self, package: P) -> drift.Profile | drift.TableProfile:
        raise NotImplementedError

    def _v1_inputs(self, body: Any, package: P) -> X:
        raise NotImplementedError

    def _v2_inputs(self, request: InferRequest, package: P) -> X:
        raise NotImplementedError

    def probabilities(self, inputs: X) -> np.ndarray:
        """Class probabilities [N, C] of checked inputs, in one forward pass."""
        raise NotImplementedError

    def get_input_types(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load(self) -> bool:
        """Read and check the package, create the ONNX Runtime session, and become ready."""
        package = self._read_package()
        self.session = self._session(package)
        self.package = package
        self.name = self.name or package.name
        if self.monitoring:
            profile = self._read_profile(package)
            self.monitor = ModelMonitor(self.name, package.labels, profile, self.drift_window)
        self.ready = True
        log.info("loaded %s from %s (%d classes)", self.name, self.model_dir, len(package.labels))
        return self.ready

    def _session(self, package: P) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning worker threads would steal the CPU the event loop needs between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(
                package.model_bytes, options, providers=["CPUExecutionProvider"]
            )
        except MODEL_LOAD_ERRORS as e:
            raise ArtifactError(f"{self.model_dir}: the ONNX model cannot be loaded ({e})") from e
        expected = self._graph_inputs(package)
        io_names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if io_names != (list(expected), [package.output_name]):
            raise ArtifactError(
                f"{self.model_dir}: the ONNX model has inputs/outputs {io_names}, the manifest says "
                f"{(list(expected), [package.output_name])}"
            )
        for graph_input in session.get_inputs():
            if graph_input.type not in expected[graph_input.name]:
                raise ArtifactError(
                    f"{self.model_dir}: the ONNX model takes {graph_input.type} as {graph_input.name!r}; "
                    f"packages take one of {', '.join(sorted(expected[graph_input.name]))}"
                )
        return session

    @property
    def version(self) -> str | None:
        """The package's version (the start of its model's sha256); None before load()."""
        return self.package.version if self.package else None

    def _ready_parts(self) -> tuple[P, onnxruntime.InferenceSession]:
        if self.package is None or self.session is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not run")
        return self.package, self.session

    def _classified(self, inputs: X) -> np.ndarray:
        probabilities = self.probabilities(inputs)
        if self.monitor is not None:
            self.monitor.observe(inputs, probabilities)
        return probabilities

    @monitored
    def predict(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None) -> Any:
        """V1 body -> ``{"predictions": [...]}``; V2 request -> InferResponse with three outputs."""
        package, _ = self._ready_parts()
        if isinstance(payload, InferRequest):
            probabilities = self._classified(self._v2_inputs(payload, package))
            return self._v2_response(payload, probabilities)
        if isinstance(payload, bytes | str):
            raise BadInput(
                "content_type", "the request body must be JSON sent with Content-Type: application/json"
            )
        probabilities = self._classified(self._v1_inputs(payload, package))
        classes = probabilities.argmax(axis=1).tolist()
        return {
            "predictions": [
                {"class_index": c, "label": package.labels[c], "probabilities": p}
                for c, p in zip(classes, probabilities.tolist(), strict=True)
            ]
        }

    def _v2_response(self, request: InferRequest, probabilities: np.ndarray) -> InferResponse:
        package, _ = self._ready_parts()
        classes = probabilities.argmax(axis=1)
        n = len(classes)
        labels = np.array([package.labels[c] for c in classes], dtype=np.object_)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=package.version,
            infer_outputs=[
                InferOutput("class_index", [n], "INT64", classes.astype(np.int64)),
                InferOutput("label", [n], "BYTES", labels),
                InferOutput("probabilities", list(probabilities.shape), "FP32", probabilities),
            ],
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def get_output_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        classes = len(package.labels)
        return [
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        ]


class ImageClassifier(Classifier[ModelPackage, np.ndarray]):
    """Classifies images given as raw pixels (or, for a model trained on image files, as the files)."""

    model_dtype = np.dtype(INPUT_DTYPE)  # what the loaded graph takes (set by load)

    def _read_package(self) -> ModelPackage:
        return read_package(self.model_dir)

    def _graph_inputs(self, package: ModelPackage) -> dict[str, tuple[str, ...]]:
        return {package.input.name: tuple(ONNX_INPUT_DTYPES)}

    def _session(self, package: ModelPackage) -> onnxruntime.InferenceSession:
        session = super()._session(package)
        self.model_dtype = np.dtype(ONNX_INPUT_DTYPES[session.get_inputs()[0].type])
        return session

    def _read_profile(self, package: ModelPackage) -> drift.Profile:
        return drift.read_profile(self.model_dir)

    @property
    def input_spec(self) -> InputSpec:
        """What one request may carry, as the package says; load() first."""
        return self._ready_parts()[0].input

    def _v1_inputs(self, body: Any, package: ModelPackage) -> np.ndarray:
        return v1_images(body, package.input)

    def _v2_inputs(self, request: InferRequest, package: ModelPackage) -> np.ndarray:
        return v2_images(request, package.input)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for checked pixels [N, H, W] (or [N, H, W, 3]), in one
        forward pass."""
        package, session = self._ready_parts()
        # The model takes the data's own dtype (the manifest's); fractional pixels, which only a
        # V1 or FP32 request can carry, go to the nearest whole value. A package made before
        # that (a rollback's) takes float32 as it comes.
        if self.model_dtype.kind == "f":
            model_input = inputs.astype(self.model_dtype, copy=False)
        else:
            model_input = np.rint(inputs).astype(self.model_dtype, copy=False)
        return session.run([package.output_name], {package.input.name: model_input})[0]

    def get_input_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        shape = [-1, *package.input.image_shape]
        return [{"name": package.input.name, "datatype": package.input.datatype, "shape": shape}]


class TableClassifier(Classifier[TablePackage, Features]):
    """Classifies rows of named columns, numbers and categories, with gaps where a value is missing."""

    def _read_package(self) -> TablePackage:
        return read_table_package(self.model_dir)

    def _graph_inputs(self, package: TablePackage) -> dict[str, tuple[str, ...]]:
        return {column.name: (ONNX_COLUMN_TYPES[column.type],) for column in package.input.columns}

    def _read_profile(self, package: TablePackage) -> drift.TableProfile:
        return drift.read_table_profile(self.model_dir, package.input.columns)

    @property
    def input_spec(self) -> TableInput:
        """What one request may carry, as the package says; load() first."""
        return self._ready_parts()[0].input

    def _v1_inputs(self, body: Any, package: TablePackage) -> Features:
        return v1_rows(body, package.input)

    def _v2_inputs(self, request: InferRequest, package: TablePackage) -> Features:
        return v2_rows(request, package.input)

    def probabilities(self, inputs: Features) -> np.ndarray:
        """Class probabilities [N, C] for checked columns (float64 with NaN, or text with None
        where missing), in one forward pass."""
        package, session = self._ready_parts()
        feed = model_inputs(package.input.columns, inputs)
        return session.run([package.output_name], feed)[0]

    def get_input_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        return [
            {"name": column.name, "datatype": V2_COLUMN_DATATYPES[column.type], "shape": [-1]}
            for column in package.input.columns
        ]


def classifier_class(model_dir: Path) -> type[ImageClassifier] | type[TableClassifier]:
    """The class that serves the package in ``model_dir``: by the kind of its model's input."""
    return TableClassifier if is_table_package(model_dir) else ImageClassifier
