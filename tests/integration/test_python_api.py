"""The README's Python example runs as printed: an experiment scripted with no Click involved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: python-api -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its Python API example"
    return match.group(1)


@pytest.mark.flower
@pytest.mark.slow
def test_readme_python_example_runs(workdir: Path) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 16
    script = workdir / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=workdir, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("first cohort's FL server:")
    trained = [re.search(r"accuracy ([\d.]+) -> ([\d.]+)", line) for line in lines]
    accuracies = [(float(m.group(1)), float(m.group(2))) for m in trained if m]
    assert len(accuracies) == 2 and all(last > first for first, last in accuracies), done.stdout
    assert "accuracy-loss.png" in lines[-1]
    assert list((workdir / "runs").glob("demo-*/report/manifest.json"))
