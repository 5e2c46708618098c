"""Where the reference data lives: one rule for evaluation, the checkpoint factory and the demo.

The data directory is, in order: the argument (``--data-dir``), ``$WORKBENCH_DATA_DIR``, the
``shared/data`` folder next to this checkout (``<repo>/../shared/data``) when it exists, else
None, which means "read from the Hugging Face Hub".

>>> resolve_data_dir("/tmp") == Path("/tmp")
True
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["DATA_DIR_HINT", "resolve_data_dir"]

DATA_DIR_HINT = (
    "pass --data-dir (or set WORKBENCH_DATA_DIR) to a folder laid out like the reference "
    "data (blimp/, arc_easy/, wikitext-2/, corpus/), or leave both unset to read from the Hugging Face Hub"
)

#: ``<repo>/../shared/data``: the checkout's sibling data folder, used when nothing else is given
_CHECKOUT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory (see the module docstring); an explicit one that is missing is an error.

    Returns an absolute path, or None when no directory is given or found (the Hub).
    """
    if data_dir is None:
        data_dir = os.environ.get("WORKBENCH_DATA_DIR") or None
    if data_dir is None:
        return _CHECKOUT_DATA if _CHECKOUT_DATA.is_dir() else None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise WorkbenchError(f"{path}: data directory not found; {DATA_DIR_HINT}")
    return path.absolute()
