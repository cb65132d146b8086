"""The HTTP edge of `mlpipe serve`: an ASGI middleware and error handlers on KServe's FastAPI app.

`install` adds them through the app's public API. The middleware, `Edge`, sees every request
before KServe's middleware and routes: it bounds request bodies (413 before a body larger than
the limit is read), answers V2 inference itself (decoding with `wire`, then KServe's dataplane
and the model, so KServe's protocol types and Prometheus metrics stay in the path while
FastAPI's routing and request model, most of a small request's cost, do not), serves the
package's version on versioned paths and in model metadata, and writes one access line per
request. Every other route (health, V1, metrics, repository) is KServe's own. Every refusal, the
edge's or the app's, is the protocol's ``{"error": "..."}`` body made by `reject`, the one place
a request is refused and so the one place refusals are counted (by a bounded reason).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlpipe.serving.metrics import ModelMonitor, rejection_reason
from mlpipe.serving.wire import decode_request, encode_response, validation_problems

log = logging.getLogger(__name__)
access_log = logging.getLogger("mlpipe.serving.access")
ERROR_KEY = "mlpipe.error"  # where `reject` notes the refusal for the access line
MONITOR_KEY = "mlpipe.monitor"  # the ModelMonitor `reject` counts refusals in (absent: not counted)
BODY_METHODS = ("POST", "PUT", "PATCH")
# How much of a refused body the server reads and discards before it answers 413 (see `Edge`).
DRAIN_BYTES = 64 * 2**20


def reject(scope: Scope, status: int, message: str, error: BaseException | None = None) -> Response:
    """The one place a request is refused: the protocol's error body, noted for the access log
    and counted by reason (what ``error`` names as wrong with the input, else ``status``)."""
    scope[ERROR_KEY] = message
    monitor: ModelMonitor | None = scope.get(MONITOR_KEY)
    if monitor is not None:
        monitor.reject(rejection_reason(error, status))
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")


# KServe's errors that refuse a request, by their HTTP status.
KSERVE_STATUS = {InvalidInput: 400, ModelNotFound: 404, ModelNotReady: 503}
KSERVE_REFUSALS = tuple(KSERVE_STATUS)


def reject_error(scope: Scope, error: Exception) -> Response:
    """`reject` for one of KServe's KSERVE_REFUSALS, with its status."""
    status = next(code for kind, code in KSERVE_STATUS.items() if isinstance(error, kind))
    return reject(scope, status, str(error), error)


class BodyTooLargeError(Exception):
    """The request body is larger than the server accepts."""


@dataclass(frozen=True)
class AccessLog:
    """At most one line per request: text or JSON, or none at all."""

    enabled: bool = True
    as_json: bool = False

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        client = scope.get("client") or ("-", 0)
        error = scope.get(ERROR_KEY)
        if self.as_json:
            entry = {
                "client": f"{client[0]}:{client[1]}",
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round(seconds * 1000, 3),
            }
            access_log.info(json.dumps(entry | ({"error": error} if error else {})))
        else:
            suffix = f" error={json.dumps(error)}" if error else ""
            access_log.info(
                '%s:%s "%s %s" %d %.2fms%s',
                *client,
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                suffix,
            )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or BodyTooLargeError as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def drain(receive: Receive, limit: int) -> None:
    """Read and discard what is left of the request body, at most about ``limit`` bytes of it."""
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields the already-read body, then what the client sends next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def answer(send: Send, content: bytes, headers: dict[str, str]) -> None:
    """Send a 200 response with ``content`` (straight to the server, as Starlette's Response would)."""
    raw = [(b"content-length", str(len(content)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class Edge:
    """ASGI middleware on KServe's app: body limit, V2 inference and metadata, access line."""

    def __init__(
        self,
        app: ASGIApp,
        dataplane: DataPlane,
        max_body_bytes: int,
        access: AccessLog,
        monitor: ModelMonitor | None = None,
    ) -> None:
        self.app = app
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.access = access
        self.monitor = monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        if self.monitor is not None:
            scope[MONITOR_KEY] = self.monitor

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                # The line is written as the answer starts (as uvicorn's is): before the client has it.
                status = message["status"]
                self.access.record(scope, status, time.perf_counter() - started)
            await send(message)

        try:
            await self._handle(scope, receive, logged_send)
        except Exception as e:
            # A bug of the server, never the client's doing: the one place a traceback is logged.
            log.exception("%s %s failed", scope["method"], scope["path"])
            if status:
                raise
            body = orjson.dumps({"error": f"internal server error ({type(e).__name__}); see the server log"})
            await Response(body, 500, media_type="application/json")(scope, receive, logged_send)
        finally:
            if not status:  # no answer: the client went away
                self.access.record(scope, status, time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if scope["method"] in BODY_METHODS:
            try:
                body = await self._body(scope, receive)
            except BodyTooLargeError as e:
                await self._too_large(scope, receive, send, e)
                return
            receive = _replay(body, receive)
        try:
            route = self._route(scope)
            if route is None:
                await self.app(scope, receive, send)
                return
            kind, model_name = route
            if kind == "infer" and scope["method"] == "POST":
                await answer(send, *await self._infer(model_name, body, _headers(scope)))
                return
            if kind == "metadata" and scope["method"] == "GET":
                response = await self._metadata(model_name)
            else:
                await self.app(scope, receive, send)
                return
        except KSERVE_REFUSALS as e:
            response = reject_error(scope, e)
        await response(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLargeError  # refused before a byte of the body is read
        return await read_body(receive, self.max_body_bytes)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, error: BodyTooLargeError) -> None:
        message = (
            f"the request body is larger than this server accepts ({self.max_body_bytes} "
            "bytes, set by `mlpipe serve --max-body-bytes`); send fewer images (or rows) per request"
        )
        response = reject(scope, 413, message, error)
        # The status line goes first, so a client waiting for "100 Continue" sends no body. A
        # client that sends its whole body before reading (urllib) sees its connection reset, not
        # the 413, if the server closes with the body unread: the rest is read and discarded
        # (up to DRAIN_BYTES) before the answer is complete.
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await drain(receive, DRAIN_BYTES)
        await send({"type": "http.response.body", "body": response.body})

    def _route(self, scope: Scope) -> tuple[str, str] | None:
        """("infer" | "metadata" | "other", model) for /v2/models/... paths, with the version checked.

        A path naming the served version is rewritten to the unversioned one, which KServe serves;
        another version raises ModelNotFound.
        """
        parts = scope["path"].split("/")
        if len(parts) < 4 or parts[1:3] != ["v2", "models"] or not parts[3]:
            return None
        model_name, rest = parts[3], parts[4:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            self._check_version(model_name, rest[1])
            rest = rest[2:]
            scope["path"] = "/".join(["", "v2", "models", model_name, *rest])
            scope["raw_path"] = scope["path"].encode()
        if rest == ["infer"]:
            return "infer", model_name
        if rest == []:
            return "metadata", model_name
        return "other", model_name

    def _check_version(self, model_name: str, version: str) -> None:
        model = self.dataplane.model_registry.get_model(model_name)
        served = getattr(model, "version", None)
        if model is None or version != served:
            raise _UnknownVersion(model_name, version, served)

    async def _infer(
        self, model_name: str, body: bytes, headers: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the model's answer to a V2 inference request."""
        # ModelNotFound, or ModelNotReady, before the body is decoded.
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        request = decode_request(body, headers, model_name)
        result, _ = await self.dataplane.infer(model_name, request, headers)
        if not isinstance(result, InferResponse):
            raise TypeError(f"model {model_name} answered {type(result).__name__}, not an InferResponse")
        return encode_response(result, request)

    async def _metadata(self, model_name: str) -> Response:
        metadata = await self.dataplane.model_metadata(model_name)
        version = getattr(self.dataplane.model_registry.get_model(model_name), "version", None)
        body = {k: v for k, v in metadata.items() if v is not None}
        if version:
            body["versions"] = [version]
        return Response(orjson.dumps(body), 200, media_type="application/json")


class _UnknownVersion(ModelNotFound):
    def __init__(self, model_name: str, version: str, served: str | None) -> None:
        super().__init__(model_name)
        self.reason = (
            f"model {model_name!r} has no version {version!r}"
            + (f"; it serves version {served!r}" if served else "")
            + f" (GET /v2/models/{model_name} lists it)"
        )

    def __str__(self) -> str:
        return self.reason


def install(
    app: FastAPI,
    dataplane: DataPlane,
    max_body_bytes: int,
    access: AccessLog,
    monitor: ModelMonitor | None = None,
) -> None:
    """Put the edge in front of KServe's ``app`` and make the app's refusals the protocol's error
    body too (counted in ``monitor``, when there is one)."""

    async def refused(request: Request, exc: Exception) -> Response:
        return reject_error(request.scope, exc)

    for error in KSERVE_REFUSALS:
        app.add_exception_handler(error, refused)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        message = "invalid request: " + validation_problems(exc.errors(), "request")
        return reject(request.scope, 400, message, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        phrase = HTTPStatus(exc.status_code).phrase
        message = f"{exc.detail}: {request.method} {request.url.path}" if exc.detail else phrase
        response = reject(request.scope, exc.status_code, message, exc)
        response.headers.update(exc.headers or {})
        return response

    app.add_middleware(
        Edge, dataplane=dataplane, max_body_bytes=max_body_bytes, access=access, monitor=monitor
    )
