"""Evaluation engine: BLiMP, ARC-Easy, WikiText and text perplexity with lm-eval 0.4.13 conventions.

- :func:`evaluate` runs tasks on an in-memory model and returns an :class:`EvalResult`
  (per-item polars table, lm-eval style summary, settings);
- :mod:`workbench.eval.tasks` holds the task registry (:func:`task_spec`,
  :func:`is_perplexity_task`, :func:`parent_task`, ...) and :class:`EvalSettings`, which
  builds every results-cache key;
- :mod:`workbench.eval.scoring` is the one batched log-likelihood scorer;
- :mod:`workbench.eval.data` loads the data sets from a data directory or the Hub.

Importing this package does not import torch (the scorer is loaded on first use), so the
registry is cheap to ask from figures and command help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.eval.data import BLIMP_PARADIGMS
from workbench.eval.result import ITEM_SCHEMA, EvalResult
from workbench.eval.tasks import (
    KNOWN_TASKS,
    EvalSettings,
    TaskSpec,
    evaluate,
    is_perplexity_task,
    model_fingerprint_of,
    parent_task,
    parse_tasks,
    task_spec,
)
from workbench.io.datadir import resolve_data_dir

if TYPE_CHECKING:
    from workbench.eval.scoring import ScoreResult, score_requests

#: names served from the scorer's module on first use (it imports torch)
_SCORING = ("ScoreResult", "score_requests")

__all__ = [
    "BLIMP_PARADIGMS",
    "ITEM_SCHEMA",
    "KNOWN_TASKS",
    "EvalResult",
    "EvalSettings",
    "ScoreResult",
    "TaskSpec",
    "evaluate",
    "is_perplexity_task",
    "model_fingerprint_of",
    "parent_task",
    "parse_tasks",
    "resolve_data_dir",
    "score_requests",
    "task_spec",
]


def __getattr__(name: str) -> Any:
    if name in _SCORING:
        from workbench.eval import scoring

        value = globals()[name] = getattr(scoring, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
