"""The interpolation curve between two ingredients: metric vs t, the loss barrier, every t vs the endpoints.

:func:`interpolation_curve` evaluates LERP and SLERP merges along a t grid (it loads models;
torch is imported only when it runs). :func:`curve_tables` turns its per-item results into
the curve (with CIs), the barrier of the loss per method and task (with a bootstrap CI), and
a test of every interior t against the better endpoint (chosen on dev), Holm-corrected across
t, with the best t chosen on dev and reported on test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workbench.claim.metrics import (
    ALPHA,
    MetricSpec,
    TaskData,
    align_task,
    analytic_se,
    call,
    mde,
    paired,
    weighted_mean,
    weights_for,
)
from workbench.errors import WorkbenchError
from workbench.merge.registry import CURVE, methods_with
from workbench.stats import barrier, barrier_ci, barrier_t, bootstrap_ci, dev_test_split, holm

__all__ = ["CURVE_METHODS", "CURVE_TS", "curve_tables", "interpolation_curve"]

#: Default t grid of the interpolation curve.
CURVE_TS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the methods the curve draws unless told otherwise (the registry's curve role: LERP, SLERP)
CURVE_METHODS: tuple[str, ...] = tuple(m.name for m in methods_with(CURVE))


def curve_tables(
    curve_items: pl.DataFrame,
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
    alpha: float = ALPHA,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(curve, barriers, curve_tests) from per-item results along a t grid.

    ``curve_items`` has the item columns plus ``method`` and ``t``. ``curve``: metric vs t
    (all items and test half, with CIs). ``barriers``: per method and task, the barrier of the
    loss (error = 1 - accuracy, or bits per byte) over all items. ``curve_tests``: every t vs
    the better endpoint (chosen on dev) on the test half, Holm-corrected across t, and the best
    t chosen on dev (``selected``) reported on test.
    """
    if curve_items.height == 0:
        return pl.DataFrame(), pl.DataFrame(), pl.DataFrame()
    items = dev_test_split(curve_items, seed=seed, dev_fraction=dev_fraction)
    boot = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    curve_rows, barrier_rows, test_rows = [], [], []
    for method in dict.fromkeys(items["method"].to_list()):
        mi = items.filter(pl.col("method") == method)
        ts = sorted(set(mi["t"].to_list()))
        keys = [f"t={t:g}" for t in ts]
        long = mi.with_columns(pl.col("t").map_elements(lambda t: f"t={t:g}", return_dtype=pl.Utf8).alias("system"))
        for task in dict.fromkeys(long["task"].to_list()):
            td = align_task(long, keys, task)
            for metric in td.metrics:
                curve_rows += _curve_rows(td, metric, method, ts, keys, boot)
                if metric.primary:
                    barrier_rows.append(_barrier_row(td, metric, method, ts, keys, boot))
                test_rows += _t_tests(td, metric, method, ts, keys, alpha, boot)
    return (
        pl.DataFrame(curve_rows, infer_schema_length=None),
        pl.DataFrame(barrier_rows, infer_schema_length=None),
        pl.DataFrame(test_rows, infer_schema_length=None),
    )


def _curve_rows(
    td: TaskData, metric: MetricSpec, method: str, ts: Sequence[float], keys: Sequence[str], boot: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The metric at every t with a bootstrap CI, on all items and on the test half."""
    rows = []
    vals = td.values[metric.name]
    for split in ("all", "test"):
        m = td.mask(split)
        if not m.any():
            continue
        w = weights_for(td, metric, m)
        for t, k in zip(ts, keys):
            r = bootstrap_ci(vals[k][m], clusters=None if td.clusters is None else td.clusters[m], weights=w, **boot)
            rows.append(
                {
                    "method": method,
                    "task": td.task,
                    "metric": metric.name,
                    "split": split,
                    "t": t,
                    "value": r.estimate,
                    "low": r.low,
                    "high": r.high,
                    "n_items": int(m.sum()),
                    "higher_is_better": metric.higher_is_better,
                    "unit": metric.unit,
                    "scale": metric.scale,
                }
            )
    return rows


def _barrier_row(
    td: TaskData, metric: MetricSpec, method: str, ts: Sequence[float], keys: Sequence[str], boot: Mapping[str, Any]
) -> dict[str, Any]:
    """The barrier of the loss (error, or bits per byte) over all items, with its bootstrap CI."""
    vals = td.values[metric.name]
    wa = weights_for(td, metric, td.mask("all"))
    loss = [(1.0 - weighted_mean(vals[k], wa)) if metric.name == "acc" else weighted_mean(vals[k], wa) for k in keys]
    item_loss = np.stack([(1.0 - vals[k]) if metric.name == "acc" else vals[k] for k in keys], axis=1)
    b_low, b_high = barrier_ci(ts, item_loss, clusters=td.clusters, weights=wa, **boot)
    return {
        "method": method,
        "task": td.task,
        "loss": "error" if metric.name == "acc" else metric.name,
        "barrier": barrier(ts, loss),
        "t_max": barrier_t(ts, loss),
        "low": b_low,
        "high": b_high,
        "loss_t0": loss[0],
        "loss_t1": loss[-1],
        "n_items": td.meta.height,
    }


def _t_tests(
    td: TaskData,
    metric: MetricSpec,
    method: str,
    ts: Sequence[float],
    keys: Sequence[str],
    alpha: float,
    boot: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Every interior t vs the better endpoint on test (Holm across t); the best t on dev is ``selected``."""
    dev, test = td.mask("dev"), td.mask("test")
    if len(ts) < 3 or not dev.any() or not test.any():
        return []
    vals = td.values[metric.name]
    sign = 1.0 if metric.higher_is_better else -1.0
    wdev = weights_for(td, metric, dev)
    ends = (keys[0], keys[-1])
    ref = max(ends, key=lambda k: sign * weighted_mean(vals[k][dev], wdev))
    wt = weights_for(td, metric, test)
    cl = None if td.clusters is None else td.clusters[test]
    inner = [k for k in keys if k not in ends]
    rows = []
    for t, k in zip(ts, keys):
        if k in ends:
            continue
        r, mc, identical = paired(vals[k][test], vals[ref][test], metric, clusters=cl, weights=wt, boot=boot)
        p = mc.p_value if mc else r.p_value
        rows.append(
            {
                "method": method,
                "task": td.task,
                "metric": metric.name,
                "t": t,
                "reference": ref,
                "n_items": int(test.sum()),
                "estimate": r.estimate,
                "low": r.low,
                "high": r.high,
                "p": p,
                "a_only": mc.a_only if mc else None,
                "b_only": mc.b_only if mc else None,
                "se_analytic": analytic_se(vals[k][test], vals[ref][test], clusters=cl, weights=wt),
                "binary": metric.binary,
                "identical": identical,
                "higher_is_better": metric.higher_is_better,
                "unit": metric.unit,
                "scale": metric.scale,
                "primary": metric.primary,
                "selected": False,
            }
        )
    p_adj = holm([r["p"] for r in rows])
    # the best interior t chosen on dev (weighted like the metric), reported on test
    chosen = max(inner, key=lambda k: (sign * weighted_mean(vals[k][dev], wdev), -keys.index(k)))
    for r, ph in zip(rows, p_adj):
        r["p_holm"] = float(ph)
        r["selected"] = f"t={r['t']:g}" == chosen
        r["call"] = call(r, alpha)
        # the MDE at the level Holm's first step holds a lone real effect to, as for the panel
        r["mde_alpha"] = alpha / len(rows)
        r["mde"] = mde(r, r["mde_alpha"], float(boot["confidence"]))
    return rows


def interpolation_curve(
    model_a: str | Path,
    model_b: str | Path,
    ts: Sequence[float],
    tasks: str | Iterable[str],
    *,
    methods: Sequence[str] | None = None,
    tokenizer: Any = None,
    data_dir: str | Path | None = None,
    limit: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    store: Any = None,
    endpoints: Mapping[float, Any] | None = None,
    checkpoints: Mapping[str, Any] | None = None,
) -> pl.DataFrame:
    """Per-item results along ``ts`` for each method between two models (default: the registry's
    curve methods, LERP and SLERP).

    Returns the items table with two more columns, ``method`` and ``t``. t = 0 is ``model_a``
    and t = 1 is ``model_b`` (evaluated once and shared by the methods, or taken from
    ``endpoints``: t -> EvalResult). Example (needs two checkpoints and data)::

        items = interpolation_curve("ckpt_a", "ckpt_b", [0, 0.5, 1], "blimp", data_dir="../shared/data", limit=20)
        curve, barriers, tests = curve_tables(items)
    """
    from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
    from workbench.eval import evaluate
    from workbench.merge import merged_model, simple_recipe

    a, b = str(model_a), str(model_b)
    methods = list(methods) if methods is not None else list(CURVE_METHODS)
    ts = sorted({float(t) for t in ts})
    if not ts:
        raise WorkbenchError("interpolation_curve: empty t grid")
    if any(t < 0.0 or t > 1.0 for t in ts):
        raise WorkbenchError(f"interpolation_curve: t values must lie in [0, 1], got {ts}")
    tok = tokenizer if tokenizer is not None else load_tokenizer(a)
    cks = dict(checkpoints or {})
    cks.setdefault(a, open_checkpoint(a))
    cks.setdefault(b, open_checkpoint(b))
    ev = dict(data_dir=data_dir, limit=limit, seed=seed, batch_size=batch_size, progress=progress, store=store)
    cache: dict[float, pl.DataFrame] = {}
    for t, res in (endpoints or {}).items():
        cache[float(t)] = res.items
    frames = []
    for method in methods:
        for t in ts:
            if t in (0.0, 1.0):
                if t not in cache:
                    model = load_model(cks[a if t == 0.0 else b], device=device)
                    cache[t] = evaluate(model, tok, tasks, device=device, **ev).items
                    del model
                items = cache[t]
            else:
                model = merged_model(simple_recipe(method, [a, b], t=t), device=device, checkpoints=cks)
                items = evaluate(model, tok, tasks, device=device, **ev).items
                del model
            frames.append(items.with_columns(pl.lit(method).alias("method"), pl.lit(t).alias("t")))
    return pl.concat(frames, how="diagonal_relaxed")
