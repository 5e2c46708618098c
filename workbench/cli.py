"""Command-line interface: ``workbench merge | angles | eval | train | compare | sweep | run | demo``.

Each command is a thin wrapper: it parses arguments, calls one library function and
turns :class:`~workbench.errors.WorkbenchError` into one clear message and a non-zero
exit. Heavy imports happen inside the commands so that ``workbench --help`` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

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


# --- commands are registered below, one block per command --------------------------------


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
