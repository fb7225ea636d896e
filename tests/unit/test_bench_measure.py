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


# Takes its title when told (a line on its standard input), so the look before it is not a race with a loaded machine.
TITLED_LATER = "import os, sys, time, setproctitle; sys.stdin.readline(); setproctitle.setproctitle(os.environ['TITLE']); time.sleep(5)"


def test_a_process_is_known_by_the_title_it_takes_and_its_command_line_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork shows its parent's command line until it sets its title: a young process is looked at again; once it has
    its title, the bench reads its command line no more (reading every one twice a second was a twentieth of a core)."""
    child = subprocess.Popen([sys.executable, "-c", TITLED_LATER], env={**os.environ, "TITLE": "flwr-clientapp [bench test]"},
                             stdin=subprocess.PIPE)
    assert child.stdin is not None
    try:
        started = time.monotonic()
        assert _measure._cpu_table()[child.pid][2] == "other"  # still `python -c`
        child.stdin.write(b"now\n")
        child.stdin.flush()
        while _measure._cpu_table()[child.pid][2] != "flwr-clientapp" and time.monotonic() - started < 10:
            time.sleep(0.1)  # looked at again while young: the title it took is seen
        time.sleep(max(0.0, started + 1.3 - time.monotonic()))  # and older than a fork's first moments
        assert _measure._cpu_table()[child.pid][2] == "flwr-clientapp"
        read: list[int] = []
        monkeypatch.setattr(_measure, "_kind", lambda pid: read.append(pid) or "other")
        assert _measure._cpu_table()[child.pid][2] == "flwr-clientapp" and child.pid not in read
    finally:
        child.kill()
        child.communicate()


def test_time_the_hypervisor_stole_is_not_counted_as_the_machines_work() -> None:
    """A VM's slow half hours: /proc/stat's steal column grew with the seed bench's round times, and the bench
    counted it as busy CPU. user nice system idle iowait irq softirq steal (guest columns after)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy, stolen, total = _measure._cpu_seconds(f"cpu  {100 * tick} 0 {50 * tick} {30 * tick} {5 * tick} 0 {10 * tick} {20 * tick} 0 0")
    assert (busy, stolen, total) == (160.0, 20.0, 215.0)


def test_what_children_used_after_their_last_look_counts_for_them_not_their_parent() -> None:
    """The seed bench showed the executor at 0.035-0.048 CPU s per client-round while its own time during the rounds
    was a hundredth of that: a hundred SuperNodes and ClientApp processes ending together, each using a little after
    the bench last looked at it (exit handlers, teardown), which the kernel adds to the executor's reaped time."""
    executor, supernode, clientapp, short_task = (1, 100), (2, 200), (3, 300), (4, 400)
    previous = {executor: (0, "executor", 1.0, 0.0), supernode: (1, "supernode", 4.0, 0.0),
                clientapp: (1, "clientapp", 2.0, 0.5)}
    # Both ended; the executor reaped 4 + 2 + 0.5 seen and 1.5 more used after the last look.
    current = {executor: (0, "executor", 1.1, 8.0)}
    tails, explained = _measure.exit_tails(previous, current)
    assert tails == pytest.approx({"supernode": 0.75, "clientapp": 0.75}) and explained == pytest.approx({executor: 1.5})
    seen = {**previous, executor: current[executor]}
    by_kind = attribute(seen, before={}, alive={executor}, tails=tails, explained=explained)
    # The ClientApp process counts what it reaped itself (0.5) too.
    assert by_kind == pytest.approx({"executor": 1.1, "supernode": 4.75, "clientapp": 3.25})
    assert sum(by_kind.values()) == pytest.approx(1.1 + 8.0)  # every CPU second the three used, once

    # In a look where no seen child ended, what a parent reaped of a task never seen stays its own.
    later = {executor: (0, "executor", 1.2, 8.3)}
    assert _measure.exit_tails(current, later) == ({}, {})
    seen_later = {**seen, executor: later[executor], short_task: (1, "task", 0.0, 0.0)}
    by_kind = attribute(seen_later, before={}, alive={executor}, tails=tails, explained=explained)
    assert by_kind["executor"] == pytest.approx(1.2 + 0.3)


def test_the_bench_counts_a_childs_exit_as_the_child(tmp_path: Path) -> None:
    """With /proc: a child that burns CPU after its last look (sampled every 2 s, it works 0.6 s then ends) is counted
    as its own kind, not as the process that reaped it."""
    burn = ("import setproctitle, time; setproctitle.setproctitle('flwr-clientapp [bench test]'); time.sleep(1.2);"
            " end = time.process_time() + 0.6\nwhile time.process_time() < end: pass")
    with _measure.CpuByKind(every=1.0) as cpu:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert cpu.by_kind.get("flwr-clientapp", 0.0) >= 0.5, cpu.by_kind


def test_a_chain_that_ends_together_counts_once() -> None:
    """An FL server process ends with its SuperLink under it between two looks: the executor's reaped time grows by
    both, and each counts once, as itself, the part after their last looks for the FL server."""
    executor, server, superlink = (1, 100), (2, 200), (3, 300)
    previous = {executor: (0, "executor", 1.0, 0.0), server: (1, "server", 0.5, 0.0),
                superlink: (2, "superlink", 6.0, 0.0)}
    current = {executor: (0, "executor", 1.0, 0.5 + 6.0 + 0.25)}  # 0.25 used by the two after their last looks
    tails, explained = _measure.exit_tails(previous, current)
    assert tails == pytest.approx({"server": 0.25})
    seen = {**previous, executor: current[executor]}
    by_kind = attribute(seen, before={}, alive={executor}, tails=tails, explained=explained)
    assert by_kind == pytest.approx({"executor": 1.0, "server": 0.75, "superlink": 6.0})
    assert sum(by_kind.values()) == pytest.approx(1.0 + 6.75)
