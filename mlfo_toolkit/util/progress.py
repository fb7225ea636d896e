"""The one progress protocol of long work: a callable taking an event name and its data.

Events: "setup" (what a run starts), "state" / "round" / "lost" / "decision" (a deployment as the MLFO
follows it), "run" (an experiment's runs), "topo" and "image" (network and image building, with a
"message"). The CLI turns them into progress bars or lines; a Python caller passes its own function.
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    def __call__(self, event: str, data: dict[str, Any], /) -> None: ...


def quiet(event: str, data: dict[str, Any], /) -> None:
    """A Progress that ignores everything."""


def say(progress: Progress, event: str, message: str) -> None:
    """A one-line message as a progress event (`{"message": ...}`)."""
    progress(event, {"message": message})
