"""Display labels for model paths: the one rule for legends, titles, widget rows and panel names.

A checkpoint is shown by the last components of its path (or Hub id): enough to tell it from
the others, short enough for a legend. Pure string work, no imports beyond the standard library.

    >>> short_label("/data/families/demo/trajectory/step-000300")
    'trajectory/step-000300'
    >>> short_names(["/runs/a/final", "/runs/b/final"])
    {'/runs/a/final': 'a/final', '/runs/b/final': 'b/final'}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePath

__all__ = ["short_label", "short_names"]

#: The most path components :func:`short_names` tries before falling back to full paths.
MAX_KEEP = 5


def _components(path: str | os.PathLike) -> tuple[str, ...]:
    """Path components without the root (``/``) or a drive, so that labels never start with ``/``."""
    p = PurePath(os.fspath(path))
    return p.parts[1:] if p.anchor else p.parts


def short_label(path: str | os.PathLike, keep: int = 2) -> str:
    """The last ``keep`` components of a checkpoint path or Hub id (the path itself if it has none).

    >>> short_label("runs/fam/step-1/", keep=1)
    'step-1'
    >>> short_label("org/model-name")
    'org/model-name'
    """
    return "/".join(_components(path)[-keep:]) or os.fspath(path)


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Path -> the shortest :func:`short_label` (1 to ``MAX_KEEP`` components) unique among ``paths``.

    Falls back to the full paths when no length tells them apart.

    >>> short_names(["ckpt/a", "ckpt/b"])
    {'ckpt/a': 'a', 'ckpt/b': 'b'}
    >>> short_names(["x/m", "./x/m"])
    {'x/m': 'x/m', './x/m': './x/m'}
    """
    for keep in range(1, MAX_KEEP + 1):
        out = {p: short_label(p, keep) for p in paths}
        if len(set(out.values())) == len(out):
            return out
    return {p: p for p in paths}
