"""What tests share that is not a fixture: where the repository is, skipping with a reason, process lookups.

Test modules import from here (and from the other modules of this package), never from one another."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent.parent
IN_CI = os.environ.get("CI") == "true"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, Open vSwitch, cgroups); run `sudo make test`")


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        pytest.skip(f"needs the program '{name}'; `make test` as root installs it")
    return path


def require_network_tools() -> None:
    """Root, Open vSwitch running, iperf3: what an emulated network needs (skips with the reason otherwise)."""
    require_root()
    for tool in ("ovs-vsctl", "iperf3", "ovs-ofctl"):
        require_binary(tool)
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
