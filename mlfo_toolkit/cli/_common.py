"""What every command module shares: the config, `--json`, output helpers. Imports nothing heavy,
so `mlfo --help` stays fast: commands import the API inside their functions."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import update_wrapper
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def pass_config(command: F) -> F:
    """Pass the one `Config` the root group built as the first argument (like click.pass_obj)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        return ctx.invoke(command, ctx.find_root().obj, *args, **kwargs)

    return update_wrapper(wrapper, command)  # type: ignore[return-value]


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.find_root().meta["mlfo.json"] = True
    return value


def json_option(help_text: str = "Print one JSON document on stdout (errors too), for scripts.") -> Callable[[Any], Any]:
    """`--json`: the result as JSON on stdout; an error as {error, message, field, exit_code}."""
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, expose_value=True, is_eager=True, help=help_text)


def wants_json(ctx: click.Context | None) -> bool:
    if ctx is None:
        return False
    return bool(ctx.find_root().meta.get("mlfo.json"))


def echo_json(data: Any) -> None:
    """One JSON document on stdout, for scripts."""
    click.echo(json.dumps(data, indent=2, default=str))


def interactive() -> bool:
    """Whether stderr is a terminal (progress bars) or a pipe/file (plain lines)."""
    return sys.stderr.isatty()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
                right: Sequence[str] = ()) -> None:
    """A table on stdout with rich (aligned whatever the widths); plain columns when piped."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)
