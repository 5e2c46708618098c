"""Evaluation tasks (BLiMP, ARC-Easy, WikiText, plain-text perplexity) and :func:`evaluate`.

Conventions follow lm-evaluation-harness 0.4.13 (see the design notes, "Scoring
conventions"); each family's module states its own (:mod:`.blimp`, :mod:`.arc`,
:mod:`.perplexity`). :mod:`.registry` lists the families and answers questions about task
names; :mod:`.settings` holds :class:`EvalSettings`, which builds every results-cache key.

``limit`` subsamples each stratum (BLiMP paradigm; ARC; WikiText documents) to at most
``limit`` items (or a fraction when ``0 < limit < 1``), chosen at random with ``seed``
and kept in data order.

>>> sorted(KNOWN_TASKS)
['arc_easy', 'blimp', 'text', 'wikitext']
"""

from __future__ import annotations

from workbench.eval.tasks.evaluation import DEFAULT_BATCH_SIZE, evaluate, model_fingerprint_of
from workbench.eval.tasks.perplexity import text_task
from workbench.eval.tasks.registry import (
    KNOWN_TASKS,
    TASKS,
    find_task_spec,
    is_perplexity_task,
    parent_task,
    parse_tasks,
    primary_metric,
    subtasks,
    task_help,
    task_spec,
)
from workbench.eval.tasks.settings import EvalSettings, results_key
from workbench.eval.tasks.spec import TaskSpec
from workbench.eval.tasks.tokenizer import TokenizerFacts, tokenizer_sha256

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "KNOWN_TASKS",
    "TASKS",
    "EvalSettings",
    "TaskSpec",
    "TokenizerFacts",
    "evaluate",
    "find_task_spec",
    "is_perplexity_task",
    "model_fingerprint_of",
    "parent_task",
    "parse_tasks",
    "primary_metric",
    "results_key",
    "subtasks",
    "task_help",
    "task_spec",
    "text_task",
    "tokenizer_sha256",
]
