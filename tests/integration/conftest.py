"""Fixtures shared by integration tests."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlfo_toolkit import api
from mlfo_toolkit.config import Config, load_config
from mlfo_toolkit.errors import MlfoError
from mlfo_toolkit.net.image import docker_client
from mlfo_toolkit.net.state import NetworkState
from mlfo_toolkit.util.processes import same_process
from tests.helpers import DECOY_RECORD
from tests.helpers.orchestra import Orchestra, close, start_orchestra


@pytest.fixture
def orchestra(config: Config, workdir: Path) -> Iterator[Orchestra]:
    """Campus and cloud MLFOs on loopback with stand-in agents (2 servers, 6 clients)."""
    built, closables = start_orchestra(config, workdir)
    yield built
    close(closables)


def this_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's pytest folder (pytest-N), also from a worker of `pytest -n` (pytest-N/popen-gwK)."""
    here = tmp_path_factory.getbasetemp().resolve()
    return here.parent if os.environ.get("PYTEST_XDIST_WORKER") else here


@pytest.fixture(scope="session", autouse=True)
def no_network_left_by_a_killed_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Take down, by their records, networks that an earlier test run left when it was killed mid-test.

    A machine restart or a CI timeout can stop a run between `topo up` and `topo down`; its switches and
    links then keep their names and the next run's `topo up` rightly refuses to build over them. The earlier
    run's state file is still in its pytest folder (pytest keeps the last three), so `topo down` removes
    exactly what it made, as a user would. A network whose owner still runs (a concurrent run) is left alone.
    """
    if os.geteuid() != 0:
        return
    here = this_run(tmp_path_factory)
    earlier = {path.resolve() for pattern in ("pytest-*/*/state/network.json", "pytest-*/popen-gw*/*/state/network.json")
               for path in here.parent.glob(pattern)}
    for record in sorted(path for path in earlier if here not in path.parents):
        try:
            state = NetworkState.from_dict(json.loads(record.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if state.owner_alive() or not (state.bridges or state.hosts or state.processes or state.containers):
            continue  # a concurrent run's network, or a record that names nothing (a unit test's)
        config = load_config(environ={}).with_overrides({"paths.state_dir": str(record.parent)})
        try:
            api.topo_down(config)
        except MlfoError as error:
            warnings.warn(f"could not take down the network recorded in {record}: {error}", stacklevel=1)
    decoys = {path.resolve() for pattern in (f"pytest-*/*/{DECOY_RECORD}", f"pytest-*/popen-gw*/*/{DECOY_RECORD}")
              for path in here.parent.glob(pattern)}
    for decoy in sorted(decoys):
        if here in decoy.parents:
            continue
        try:
            record = json.loads(decoy.read_text())
            if same_process(record["pid"], record["create_time"]):
                continue  # a concurrent run's decoy: its own module removes it
            docker_client().containers.get(record["name"]).remove(force=True)
        except Exception:  # noqa: BLE001 - gone already, unreadable, or no Docker: nothing to remove
            pass
        decoy.unlink(missing_ok=True)
