"""mlfo's uvicorn under every service: it ticks once a second when idle, yet stops at once and still closes
connections whose request never arrives."""

from __future__ import annotations

import socket
import time

from fastapi import FastAPI

from mlfo_toolkit.http.server import HttpServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


def test_a_server_stops_at_once_though_it_ticks_once_a_second() -> None:
    server = HttpServer(_app(), "127.0.0.1", 0).start()
    time.sleep(0.1)  # early in a tick
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 0.6  # woken: uvicorn's own moment to close, not the rest of the 1 s tick
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0  # nothing listens any more


def test_a_request_head_that_never_completes_is_closed_and_others_are_served() -> None:
    server = HttpServer(_app(), "127.0.0.1", 0, request_seconds=1.0).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
            slow.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as quick:
                quick.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert b'{"hello":"world"}' in quick.recv(4096) + quick.recv(4096)
            assert slow.recv(4096) == b""  # closed by the server
            assert 1.0 <= time.monotonic() - started < 5.0  # after request_seconds, on one of the next ticks (1-3 s)
    finally:
        server.close()
