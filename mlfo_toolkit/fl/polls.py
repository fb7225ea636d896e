"""Flower's SuperNode, polling at the speed of the work.

Flower 1.42's SuperNode (`flwr/supernode/start_client_internal.py`) sleeps a fixed 3 s whenever a
pull finds no message, and 0.5 s at a time while it waits for its ClientApp's reply; no flag sets
either. In a round of mlfo's emulated network that is most of the round: the work is milliseconds.

mlfo forks the SuperNodes it serves from its own executor, so it owns their process. Before Flower's
`flower-supernode` runs there, `quicken_supernode` gives that one module a `time` whose `sleep` is
shorter while the node is busy: for `hot` seconds after it last handled a message, a pull that
found nothing waits `fast` seconds instead of 3, and the waits for a reply take `fast / 4`; after
that, the node falls back to Flower's 3 s, so an idle cohort costs what Flower's does. Every message
still goes Flower's own way (Fleet API, SuperNode, Runtime API, ClientApp); only the waiting between
polls changes. This reaches into a module of Flower's: it is applied only on the Flower versions it
was read and measured on (TESTED), and refused loudly on another (set fl.supernode_poll_seconds: 0
to run Flower's own timing there).
"""

from __future__ import annotations

import time
import types
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError

TESTED = ("1.42.",)
FLOWER_IDLE_SLEEP = 3.0  # what Flower's SuperNode sleeps when a pull found nothing


class PollClock:
    """Stands in for the `time` module inside Flower's SuperNode loop; only `sleep` differs."""

    def __init__(self, fast: float, hot: float, clock: Any = time) -> None:
        self.fast, self.hot, self.clock = fast, hot, clock
        self.last_busy = clock.monotonic()  # a SuperNode that just started is about to get its first message
        self.polls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.clock, name)

    def sleep(self, seconds: float) -> None:
        now = self.clock.monotonic()
        if seconds >= FLOWER_IDLE_SLEEP:  # a pull found nothing
            self.polls += 1
            self.clock.sleep(self.fast if now - self.last_busy < self.hot else seconds)
            return
        self.last_busy = now  # waiting for its ClientApp's reply, or for a reply's objects
        self.clock.sleep(min(seconds, self.fast / 4))


def quicken_supernode(fast: float, hot: float) -> PollClock | None:
    """Make this process's Flower SuperNode poll every `fast` s while busy (see the module); None when `fast` is 0."""
    if fast <= 0:
        return None
    import flwr
    from flwr.supernode import start_client_internal as loop

    version = getattr(flwr, "__version__", "")
    if not version.startswith(TESTED) or not isinstance(getattr(loop, "time", None), types.ModuleType):
        raise MissingDependencyError(
            f"mlfo's SuperNode polling is tested on Flower {', '.join(v + 'x' for v in TESTED)}, not {version}",
            hint="install the Flower version mlfo pins (flwr==1.42.*), or set fl.supernode_poll_seconds: 0 "
            "to keep Flower's own 3 s polls",
        )
    clock = PollClock(fast, hot)
    setattr(loop, "time", clock)  # noqa: B010  (this module only: Flower's other modules keep theirs)
    return clock
