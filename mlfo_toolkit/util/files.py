"""Files other processes read while they are written: state, registrations, Prometheus targets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_secret(path: Path, text: str) -> Path:
    """Write a token readable by its owner only: the file is created with mode 0600, never wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def write_json_atomically(path: Path, data: Any) -> Path:
    """Write JSON through a temporary file and a rename, so a SIGKILL mid-write never leaves a torn file.

    The temporary name keeps the whole file name (`.NAME.tmp`), so `x.json` and `x.started` written
    side by side never share one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str))
    os.replace(temporary, path)
    return path
