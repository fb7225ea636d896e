"""A few lines of routing for the test fakes (agent, ONOS): sync handlers on Starlette, served by mlfo's server."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from mlfo_toolkit.http.server import HttpServer


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    fields: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> tuple[dict[str, str], dict[str, bytes]]:
        return self.fields, {}


Handler = Callable[[Request], Any]


class FakeApi:
    """Routes of sync handlers; with `token`, every call must carry it as a bearer token (else 401)."""

    def __init__(self, token: str | None = None) -> None:
        self.routes: list[Route] = []
        self.token = token

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            async def endpoint(raw: StarletteRequest) -> StarletteResponse:
                if self.token and raw.headers.get("authorization") != f"Bearer {self.token}":
                    return StarletteResponse(json.dumps({"error": "Unauthorized", "message": "wrong token"}), 401,
                                             {"Content-Type": "application/json"})
                body = await raw.body()
                fields: dict[str, str] = {}
                if raw.headers.get("content-type", "").startswith(("multipart/", "application/x-www-form-urlencoded")):
                    form = await raw.form()
                    fields = {k: str(v) for k, v in form.items()}
                request = Request(raw.method, raw.url.path, dict(raw.path_params), dict(raw.query_params),
                                  {k.lower(): v for k, v in raw.headers.items()}, body, fields)
                result = await run_in_threadpool(handler, request)  # a slow handler blocks no other request
                response = result if isinstance(result, Response) else Response(200, result)
                if isinstance(response.body, (str, bytes)):
                    return StarletteResponse(response.body, response.status, response.headers)
                return StarletteResponse(json.dumps(response.body), response.status,
                                         {"Content-Type": "application/json", **response.headers})

            self.routes.append(Route(pattern, endpoint, methods=[method]))
            return handler

        return register

    def serve(self) -> HttpServer:
        return HttpServer(Starlette(routes=self.routes), "127.0.0.1", 0, threads=2).start()
