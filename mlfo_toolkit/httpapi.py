"""The thin HTTP layer: a small WSGI JSON router with token auth and body limits, served by waitress."""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import multipart

from mlfo_toolkit.errors import CapacityError, MlfoError, NotFoundError, ValidationError
from mlfo_toolkit.metrics import ServiceMetrics

log = logging.getLogger(__name__)

WsgiEnviron = dict[str, Any]
StartResponse = Callable[..., Any]


@dataclass
class Response:
    """A JSON answer."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """Raised inside handlers for an HTTP answer other than 200."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": _REASONS.get(status, "Error"), "message": message, **extra}


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Request:
    """What a handler sees of one HTTP request; the body is read once, within the size limit."""

    def __init__(self, environ: WsgiEnviron, params: dict[str, str], max_body: int) -> None:
        self.environ = environ
        self.params = params
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO", "/")
        self.query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        self.max_body = max_body
        self._body: bytes | None = None

    def _content_length(self) -> int:
        raw = self.environ.get("CONTENT_LENGTH") or "0"
        try:
            return int(raw)
        except ValueError:
            raise HttpError(400, f"Content-Length '{raw}' is not a number") from None

    def check_size(self) -> None:
        """413 with a JSON body before reading anything too large."""
        length = self._content_length()
        if length > self.max_body:
            raise HttpError(
                413,
                f"request body of {length} bytes exceeds the limit of {self.max_body} bytes",
                field="body",
                limit=self.max_body,
            )

    def body(self) -> bytes:
        if self._body is None:
            self.check_size()
            self._body = self.environ["wsgi.input"].read(self._content_length())
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body() or b"null")
        except ValueError as err:
            raise HttpError(400, f"body is not valid JSON: {err}", field="body") from None

    def form(self) -> tuple[dict[str, str], dict[str, bytes]]:
        """Fields and uploaded files of a multipart/form-data or urlencoded body."""
        self.check_size()
        if self.content_type == "multipart/form-data":
            try:
                forms, files = multipart.parse_form_data(
                    self.environ,
                    strict=True,
                    memory_limit=self.max_body,
                    disk_limit=self.max_body,
                    mem_limit=self.max_body,
                )
            except multipart.MultipartError as err:
                raise HttpError(400, f"malformed multipart body: {err}", field="body") from None
            fields = {k: forms[k] for k in forms}
            uploads = {k: files[k].raw for k in files}
            return fields, uploads
        if self.content_type == "application/x-www-form-urlencoded":
            parsed = parse_qs(self.body().decode("utf-8", "replace"), keep_blank_values=True)
            return {k: v[-1] for k, v in parsed.items()}, {}
        raise HttpError(415, f"expected a form body, got '{self.content_type or 'none'}'")


Handler = Callable[[Request], Response | Any]


class JsonApi:
    """A WSGI app: routes, bearer-token auth, a body limit and JSON errors; never dies on input."""

    def __init__(self, name: str, *, token: str | None, max_body: int, metrics: ServiceMetrics | None = None) -> None:
        self.name = name
        self.token = token
        self.max_body = max_body
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.public_paths: set[str] = set()
        self.metrics = metrics
        if metrics is not None:
            registry = metrics.registry

            @self.route("GET", "/metrics")
            def _metrics(request: Request) -> Response:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                return Response(200, generate_latest(registry), {"Content-Type": CONTENT_TYPE_LATEST})

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register a handler; `{name}` in the pattern becomes a path parameter."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(handler: Handler) -> Handler:
            self._routes.append((method, regex, handler))
            return handler

        return register

    def _authorised(self, environ: Mapping[str, Any]) -> bool:
        if not self.token:
            return True
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        )

    def dispatch(self, environ: WsgiEnviron) -> Response:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/") or "/"
        if path not in self.public_paths and not self._authorised(environ):
            raise HttpError(401, "missing or wrong bearer token", hint="send 'Authorization: Bearer TOKEN'")
        allowed = []
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            result = handler(Request(environ, match.groupdict(), self.max_body))
            return result if isinstance(result, Response) else Response(200, result)
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}", allowed=sorted(set(allowed)))
        raise HttpError(404, f"no such endpoint: {path}")

    def __call__(self, environ: WsgiEnviron, start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self.dispatch(environ)
        except HttpError as err:
            response = Response(err.status, err.body)
        except NotFoundError as err:
            response = Response(404, err.to_dict())
        except ValidationError as err:
            response = Response(400, err.to_dict())
        except CapacityError as err:
            response = Response(503, err.to_dict())
        except MlfoError as err:
            response = Response(409, err.to_dict())
        except Exception:  # a handler bug must not take the server down
            log.exception("%s: unhandled error on %s %s", self.name, environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = Response(500, {"error": "Internal Server Error", "message": "see the server log"})
        if isinstance(response.body, (bytes, str)):
            payload = response.body.encode() if isinstance(response.body, str) else response.body
            content_type = response.headers.pop("Content-Type", "text/plain; charset=utf-8")
        else:
            payload = json.dumps(response.body, default=str).encode()
            content_type = "application/json"
        if self.metrics is not None:
            try:
                received = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                received = 0
            self.metrics.observe_http(response.status, received, len(payload))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        headers += list(response.headers.items())
        start_response(f"{response.status} {_REASONS.get(response.status, 'OK')}", headers)
        return [payload]


WAITRESS_SPOOL_LIMIT = 64 * 1024 * 1024


class HttpServer:
    """A waitress server for one JsonApi, in the foreground or on a background thread."""

    def __init__(self, app: JsonApi, host: str, port: int, *, threads: int = 8) -> None:
        from waitress.server import create_server

        # waitress buffers a whole body (spooling large ones to disk) before the app sees it, and
        # answers 413 in plain text past its own limit; below that, Request.check_size answers in
        # JSON naming the limit.
        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=app.max_body + WAITRESS_SPOOL_LIMIT,
            ident="mlfo",
            clear_untrusted_proxy_headers=True,
        )
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run()

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        def close_all() -> None:
            # waitress's loop runs while anything is in its map: the listener, keep-alive
            # connections and its own wake-up trigger. Closing them all, in the loop's own
            # thread, ends it at once.
            for channel in list(getattr(self._server, "_map", {}).values()):
                try:
                    channel.close()
                except OSError:
                    pass

        if self._thread is not None and self._thread.is_alive():
            try:
                self._server.trigger.pull_trigger(close_all)
            except OSError:
                # The wake-up pipe is already closed (EBADF; seen once at the end of `make demo` and
                # once in the test suite): close the channels from here instead; the loop then ends.
                close_all()
        else:
            close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
