"""Files other processes read while they are written: state, registrations, Prometheus targets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
