"""The task registry: every evaluation task family, declared once.

Adding a task = one module with its loader, runner and :class:`TaskSpec`, plus one entry in
:data:`TASKS`. Validation (:func:`parse_tasks`), the results-cache key
(:class:`~workbench.eval.tasks.settings.EvalSettings`), :func:`~workbench.eval.evaluate`,
sweeps and the UI ask the lookups below instead of testing task names.

>>> sorted(KNOWN_TASKS)
['arc_easy', 'blimp', 'text', 'wikitext']
>>> task_spec("blimp_adjunct_island").name, task_spec("text:notes.txt").primary_metric
('blimp', 'word_perplexity,none')
>>> is_perplexity_task("wikitext"), is_perplexity_task("arc_easy")
(True, False)
>>> parent_task("blimp_adjunct_island"), parent_task("blimp_term_binding"), parent_task("arc_easy")
('blimp', 'blimp', None)
"""

from __future__ import annotations

from collections.abc import Iterable

from workbench.errors import WorkbenchError
from workbench.eval.tasks import arc, blimp, perplexity
from workbench.eval.tasks.spec import TaskSpec

#: every task family, in the order help and errors list them
TASKS: tuple[TaskSpec, ...] = (blimp.SPEC, arc.SPEC, perplexity.WIKITEXT_SPEC, perplexity.TEXT_SPEC)
#: the family names
KNOWN_TASKS: tuple[str, ...] = tuple(spec.name for spec in TASKS)


def task_help() -> str:
    """How task names are written, for error messages and command help."""
    return "known tasks: " + ", ".join(spec.usage for spec in TASKS)


def find_task_spec(name: str) -> TaskSpec | None:
    """The family a task name belongs to, or None when it is not a task name."""
    return next((spec for spec in TASKS if spec.match(name)), None)


def task_spec(name: str) -> TaskSpec:
    """The family of a task name, or of a summary entry below one (``blimp_field_syntax``).

    An unknown name raises a WorkbenchError that lists the known tasks.
    """
    spec = find_task_spec(name)
    if spec is None:
        parent = parent_task(name)
        spec = find_task_spec(parent) if parent is not None else None
    if spec is None:
        raise WorkbenchError(f"unknown task {name!r}; {task_help()}")
    return spec


def parent_task(name: str) -> str | None:
    """The group task whose summary has ``name`` as a part (``blimp_adjunct_island`` -> ``blimp``),
    None for a name that is no group's part."""
    return next((p for p in (spec.parent_of(name) for spec in TASKS) if p is not None), None)


def subtasks(name: str) -> tuple[str, ...]:
    """The tasks a group task is made of (``blimp`` -> its 67 ``blimp_<paradigm>`` tasks); () otherwise."""
    return task_spec(name).subtasks(name)


def is_perplexity_task(name: str) -> bool:
    """Whether a task reports perplexities (no per-item accuracy)."""
    return task_spec(name).perplexity


def primary_metric(name: str) -> str:
    """The summary key a task is judged and plotted by, e.g. ``"acc,none"``."""
    return task_spec(name).primary_metric


def parse_tasks(tasks: str | Iterable[str]) -> list[str]:
    """Normalise a comma-separated string or list of task names; unknown names raise.

    >>> parse_tasks("blimp, arc_easy")
    ['blimp', 'arc_easy']
    >>> parse_tasks(["blimp_adjunct_island"])
    ['blimp_adjunct_island']
    """
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    out: list[str] = []
    for t in tasks:
        t = t.strip()
        if not t:
            continue
        if find_task_spec(t) is None:
            raise WorkbenchError(f"unknown task {t!r}; {task_help()}")
        if t not in out:
            out.append(t)
    if not out:
        raise WorkbenchError(f"no task given; {task_help()}")
    return out
