"""Child processes started without a shell and stopped by PID with their whole tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from shutil import which
from typing import Protocol

import psutil

from mlfo_toolkit.errors import MissingDependencyError, UnreachableError


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower and other tools: this interpreter's bin first, telemetry off."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def find_tool(name: str) -> str:
    """Absolute path of a console script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = which(name)
    if not found:
        raise MissingDependencyError(f"'{name}' is not installed", hint="run `make install`")
    return found


# How often a running process's descendants are listed (each listing scans every process on the
# machine). Once a second, so a tree whose root is SIGKILLed (re-parenting its children) is still known.
REMEMBER_SECONDS = 1.0
# A tied process's guard walks its tree too (util.guard), and stops it when this process dies: its own
# record of the tree can be older. At 5 FL servers polled twice a second, the walks were most of an idle agent's CPU.
TIED_REMEMBER_SECONDS = 10.0


class ManagedProcess:
    """One child in its own session; `stop()` ends it and every descendant it spawned."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        tied: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        if tied:
            # Dies with this process, even after a SIGKILL (see mlfo_toolkit.util.guard).
            me = os.getpid()
            self.argv = [sys.executable, "-m", "mlfo_toolkit.util.guard", "--owner", f"{me}:{start_time(me)}", "--", *self.argv]
        self.log_path = log_path
        self.popen = spawn(self.argv, log_path, env=env, cwd=cwd)
        self.pid = self.popen.pid
        self._known: dict[int, psutil.Process] = {}
        self._remembered = 0.0
        self._remember_every = TIED_REMEMBER_SECONDS if tied else REMEMBER_SECONDS
        self._lock = threading.Lock()

    def running(self) -> bool:
        alive = self.popen.poll() is None
        if alive and time.monotonic() - self._remembered >= self._remember_every:
            # Keep the tree known while it is whole: after a SIGKILL of this process its children are
            # re-parented and could no longer be found from it.
            self._remember_tree()
        return alive

    def returncode(self) -> int | None:
        return self.popen.poll()

    def _remember_tree(self) -> None:
        # Flower detaches its SuperExec into a new session, so the process group is not enough:
        # remember every descendant by PID while the parent links still exist.
        self._remembered = time.monotonic()
        try:
            root = psutil.Process(self.pid)
            for proc in [root, *root.children(recursive=True)]:
                self._known.setdefault(proc.pid, proc)
        except psutil.Error:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the tree, wait, then SIGKILL whatever of it is left."""
        with self._lock:
            self._remember_tree()
            if self.running():
                try:
                    os.killpg(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            end_processes(list(self._known.values()), timeout)
            try:
                self.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=2)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start argv (a list, never a shell: request data cannot become shell syntax) in a session of
    its own, stdin closed, stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)


def run_tool(argv: Sequence[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a system tool (ip, ovs-vsctl, ...) to completion, output captured, never raising on its exit code; `input`
    goes to its stdin (`ip -batch -`)."""
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)


def end_processes(procs: Sequence[psutil.Process], timeout: float = 5.0, first_signal: int = signal.SIGTERM) -> None:
    """Send `first_signal` to each, wait once for all, SIGKILL whatever is left."""
    for proc in procs:
        _signal(proc, first_signal)
    alive = _wait_ended(procs, timeout)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_ended(alive, 2)


def _wait_ended(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each has ended; those still running after `timeout`. A process that ended and waits for its parent
    to reap it has ended: a service whose launcher is gone belongs to init, which here reaps only every second or two
    (psutil's wait_procs waited for that: 2 s of every `topo down`). Our own children are reaped here."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while True:
        pending = [proc for proc in pending if not _ended(proc)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def _ended(proc: psutil.Process) -> bool:
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    with contextlib.suppress(psutil.Error, ChildProcessError):
        proc.wait(0)  # reaps it if it is our child; another's stays a zombie until its parent reaps it
    return True


def stop_trees(targets: Sequence[tuple[int, float]], timeout: float = 5.0, first_signal: int = signal.SIGTERM) -> list[int]:
    """Stop each (pid, start time) still running as the process we started, with its descendants.
    Returns the PIDs that were ours and stopped (a reused PID is left alone)."""
    roots: list[int] = []
    tree: list[psutil.Process] = []
    for pid, create_time in targets:
        try:
            root = psutil.Process(pid)
            if abs(_started_at(root, create_time) - create_time) >= 0.5:
                continue  # the PID now belongs to someone else
            roots.append(pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    end_processes(tree, timeout, first_signal)
    return roots


def start_time(pid: int) -> float:
    """When `pid` started, in seconds since the machine booted: what mlfo records to know a process again (a PID is
    reused). Unlike psutil's create_time (boot time + this), it does not move when the wall clock is stepped (NTP, a
    VM resumed): a 22 s step once made `topo down` take every service for another process and leave all running.
    Raises psutil.NoSuchProcess when `pid` is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        raise psutil.NoSuchProcess(pid) from None
    return int(stat.rsplit(")", 1)[1].split()[19]) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A recorded time above this is a wall-clock create time (state written by an older mlfo), not seconds since boot.
_WALL_CLOCK = 1e8


def _started_at(proc: psutil.Process, recorded: float) -> float:
    """The process's start, in the clock `recorded` is in."""
    return proc.create_time() if recorded > _WALL_CLOCK else start_time(proc.pid)


def same_process(pid: int, create_time: float) -> bool:
    """Whether `pid` is still the live process that started at `create_time` (`start_time`; PIDs are reused)."""
    try:
        proc = psutil.Process(pid)
        return abs(_started_at(proc, create_time) - create_time) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.send_signal(sig)
    except psutil.Error:
        pass


_handed_out: set[tuple[str, int]] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now and that this process has not handed out before.

    The kernel may give the same ephemeral port to two quick callers before either binds it (at 50
    SuperNodes started at once that happened); remembering what was handed out rules that out here.
    """
    with _handed_out_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
    raise OSError(f"no free TCP port on {host} that was not handed out already")


class Watched(Protocol):
    """A process whose start can be waited for: a ManagedProcess or a SuperNode the executor started."""

    name: str
    log_path: Path

    def running(self) -> bool: ...

    def returncode(self) -> int | None: ...

    def tail(self, lines: int = 20) -> str: ...


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, process: Watched | None = None) -> None:
    """Block until host:port accepts TCP connections; fail early if `process` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            raise UnreachableError(
                f"{process.name} exited with code {process.returncode()} before listening on "
                f"{host}:{port}",
                hint=f"its log ({process.log_path}) ends with:\n{process.tail()}",
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise UnreachableError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
