"""The model `mlpipe serve` serves: a KServe `Model` over a package built by the pipeline.

`ImageClassifier` follows KServe's sklearnserver: `__init__` stores settings, `load()` reads and
checks the package and sets `ready`, `predict()` runs the ONNX model on a request's images in
one forward pass; a bad payload raises `InvalidInput` (HTTP 400). The protocols it answers and
their request-latency metrics are KServe's; its own metrics and drift window are `metrics`'.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from mlpipe.contracts import drift
from mlpipe.contracts.manifest import INPUT_DTYPE, ONNX_INPUT_DTYPES
from mlpipe.core.errors import ArtifactError
from mlpipe.serving.metrics import ModelMonitor, monitored
from mlpipe.serving.model_package import InputSpec, ModelPackage, read_package
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


class ImageClassifier(Model):
    """Classifies images given as raw pixels (or, for a model trained on image files, as the files);
    returns class index, label, probabilities."""

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
        self.package: ModelPackage | None = None
        self.session: onnxruntime.InferenceSession | None = None
        self.model_dtype = np.dtype(INPUT_DTYPE)  # what the loaded graph takes (set by load)

    def load(self) -> bool:
        """Read and check the package, create the ONNX Runtime session, and become ready."""
        package = read_package(self.model_dir)
        self.session = self._session(package)
        self.package = package
        self.name = self.name or package.name
        if self.monitoring:
            profile = drift.read_profile(self.model_dir)
            self.monitor = ModelMonitor(self.name, package.labels, profile, self.drift_window)
        self.ready = True
        log.info("loaded %s from %s (%d classes)", self.name, self.model_dir, len(package.labels))
        return self.ready

    def _session(self, package: ModelPackage) -> onnxruntime.InferenceSession:
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
        io_names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if io_names != ([package.input.name], [package.output_name]):
            raise ArtifactError(
                f"{self.model_dir}: the ONNX model has inputs/outputs {io_names}, the manifest says "
                f"{([package.input.name], [package.output_name])}"
            )
        onnx_type = session.get_inputs()[0].type
        if onnx_type not in ONNX_INPUT_DTYPES:
            raise ArtifactError(
                f"{self.model_dir}: the ONNX model takes {onnx_type}; packages take one of "
                f"{', '.join(sorted(ONNX_INPUT_DTYPES))}"
            )
        self.model_dtype = np.dtype(ONNX_INPUT_DTYPES[onnx_type])
        return session

    @property
    def version(self) -> str | None:
        """The package's version (the start of its model's sha256); None before load()."""
        return self.package.version if self.package else None

    @property
    def input_spec(self) -> InputSpec:
        """What one request may carry, as the package says; load() first."""
        return self._ready_parts()[0].input

    def _ready_parts(self) -> tuple[ModelPackage, onnxruntime.InferenceSession]:
        if self.package is None or self.session is None:
            raise RuntimeError("ImageClassifier.load() has not run")
        return self.package, self.session

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for checked pixels [N, H, W] (or [N, H, W, 3]), in one
        forward pass."""
        package, session = self._ready_parts()
        # The model takes the data's own dtype (the manifest's); fractional pixels, which only a
        # V1 or FP32 request can carry, go to the nearest whole value. A package made before
        # that (a rollback's) takes float32 as it comes.
        if self.model_dtype.kind == "f":
            model_input = pixels.astype(self.model_dtype, copy=False)
        else:
            model_input = np.rint(pixels).astype(self.model_dtype, copy=False)
        return session.run([package.output_name], {package.input.name: model_input})[0]

    def _classified(self, pixels: np.ndarray) -> np.ndarray:
        probabilities = self.probabilities(pixels)
        if self.monitor is not None:
            self.monitor.observe(pixels, probabilities)
        return probabilities

    @monitored
    def predict(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None) -> Any:
        """V1 body -> ``{"predictions": [...]}``; V2 request -> InferResponse with three outputs."""
        package, _ = self._ready_parts()
        if isinstance(payload, InferRequest):
            probabilities = self._classified(v2_images(payload, package.input))
            return self._v2_response(payload, probabilities)
        if isinstance(payload, bytes | str):
            raise BadInput(
                "content_type", "the request body must be JSON sent with Content-Type: application/json"
            )
        probabilities = self._classified(v1_images(payload, package.input))
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

    def get_input_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        shape = [-1, *package.input.image_shape]
        return [{"name": package.input.name, "datatype": package.input.datatype, "shape": shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        classes = len(package.labels)
        return [
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        ]
