"""Evaluation engine: BLiMP, ARC-Easy, WikiText and text perplexity with lm-eval 0.4.13 conventions.

- :func:`evaluate` runs tasks on an in-memory model and returns an :class:`EvalResult`
  (per-item polars table, lm-eval style summary, settings);
- :mod:`workbench.eval.scoring` is the one batched log-likelihood scorer;
- :mod:`workbench.eval.data` loads the data sets from a data directory or the Hub.
"""

from __future__ import annotations

from workbench.eval.data import BLIMP_PARADIGMS
from workbench.io.datadir import resolve_data_dir
from workbench.eval.result import ITEM_SCHEMA, EvalResult
from workbench.eval.scoring import ScoreResult, score_requests
from workbench.eval.tasks import KNOWN_TASKS, evaluate, model_fingerprint_of, parse_tasks

__all__ = [
    "BLIMP_PARADIGMS",
    "ITEM_SCHEMA",
    "KNOWN_TASKS",
    "EvalResult",
    "ScoreResult",
    "evaluate",
    "model_fingerprint_of",
    "parse_tasks",
    "resolve_data_dir",
    "score_requests",
]
