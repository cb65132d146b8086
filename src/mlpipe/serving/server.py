"""`mlpipe serve`: a package built by the pipeline on KServe's REST server (V1 and V2 protocols).

The model is an `ImageClassifier` or a `TableClassifier`, as the package's input is images or
columns; KServe's `ModelServer` holds it in its registry and data plane
and configures KServe's logging, and KServe's `RESTServer` serves its protocols, health
endpoints and metrics. `ModelServer.start()` would listen on every interface, so the REST server
runs here as `start()` runs it for one worker, through two of its public hooks: uvicorn's
settings (``config``), to listen on ``--host``, and `create_application()`, to put `edge` (body
limit, V2 decoding, error bodies, access log) in front of KServe's app.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.logging import KSERVE_TRACE_LOGGER_NAME
from kserve.model_server import app as kserve_app
from kserve.model_server import parser as kserve_parser
from kserve.protocol.rest.server import RESTServer

from mlpipe.contracts import drift
from mlpipe.contracts.manifest import TableInput
from mlpipe.core.errors import MlpipeError
from mlpipe.serving.edge import AccessLog, install
from mlpipe.serving.metrics import ModelMonitor
from mlpipe.serving.model import DEFAULT_THREADS, classifier_class
from mlpipe.serving.model_package import InputSpec

DEFAULT_MODEL_DIR = Path("/mnt/models")  # where KServe's storage initializer puts storageUri
# Bytes one pixel may take in a JSON body ("16.000000000000004, "), and room for the rest.
JSON_BYTES_PER_PIXEL = 24
JSON_OVERHEAD_BYTES = 64 * 1024
# Bytes one value of a row may take in a JSON body beside its column's name: a number in full
# precision, or a category's level (of any length a client sends: room for a long one).
JSON_BYTES_PER_VALUE = 64


# A model that resizes image files takes files of any size, a camera's photos included: room for
# a few of them, base64-encoded.
IMAGE_FILES_BODY_BYTES = 16 * 2**20


def default_max_body_bytes(spec: InputSpec | TableInput) -> int:
    """The largest body a full batch of ``spec``'s images (or rows) needs as JSON, the most verbose
    encoding (at least IMAGE_FILES_BODY_BYTES for a model that resizes image files)."""
    if isinstance(spec, TableInput):  # V1's rows name every column in every row
        row = sum(len(column.name) + JSON_BYTES_PER_VALUE for column in spec.columns)
        return spec.max_batch_size * row + JSON_OVERHEAD_BYTES
    values = spec.height * spec.width * spec.channels
    pixels = spec.max_batch_size * values * JSON_BYTES_PER_PIXEL + JSON_OVERHEAD_BYTES
    resizes = spec.decoding is not None and spec.decoding.resize is not None
    return max(pixels, IMAGE_FILES_BODY_BYTES) if resizes else pixels


class EdgeRESTServer(RESTServer):
    """KServe's REST server listening on ``host``, with `edge` in front of KServe's app."""

    def __init__(
        self,
        host: str,
        max_body_bytes: int,
        access: AccessLog,
        monitor: ModelMonitor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config.host = host
        self.max_body_bytes = max_body_bytes
        self.access = access
        self.monitor = monitor

    def create_application(self) -> None:
        super().create_application()  # KServe's routes, error handlers and middleware on its app
        install(kserve_app, self.dataplane, self.max_body_bytes, self.access, self.monitor)


def configure_logging(access: AccessLog) -> None:
    """Our access line replaces uvicorn's (which has no latency and cannot be JSON) and the two
    trace lines of KServe's timing middleware."""
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger(KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    logger = logging.getLogger("mlpipe.serving.access")
    handler = logging.StreamHandler(sys.stdout)
    text_format = "%(asctime)s.%(msecs)03d %(message)s"
    handler.setFormatter(logging.Formatter(None if access.as_json else text_format, "%Y-%m-%d %H:%M:%S"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
        "max_batch_size images (or rows) as JSON.",
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
        help="The model's metrics on /metrics and the drift window.",
    )
    parser.add_argument(
        "--drift-window",
        type=int,
        default=drift.DEFAULT_WINDOW,
        help="Recent images (or rows) the drift score covers.",
    )
    # The model name defaults to the package's; gRPC is off (HTTP is what the InferenceService
    # exposes); KServe's latency line would be a second line per request.
    parser.set_defaults(model_name=None, enable_grpc=False, enable_latency_logging=False)
    return parser


def main(argv: list[str]) -> None:
    """Load the package and serve it until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    # KServe 0.21 answers with FastAPI's ORJSONResponse, which newer FastAPI deprecates: nothing
    # a user of this server can act on.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    if args.workers != 1:
        raise MlpipeError(
            f"--workers {args.workers}: `mlpipe serve` runs one process (the model's metrics and drift "
            "window are the process's); scale out with replicas"
        )
    if args.enable_grpc:
        raise MlpipeError("--enable_grpc: `mlpipe serve` serves REST only, what the InferenceService exposes")
    model = classifier_class(args.model_dir)(
        args.model_name,
        args.model_dir,
        threads=args.threads,
        monitoring=args.monitoring,
        drift_window=args.drift_window,
    )
    model.load()
    model.enable_latency_logging = args.enable_latency_logging
    max_body_bytes = args.max_body_bytes or default_max_body_bytes(model.input_spec)
    if max_body_bytes < 1:
        raise MlpipeError(f"--max-body-bytes must be a positive number of bytes; got {max_body_bytes}")
    kserve = ModelServer(
        http_port=args.http_port,
        enable_grpc=False,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    kserve.register_model(model)
    access = AccessLog(enabled=args.access_log != "off", as_json=args.access_log == "json")
    configure_logging(access)
    server = EdgeRESTServer(
        host=args.host,
        max_body_bytes=max_body_bytes,
        access=access,
        monitor=model.monitor,
        app=FASTAPI_APP_IMPORT_STRING,
        data_plane=kserve.dataplane,
        model_repository_extension=kserve.model_repository_extension,
        http_port=kserve.http_port,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    server.run()
