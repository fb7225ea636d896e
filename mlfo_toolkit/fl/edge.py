"""Two tiers of Flower: an edge aggregator hands each global round to its own edge run and back.

An edge aggregator is two Flower pieces on one node, both run the ordinary way:

* an **edge SuperLink** with mlfo's ServerApp in edge mode (`serve_edge` in `mlfo_toolkit.fl.apps`):
  the edge's clients are SuperNodes of this SuperLink, so their updates never leave the edge;
* a **relay SuperNode** of the cohort's global SuperLink: to the global server it is one client. Its
  ClientApp, given a global round's model, asks the edge run for K local rounds with that model as
  their start and answers with their aggregate, weighted by the examples the edge's clients trained on.

The two meet at a Unix stream socket in the edge run's folder (`edge.sock`): one request per global
round, the model's arrays as an `.npz` (no pickles), a JSON header for the rest. The socket sits on the
node's file system, so the relay and the edge ServerApp reach it from any network namespace, and only
aggregates cross the backhaul.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlfo_toolkit.fl.wake import HeldFolder

EDGE_SOCKET = "edge.sock"
_SIZES = struct.Struct("!QQ")
MAX_HEADER = 1 << 20
MAX_BODY = 1 << 34  # a model of up to 16 GiB
CONNECT_RETRY_SECONDS = 0.2


class EdgeError(Exception):
    """The edge run could not be reached, or it failed the global round (the message says why)."""


def edge_socket(run_dir: Path) -> Path:
    """Where the edge run of an FL server's folder takes its global rounds."""
    return run_dir / EDGE_SOCKET


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EdgeError("the other side closed the connection mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """One message: sizes, a JSON header, the arrays as an .npz."""
    body = io.BytesIO()
    np.savez(body, *arrays)
    head = json.dumps(header).encode()
    sock.sendall(_SIZES.pack(len(head), body.getbuffer().nbytes) + head)
    sock.sendall(body.getbuffer())


def receive_frame(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The message `send_frame` sent; EdgeError if it is cut short or out of bounds."""
    head_size, body_size = _SIZES.unpack(_read_exactly(sock, _SIZES.size))
    if head_size > MAX_HEADER or body_size > MAX_BODY:
        raise EdgeError(f"a message of {head_size} + {body_size} bytes is over the limits")
    header = json.loads(_read_exactly(sock, head_size))
    if not isinstance(header, dict):
        raise EdgeError("a message's header is not a JSON object")
    with np.load(io.BytesIO(_read_exactly(sock, body_size)), allow_pickle=False) as archive:
        arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    return header, arrays


@dataclass
class EdgeRequest:
    """One global round handed to the edge run; answer it once (or fail it with a reason)."""

    header: dict[str, Any]
    arrays: list[np.ndarray]
    conn: socket.socket

    def answer(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        with contextlib.suppress(OSError):  # the relay gave up meanwhile: its global round moved on
            send_frame(self.conn, header, arrays)
        self.conn.close()

    def fail(self, reason: str) -> None:
        self.answer({"error": reason}, [])


class EdgeInbox:
    """The edge ServerApp's end: listens at `path`, gives one request at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an edge run that was killed
        self.folder = HeldFolder(path.parent)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.folder.address(path.name))
        self.sock.listen(4)
        self.owner = os.getpid()

    def next(self, timeout: float) -> EdgeRequest | None:
        """The next global round, or None if none came within `timeout` (or it came broken)."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        conn, _ = self.sock.accept()
        conn.settimeout(60.0)
        try:
            header, arrays = receive_frame(conn)
        except (EdgeError, OSError, ValueError) as err:
            with contextlib.suppress(OSError):
                send_frame(conn, {"error": f"the edge run could not read the request: {err}"}, [])
            conn.close()
            return None
        conn.settimeout(None)
        return EdgeRequest(header, arrays, conn)

    def close(self) -> None:
        if os.getpid() == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.sock.close()
        self.folder.close()


def ask_edge(path: Path, header: dict[str, Any], arrays: list[np.ndarray], timeout: float) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The relay's end: hand a global round to the edge run at `path` and wait for its aggregate.

    Waits up to `timeout` in all, also for an edge run that is still starting (no socket yet); EdgeError
    when it does not answer, or answers with an error."""
    deadline = time.monotonic() + timeout
    folder = HeldFolder(path.parent)
    try:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(folder.address(path.name))
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                sock.close()
                folder.close()  # the folder may be made again: hold the new one next time
                if time.monotonic() >= deadline:
                    raise EdgeError(f"no edge run listens at {path}: {err}") from None
                time.sleep(CONNECT_RETRY_SECONDS)
        try:
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            send_frame(sock, header, arrays)
            reply, got = receive_frame(sock)
        except TimeoutError:
            raise EdgeError(f"the edge run did not answer within {timeout:.0f} s") from None
        except OSError as err:
            raise EdgeError(f"the edge run's connection broke: {err}") from None
        finally:
            sock.close()
    finally:
        folder.close()
    if reply.get("error"):
        raise EdgeError(str(reply["error"]))
    return reply, got
