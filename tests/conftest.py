"""Shared fixtures: an isolated working folder and config for every test, helpers to skip with a reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlfo_toolkit.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder with no MLFO_* variables and a private HOME."""
    for name in list(os.environ):
        if name.startswith("MLFO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def config(workdir: Path) -> Config:
    return load_config(environ={}).with_overrides(
        {"paths.state_dir": str(workdir / "state"), "paths.runs_dir": str(workdir / "runs")}
    )


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, Open vSwitch, cgroups); run `sudo make test`")


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        pytest.skip(f"needs the program '{name}'; `make test` as root installs it")
    return path
