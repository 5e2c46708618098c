"""The typer application, the error wrapper every command uses, and shared option parsing.

Each command module (``workbench/cli/*.py``) registers its commands on :data:`app`; a command is
a thin wrapper that parses arguments, calls one library function and turns a
:class:`~workbench.errors.WorkbenchError` into one ``error:`` line and exit status 2. Heavy
imports happen inside the commands so that ``workbench --help`` is instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="Merge language-model checkpoints and judge the merge honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Print a WorkbenchError as one line on stderr and exit with status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except WorkbenchError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def list_option(values: list[str], ctx: typer.Context, command: str) -> list[str]:
    """A repeatable, comma-separable option: its values plus the extra words after it
    (``--corpus a.txt b.txt``); a stray ``-x`` among them is an unknown option."""
    stray = [a for a in ctx.args if a.startswith("-")]
    if stray:
        raise WorkbenchError(f"{command}: unknown option(s) {stray}")
    return [p for item in list(values) + list(ctx.args) for p in item.split(",") if p]


def main() -> None:  # pragma: no cover - console entry point
    app()
