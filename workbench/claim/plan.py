"""Planning an evaluation: how many items it takes to detect an effect of a given size.

The claim check's calls have the power :mod:`workbench.stats.power` computes (the exact McNemar
test and the bootstrap CI for accuracy, the bootstrap for continuous metrics); these functions
turn that around: the items (per paradigm for BLiMP, whose accuracy is the macro mean over
paradigms) needed for a difference of ``effect`` to be called with probability ``power``.

* :func:`plan_from_pilot`: from a pilot per-item table (``workbench eval``'s ``items.parquet``
  of one model, or ``workbench compare``'s ``tables/items.parquet`` with a pair of systems), the
  variance of the paired differences per task, clustered by paradigm as the bootstrap is;
* :func:`plan_from_assumptions`: from stated numbers (baseline accuracy and the discordance or
  correlation of the two systems, or the standard deviation of a per-item difference).

Effects are in the metric's display units: points of accuracy, nats, bits per byte.

>>> p = plan_from_assumptions(5.0, accuracy=0.6, correlation=0.0)
>>> p.items, p.per_cluster
(1514, 1514)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.claim.metrics import ALPHA, METRICS, POWER, MetricSpec, align_task, task_metrics, weights_for
from workbench.errors import WorkbenchError
from workbench.stats import dev_test_split
from workbench.stats.power import (
    discordance_rate,
    mcnemar_items,
    mcnemar_mde,
    normal_items,
    normal_mde,
    paired_se,
)

__all__ = ["Plan", "plan_from_assumptions", "plan_from_pilot"]

#: Correlation of two systems' per-item results assumed when a pilot has only one system.
DEFAULT_CORRELATION = 0.5


@dataclass(frozen=True)
class Plan:
    """Items needed for one task and metric: ``items`` compared (the test half) in all,
    ``per_cluster`` per paradigm (= ``items`` without clusters), ``limit`` the ``--limit`` to
    evaluate with (the dev half comes on top: per paradigm / (1 - dev_fraction)), and what the
    pilot (if any) could detect."""

    task: str
    metric: str
    effect: float
    unit: str
    power: float
    alpha: float
    items: int
    per_cluster: int
    n_clusters: int
    pilot_items: int | None
    pilot_mde: float | None
    basis: str
    limit: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for tables and JSON)."""
        return asdict(self)

    def sentence(self) -> str:
        """One line for the terminal: what it takes, and what the pilot itself could detect."""
        digits = 1 if self.unit == "points" else 3
        size = f"±{self.effect:.{digits}f} {self.unit}"
        need = f"{self.items:,} items"
        if self.n_clusters > 1:
            need = f"{self.per_cluster:,} items per paradigm ({self.items:,} over {self.n_clusters} paradigms)"
        out = (
            f"{self.task} ({METRICS[self.metric].label if self.metric in METRICS else self.metric}): {need} "
            f"on the test half to detect {size} with {self.power:.0%} power at α = {self.alpha:.2g}"
        )
        if self.limit:
            out += f" (evaluate with --limit {self.limit}: the dev half comes on top)"
        if self.pilot_items is not None and self.pilot_mde is not None:
            out += (
                f"; a claim check of the pilot's {self.pilot_items:,} items would detect "
                f"±{self.pilot_mde:.{digits}f} {self.unit}"
            )
        return out + f" [{self.basis}]"


def _alpha_for(alpha: float, comparisons: int) -> float:
    if comparisons < 1:
        raise WorkbenchError(f"comparisons: must be at least 1, got {comparisons}")
    return alpha / comparisons


def _round_up(total: int, clusters: int) -> tuple[int, int]:
    per = max(1, math.ceil(total / clusters))
    return per * clusters, per


def _limit(per_cluster: int, dev_fraction: float) -> int:
    """Items per stratum to evaluate so that the test half holds ``per_cluster``."""
    if not 0.0 <= dev_fraction < 1.0:
        raise WorkbenchError(f"dev_fraction: must be in [0, 1), got {dev_fraction}")
    return math.ceil(per_cluster / (1.0 - dev_fraction) - 1e-9)


def plan_from_assumptions(
    effect: float,
    *,
    metric: str = "acc",
    accuracy: float | None = None,
    discordance: float | None = None,
    correlation: float | None = None,
    sd: float | None = None,
    paradigms: int = 1,
    power: float = POWER,
    alpha: float = ALPHA,
    comparisons: int = 1,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
) -> Plan:
    """Items needed to detect ``effect`` (display units) from stated assumptions.

    Accuracy: ``accuracy`` of the baseline and either ``discordance`` (share of items the two
    systems disagree on) or ``correlation`` of their per-item correctness (default 0.5). The
    other system has ``accuracy + effect``. Continuous metrics: ``sd``, the standard deviation of
    one item's difference. ``paradigms`` > 1 spreads the items evenly over that many paradigms
    (BLiMP's macro mean; items within a paradigm assumed alike). The test level is
    ``alpha / comparisons`` (Holm's first step over that many comparisons). The claim check reports
    on the test half, so the ``limit`` to evaluate with is the items per paradigm over
    ``1 - dev_fraction``.
    """
    spec = METRICS.get(metric)
    if spec is None:
        raise WorkbenchError(f"metric: unknown {metric!r}; use one of {sorted(METRICS)}")
    if not effect > 0:
        raise WorkbenchError(f"effect: must be positive, got {effect}")
    if paradigms < 1:
        raise WorkbenchError(f"paradigms: must be at least 1, got {paradigms}")
    a = _alpha_for(alpha, comparisons)
    delta = effect / spec.scale
    if spec.binary:
        if accuracy is None:
            raise WorkbenchError("plan: without --pilot, an accuracy plan needs the baseline accuracy (--accuracy)")
        other = min(1.0, accuracy + delta)
        if discordance is None:
            discordance = discordance_rate(accuracy, other, DEFAULT_CORRELATION if correlation is None else correlation)
            basis = (
                f"accuracy {accuracy:g}, correlation {DEFAULT_CORRELATION if correlation is None else correlation:g}"
            )
        else:
            basis = f"accuracy {accuracy:g}, discordance {discordance:g}"
        n = _accuracy_items(
            delta, max(discordance, delta), math.sqrt(max(discordance - delta**2, 0.0)), a, power, confidence
        )
    else:
        if sd is None:
            raise WorkbenchError(
                f"plan: without --pilot, a {spec.label} plan needs the standard deviation of a per-item difference (--sd)"
            )
        n = normal_items(delta, sd, alpha=min(a, 1.0 - confidence), power=power)
        basis = f"per-item sd {sd:g} {spec.unit}"
    total, per = _round_up(n, paradigms)
    limit = _limit(per, dev_fraction)
    return Plan("assumed", metric, effect, spec.unit, power, a, total, per, paradigms, None, None, basis, limit)


def _accuracy_items(delta: float, discordance: float, sd: float, alpha: float, power: float, confidence: float) -> int:
    """The call needs the McNemar test at ``alpha`` and the bootstrap CI: the larger of their needs."""
    by_ci = normal_items(delta, sd, alpha=1.0 - confidence, power=power) if sd > 0 else 1
    return max(mcnemar_items(delta, min(discordance, 1.0), alpha=alpha, power=power), by_ci)


def _read_items(items: pl.DataFrame | str | Path) -> pl.DataFrame:
    if isinstance(items, pl.DataFrame):
        return items
    path = Path(items)
    if not path.is_file():
        raise WorkbenchError(f"{path}: pilot items table not found")
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars raises several kinds for a file that is no parquet table
        raise WorkbenchError(f"{path}: cannot read the pilot items table: {err}") from None


def _pilot_pair(df: pl.DataFrame, systems: tuple[str, str] | None) -> tuple[pl.DataFrame, list[str]]:
    """The pilot as a long table with a ``system`` column, and the systems compared (one or two)."""
    if "system" not in df.columns:
        if systems:
            raise WorkbenchError("plan: --systems needs a pilot with a 'system' column (a compare report's items)")
        return df.with_columns(pl.lit("pilot model").alias("system")), ["pilot model"]
    present = list(dict.fromkeys(df["system"].to_list()))
    if systems is None:
        if len(present) == 1:
            return df, present
        raise WorkbenchError(f"plan: the pilot has several systems; choose two with --systems (from {present})")
    missing = [s for s in systems if s not in present]
    if missing:
        raise WorkbenchError(f"plan: system(s) {missing} not in the pilot (it has {present})")
    return df.filter(pl.col("system").is_in(list(systems))), list(systems)


def plan_from_pilot(
    items: pl.DataFrame | str | Path,
    effect: float,
    *,
    systems: tuple[str, str] | None = None,
    metric: str | None = None,
    correlation: float = DEFAULT_CORRELATION,
    power: float = POWER,
    alpha: float = ALPHA,
    comparisons: int = 1,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
) -> pl.DataFrame:
    """Per task of a pilot table, the items needed to detect ``effect`` (display units); a table of :class:`Plan`.

    ``items`` is a per-item table (or its parquet path). With two ``systems`` (a compare report's
    items) the paired differences are observed; with one system the second is assumed to score
    ``effect`` better with per-item ``correlation`` to the first. ``metric`` defaults to each
    task's primary metric. BLiMP items are clustered by paradigm as the bootstrap is, and the
    answer is per paradigm; ``limit`` adds the dev half (``dev_fraction``) on top.
    """
    if not effect > 0:
        raise WorkbenchError(f"effect: must be positive, got {effect}")
    df, names = _pilot_pair(_read_items(items), systems)
    if "split" not in df.columns:
        df = dev_test_split(df)
    a = _alpha_for(alpha, comparisons)
    rows = []
    for task in dict.fromkeys(df["task"].to_list()):
        td = align_task(df, names, task)
        spec = _pick_metric(task, df, metric)
        if spec is None:
            continue
        plan = _task_plan(td, names, spec, effect, correlation, a, power, confidence, dev_fraction)
        rows.append({**plan.to_dict(), "limit": _limit(plan.per_cluster, dev_fraction)})
    if not rows:
        raise WorkbenchError(f"plan: no task of the pilot has the metric {metric!r}")
    return pl.DataFrame(rows, infer_schema_length=None)


def _pick_metric(task: str, df: pl.DataFrame, metric: str | None) -> MetricSpec | None:
    metrics = task_metrics(task, df.filter(pl.col("task") == task))
    if metric is None:
        return metrics[0] if metrics else None
    return next((m for m in metrics if m.name == metric), None)


def _task_plan(
    td: Any,
    names: list[str],
    spec: MetricSpec,
    effect: float,
    correlation: float,
    alpha: float,
    power: float,
    confidence: float,
    dev_fraction: float,
) -> Plan:
    """One task's plan: the pilot's standard error (and discordance) scaled to the needed size; the
    pilot's own MDE is the one a claim check of its items would report (on their test half)."""
    everything = td.mask("all")
    n = int(everything.sum())
    clusters = td.clusters
    k = 1 if clusters is None else len(set(clusters.tolist()))
    w = weights_for(td, spec, everything)
    delta = effect / spec.scale
    vals = td.values[spec.name]
    if len(names) == 2:
        x, y = vals[names[0]], vals[names[1]]
        se = paired_se(x, y, clusters=clusters, weights=w)
        disc = float(np.mean(np.abs(x - y) > 0.5)) if spec.binary else 0.0
        basis = f"pilot pair {names[0]} vs {names[1]}"
    else:
        se, disc = _single_system(vals[names[0]], spec, delta, correlation, clusters, w)
        basis = f"{names[0]}; the other system assumed {effect:g} {spec.unit} better, correlation {correlation:g}"
    k_items = normal_mde(1.0, alpha=1.0 - confidence if spec.binary else min(alpha, 1.0 - confidence), power=power)
    need = math.ceil(n * (k_items * se / delta) ** 2) if se > 0 else 1  # SE shrinks as 1/sqrt(items)
    n_test = max(1, round(n * (1.0 - dev_fraction)))
    pilot_mde = k_items * se * math.sqrt(n / n_test)
    if spec.binary:
        need = max(need, mcnemar_items(delta, max(disc, delta), alpha=alpha, power=power))
        pilot_mde = max(pilot_mde + 0.5 / n_test, mcnemar_mde(n_test, disc, alpha=alpha, power=power))
    total, per = _round_up(need, k)
    return Plan(td.task, spec.name, effect, spec.unit, power, alpha, total, per, k, n, pilot_mde * spec.scale, basis)


def _single_system(
    x: np.ndarray, spec: MetricSpec, delta: float, rho: float, clusters: np.ndarray | None, w: np.ndarray | None
) -> tuple[float, float]:
    """(standard error of the paired difference, discordance) when only one system was piloted."""
    if not spec.binary:
        # two systems alike but for the effect: Var(x - y) = 2 (1 - rho) Var(x)
        return math.sqrt(2.0 * (1.0 - rho)) * paired_se(x, clusters=clusters, weights=w), 0.0
    labels = np.zeros(x.shape[0], dtype=int) if clusters is None else np.unique(clusters, return_inverse=True)[1]
    var_items = np.empty(x.shape[0])
    disc_items = np.empty(x.shape[0])
    for c in np.unique(labels):
        m = labels == c
        p = float(np.mean(x[m]))
        d = discordance_rate(p, min(1.0, p + delta), rho)
        disc_items[m], var_items[m] = d, max(d - delta**2, 0.0)
    # the expected clustered SE (stats.power.paired_se) of differences with these per-item variances:
    # sum w^2 var / W^2, a paradigm of one item adding nothing (the bootstrap cannot vary it)
    ww = np.ones(x.shape[0]) if w is None else w
    several = np.bincount(labels)[labels] > 1
    var = float(np.sum(ww**2 * var_items * several)) / float(np.sum(ww)) ** 2
    return math.sqrt(var), float(np.mean(disc_items))
