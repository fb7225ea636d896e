"""Shared fixtures: an isolated working folder and config for every test."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
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


# `make test` runs the suite in two workers (pytest-xdist, `--dist loadgroup`). The tests of these modules build
# the emulated network (namespaces, Open vSwitch, cgroups, Docker) or time rounds and rates in it: they run one
# after another in one worker, as they would alone, and the other worker takes the rest.
ONE_AT_A_TIME = {"test_network", "test_experiments", "test_containernet", "test_faucet", "test_scale"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] in ONE_AT_A_TIME:
            item.add_marker(pytest.mark.xdist_group("network"))


# The threads an MLFO runs until it is closed: the cloud's and the campus's janitors.
JANITORS = ("cloud-janitor", "_janitor-janitor")


@pytest.fixture(autouse=True)
def no_mlfo_left_running() -> Iterator[None]:
    """Every MLFO a test makes is closed by its end. One that was not kept its janitor going for the rest of
    the run, and once stopped a later test's FL server (by deployment name) because that test's agent had
    been given the port of the forgotten MLFO's agent."""
    before = {thread for thread in threading.enumerate() if thread.name in JANITORS}
    yield
    left = [t.name for t in threading.enumerate() if t.name in JANITORS and t not in before and t.is_alive()]
    assert not left, f"the test left an MLFO running (close it): {left}"
