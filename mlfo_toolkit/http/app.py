"""What every mlfo HTTP service shares: JSON errors, token auth, a body limit, metrics, OpenAPI.

This package is the only place that imports FastAPI: the orchestrator, agent, network and FL
packages raise `MlfoError` subclasses, and `STATUS` below turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlfo_toolkit import __version__
from mlfo_toolkit.errors import (
    CapacityError,
    ConflictError,
    MlfoError,
    NotFoundError,
    RemoteError,
    StorageError,
    UnreachableError,
    ValidationError,
)
from mlfo_toolkit.monitoring.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

# The one table from domain errors to HTTP status codes; the first matching class wins.
STATUS: tuple[tuple[type[MlfoError], int], ...] = (
    (ValidationError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (CapacityError, 503),
    (StorageError, 507),  # the service's own disk: full, read-only
    (UnreachableError, 502),  # a node behind this service did not answer
    (RemoteError, 502),  # a node behind this service answered with an error
    (MlfoError, 500),
)

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


BEARER = HTTPBearer(auto_error=False, description="the API token (api.token, MLFO_API_TOKEN)")


def status_of(err: MlfoError) -> int:
    return next(status for kind, status in STATUS if isinstance(err, kind))


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": REASONS.get(status, "Error"), "message": message, **{k: v for k, v in extra.items() if v is not None}}


class JsonAnswer(JSONResponse):
    """JSON with non-ASCII escaped: an error that quotes bad input stays valid JSON whatever it quotes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii")


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JsonAnswer(error_body(status, message, **extra), status_code=status)


class BodyLimit:
    """ASGI middleware: 413 in JSON past `limit` bytes (declared or streamed), 408 when the body has not
    arrived in full `seconds` after the request began (a stalled upload holds nothing past that), and
    HTTP metrics."""

    def __init__(self, app: Asgi, limit: int, metrics: ServiceMetrics | None, seconds: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        counted = {"in": 0, "out": 0, "status": 500}

        async def answer(response: Response) -> None:
            await response(scope, receive, counting_send)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counted["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                counted["out"] += len(message.get("body", b""))
            await send(message)

        try:
            try:
                length = int(declared)
            except ValueError:
                await answer(error_response(400, f"Content-Length '{declared.decode('latin-1')}' is not a number", field="body"))
                return
            if length > self.limit:
                await answer(self._too_large(length))
                return

            deadline = asyncio.get_running_loop().time() + self.seconds
            body_done = False

            async def limited_receive() -> Message:
                nonlocal body_done
                if body_done:
                    return await receive()  # after the body: a disconnect, whenever it comes
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(0.0, remaining))
                except TimeoutError:
                    raise _TooSlow(counted["in"]) from None
                if message["type"] == "http.request":
                    counted["in"] += len(message.get("body", b""))
                    if counted["in"] > self.limit:
                        raise _TooLarge(counted["in"])
                    body_done = not message.get("more_body", False)
                return message

            try:
                await self.app(scope, limited_receive, counting_send)
            except _TooLarge as err:
                await answer(self._too_large(err.size))
            except _TooSlow as err:
                slow = error_response(408, f"the request body did not arrive within {self.seconds:g} s ({err.size} bytes came)",
                                      field="body", hint="api.request_seconds")
                slow.headers["Connection"] = "close"  # the rest of the body will not be read: free the connection now
                await answer(slow)
        finally:
            if self.metrics is not None:
                self.metrics.observe_http(counted["status"], counted["in"], counted["out"])

    def _too_large(self, size: int) -> JSONResponse:
        # No "Connection: close" here: a client still sending its body would get a reset instead of this
        # answer; uvicorn ends the connection itself once the answer is out and the body was not read.
        return error_response(413, f"request body of {size} bytes exceeds the limit of {self.limit} bytes",
                              field="body", limit=self.limit)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _TooSlow(Exception):
    """The body stalled (`size` is what came)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def token_guard(*tokens: str | None) -> Any:
    """A dependency that lets a request through when it presents one of `tokens` as a bearer token
    (compared in constant time); with no token configured it lets everything through."""
    accepted = [t.encode() for t in tokens if t]

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if not accepted:
            return
        presented = (credentials.credentials if credentials is not None else "").encode()
        # Compare with every token, always, so the time taken says nothing about which one nearly matched.
        if not sum(hmac.compare_digest(presented, token) for token in accepted):
            raise HTTPException(401, "missing or wrong bearer token")

    return Depends(require_token)


def service_app(name: str, *, tokens: tuple[str | None, ...], max_body: int, metrics: ServiceMetrics | None = None,
                public_metrics: bool = False, role: str | None = None, request_seconds: float = 10.0) -> tuple[FastAPI, Any]:
    """A FastAPI app with mlfo's error format, and the dependency that requires one of `tokens`.

    `/health` (with a `role`), `/docs` and `/openapi.json` are public; `/metrics` is public when `public_metrics`
    (the socket exporter's, which carries no secrets), otherwise behind the same tokens.
    """
    app = FastAPI(title=f"mlfo {name}", version=__version__,
                  description=f"The {name} of mlfo. Errors are JSON: {{error, message, field}}.")
    app.state.service = name
    private = token_guard(*tokens)

    @app.exception_handler(MlfoError)
    async def _domain_error(request: Request, err: MlfoError) -> JSONResponse:
        status = status_of(err)
        if status >= 500 and status not in (502, 503, 507):
            log.error("%s: %s on %s %s", name, err.message, request.method, request.url.path)
        body = {**error_body(status, err.message), **{k: v for k, v in err.to_dict().items() if k != "error"}}
        body["kind"] = type(err).__name__
        return JsonAnswer(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return error_response(400, str(first.get("msg", "invalid request")), field=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        extra: dict[str, Any] = {}
        if err.status_code == 401:
            extra["hint"] = "send 'Authorization: Bearer TOKEN'"
        if err.status_code == 404 and err.detail == "Not Found":
            return error_response(404, f"no such endpoint: {request.url.path}")
        if err.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}")
        body = err.detail if isinstance(err.detail, dict) else error_body(err.status_code, str(err.detail), **extra)
        return JsonAnswer(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        # A handler bug must not take the server down, nor show a traceback to the caller.
        log.exception("%s: unhandled error on %s %s", name, request.method, request.url.path)
        return error_response(500, "see the server log")

    if metrics is not None:
        registry = metrics.registry

        def _metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False,
                          dependencies=[] if public_metrics else [private])
    if role is not None:

        @app.get("/health", summary="Liveness (public)")
        def health() -> dict[str, Any]:
            return {"role": role, "ok": True}

    app.add_middleware(BodyLimit, limit=max_body, metrics=metrics, seconds=request_seconds)
    return app, private
