"""What a task family declares to the registry (:mod:`workbench.eval.tasks.registry`).

A family (BLiMP, ARC-Easy, WikiText, text files) is one :class:`TaskSpec`: which task names
are its own, how its data is loaded and hashed, how it is scored, which metrics it reports.
Evaluation, the results-cache key, validation, sweeps and the UI read these declarations
instead of testing task names themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.eval.result import EvalResult
from workbench.eval.tasks.common import TaskContext

#: ``load(task, data_dir, split)``: the task's data (records, documents), read once per evaluation
Loader = Callable[[str, Path | None, str | None], Any]
#: ``run(ctx, task, data, limit, seed, item_ids)``: score the selected items of ``data``
Runner = Callable[[TaskContext, str, Any, float | None, int, Collection[str] | None], EvalResult]
#: ``data_files(task, data_dir, split)``: the files whose content keys the task's results, None for the Hub
DataFiles = Callable[[str, Path | None, str | None], list[Path] | None]


def _none(name: str) -> None:
    return None


def _no_parts(name: str) -> tuple[str, ...]:
    return ()


def _no_settings(data_dir: Path | None) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class TaskSpec:
    """One task family, as the registry lists it.

    ``name`` is the family (``KNOWN_TASKS`` lists these); ``usage`` how its task names are
    written, for error messages and help; ``match`` whether a task name is one of its tasks.
    ``primary_metric`` is the summary key a task is judged and plotted by (lm-eval style,
    e.g. ``"acc,none"``), ``metrics`` all the summary keys of a task's own entry and
    ``item_metrics`` the per-item quantities a paired comparison uses. ``split_setting``
    names the evaluation setting that chooses the data split (e.g. ``"arc_split"``, default
    ``default_split``); ``extra_settings`` gives other settings that change the numbers
    (WikiText's variant). ``subtasks`` lists a group task's parts (``blimp`` -> its 67
    paradigms), ``parent_of`` the group a summary entry belongs to, ``cluster_column`` the
    item column items are resampled within (BLiMP paradigms) and ``breakdowns`` the item
    columns the summary also reports groups of (BLiMP's ``field`` and ``term``).
    """

    name: str
    usage: str
    match: Callable[[str], bool]
    load: Loader
    run: Runner
    data_files: DataFiles
    metrics: tuple[str, ...]
    primary_metric: str
    higher_is_better: bool
    item_metrics: tuple[str, ...]
    perplexity: bool = False
    split_setting: str | None = None
    default_split: str | None = None
    extra_settings: Callable[[Path | None], dict[str, Any]] = _no_settings
    subtasks: Callable[[str], tuple[str, ...]] = _no_parts
    parent_of: Callable[[str], str | None] = _none
    cluster_column: str | None = None
    breakdowns: tuple[str, ...] = ()
