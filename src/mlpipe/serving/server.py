"""`mlpipe serve`: a KServe model server for a package built by the pipeline (V1 and V2 protocols).

`ImageClassifier` follows KServe's sklearnserver: `__init__` stores settings, `load()` reads and
checks the package and sets `ready`, `predict()` runs the ONNX model on a request's images in
one forward pass. Protocols, health endpoints and request-latency metrics are KServe's own;
the HTTP edge in front of them (body limit, V2 decoding, error bodies, access log) is
`edge`'s; the model's metrics and drift window are serving/metrics.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from kserve import Model, ModelServer
from kserve.model_server import app as kserve_app
from kserve.model_server import parser as kserve_parser
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from timing_asgi import TimingMiddleware

from mlpipe import drift
from mlpipe.errors import ArtifactError, MlpipeError
from mlpipe.manifest import INPUT_DTYPE, ONNX_INPUT_DTYPES
from mlpipe.serving.edge import AccessLog, install
from mlpipe.serving.metrics import ModelMonitor, monitored
from mlpipe.serving.model_package import InputSpec, ModelPackage, read_package
from mlpipe.serving.validation import BadInput, v1_images, v2_images

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("/mnt/models")  # where KServe's storage initializer puts storageUri
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
# Bytes one pixel may take in a JSON body ("16.000000000000004, "), and room for the rest.
JSON_BYTES_PER_PIXEL = 24
JSON_OVERHEAD_BYTES = 64 * 1024


def default_max_body_bytes(spec: InputSpec) -> int:
    """The largest body a full batch of ``spec``'s images needs as JSON, the most verbose encoding."""
    return spec.max_batch_size * spec.height * spec.width * JSON_BYTES_PER_PIXEL + JSON_OVERHEAD_BYTES


class ImageClassifier(Model):
    """Classifies grayscale images given as raw pixels; returns class index, label, probabilities."""

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

    # With --workers > 1 KServe pickles the model into each worker process: the session itself
    # cannot be pickled, so each worker builds its own from the checked package bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "session": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.package is not None:
            self.session = self._session(self.package)

    @property
    def version(self) -> str | None:
        """The package's version (the start of its model's sha256); None before load()."""
        return self.package.version if self.package else None

    def _ready_parts(self) -> tuple[ModelPackage, onnxruntime.InferenceSession]:
        if self.package is None or self.session is None:
            raise RuntimeError("ImageClassifier.load() has not run")
        return self.package, self.session

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for checked pixels [N, H, W], in one forward pass."""
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
        shape = [-1, package.input.height, package.input.width]
        return [{"name": package.input.name, "datatype": package.input.datatype, "shape": shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        package, _ = self._ready_parts()
        classes = len(package.labels)
        return [
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        ]


class EdgeRESTServer(RESTServer):
    """KServe's REST server with `edge` in front of its routes and one access line per request."""

    max_body_bytes: int
    access: AccessLog
    monitor: ModelMonitor | None = None

    def create_application(self) -> None:
        super().create_application()  # KServe's routes, handlers and middleware on its app
        # KServe's timing middleware logs two trace lines per request; the access line says it all.
        kserve_app.user_middleware = [m for m in kserve_app.user_middleware if m.cls is not TimingMiddleware]
        # uvicorn serves the edge, which hands what it does not answer itself to KServe's app.
        self.config.app = install(kserve_app, self.dataplane, self.max_body_bytes, self.access, self.monitor)
        configure_access_log(self.access)


def configure_access_log(access: AccessLog) -> None:
    """Our access line replaces uvicorn's (which has no latency and cannot be JSON)."""
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logger = logging.getLogger("mlpipe.serving.access")
    handler = logging.StreamHandler(sys.stdout)
    text_format = "%(asctime)s.%(msecs)03d %(message)s"
    handler.setFormatter(logging.Formatter(None if access.as_json else text_format, "%Y-%m-%d %H:%M:%S"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


class HostModelServer(ModelServer):
    """KServe's ModelServer on one address (KServe 0.21 always binds 0.0.0.0), behind `edge`."""

    def __init__(
        self,
        host: str,
        max_body_bytes: int,
        access: AccessLog,
        monitor: ModelMonitor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.access = access
        self.monitor = monitor

    async def _serve(self) -> None:
        # ModelServer.start() builds its RESTServer itself, and with --workers > 1 pickles it into
        # each worker process, which then builds the app: make it an EdgeRESTServer before either.
        for server in (self._rest_server, getattr(self._rest_multiprocess_server, "_rest_server", None)):
            if server is not None:
                server.__class__ = EdgeRESTServer
                server.max_body_bytes = self.max_body_bytes
                server.access = self.access
                server.monitor = self.monitor
                server.config.host = self.host
        await super()._serve()


def build_parser() -> argparse.ArgumentParser:
    """KServe's model server options, plus the package directory and the listen address."""
    parser = argparse.ArgumentParser(
        prog="mlpipe serve",
        description="Serve a model package over KServe's V1 and V2 (Open Inference) REST protocols.",
        parents=[kserve_parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        "--model_dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="The package directory (package.json + model.onnx), e.g. models/package.",
    )
    parser.add_argument("--http-port", dest="http_port", type=int, help="Alias of --http_port.")
    parser.add_argument("--model-name", dest="model_name", help="Alias of --model_name.")
    parser.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a pod must listen on its own interface
        help="The address to listen on; 127.0.0.1 keeps the server local.",
    )
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="ONNX Runtime intra-op threads.")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help="Largest request body accepted (413 beyond it); default: a full batch of the package's "
        "max_batch_size images as JSON.",
    )
    parser.add_argument(
        "--access-log",
        choices=("text", "json", "off"),
        default="text",
        help="One line per request (client, method, path, status, milliseconds, error), or none.",
    )
    parser.add_argument(
        "--monitoring",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="The model's metrics on /metrics and the drift window (needs --workers 1).",
    )
    parser.add_argument(
        "--drift-window", type=int, default=drift.DEFAULT_WINDOW, help="Recent images the drift score covers."
    )
    # The model name defaults to the package's; gRPC is off (HTTP is what the InferenceService
    # exposes, and KServe's gRPC server would listen on every interface); KServe's latency line
    # would be a second line per request.
    parser.set_defaults(model_name=None, enable_grpc=False, enable_latency_logging=False)
    return parser


def use_event_loop(name: str) -> None:
    """Make ``--event_loop`` hold for one worker too: KServe then runs its server with
    asyncio.run(), on the default loop, whatever the option says (uvloop halves the cost of each
    socket operation)."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise MlpipeError("--event_loop uvloop: uvloop is not installed") from None
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # ModelServer.start() asks for the current one


def main(argv: list[str]) -> None:
    """Load the package and serve it until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    # KServe 0.21 answers with FastAPI's ORJSONResponse, which newer FastAPI deprecates: nothing
    # a user of this server can act on.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    use_event_loop(args.event_loop)
    if args.monitoring and args.workers > 1:
        raise MlpipeError(
            f"--workers {args.workers}: the model's metrics and drift window need one worker (each "
            "scrape would see one worker's); scale out with replicas, or pass --no-monitoring"
        )
    model = ImageClassifier(
        args.model_name,
        args.model_dir,
        threads=args.threads,
        monitoring=args.monitoring,
        drift_window=args.drift_window,
    )
    model.load()
    package, _ = model._ready_parts()
    max_body_bytes = args.max_body_bytes or default_max_body_bytes(package.input)
    if max_body_bytes < 1:
        raise MlpipeError(f"--max-body-bytes must be a positive number of bytes; got {max_body_bytes}")
    server = HostModelServer(
        host=args.host,
        max_body_bytes=max_body_bytes,
        access=AccessLog(enabled=args.access_log != "off", as_json=args.access_log == "json"),
        monitor=model.monitor,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    server.start([model])
