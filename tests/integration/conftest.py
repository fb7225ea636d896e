"""Fixtures shared by integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlfo_toolkit.config import Config
from tests.helpers.orchestra import Orchestra, close, start_orchestra


@pytest.fixture
def orchestra(config: Config, workdir: Path) -> Iterator[Orchestra]:
    """Campus and cloud MLFOs on loopback with stand-in agents (2 servers, 6 clients)."""
    built, closables = start_orchestra(config, workdir)
    yield built
    close(closables)
