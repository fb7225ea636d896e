"""Flower's HTTP messages leave in one write each (mlfo_toolkit/fl/wire.py), counted by the kernel, bytes intact."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlfo_toolkit.fl import polls

pytestmark = pytest.mark.skipif(not polls.tested_flower(), reason="the writes are changed only on the Flower mlfo pins")

# Flower's protobuf client against a uvicorn server echoing the body, on loopback, in a process of its own (the change
# is to classes, as in the executor's forks). A 600-byte header stands in for a SuperNode's signature; the connection
# goes quiet between requests, as between a round's Fleet requests. TCP_INFO's data_segs_in/out (offset 152) are the
# segments with data the client's socket received and sent.
PROBE = """
import asyncio, json, socket, struct, sys, threading, time
import uvicorn
from mlfo_toolkit.fl import wire

server_keep_alive, wire.CLIENT_KEEP_ALIVE, wire.SERVER_KEEP_ALIVE = (float(keep) for keep in sys.argv[4].split(","))
if sys.argv[1] == "whole":
    assert wire.whole_requests() and wire.whole_answers()
from flwr.supercore.protobuf.client import ProtobufClient

async def echo(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/stream"):  # a streamed answer: its head, then its body in two parts, a while apart
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (body[:len(body) // 2], body[len(body) // 2:]):
            await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
server = uvicorn.Server(uvicorn.Config(echo, lifespan="off", log_level="error", timeout_keep_alive=server_keep_alive))
threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True).start()
while not server.started:
    time.sleep(0.01)
url = "http://127.0.0.1:%d" % listener.getsockname()[1]
client = ProtobufClient(url)._client
echoed, ports = [], []
for size, gap in zip(sys.argv[2].split(","), [float(gap) for gap in sys.argv[3].split(",")]):
    path = "/v1/fleet/stream" if size.startswith("s") else "/v1/fleet/echo"
    size = int(size.removeprefix("s"))
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    answer = client.post(url + path, content=body, headers={"x-signature": "s" * 600})
    echoed.append(answer.status_code == 200 and answer.content == body)
    connection = answer.extensions["network_stream"].get_extra_info("socket")
    ports.append(connection.getsockname()[1])
    time.sleep(gap)
segments_in, segments_out = struct.unpack_from("II", connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 152)
print(json.dumps({"echoed": echoed, "ports": ports, "segments_in": segments_in, "segments_out": segments_out}))
server.should_exit = True
"""


def probe(writes: str, sizes: list[int | str], gaps: list[float] | None = None, keep_alive: tuple[float, float, float] = (5, 60, 75),
          ) -> dict[str, object]:
    """Run PROBE: Flower's writes ("flower") or mlfo's ("whole"); a request of each size, each followed by its gap
    (seconds; a size "sN": N bytes streamed back in parts); keep_alive: uvicorn's own, the client's and the server's under mlfo (CLIENT_/SERVER_KEEP_ALIVE)."""
    gaps = gaps or [0.25] * len(sizes)
    done = subprocess.run([sys.executable, "-c", PROBE, writes, ",".join(map(str, sizes)), ",".join(map(str, gaps)),
                           ",".join(map(str, keep_alive))], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_request_and_its_answer_each_leave_in_one_segment_not_two() -> None:
    sizes: list[int | str] = [100, 900, 2000, 5000, 100]
    with ThreadPoolExecutor() as pool:  # the two processes side by side
        flower_run, whole_run = pool.submit(probe, "flower", sizes), pool.submit(probe, "whole", sizes)
        flower, whole = flower_run.result(), whole_run.result()
    # Head, then body, both ways (2 each, measured; the kernel may merge a pair now and then, never all of them).
    assert isinstance(flower["segments_out"], int) and isinstance(flower["segments_in"], int)
    assert flower["segments_out"] > len(sizes) and flower["segments_in"] > len(sizes)
    assert whole["segments_out"] == whole["segments_in"] == len(sizes)
    assert whole["echoed"] == [True] * len(sizes)


def test_large_empty_and_streamed_bodies_arrive_whole() -> None:
    result = probe("whole", [0, 300_000, 3 * 1024 * 1024, 7, 262_143, 262_144, "s5000", "s0", 100])
    assert result["echoed"] == [True] * 9


def test_the_server_keeps_an_idle_connection_longer_than_its_client_does() -> None:
    """Scaled down: uvicorn's own keep-alive 0.3 s, mlfo's client 1.2 s and server 2.0 s. After 0.8 s Flower's client
    finds its connection closed by the server (a request sent just then would meet the close); mlfo's reuses it, and
    after 1.6 s opens a new one itself, before the server would close the old. (Margins of 0.4 s and more: a loaded
    machine only delays.)"""
    sizes: list[int | str] = [100, 100, 100, 100]
    gaps, keep_alive = [0.8, 1.6, 0.1, 0.1], (0.3, 1.2, 2.0)
    with ThreadPoolExecutor() as pool:
        flower_run, whole_run = pool.submit(probe, "flower", sizes, gaps, keep_alive), pool.submit(probe, "whole", sizes, gaps, keep_alive)
        flower, whole = flower_run.result()["ports"], whole_run.result()["ports"]
    assert isinstance(flower, list) and isinstance(whole, list)
    assert flower[1] != flower[0]
    assert whole[1] == whole[0] and whole[2] != whole[1] and whole[3] == whole[2]


def test_an_httpx_that_keeps_its_connections_elsewhere_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.protobuf.client import ProtobufClient

    from mlfo_toolkit.errors import MissingDependencyError
    from mlfo_toolkit.fl import wire

    flower_init = ProtobufClient.__init__
    assert not wire.whole_request_writes(object())  # no httpx pool: nothing changed, and it says so
    monkeypatch.setattr(wire, "whole_request_writes", lambda client: False)
    with pytest.raises(MissingDependencyError, match="httpx"):
        wire.whole_requests()
    assert ProtobufClient.__init__ is flower_init


def test_on_another_flower_both_halves_keep_flowers_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.protobuf.client import ProtobufClient
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from mlfo_toolkit.fl import wire

    client_init, made = ProtobufClient.__init__, HttpToolsProtocol.connection_made
    monkeypatch.setattr(wire, "tested_flower", lambda: False)
    assert wire.whole_requests() is False and wire.whole_answers() is False
    assert ProtobufClient.__init__ is client_init and HttpToolsProtocol.connection_made is made


class _Counted:
    """A keep-alive HTTP/1.1 server on loopback that counts the requests it answered."""

    def __init__(self) -> None:
        import http.server
        import threading

        counted = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                counted.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _request_during_a_check(server: _Counted) -> tuple[int, bool, int]:
    """A connection left idle in an httpx pool; a pass (another thread) checks whether it expired, and while it polls
    the socket a request starts on that connection. Returns the requests the server answered while the check was
    still polling, what the check said, and the request's status."""
    import threading
    import time

    import httpx

    with httpx.Client() as client:
        client.get(server.url)  # the connection, idle in the pool
        connection = client._transport._pool.connections[0]._connection  # type: ignore[attr-defined]
        stream = connection._network_stream
        polling, go = threading.Event(), threading.Event()
        said: list[bool] = []
        check = threading.Thread(target=lambda: said.append(connection.has_expired()))
        readable = stream.get_extra_info

        def get_extra_info(info: str) -> object:
            if info == "is_readable" and threading.current_thread() is check and not go.is_set():
                polling.set()
                go.wait(10)
            return readable(info)

        stream.get_extra_info = get_extra_info
        check.start()
        assert polling.wait(10)
        answered_before = server.requests
        status: list[int] = []
        request = threading.Thread(target=lambda: status.append(client.get(server.url).status_code))
        request.start()
        deadline = time.monotonic() + 1.0
        while server.requests == answered_before and time.monotonic() < deadline:
            time.sleep(0.01)
        during = server.requests - answered_before
        go.set()
        check.join(10)
        request.join(10)
        return during, said[0], status[0]


def test_a_connection_a_pass_is_checking_gets_no_request_until_the_check_is_done() -> None:
    """httpcore's pool took a connection for closed by its server when it was idle and its socket readable, reading the
    two apart: a request that started on it in between got its answer, the pass closed the socket under the answer
    (`Bad file descriptor`, once a seed-bench run, in Flower's two-at-a-time object pulls; a stored object push's
    retry ended a run). In the processes mlfo forks, the request waits until the check is done, which saw an idle
    connection with nothing to read: the request is answered on it."""
    import httpcore

    from mlfo_toolkit.fl import wire

    httpcore_check = httpcore._sync.http11.HTTP11Connection.has_expired
    server = _Counted()
    try:
        during, _, status = _request_during_a_check(server)
        assert during == 1 and status == 200  # httpcore's own: the request went out while the check polled
        try:
            assert wire.checked_expiry() and wire.checked_expiry()  # applied twice: one wrapper
            during, expired, status = _request_during_a_check(server)
        finally:
            httpcore._sync.http11.HTTP11Connection.has_expired = httpcore_check
        assert during == 0 and not expired and status == 200
    finally:
        server.close()
