"""The shape a newcomer relies on: layers that import only downwards and no import circle, a core free
of HTTP and CLI frameworks, a fast --help, the public API's schema and docs, and a README that
documents every exit code."""

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


# The layers of the package, lowest first. A module may import modules of its own component and of lower
# layers; two components of one layer do not import each other. README ("For developers") draws this.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "__init__"),
    ("util",),
    ("config",),
    ("fl", "net"),
    ("meters", "monitoring"),
    ("agent", "orchestrator"),
    ("http",),
    ("backends", "reports"),
    ("experiments",),
    ("results",),
    ("api",),
    ("cli",),
    ("__main__",),
)
# Imported inside functions outside cli/ (where everything is, for a fast --help), each for its reason:
# optional extras (docker; flwr-datasets and datasets; mlflow and tensorboardX), root-only system packages (mininet), and heavy imports the processes that
# import the module never need (Flower, and cryptography for a SuperNode's key, in the agents; httpcore, under Flower's
# httpx, outside the executor; scikit-learn and matplotlib outside their use), and numpy.random,
# which NumPy 2 loads on first use and the executor imports before it forks (else every ClientApp task imports it).
LAZY_IMPORTS = {"docker", "mininet", "flwr", "sklearn", "matplotlib", "mlfo_toolkit.fl.apps", "datasets", "flwr_datasets",
                "mlflow", "tensorboardX", "numpy.random", "cryptography", "httpcore"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, inside functions too)."""
    modules = {_module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def architecture_problems(graph: dict[str, set[str]]) -> list[str]:
    """Import circles between modules, and imports that go up a layer or across one."""
    layer = {component: i for i, components in enumerate(LAYERS) for component in components}
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source, sink = _component(module), _component(target)
            if source == sink:
                continue
            if source not in layer or sink not in layer:
                problems.append(f"{module} -> {target}: a component outside the layers ({source if source not in layer else sink})")
            elif layer[sink] > layer[source]:
                problems.append(f"{module} -> {target}: upward ({source} is below {sink})")
            elif layer[sink] == layer[source]:
                problems.append(f"{module} -> {target}: across a layer ({source} and {sink} are siblings)")
    # Circles: strongly connected components of more than one module (Tarjan).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            circle = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                circle.append(top)
                if top == node:
                    break
            if len(circle) > 1:
                problems.append("import circle: " + " <-> ".join(sorted(circle)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return problems


def test_layers_import_only_downwards_and_nothing_imports_in_a_circle() -> None:
    graph = import_graph()
    assert len(graph) > 60 and graph["mlfo_toolkit.api"]  # the whole package was read
    assert architecture_problems(graph) == []


def test_the_layer_check_fails_on_an_upward_arrow_an_arrow_across_and_a_circle() -> None:
    graph = import_graph()
    upward = {**graph, "mlfo_toolkit.net.network": graph["mlfo_toolkit.net.network"] | {"mlfo_toolkit.reports.runs"}}
    assert architecture_problems(upward) == ["mlfo_toolkit.net.network -> mlfo_toolkit.reports.runs: upward (net is below reports)"]
    across = {**graph, "mlfo_toolkit.fl.executor": graph["mlfo_toolkit.fl.executor"] | {"mlfo_toolkit.net.hosts"}}
    assert architecture_problems(across) == ["mlfo_toolkit.fl.executor -> mlfo_toolkit.net.hosts: across a layer (fl and net are siblings)"]
    circle = {**graph, "mlfo_toolkit.net.hosts": graph["mlfo_toolkit.net.hosts"] | {"mlfo_toolkit.net.network"}}
    assert architecture_problems(circle) == ["import circle: mlfo_toolkit.net.hosts <-> mlfo_toolkit.net.network"]


def test_imports_inside_functions_outside_the_cli_are_only_the_lazy_ones() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else \
                        [inner.module or ""] if isinstance(inner, ast.ImportFrom) else []
                    found += [f"{path.relative_to(PACKAGE)}:{inner.lineno} {n}" for n in names if n not in LAZY_IMPORTS and n.split(".")[0] not in LAZY_IMPORTS]
    assert found == []


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


def test_an_agent_imports_no_orchestrator() -> None:
    """`topo up 5` starts 57 agents, and their imports are most of its time: an agent imports neither MLFO."""
    probe = (
        "import sys\n"
        "import mlfo_toolkit.cli.agent_cmd, mlfo_toolkit.http.agent_service\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mlfo_toolkit.orchestrator', 'mlfo_toolkit.backends', "
        "'mlfo_toolkit.experiments', 'mlfo_toolkit.reports', 'mlfo_toolkit.api')) or m.split('.')[0] in ('matplotlib', 'sklearn', 'flwr')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]", out


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


def _readme_exit_codes(text: str) -> dict[int, str]:
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (\w+) \|", section, re.M)}


def _undocumented_exit_codes(text: str) -> set[str]:
    documented = _readme_exit_codes(text)
    return {code.name.lower() for code in ExitCode if documented.get(int(code)) != code.name.lower()}


def test_readme_exit_code_table_lists_every_code_by_name() -> None:
    assert _undocumented_exit_codes((REPO / "README.md").read_text()) == set()


def test_readme_check_notices_a_missing_row() -> None:
    text = (REPO / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 12 | conflict |"))
    assert _undocumented_exit_codes(text.replace(row + "\n", "")) == {"conflict"}


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


def test_every_public_api_function_is_exported_and_returns_a_result() -> None:
    import inspect
    import typing

    from mlfo_toolkit import api, results

    functions = {name for name, value in vars(api).items()
                 if inspect.isfunction(value) and value.__module__ == api.__name__ and not name.startswith("_")}
    assert functions and functions <= set(api.__all__), sorted(functions - set(api.__all__))
    services = {"serve_mlfo", "serve_agent", "serve_exporter"}  # run in the foreground until stopped
    for name in sorted(functions - services):
        returned = typing.get_type_hints(getattr(api, name))["return"]
        assert (name == "topo_show" or (inspect.isclass(returned) and issubclass(returned, results.Result))), (name, returned)
    assert all(typing.get_type_hints(getattr(api, name))["return"] is type(None) for name in services)
