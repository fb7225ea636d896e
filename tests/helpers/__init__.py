"""What tests share that is not a fixture: where the repository is, skipping with a reason, process lookups.

Test modules import from here (and from the other modules of this package), never from one another."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mlfo_toolkit.util.processes import wait_for_port

REPO = Path(__file__).resolve().parent.parent.parent
IN_CI = os.environ.get("CI") == "true"
# A decoy container a test makes (test_containernet.py) is named in this file of its folder before it exists,
# so a run killed mid-test still has it removed by the next run (tests/integration/conftest.py).
DECOY_RECORD = "decoy-container"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, Open vSwitch, cgroups); run `sudo make test`")


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        pytest.skip(f"needs the program '{name}'; `make test` as root installs it")
    return path


def require_network_tools() -> None:
    """Root, Open vSwitch running, iperf3, Mininet: what an emulated network needs (skips with the reason otherwise)."""
    require_root()
    for tool in ("ovs-vsctl", "iperf3", "ovs-ofctl", "ethtool", "nsenter", "tc"):
        require_binary(tool)
    try:
        import mininet  # noqa: F401
    except ImportError:
        pytest.skip("needs Debian's mininet importable (`make test` as root installs it)")
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs Open vSwitch running (`make ovs` as root)")


def processes_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose FLWR_HOME, command line or working folder points into `folder`
    (SuperNodes the shared executor forks carry a process title and work in their run folder)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            text = " ".join(proc.info["cmdline"] or []) + " " + proc.environ().get("FLWR_HOME", "") + " " + proc.cwd()
        except psutil.Error:
            continue
        if str(folder) in text:
            found.append(proc)
    return found


def still_running(pids: list[int]) -> list[int]:
    """The PIDs of processes that run: not gone, and not ended waiting to be reaped (one that ends while it is looked
    at is gone too)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            continue
    return running


def wait_for(check: Callable[[], object], timeout: float = 10.0, step: float = 0.2) -> bool:
    """Poll `check` until it is true or `timeout` seconds passed; whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return False


def serve_briefly(args: list[str], workdir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    """Start `mlfo ARGS` (a service on `port`) with no MLFO_* variables, wait until it listens, stop it with
    SIGTERM; the process and what it wrote on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")} | {"MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "mlfo_toolkit", *args], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it did not stop: the test fails, and the service does not outlive it
            proc.kill()
            proc.communicate()
            raise
    return proc, stderr
