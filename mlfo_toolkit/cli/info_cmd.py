"""`mlfo exit-codes`, `mlfo api-schema`, `mlfo completion`: facts about mlfo itself."""

from __future__ import annotations

import click

from mlfo_toolkit.cli._common import echo_json, json_option, print_table
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode


@click.command("exit-codes")
@json_option("Print a JSON object instead of a table.")
def exit_codes(as_json: bool) -> None:
    """List mlfo's exit codes and what each means."""
    if as_json:
        echo_json({code.name.lower(): {"code": int(code), "help": EXIT_CODE_HELP[code]} for code in ExitCode})
        return
    print_table(["code", "name", "meaning"], [(int(c), c.name.lower(), EXIT_CODE_HELP[c]) for c in ExitCode], right=["code"])


@click.command("api-schema")
@click.argument("service", type=click.Choice(["campus", "cloud", "agent"]))
def api_schema(service: str) -> None:
    """Print the OpenAPI 3 schema of a service's HTTP API (also served at /openapi.json, browsable at /docs)."""
    from mlfo_toolkit import api

    echo_json(api.api_schema(service).to_dict())


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(mlfo completion bash)" (add it to ~/.bashrc)."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    root = click.get_current_context().find_root().command  # the `mlfo` group this command is part of
    click.echo(completer(root, {}, "mlfo", "_MLFO_COMPLETE").source())
