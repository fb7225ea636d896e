"""The shape a newcomer relies on: a core free of HTTP and CLI frameworks, a fast --help, the
public API's schema and docs, and a README that documents every exit code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.errors import ExitCode
from tests.helpers import REPO

PACKAGE = REPO / "mlfo_toolkit"
CORE = ("orchestrator", "agent", "net", "meters", "fl")
FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "click", "rich")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("mlfo_toolkit.http") or node.module.startswith("mlfo_toolkit.cli"):
                names.add(node.module)
    return names


def test_no_core_module_imports_an_http_or_cli_framework() -> None:
    offenders = []
    for package in CORE:
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = {name for name in _imports(path) if name in FRAMEWORKS or name.startswith(("mlfo_toolkit.http", "mlfo_toolkit.cli"))}
            if bad:
                offenders.append(f"{path.relative_to(REPO)}: {sorted(bad)}")
    assert not offenders, "core modules import frameworks:\n" + "\n".join(offenders)
    # The check itself can fail: the HTTP edge does import FastAPI.
    assert "fastapi" in _imports(PACKAGE / "http" / "app.py")


def test_fastapi_is_imported_only_under_http() -> None:
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "fastapi" in _imports(p))
    assert users and all(u.startswith("http/") for u in users), users


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    probe = (
        "import sys, time; t = time.perf_counter()\n"
        "from mlfo_toolkit.cli.main import cli\n"
        "try:\n    cli(['--help'], prog_name='mlfo')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'flwr', 'fastapi', 'pydantic', 'requests', 'matplotlib', 'sklearn'})\n"
        "print('RESULT', time.perf_counter() - t, ','.join(heavy))\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    wall = time.perf_counter() - started
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    _, _, heavy = line.split(" ", 2)
    assert heavy.strip() == "", f"`mlfo --help` imports {heavy}"
    assert wall < 3.0, f"`mlfo --help` took {wall:.2f} s (measured about 0.1 s; the bound is generous for a loaded CI machine)"


def _readme_exit_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (\w+) \|", section, re.M)}


def test_readme_exit_code_table_lists_every_code_by_name() -> None:
    documented = _readme_exit_codes()
    assert documented == {int(code): code.name.lower() for code in ExitCode}


def test_readme_table_parser_notices_a_missing_row(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _readme_exit_codes()
    del rows[int(ExitCode.CONFLICT)]
    assert rows != {int(code): code.name.lower() for code in ExitCode}


@pytest.mark.parametrize("service, paths", [
    ("campus", {"/receive", "/deployments", "/deployments/{deployment_id}", "/health"}),
    ("cloud", {"/momo/deploy", "/momo/release/{deployment}", "/momo/allocations", "/health"}),
    ("agent", {"/serv", "/cli", "/status", "/stop", "/health"}),
])
def test_api_schema_is_valid_openapi_3(service: str, paths: set[str]) -> None:
    from openapi_spec_validator import validate

    result = CliRunner().invoke(cli, ["api-schema", service])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    validate(schema)
    assert schema["openapi"].startswith("3.")
    assert paths <= set(schema["paths"])
    if service == "campus":
        form = schema["paths"]["/receive"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert {"file", "cohortsize", "ipstart", "sameserver", "avgalgo", "numround"} <= set(form["properties"])


def test_errors_are_json_with_json(workdir: Path) -> None:
    bad = workdir / "intent.yaml"
    bad.write_text("intentID: x\ntargets:\n  - id: t\n    operation: train\n    operand: nonsense\n")
    result = CliRunner().invoke(cli, ["intent", "validate", str(bad), "--json"])
    assert result.exit_code == int(ExitCode.INVALID_INPUT)
    error = json.loads(result.stdout)
    assert error["exit_code"] == 4 and error["error"] == "ValidationError" and error["field"]
    plain = CliRunner().invoke(cli, ["intent", "validate", str(bad)])
    assert plain.exit_code == 4 and "Error:" in plain.stderr and not plain.stdout.strip().startswith("{")


def test_topo_status_without_a_network_is_not_an_error(workdir: Path) -> None:
    result = CliRunner().invoke(cli, ["topo", "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] == "none"


def test_completion_scripts() -> None:
    for shell in ("bash", "zsh", "fish"):
        result = CliRunner().invoke(cli, ["completion", shell])
        assert result.exit_code == 0 and "_MLFO_COMPLETE" in result.output


def test_every_command_has_json() -> None:
    missing = []

    def walk(command: object, path: str) -> None:
        import click

        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
        elif isinstance(command, click.Command):
            if not any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
                missing.append(path.strip())

    walk(cli, "")
    # Long-running services and printers of one document have no result to format.
    assert sorted(missing) == ["agent", "api-schema", "completion", "exporter", "serve"], missing
