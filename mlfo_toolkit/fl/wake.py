"""Wake-ups between a cohort's ServerApp and the SuperNodes mlfo forks: no fixed sleep on a round's path.

Flower's SuperNode sleeps 3 s whenever a pull finds no message, and a ServerApp looks for replies
on a fixed interval. Every process of an mlfo network runs on one machine and shares its file
system, so a Unix datagram socket bound to a path reaches across network namespaces. A cohort gets
one folder (`wake_dir(executor_dir, superlink_address)`):

* each SuperNode the shared executor forks binds `node-<pid>.sock` there and, instead of Flower's
  3 s sleep, waits on it for at most those 3 s;
* once registered, a SuperNode also names its socket by its node ID (`id-<node ID>.sock`, a symbolic link to
  `node-<pid>.sock`); the ServerApp (mlfo's `RoundClock`), right after it pushed a round's messages, sends
  one wake-up per message to the socket named by its destination (`TARGETED`), so the SuperNodes with a message
  pull at once and those without do not pull at all. Where a destination has no named socket (a SuperNode
  that has not named itself, or not forked by mlfo), every node socket gets one plain wake-up instead (`PLAIN`);
* a SuperNode woken for a message (`TARGETED`) waits for its next wake-up after it pushed its reply, where
  Flower's loop would pull again at once and (nearly always) find nothing: each message it is sent comes with
  a wake-up of its own, so nothing waits. After a plain wake-up it pulls at once, as Flower does;
* a SuperNode that has just pushed its reply sends one byte to `server.sock`, on which the
  ServerApp waits between its looks for replies (at most `server_poll_seconds`);
* a SuperNode that has just stored a message sends one byte to the executor's `executor.sock`, so
  the executor asks it for the ClientApp task at once.

A wake-up carries nothing: the messages still go Flower's own way (SuperLink, Fleet API, SuperNode,
ClientApp). A lost or early wake-up costs at most the poll it replaced, so the timing can only get
better than Flower's. Sockets are removed by the process that bound them; a stale one (its process
killed) is skipped by senders (ECONNREFUSED) and removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

SERVER_SOCKET = "server.sock"
EXECUTOR_SOCKET = "executor.sock"  # in the executor's own folder: a SuperNode stored a message, ask it for the task
NODE_PREFIX = "node-"
ID_PREFIX = "id-"  # a SuperNode's socket named by its node ID (a symbolic link to its node-<pid> socket)
PLAIN = b"!"  # a wake-up for whoever is there: something was pushed, maybe for you
TARGETED = b"m"  # a wake-up sent for one message to this SuperNode: one per message
SOCKET_SUFFIX = ".sock"
FULL_QUEUE_RETRY = 0.005  # seconds between the tries of a named wake-up whose receiver's queue is full
NAMED_WAKE_PATIENCE = 2.0  # how long a SuperNode tries to tell the executor of a message (its 30 s poll is the net)


def wake_dir(executor_dir: str | os.PathLike[str] | None, superlink: str) -> Path | None:
    """The wake-up folder of the cohort whose SuperLink is `superlink` (HOST:PORT); None without an executor folder."""
    if not executor_dir or not superlink:
        return None
    return Path(executor_dir) / "wake" / re.sub(r"[^A-Za-z0-9.-]", "_", superlink)


def node_socket(folder: Path, pid: int) -> Path:
    """Where the SuperNode with this PID waits for wake-ups."""
    return folder / f"{NODE_PREFIX}{pid}{SOCKET_SUFFIX}"


def id_name(node_id: int) -> str:
    """The name of the SuperNode with this (Flower) node ID in its cohort's wake-up folder."""
    return f"{ID_PREFIX}{node_id}{SOCKET_SUFFIX}"


def remove_names_of(folder: Path, socket_path: Path) -> None:
    """Remove the node-ID names that point at `socket_path` (its SuperNode ended; a killed one never removed them)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.startswith(ID_PREFIX) and entry.is_symlink():
                with contextlib.suppress(OSError):
                    if os.readlink(entry.path) == socket_path.name:
                        os.unlink(entry.path)


class HeldFolder:
    """A folder held open, so that its sockets have a short address however deep it is: a Unix socket's
    path holds at most 108 bytes, and a run's folder is often deeper. `/proc/self/fd/N/NAME` reaches them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def address(self, name: str) -> str:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)  # FileNotFoundError until someone made it
        return f"/proc/self/fd/{self.fd}/{name}"

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class WakeSocket:
    """A Unix datagram socket bound at `path`: `wait(timeout)` returns early when someone sends to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a killed process with the same name
        self.folder = HeldFolder(path.parent)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(self.folder.address(path.name))
        self.owner = os.getpid()
        self.names: list[Path] = []  # its other names (`name_as`)

    def name_as(self, name: str) -> None:
        """Give this socket a second name in its folder (a symbolic link, replaced if it exists)."""
        link = self.path.parent / name
        spare = self.path.parent / f".{name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            spare.unlink()
        os.symlink(self.path.name, spare)
        os.replace(spare, link)
        self.names.append(link)

    def wait_one(self, timeout: float) -> bytes | None:
        """Sleep up to `timeout` seconds or until a wake-up is waiting; consume that one (None: timed out)."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        try:
            return self.sock.recv(256)
        except (BlockingIOError, InterruptedError):
            return None

    def wait(self, timeout: float) -> list[bytes]:
        """Sleep up to `timeout` seconds or until woken; returns the wake-ups that came (none: timed out)."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return self.drain() if ready else []

    def drain(self) -> list[bytes]:
        """Every pending wake-up, consumed."""
        got: list[bytes] = []
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                got.append(self.sock.recv(256))
        return got

    def close(self) -> None:
        if os.getpid() == self.owner:  # a forked child never removes its parent's socket
            for path in (*self.names, self.path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self.sock.close()
        self.folder.close()


class Waker:
    """Sends wake-ups into one folder (an unbound datagram socket; a send never blocks)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held = HeldFolder(folder)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def _send(self, name: str, payload: bytes = b"!", patience: float = 0.0) -> bool:
        """Send one wake-up. A full queue (Linux holds net.unix.max_dgram_qlen, 10, datagrams) means the receiver has
        wake-ups waiting already, which is enough for a plain one; a named one (`patience` > 0: the executor must
        learn which SuperNode stored a message) is sent again until there is room, for up to `patience` seconds."""
        deadline = time.monotonic() + patience
        attempt = 0
        while attempt < 2:
            try:
                self.sock.sendto(payload or b"!", self.held.address(name))
            except (BlockingIOError, InterruptedError):
                if time.monotonic() < deadline:
                    time.sleep(FULL_QUEUE_RETRY)  # the receiver drains its whole queue whenever it wakes
                    continue
                return not patience  # its queue is full: it has wake-ups waiting already (not this name's, though)
            except FileNotFoundError:
                if attempt == 0 and self.held.fd is not None:
                    self.held.close()  # the folder was removed and made again: hold the new one
                    attempt += 1
                    continue
                if name.startswith(ID_PREFIX):  # a name whose socket is gone (its SuperNode was killed)
                    with contextlib.suppress(OSError):
                        (self.folder / name).unlink()
                return False
            except OSError as err:
                if err.errno == errno.ECONNREFUSED:  # bound by a process that is gone
                    with contextlib.suppress(FileNotFoundError):
                        (self.folder / name).unlink()
                return False
            return True
        return False

    def _node_names(self) -> list[str]:
        """The SuperNode sockets in the folder (none while it does not exist)."""
        try:
            return [e.name for e in os.scandir(self.folder) if e.name.startswith(NODE_PREFIX) and e.name.endswith(SOCKET_SUFFIX)]
        except FileNotFoundError:
            return []

    def wake_nodes(self) -> int:
        """Wake every SuperNode of the cohort; returns how many sockets took the wake-up."""
        return sum(self._send(name) for name in self._node_names())

    def wake_for(self, destinations: list[Any]) -> int:
        """Wake the SuperNodes these messages went to (node IDs, one per message), one wake-up per message, each on
        its named socket. If one has no named socket there (or is not a node ID), or its wake-up finds nobody, every
        SuperNode gets a plain wake-up as well (`wake_nodes`). Returns how many wake-ups were taken."""
        try:
            names = {e.name for e in os.scandir(self.folder) if e.name.startswith(ID_PREFIX)}
        except FileNotFoundError:
            return 0
        named = [id_name(node) for node in destinations if isinstance(node, int)]
        if not destinations or len(named) < len(destinations) or not names.issuperset(named):
            return self.wake_nodes()
        taken = [self._send(name, TARGETED) for name in named]
        return sum(taken) + (self.wake_nodes() if not all(taken) else 0)

    def has_nodes(self) -> bool:
        """Whether any SuperNode waits in the folder."""
        return bool(self._node_names())

    def wake_server(self) -> bool:
        return self._send(SERVER_SOCKET)

    def wake_socket(self, name: str, payload: bytes = b"!", *, patience: float = 0.0) -> bool:
        return self._send(name, payload, patience)

    def close(self) -> None:
        self.sock.close()
        self.held.close()
