"""Display labels for model paths: the one rule for legends, titles, widget rows and panel names.

A checkpoint is shown by the last components of its path (or Hub id): enough to tell it from
the others, short enough for a legend. A task is shown by its name, except that a task naming a
file (``text:<path>``) is shown by the file's name. Pure string work (the task registry is asked,
lazily, which tasks name a file).

    >>> short_label("/data/families/demo/trajectory/step-000300")
    'trajectory/step-000300'
    >>> short_names(["/runs/a/final", "/runs/b/final"])
    {'/runs/a/final': 'a/final', '/runs/b/final': 'b/final'}
    >>> task_labels(["blimp", "text:/home/me/data/heldout.txt"])
    {'blimp': 'blimp', 'text:/home/me/data/heldout.txt': 'heldout.txt'}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePath

__all__ = ["shared_path", "shared_task", "short_label", "short_names", "task_label", "task_labels"]

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


def shared_path(path: str | os.PathLike, *, cwd: str | os.PathLike | None = None, home: str | None = None) -> str:
    """A path as a shared report may show it: no machine-specific prefix.

    Relative paths and Hub ids are kept; an absolute path under the working directory is shown
    relative to it, one under the home directory as ``~/...``, any other by its last three
    components after ``.../`` (the full paths stay in the report's machine-readable files).

    >>> shared_path("/srv/me/proj/data/families/demo/step-1", cwd="/srv/me/proj", home="/srv/me")
    'data/families/demo/step-1'
    >>> shared_path("/srv/me/models/m", cwd="/srv/me/proj", home="/srv/me")
    '~/models/m'
    >>> shared_path("/mnt/a/b/c/d", cwd="/srv/me/proj", home="/srv/me"), shared_path("org/name")
    ('.../b/c/d', 'org/name')
    """
    p = PurePath(os.fspath(path))
    if not p.is_absolute():
        return os.fspath(path)
    bases = [(PurePath(os.fspath(cwd) if cwd is not None else os.getcwd()), "")]
    home = home if home is not None else os.path.expanduser("~")
    if home and home != "~" and PurePath(home) != PurePath(p.anchor):
        bases.append((PurePath(home), "~/"))
    for base, prefix in bases:
        if p != base and p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return ".../" + "/".join(_components(p)[-3:])


def shared_task(task: str) -> str:
    """A task name as a shared report may show it: a ``text:<path>`` task's path through
    :func:`shared_path`.

    >>> shared_task("blimp")
    'blimp'
    """
    file = _task_file(task)
    return task if file is None else f"text:{shared_path(file)}"


def _task_file(task: str) -> str | None:
    """The file a task scores (``text:<path>``), None for a benchmark task."""
    from workbench.eval.tasks.perplexity import is_text_task, text_path

    return str(text_path(task)) if is_text_task(task) else None


def task_labels(tasks: Sequence[str]) -> dict[str, str]:
    """Task name -> display label: benchmark tasks keep their names; a ``text:<path>`` task is shown by
    the shortest end of its path that tells it from the other tasks (usually the file name).

    >>> task_labels(["text:/a/x/notes.txt", "text:/b/y/notes.txt", "arc_easy"])
    {'text:/a/x/notes.txt': 'x/notes.txt', 'text:/b/y/notes.txt': 'y/notes.txt', 'arc_easy': 'arc_easy'}
    """
    tasks = list(dict.fromkeys(tasks))
    files = {t: f for t in tasks if (f := _task_file(t)) is not None}
    short = short_names(list(dict.fromkeys(files.values())))
    taken = {t for t in tasks if t not in files}
    out = {}
    for t in tasks:
        if t not in files:
            out[t] = t
        else:  # a file named like a benchmark task keeps the prefix
            out[t] = short[files[t]] if short[files[t]] not in taken else f"text:{short[files[t]]}"
    return out


def task_label(task: str) -> str:
    """Display label of one task (see :func:`task_labels`).

    >>> task_label("text:runs/fam/heldout.txt"), task_label("blimp_adjunct_island")
    ('heldout.txt', 'blimp_adjunct_island')
    """
    return task_labels([task])[task]
