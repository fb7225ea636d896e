"""Shared fixtures: an isolated working folder and config for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlfo_toolkit.config import Config, load_config


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
