"""What the benchmarks sample while a job runs: the machine's MemAvailable and load average, and the CPU
seconds the job's processes used by their own accounting (a figure that compares across machines)."""

from __future__ import annotations

import os
import threading
from types import TracebackType

import psutil


class MachineWatch:
    """Samples MemAvailable and the 1-minute load every `interval` seconds in a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.available_before = psutil.virtual_memory().available
        self.min_available = self.available_before
        self.peak_load = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._times_before = os.times()
        self.cpu_seconds = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.min_available = min(self.min_available, psutil.virtual_memory().available)
            self.peak_load = max(self.peak_load, os.getloadavg()[0])

    def __enter__(self) -> MachineWatch:
        self._times_before = os.times()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        # This process and every descendant it (or they) reaped: user + system time. A process that was
        # reparented to init before it ended (a daemon) is not counted.
        after, before = os.times(), self._times_before
        self.cpu_seconds = round(sum(a - b for a, b in zip(after[:4], before[:4])), 2)

    @property
    def drop_gb(self) -> float:
        """How far MemAvailable fell below its value at the start, in GB."""
        return round((self.available_before - self.min_available) / 1e9, 2)


# What a process is, from its command line (mlfo's forks carry titles such as "flower-supernode [mlfo executor] NAME").
KINDS = ("flwr-clientapp", "flower-supernode", "flower-superlink", "flwr-serverapp", "mlfo FL server", "flwr run",
         "mlfo_toolkit.fl.executor", "ovs-vswitchd", "mlfo_toolkit.cli.launcher", "iperf3", "prometheus")


def _kind(pid: int) -> str:
    try:
        line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "mlfo_toolkit.cli.launcher" in line or " agent " in f" {line} " or " serve " in f" {line} ":
        return "mlfo services (agents, MLFOs)"
    for kind in KINDS:
        if kind in line:
            return kind
    return "other"


# (pid, start tick) -> kind, of processes old enough to carry their own title: the command line is read once per
# process, not on every look (reading and matching every command line twice a second was a twentieth of a core).
_KNOWN_KINDS: dict[tuple[int, int], str] = {}
TITLED_AFTER_SECONDS = 1.0  # a fork sets its title at once; until then it shows its parent's command line


def _uptime_ticks(tick: int) -> float:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) * tick


def _cpu_table() -> dict[int, tuple[int, int, str, float, float]]:
    """PID -> (start tick, parent PID, kind, own CPU s, CPU s of its reaped children) of every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    titled_before = _uptime_ticks(tick) - TITLED_AFTER_SECONDS * tick
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19)
        pid, start = int(entry), int(fields[19])
        kind = _KNOWN_KINDS.get((pid, start))
        if kind is None:
            kind = _kind(pid)
            if start < titled_before:
                _KNOWN_KINDS[(pid, start)] = kind
        table[pid] = (start, int(fields[1]), kind,
                      (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)
    return table


def _cpu_seconds(line: str = "") -> tuple[float, float, float]:
    """The machine's CPU seconds so far (from /proc/stat's first line, or `line`): busy (user, nice, system, irq,
    softirq), stolen by the hypervisor (a virtual machine's cores ran another guest while they had work), and all
    (idle included)."""
    if not line:
        with open("/proc/stat") as stat:
            line = stat.readline()
    values = [int(v) for v in line.split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    return busy / tick, values[7] / tick, sum(values[:8]) / tick


Seen = dict[tuple[int, int], tuple[int, str, float, float]]  # (pid, start) -> (ppid, kind, own CPU s, reaped CPU s)


def exit_tails(previous: Seen, current: Seen) -> tuple[dict[str, float], dict[tuple[int, int], float]]:
    """What the children that ended between two looks used after the first of them, by their kind.

    A process's last look is up to `every` seconds before its end, and what it used since (a SuperNode's exit
    handlers, unregistering, an interpreter's teardown) is seen only in its parent's reaped time, which grows by
    the child's whole time when the parent reaps it. The part of that growth the ended children's last-seen times do
    not explain is split evenly among them, and counts for their kinds, not their parent's (it was 0.035-0.048 CPU s
    of the seed bench's client-round shown as the executor's, whose own time while rounds ran is a hundredth of
    that). Returns that time by kind, and by parent the part of its reaped time that is not its own to count."""
    parents = {key[0]: key for key in current}
    gone = [key for key in previous if key not in current]
    gone_under: dict[int, list[tuple[int, int]]] = {}  # pid -> its children that ended too
    for key in gone:
        gone_under.setdefault(previous[key][0], []).append(key)

    def seen_time(key: tuple[int, int]) -> float:
        """Its last-seen time and that of the processes under it that ended with it (a SuperLink's ServerApp): each
        of those counts as itself, and all of it is in the reaped time of the process still running above them."""
        return previous[key][2] + previous[key][3] + sum(seen_time(below) for below in gone_under.get(key[0], []))

    ended: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for key in gone:
        parent = parents.get(previous[key][0])
        if parent is not None and parent in previous:
            ended.setdefault(parent, []).append(key)
    tails: dict[str, float] = {}
    explained: dict[tuple[int, int], float] = {}
    for parent, children in ended.items():
        grown = current[parent][3] - previous[parent][3]
        tail = max(0.0, grown - sum(seen_time(child) for child in children))
        for child in children:
            tails[previous[child][1]] = tails.get(previous[child][1], 0.0) + tail / len(children)
        # Beyond its children's last-seen time, the parent's reaped growth is theirs: their tails, and the time of
        # the processes that ended under them, counted as themselves.
        explained[parent] = max(0.0, grown - sum(previous[child][2] + previous[child][3] for child in children))
    return tails, explained


def attribute(seen: Seen, before: dict[tuple[int, int], tuple[int, int, str, float, float]],
              alive: set[tuple[int, int]], tails: dict[str, float] | None = None,
              explained: dict[tuple[int, int], float] | None = None) -> dict[str, float]:
    """CPU seconds by kind since `before`: each process's own time, and what it reaped beyond the children seen.

    A child that ended is in its parent's reaped time with all it had reaped itself (the kernel adds a reaped
    child's own and reaped time to its parent's), so both come off the parent's: a SuperLink's ServerApps are
    counted once, as themselves, and not again for the executor that reaped the SuperLink. What ended children
    used after their last look (`tails` by kind, `explained` by parent, from `exit_tails`) counts for them."""
    def since(key: tuple[int, int], own: float, reaped: float) -> tuple[float, float]:
        old = before.get(key)
        return own - (old[3] if old else 0.0), reaped - (old[4] if old else 0.0)

    explained = explained or {}
    reaped_seen: dict[int, float] = {}
    for key, (ppid, _, own, reaped) in seen.items():
        if key not in alive:
            own_since, reaped_since = since(key, own, reaped)
            reaped_seen[ppid] = reaped_seen.get(ppid, 0.0) + own_since + reaped_since
    by_kind: dict[str, float] = dict(tails or {})
    for key, (_, what, own, reaped) in seen.items():
        own_since, reaped_since = since(key, own, reaped)
        unseen = max(0.0, reaped_since - reaped_seen.get(key[0], 0.0) - explained.get(key, 0.0))
        by_kind[what] = by_kind.get(what, 0.0) + own_since + unseen
    return by_kind


class CpuByKind:
    """The machine's busy CPU seconds over a job, and how they split among kinds of process (by /proc).

    The processes are looked at every `every` seconds, and each counts with the last CPU time seen of it, so a
    SuperNode or SuperLink that ends before the job does still counts as itself (its parent, which reaps it, would
    otherwise get its time), and what it used after its last look counts as itself too (`exit_tails`: the part of
    its parent's reaped time that the children ended since the last look do not explain, split among them). What a
    parent reaped from children never seen (a forked ClientApp task can live a fraction of a second), in a look
    where none of its seen children ended, counts for the parent's kind."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self._stop = threading.Event()
        self._seen: Seen = {}
        self._last: Seen = {}  # the processes running at the last look
        self._tails: dict[str, float] = {}
        self._explained: dict[tuple[int, int], float] = {}

    def _look(self) -> set[tuple[int, int]]:
        """Note every process's CPU time now; the (pid, start) of those running."""
        table = _cpu_table()
        for pid, (start, ppid, what, own, reaped) in table.items():
            known = self._seen.get((pid, start))
            # A fork first shows its parent's command line, then its own title; a zombie shows none.
            self._seen[(pid, start)] = (ppid, known[1] if known and what == "other" else what, own, reaped)
        current = {(pid, row[0]): self._seen[(pid, row[0])] for pid, row in table.items()}
        tails, explained = exit_tails(self._last, current)
        for what, seconds in tails.items():
            self._tails[what] = self._tails.get(what, 0.0) + seconds
        for parent, seconds in explained.items():
            self._explained[parent] = self._explained.get(parent, 0.0) + seconds
        self._last = current
        return set(current)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self._look()

    def __enter__(self) -> CpuByKind:
        self._before = {(pid, row[0]): row for pid, row in _cpu_table().items()}
        self._last = {key: (row[1], row[2], row[3], row[4]) for key, row in self._before.items()}
        self._cpu_before = _cpu_seconds()
        self._thread = threading.Thread(target=self._watch, name="cpu-by-kind", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        alive = self._look()
        busy, stolen, total = (after - before for after, before in zip(_cpu_seconds(), self._cpu_before, strict=True))
        self.busy = round(busy, 1)
        self.stolen = round(stolen, 1)
        self.stolen_share = stolen / total if total > 0 else 0.0
        self.by_kind = attribute(self._seen, self._before, alive, self._tails, self._explained)

    def lines(self, per: float, unit: str) -> list[str]:
        """The kinds, largest first, in CPU seconds and per `unit` (`per` of them)."""
        rows = [f"{'process kind':<32} {'CPU s':>8} {'per ' + unit:>16}"]
        for what, seconds in sorted(self.by_kind.items(), key=lambda item: -item[1]):
            if seconds >= 0.5:
                rows.append(f"{what:<32} {seconds:>8.1f} {seconds / per:>16.3f}")
        rows.append(f"{'machine (busy, all processes)':<32} {self.busy:>8.1f} {self.busy / per:>16.3f}")
        # A VM's slow hours: the hypervisor ran another guest on these cores while they had work (not in the figures
        # above; a process's own CPU time still grows with a noisy neighbour's use of the caches).
        rows.append(f"stolen by the hypervisor: {self.stolen:.1f} CPU s, {self.stolen_share:.0%} of the cores' time")
        return rows
