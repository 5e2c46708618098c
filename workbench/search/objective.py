"""The objective: a declared weighted sum of task metrics, each standardised by its ingredient spread.

For a term (task, metric, weight) and a set of items S, a system's part is

    z = sign * (m(system, S) - mean over ingredients of m(ingredient, S)) / sd

where ``m`` is the metric as lm-eval aggregates it (BLiMP's macro mean over paradigms, bits per
byte weighted by document bytes; :func:`workbench.claim.metrics.weights_for`), ``sign`` is +1
when higher is better (-1 for bits per byte) and ``sd`` the standard deviation of the metric
between the ingredients on the whole dev half (:func:`workbench.stats.noise_floor`). Centring on
the same items S makes the part a paired quantity, so a candidate scored on a small dev subset is
compared with the ingredients on that same subset. The objective is the weighted sum of the
parts; higher is better.

Search candidates are scored on the dev half only: :func:`dev_subsets` gives the fixed nested
dev subsets of the fidelity rungs; the test half is read by the final claim check alone.

>>> import polars as pl
>>> from workbench.eval.result import items_frame
>>> def rows(system, correct):
...     return items_frame({"task": ["arc_easy"] * 4, "item_id": list("abcd"), "group": ["arc_easy"] * 4,
...                         "correct": correct, "tie": [False] * 4, "margin": [0.1] * 4}).with_columns(
...         pl.lit(system).alias("system"))
>>> items = pl.concat([rows("A", [True, False, False, False]), rows("B", [True, True, True, False]),
...                    rows("cand", [True, True, True, True])])
>>> terms = [Term("arc_easy", "acc", 1.0)]
>>> scales = ingredient_scales(items, terms, ["A", "B"])
>>> round(scales[("arc_easy", "acc")], 4)
0.3536
>>> score = objective_values(items, ["cand"], terms, ["A", "B"], scales)["cand"]
>>> round(score.value, 4), score.parts["arc_easy/acc"]
(1.4142, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench.claim.metrics import METRICS, align_task, weighted_mean, weights_for
from workbench.errors import WorkbenchError
from workbench.stats import dev_test_split, noise_floor, split_unit_hash

__all__ = [
    "Score",
    "Term",
    "dev_subsets",
    "ingredient_scales",
    "objective_values",
    "restrict",
    "score_table",
    "tagged",
    "term_name",
]


@dataclass(frozen=True)
class Term:
    """One part of the objective: ``weight`` times the standardised ``metric`` of ``task``."""

    task: str
    metric: str
    weight: float


def term_name(term: Term) -> str:
    """The column name of a term's raw value, e.g. ``blimp/acc``."""
    return f"{term.task}/{term.metric}"


@dataclass
class Score:
    """A system's objective on some items: the value and its parts.

    ``parts`` maps ``task/metric`` to the raw metric and ``task/metric:z`` to its standardised
    value; ``n_items`` counts the items per task the score was computed on.
    """

    value: float
    parts: dict[str, float] = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)


def _with_split(items: pl.DataFrame) -> pl.DataFrame:
    return items if "split" in items.columns else items.with_columns(pl.lit("dev").alias("split"))


def _term_means(items: pl.DataFrame, systems: Sequence[str], term: Term) -> tuple[dict[str, float], int]:
    """Each system's aggregated metric of ``term`` on the items of ``items`` they all have."""
    td = align_task(items, list(systems), term.task)
    spec = METRICS[term.metric]
    if spec.name not in {m.name for m in td.metrics}:
        have = ", ".join(m.name for m in td.metrics)
        raise WorkbenchError(f"objective: task {term.task!r} has no per-item {term.metric!r} (it has {have})")
    every = td.mask("all")
    w = weights_for(td, spec, every)
    return {s: weighted_mean(td.values[spec.name][s][every], w) for s in systems}, int(every.sum())


def ingredient_scales(
    items: pl.DataFrame, terms: Sequence[Term], ingredients: Sequence[str]
) -> dict[tuple[str, str], float]:
    """(task, metric) -> the standard deviation of the metric between the ingredients on ``items``
    (the whole dev half); a term the ingredients score identically on cannot be standardised."""
    items = _with_split(items)
    out = {}
    for term in terms:
        means, _ = _term_means(items, ingredients, term)
        sd = noise_floor(means).std
        if not sd > 0 or not math.isfinite(sd):
            raise WorkbenchError(
                f"objective: the ingredients score the same {term.metric} on {term.task} dev items ({means}): "
                "no spread to standardise the term by"
            )
        out[(term.task, term.metric)] = sd
    return out


def objective_values(
    items: pl.DataFrame,
    systems: Sequence[str],
    terms: Sequence[Term],
    ingredients: Sequence[str],
    scales: Mapping[tuple[str, str], float],
) -> dict[str, Score]:
    """System -> :class:`Score` on the items of ``items`` (a long table with a ``system`` column
    holding ``systems`` and the ``ingredients``), each term centred on the ingredients' mean."""
    items = _with_split(items)
    everyone = list(dict.fromkeys([*systems, *ingredients]))
    scores = {s: Score(0.0) for s in systems}
    for term in terms:
        means, n = _term_means(items, everyone, term)
        centre = float(np.mean([means[i] for i in ingredients]))
        sign = 1.0 if METRICS[term.metric].higher_is_better else -1.0
        scale = scales[(term.task, term.metric)]
        for s in systems:
            z = sign * (means[s] - centre) / scale
            scores[s].value += term.weight * z
            scores[s].parts[term_name(term)] = means[s]
            scores[s].parts[term_name(term) + ":z"] = z
            scores[s].n_items[term.task] = n
    return scores


def dev_subsets(
    items: pl.DataFrame, tasks: Sequence[str], rungs: Sequence[float], *, seed: int, dev_fraction: float
) -> tuple[list[dict[str, tuple[str, ...]]], pl.DataFrame]:
    """The fixed nested dev subsets of the fidelity rungs, and the dev half itself.

    ``items`` is one system's per-item table on every item of the evaluation (``limit`` and
    ``seed`` applied). Items go to dev by the claim check's seeded split
    (:func:`workbench.stats.dev_test_split`: the same items every time). Within each task (each
    BLiMP paradigm) the dev items are put in a fixed order by another seeded hash, and rung ``f``
    takes the first ``ceil(f * n)`` of them: every candidate of a rung is scored on the same items,
    and a rung's items include the smaller rungs' items. Returns (per rung: task -> item ids, the
    dev rows of ``items``).

    >>> from workbench.eval.result import items_frame
    >>> items = items_frame({"task": ["arc_easy"] * 40, "item_id": [f"q{i}" for i in range(40)],
    ...                      "group": ["arc_easy"] * 40, "correct": [True] * 40})
    >>> subsets, dev = dev_subsets(items, ["arc_easy"], [0.25, 0.5, 1.0], seed=0, dev_fraction=0.5)
    >>> [len(s["arc_easy"]) for s in subsets] == [-(-dev.height // 4), -(-dev.height // 2), dev.height]
    True
    >>> set(subsets[0]["arc_easy"]) <= set(subsets[1]["arc_easy"]) <= set(subsets[2]["arc_easy"])
    True
    """
    from workbench.eval.tasks import find_task_spec

    split = dev_test_split(items, seed=seed, dev_fraction=dev_fraction)
    dev = split.filter(pl.col("split") == "dev")
    subsets: list[dict[str, tuple[str, ...]]] = [{} for _ in rungs]
    for task in tasks:
        sub = dev.filter(pl.col("task") == task)
        if sub.height == 0:
            n_all = split.filter(pl.col("task") == task).height
            raise WorkbenchError(
                f"task {task}: no dev items ({n_all} items in all): raise limit so that the dev half is not empty"
            )
        spec = find_task_spec(task)
        column = spec.cluster_column if spec is not None else None
        strata = sub[column].cast(pl.Utf8).to_list() if column else [task] * sub.height
        ids = sub["item_id"].cast(pl.Utf8).to_list()
        by: dict[str, list[str]] = {}
        for s, i in zip(strata, ids):
            by.setdefault(s, []).append(i)
        order = [sorted(m, key=lambda i: split_unit_hash(f"{task}\x1ffidelity", i, seed)) for m in by.values()]
        for k, f in enumerate(rungs):
            keep = [i for ordered in order for i in ordered[: max(1, math.ceil(f * len(ordered) - 1e-9))]]
            subsets[k][task] = tuple(sorted(keep))
    return subsets, dev


def restrict(items: pl.DataFrame, ids: Mapping[str, Sequence[str]]) -> pl.DataFrame:
    """The rows of ``items`` whose (task, item id) is in ``ids`` (task -> item ids)."""
    frames = [
        items.filter((pl.col("task") == task) & pl.col("item_id").cast(pl.Utf8).is_in(list(keep)))
        for task, keep in ids.items()
    ]
    return pl.concat(frames, how="diagonal_relaxed") if frames else items.head(0)


def tagged(items: pl.DataFrame, system: str) -> pl.DataFrame:
    """``items`` with a ``system`` column first (the long layout :func:`objective_values` reads)."""
    base = items.drop("system") if "system" in items.columns else items
    return base.with_columns(pl.lit(system).alias("system")).select(["system", *base.columns])


def score_table(scores: Mapping[str, Score]) -> list[dict[str, Any]]:
    """One row per system: ``objective`` and every part."""
    return [{"system": s, "objective": sc.value, **sc.parts} for s, sc in scores.items()]
