"""The interface every backend offers."""

from __future__ import annotations

from types import TracebackType
from typing import Literal, Protocol

from mlfo_toolkit.config import Config

BackendKind = Literal["loopback", "network", "attached"]


class Backend(Protocol):
    """Cohorts are sent to `campus` with `config` (whose IP plan names this backend's client agents)."""

    kind: BackendKind
    config: Config
    campus: str

    def __enter__(self) -> Backend: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None: ...


class AttachedBackend:
    """MLFOs that already run (`mlfo serve`, a network up since earlier): nothing to start or stop."""

    kind: BackendKind = "attached"

    def __init__(self, config: Config, campus: str) -> None:
        self.config = config
        self.campus = campus

    def __enter__(self) -> AttachedBackend:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        return None
