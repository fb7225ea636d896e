"""The benches' CPU accounting by kind of process (bench/_measure.py): every CPU second counted once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _measure  # noqa: E402
from _measure import attribute  # noqa: E402


def test_a_reaped_child_and_what_it_reaped_count_once() -> None:
    # The executor (pid 1) reaped a SuperLink (pid 2, own 5 s), which had reaped its ServerApp (pid 3, own 3 s),
    # and a task too short to be seen (2 s): the kernel added 5 + 3 + 2 to the executor's reaped time.
    seen = {
        (1, 100): (0, "executor", 1.0, 10.0),
        (2, 200): (1, "superlink", 5.0, 3.0),
        (3, 300): (2, "serverapp", 3.0, 0.0),
    }
    by_kind = attribute(seen, before={}, alive={(1, 100)})
    assert by_kind == {"executor": 3.0, "superlink": 5.0, "serverapp": 3.0}
    assert sum(by_kind.values()) == 11.0  # what the three and the task used, no more


def test_time_before_the_window_is_left_out() -> None:
    # A process that existed before: only what it used and reaped since counts.
    before = {(1, 100): (100, 0, "executor", 4.0, 6.0)}
    seen = {(1, 100): (0, "executor", 5.0, 9.0), (2, 200): (1, "task", 1.0, 0.0)}
    by_kind = attribute(seen, before, alive={(1, 100)})
    assert by_kind == {"executor": 1.0 + 2.0, "task": 1.0}


TITLED_LATER = "import os, time, setproctitle; time.sleep(0.5); setproctitle.setproctitle(os.environ['TITLE']); time.sleep(5)"


def test_a_process_is_known_by_the_title_it_takes_and_its_command_line_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork shows its parent's command line until it sets its title: a young process is looked at again; once it has
    its title, the bench reads its command line no more (reading every one twice a second was a twentieth of a core)."""
    child = subprocess.Popen([sys.executable, "-c", TITLED_LATER], env={**os.environ, "TITLE": "flwr-clientapp [bench test]"})
    try:
        started = time.monotonic()
        time.sleep(0.2)
        assert _measure._cpu_table()[child.pid][2] == "other"  # still `python -c`
        while _measure._cpu_table()[child.pid][2] != "flwr-clientapp" and time.monotonic() - started < 10:
            time.sleep(0.1)  # looked at again while young: the title it took is seen
        time.sleep(max(0.0, started + 1.3 - time.monotonic()))  # and older than a fork's first moments
        assert _measure._cpu_table()[child.pid][2] == "flwr-clientapp"
        read: list[int] = []
        monkeypatch.setattr(_measure, "_kind", lambda pid: read.append(pid) or "other")
        assert _measure._cpu_table()[child.pid][2] == "flwr-clientapp" and child.pid not in read
    finally:
        child.kill()
        child.wait()


def test_time_the_hypervisor_stole_is_not_counted_as_the_machines_work() -> None:
    """A VM's slow half hours: /proc/stat's steal column grew with the seed bench's round times, and the bench
    counted it as busy CPU. user nice system idle iowait irq softirq steal (guest columns after)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy, stolen, total = _measure._cpu_seconds(f"cpu  {100 * tick} 0 {50 * tick} {30 * tick} {5 * tick} 0 {10 * tick} {20 * tick} 0 0")
    assert (busy, stolen, total) == (160.0, 20.0, 215.0)
