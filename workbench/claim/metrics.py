"""Per-item metrics of the claim check, items aligned across systems, and the paired test with its call.

Everything the panel and the interpolation curve share: which metrics a task is compared on
(:func:`task_metrics`), the per-item values of each system on the items they all have
(:func:`align_task`), the weights that turn a mean into lm-eval's aggregate (BLiMP's macro mean
over paradigms, bytes for bits per byte), rounding-level differences counted as ties
(:func:`snap_rounding`), the rule that calls a difference a gain or a loss (:func:`call`) and
the minimum detectable effect of that call (:func:`mde`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from workbench.errors import WorkbenchError
from workbench.eval.tasks import find_task_spec
from workbench.stats import BootstrapResult, McNemarResult, mcnemar_exact, paired_bootstrap
from workbench.stats.power import POWER, mcnemar_mde, normal_mde, paired_se

__all__ = [
    "ACC",
    "ALPHA",
    "BPB",
    "MARGIN",
    "MIN_ITEMS_FOR_CALL",
    "POWER",
    "METRICS",
    "MetricSpec",
    "TaskData",
    "align_task",
    "call",
    "cluster_column",
    "macro_weights",
    "mde",
    "metric_label",
    "paired",
    "snap_rounding",
    "task_metrics",
    "weighted_mean",
    "weights_for",
]

#: Significance level of every call (after Holm correction).
ALPHA = 0.05
#: Fewer paired items than this never yield a gain/loss call (percentile intervals are too narrow).
MIN_ITEMS_FOR_CALL = 20
#: Per-item differences within numerical precision count as ties: |a - b| <= ATOL + RTOL * |a|,
#: in the metric's own units (0/1 for accuracy, nats for margins, bits per byte per document).
#: ATOL matches the tolerance the scorer is held to against lm-eval (log-likelihoods within
#: 1e-4), so float32 rounding (two copies of one model, two scoring paths) is never called a
#: difference; 1e-4 bits per byte is far below any effect this workbench reports.
ROUNDING_ATOL, ROUNDING_RTOL = 1e-4, 1e-5
_LN2 = math.log(2.0)


def snap_rounding(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` with every item within numerical precision of ``a`` replaced by ``a``'s value.

    >>> snap_rounding(np.array([1.0, 2.0, -50.0]), np.array([1.00000003, 2.5, -50.0002])).tolist()
    [1.0, 2.5, -50.0]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    close = np.abs(a - b) <= ROUNDING_ATOL + ROUNDING_RTOL * np.abs(a)
    return np.where(close, a, b)


@dataclass(frozen=True)
class MetricSpec:
    """A per-item metric: how to read it, which way is better, how to display it (``label``)."""

    name: str
    higher_is_better: bool
    unit: str
    scale: float
    binary: bool
    primary: bool
    label: str = ""


ACC = MetricSpec("acc", True, "points", 100.0, True, True, "accuracy")
MARGIN = MetricSpec("margin", True, "nats", 1.0, False, False, "log-likelihood margin")
BPB = MetricSpec("bits_per_byte", False, "bits/byte", 1.0, False, True, "bits per byte")
#: Metric name -> its spec (tables carry the name; displays ask for the label).
METRICS = {m.name: m for m in (ACC, MARGIN, BPB)}


def metric_label(name: str) -> str:
    """How a metric is named in sentences: ``"acc"`` -> ``"accuracy"`` (unknown names unchanged).

    >>> metric_label("margin"), metric_label("bits_per_byte")
    ('log-likelihood margin', 'bits per byte')
    """
    spec = METRICS.get(name)
    return spec.label if spec is not None and spec.label else name


def cluster_column(task: str) -> str | None:
    """The item column a task's items are resampled within (BLiMP: the paradigm), from the task registry.

    >>> cluster_column("blimp_anaphor_number_agreement"), cluster_column("arc_easy")
    ('group', None)
    """
    spec = find_task_spec(task)
    return spec.cluster_column if spec is not None else None


def task_metrics(task: str, items: pl.DataFrame) -> list[MetricSpec]:
    """Metrics compared for a task: accuracy + mean log-likelihood margin, or bits per byte.

    >>> from workbench.eval.result import items_frame
    >>> [m.name for m in task_metrics("blimp", items_frame({"task": ["blimp"], "correct": [True], "margin": [1.0]}))]
    ['acc', 'margin']
    """
    sub = items.filter(pl.col("task") == task) if "task" in items.columns else items
    if sub.height == 0:
        return []
    if sub["correct"].null_count() == sub.height:
        if sub["n_bytes"].null_count() or sub["loglik"].null_count():
            raise WorkbenchError(f"{task}: perplexity items need loglik and n_bytes for every document")
        return [BPB]
    out = [ACC]
    if sub["margin"].null_count() == 0:
        out.append(MARGIN)
    return out


def _metric_values(frame: pl.DataFrame, metric: MetricSpec) -> np.ndarray:
    if metric.name == "acc":
        if frame["correct"].null_count():
            raise WorkbenchError("accuracy items with a null 'correct' value")
        return frame["correct"].cast(pl.Float64).to_numpy()
    if metric.name == "margin":
        return frame["margin"].cast(pl.Float64).to_numpy()
    if metric.name == "bits_per_byte":
        ll = frame["loglik"].cast(pl.Float64).to_numpy()
        nb = frame["n_bytes"].cast(pl.Float64).to_numpy()
        return -ll / np.maximum(nb, 1.0) / _LN2
    raise WorkbenchError(f"unknown metric {metric.name!r}")


@dataclass
class TaskData:
    """One task's items, aligned across systems: meta (item_id, group, field, split, n_bytes)."""

    task: str
    meta: pl.DataFrame
    values: dict[str, dict[str, np.ndarray]]  # metric -> system -> per-item values
    ties: dict[str, np.ndarray]
    metrics: list[MetricSpec]
    clusters: np.ndarray | None
    weights: np.ndarray | None

    def mask(self, split: str) -> np.ndarray:
        """Items of ``split`` (``"dev"``, ``"test"``, or ``"all"``)."""
        if split == "all":
            return np.ones(self.meta.height, dtype=bool)
        return (self.meta["split"] == split).to_numpy()


def align_task(items: pl.DataFrame, systems: Sequence[str], task: str) -> TaskData:
    """Per-item values of ``task`` for every system, on the items all of them have (sorted by id).

    ``items`` is the long table (column ``system``) with a ``split`` column.
    """
    sub = items.filter(pl.col("task") == task)
    per = {s: sub.filter(pl.col("system") == s).sort("item_id") for s in systems}
    common = None
    for s in systems:
        ids = set(per[s]["item_id"].to_list())
        common = ids if common is None else common & ids
    if not common:
        raise WorkbenchError(f"{task}: the systems share no items; evaluate them with the same --limit and --seed")
    for s in systems:
        if per[s].height != len(common):
            per[s] = per[s].filter(pl.col("item_id").is_in(sorted(common)))
        if per[s]["item_id"].n_unique() != per[s].height:
            raise WorkbenchError(f"{task}: duplicate item_id values in the results of {s}")
    first = per[systems[0]]
    metrics = task_metrics(task, first)
    values = {m.name: {s: _metric_values(per[s], m) for s in systems} for m in metrics}
    ties = {s: per[s]["tie"].fill_null(False).to_numpy().astype(bool) for s in systems}
    meta = first.select("item_id", "group", "field", "split", "n_bytes")
    clusters = weights = None
    if (column := cluster_column(task)) is not None:
        clusters = meta[column].fill_null("").to_numpy().astype(str)
    if metrics and metrics[0].name == "bits_per_byte":
        weights = meta["n_bytes"].cast(pl.Float64).to_numpy()
    return TaskData(task, meta, values, ties, metrics, clusters, weights)


def macro_weights(clusters: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    """1/size of each item's paradigm within the masked items: the mean becomes lm-eval's macro mean.

    >>> macro_weights(np.array(["p", "p", "q"]), np.array([True, True, True])).tolist()
    [0.5, 0.5, 1.0]
    """
    if clusters is None:
        return None
    sub = clusters[mask]
    _, codes, counts = np.unique(sub, return_inverse=True, return_counts=True)
    return 1.0 / counts[codes]


def weights_for(td: TaskData, metric: MetricSpec, mask: np.ndarray) -> np.ndarray | None:
    """Item weights of ``metric`` on the masked items: bytes for bits per byte, else the macro weights."""
    if metric.name == "bits_per_byte":
        return td.weights[mask] if td.weights is not None else None
    return macro_weights(td.clusters, mask)


def weighted_mean(x: np.ndarray, w: np.ndarray | None) -> float:
    """Mean of ``x`` (weighted when ``w`` is given); NaN for no items.

    >>> weighted_mean(np.array([1.0, 3.0]), np.array([3.0, 1.0]))
    1.5
    """
    if x.size == 0:
        return float("nan")
    return float(np.mean(x)) if w is None else float(np.sum(w * x) / np.sum(w))


def paired(
    a: np.ndarray,
    b: np.ndarray,
    metric: MetricSpec,
    *,
    clusters: np.ndarray | None,
    weights: np.ndarray | None,
    boot: Mapping[str, Any],
) -> tuple[BootstrapResult, McNemarResult | None, bool]:
    """Paired bootstrap of ``a - b`` (rounding-level differences counted as ties), with an
    exact McNemar test for binary metrics; returns ``(bootstrap, mcnemar or None, identical)``."""
    b = snap_rounding(a, b)
    r = paired_bootstrap(a, b, clusters=clusters, weights=weights, **boot)
    mc = mcnemar_exact(a > 0.5, b > 0.5) if metric.binary else None
    return r, mc, bool(np.array_equal(a, b))


def analytic_se(a: np.ndarray, b: np.ndarray, *, clusters: np.ndarray | None, weights: np.ndarray | None) -> float:
    """Closed-form standard error of the paired difference ``a - b`` as the bootstrap of :func:`paired`
    sees it (rounding-level differences counted as ties, resampled within ``clusters``).

    >>> round(analytic_se(np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0]), clusters=None, weights=None), 4)
    0.2887
    """
    return paired_se(a, snap_rounding(a, b), clusters=clusters, weights=weights)


def mde(row: Mapping[str, Any], alpha: float, confidence: float, power: float = POWER) -> float:
    """Minimum detectable effect of a comparison row, in the metric's raw units (a fraction for accuracy).

    The smallest true difference the row's call (:func:`call`) detects with probability
    ``power`` when the comparison is tested at ``alpha`` (the caller passes the level its Holm
    family imposes) and its CI is at ``confidence``. Continuous metrics: the bootstrap test,
    ``(z_{1-a/2} + z_power)`` times the clustered standard error ``se_analytic`` at
    ``a = min(alpha, 1 - confidence)``. Accuracy: the larger of the exact McNemar test's MDE at
    ``alpha`` (from the row's items and discordant pairs ``a_only + b_only``) and the bootstrap
    CI's at ``1 - confidence`` (half a lattice step of 1/n added: a mean of 0/1 differences is
    discrete). Infinite with fewer than ``MIN_ITEMS_FOR_CALL`` items (never
    called); NaN for a continuous metric whose per-item results are identical (no variance to
    judge by).

    >>> row = {"n_items": 500, "a_only": 60, "b_only": 40, "se_analytic": 0.02, "binary": True}
    >>> round(mde(row, 0.05, 0.95), 3)  # McNemar binds: 100 discordant pairs in 500
    0.057
    """
    n = int(row["n_items"])
    if n < MIN_ITEMS_FOR_CALL:
        return math.inf
    se = float(row["se_analytic"])
    binary = bool(row.get("binary", row.get("a_only") is not None))
    if not binary:
        return float("nan") if se == 0.0 else normal_mde(se, alpha=min(alpha, 1.0 - confidence), power=power)
    discordant = int(row["a_only"]) + int(row["b_only"])
    # a mean of 0/1 differences moves on a lattice of 1/n (for the macro mean too, on average): the
    # percentile CI leaves 0 only half a step beyond the normal threshold
    by_ci = normal_mde(se, alpha=1.0 - confidence, power=power) + 0.5 / n
    return max(mcnemar_mde(n, discordant / n, alpha=alpha, power=power), by_ci)


def call(row: Mapping[str, Any], alpha: float) -> str:
    """``"gain"``, ``"loss"`` or ``"no evidence"`` for a comparison row (estimate, CI, Holm p).

    A difference is called only when the results differ, enough items are paired, the CI
    excludes 0 and the Holm-adjusted p is below ``alpha``.

    >>> call({"identical": False, "n_items": 50, "low": 0.01, "high": 0.2, "p_holm": 0.01,
    ...       "estimate": 0.1, "higher_is_better": True}, 0.05)
    'gain'
    """
    if row["identical"]:
        return "no evidence"
    if row.get("n_items") is not None and row["n_items"] < MIN_ITEMS_FOR_CALL:
        return "no evidence"
    if row["low"] <= 0.0 <= row["high"]:
        return "no evidence"
    if row["p_holm"] is None or not (row["p_holm"] < alpha):
        return "no evidence"
    better = (row["estimate"] > 0) == bool(row["higher_is_better"])
    return "gain" if better else "loss"
