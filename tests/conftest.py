"""Shared fixtures: an isolated working folder and config for every test."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# `make test` runs the suite in two workers (pytest-xdist, `-n 2 --dist loadscope`): a module's tests stay together
# in one worker (its module-scoped network or runs are built once). The tests below build the emulated network
# (namespaces, Open vSwitch, cgroups, Docker; the same switch names): they form one unit, so they run one after
# another in one worker, as they would alone, while the other worker takes the rest. (A scheduler of our own, not
# `xdist_group` marks: on pytest 9.2 those no longer group, pytest-dev/pytest-xdist#1386.)
NETWORK_MODULES = {"test_network", "test_containernet", "test_faucet"}
NETWORK_TESTS = {"tests/integration/test_experiments.py::test_a_network_run_brings_its_network_up_and_takes_it_down"}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: only called when it runs the suite
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NetworkModulesTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "the emulated network" if Path(module).stem in NETWORK_MODULES or nodeid in NETWORK_TESTS else module

    return NetworkModulesTogether(config, log)


def pytest_sessionstart(session: pytest.Session) -> None:
    """As root, before any test: take down what an earlier, killed run left (tests/helpers/leftovers.py). Done once, in
    the process that starts the run (with `pytest -n`, the controller, before its workers start)."""
    factory = getattr(session.config, "_tmp_path_factory", None)  # what the tmp_path_factory fixture hands out
    if hasattr(session.config, "workerinput") or os.geteuid() != 0 or factory is None:
        return
    from tests.helpers.leftovers import take_down_what_killed_runs_left

    take_down_what_killed_runs_left(factory.getbasetemp())


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
