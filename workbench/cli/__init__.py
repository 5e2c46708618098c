"""Command-line interface: ``workbench merge | angles | align | eval | train | compare | plan | sweep | run | demo``.

One module per group of commands; importing this package registers them all on :data:`app`, in
the order below (which is the order of ``workbench --help``). Adding a command = a function in
one of these modules, or a new module named in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib

from workbench.cli.app import app, main, user_errors

#: command modules, in the order their commands appear in ``workbench --help``
COMMAND_MODULES = ("merging", "alignment", "evaluation", "training", "claim", "experiments", "notebooks")
for _name in COMMAND_MODULES:
    importlib.import_module(f"workbench.cli.{_name}")

__all__ = ["COMMAND_MODULES", "app", "main", "user_errors"]

if __name__ == "__main__":  # pragma: no cover
    main()
