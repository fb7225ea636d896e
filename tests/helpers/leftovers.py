"""What a killed test run left behind: networks and a decoy container, taken down by their records."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from mlfo_toolkit import api
from mlfo_toolkit.config import load_config
from mlfo_toolkit.errors import MlfoError
from mlfo_toolkit.net.image import docker_client
from mlfo_toolkit.net.state import NetworkState
from mlfo_toolkit.util.processes import same_process
from tests.helpers import DECOY_RECORD

# A test's folder in an earlier run: pytest-N/TEST (one process) or pytest-N/popen-gwK/TEST (a worker of `pytest -n`).
RUN_FOLDERS = ("pytest-*/*", "pytest-*/popen-gw*/*")


def take_down_what_killed_runs_left(this_run: Path) -> None:
    """Take down, by their records, networks that an earlier test run left when it was killed mid-test.

    A machine restart or a CI timeout can stop a run between `topo up` and `topo down`; its switches and
    links then keep their names and the next run's `topo up` rightly refuses to build over them. The earlier
    run's state file is still in its pytest folder (pytest keeps the last three), so `topo down` removes
    exactly what it made, as a user would. A network whose owner still runs (a concurrent run) is left alone.
    Called once per run, before any test (tests/conftest.py), so two workers never take down the same network.
    """
    here = this_run.resolve()
    earlier = {path.resolve() for folder in RUN_FOLDERS for path in here.parent.glob(f"{folder}/state/network.json")}
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
    for decoy in sorted({path.resolve() for folder in RUN_FOLDERS for path in here.parent.glob(f"{folder}/{DECOY_RECORD}")}):
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
