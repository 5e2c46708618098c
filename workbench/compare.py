"""Claim check: a merge against fair baselines, with paired statistics and a plain verdict.

A merge's score means little on its own. :func:`run_panel` evaluates, on the *same* items,

* every ingredient, and (chosen on the dev half) the best ingredient and the median ingredient;
* the uniform LERP soup of the ingredients;
* ``lerp_norm_restore`` at the recipe's t (isolates any spherical effect of a SLERP recipe);
* the recipe's merge itself;
* the output ensemble of the ingredients (average of probabilities; N x the inference cost);
* optionally a user control checkpoint (e.g. an annealed or EMA checkpoint of matched compute);

and an interpolation curve (LERP and SLERP along a t grid) between two ingredients with its
barrier. :func:`build_panel` turns per-item results into tables: every difference is paired,
bootstrapped (BLiMP clustered within paradigms), McNemar-tested (accuracy), Holm-corrected, and
reported on the test half while anything selected is selected on the dev half.
:func:`verdict` writes the markdown paragraph and table; :func:`write_report` writes tables
(parquet), figures (HTML with plotly.js inline, and figure JSON) and ``verdict.md`` atomically.

Pure part, runnable without models (per-item tables in, panel out)::

    >>> import polars as pl
    >>> from workbench.eval.result import items_frame
    >>> rows = lambda c: items_frame({"task": ["arc_easy"] * 6, "item_id": list("abcdef"),
    ...     "group": ["arc_easy"] * 6, "correct": c, "tie": [False] * 6, "margin": [0.5] * 6})
    >>> panel = build_panel({"A": rows([True] * 6), "B": rows([True, False] * 3), "merge": rows([True] * 6)},
    ...                     ingredients=["A", "B"], subject="merge", n_resamples=200)
    >>> sorted(set(panel.comparisons["reference"].to_list()))[:3]
    ['A', 'B', 'best_dev']
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl
import torch

from workbench.errors import WorkbenchError
from workbench.eval.result import json_safe
from workbench.stats import (
    bootstrap_ci,
    holm,
    mcnemar_exact,
    noise_floor,
    paired_bootstrap,
    barrier,
    barrier_ci,
    barrier_t,
    dev_test_split,
    tie_rate,
)

__all__ = [
    "CURVE_TS",
    "EnsembleLM",
    "MetricSpec",
    "Panel",
    "System",
    "build_panel",
    "curve_tables",
    "interpolation_curve",
    "run_panel",
    "task_metrics",
    "verdict",
    "write_report",
]

#: Default t grid of the interpolation curve.
CURVE_TS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
ALPHA = 0.05
#: Fewer paired items than this never yield a gain/loss call (percentile intervals are too narrow).
MIN_ITEMS_FOR_CALL = 20
#: Per-item differences within numerical precision count as ties: |a - b| <= ATOL + RTOL * |a|,
#: in the metric's own units (0/1 for accuracy, nats for margins, bits per byte per document).
#: ATOL matches the tolerance the scorer is held to against lm-eval (log-likelihoods within
#: 1e-4), so float32 rounding (two copies of one model, two scoring paths) is never called a
#: difference; 1e-4 bits per byte is far below any effect this workbench reports.
ROUNDING_ATOL, ROUNDING_RTOL = 1e-4, 1e-5


def snap_rounding(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` with every item within numerical precision of ``a`` replaced by ``a``'s value.

    >>> snap_rounding(np.array([1.0, 2.0, -50.0]), np.array([1.00000003, 2.5, -50.0002])).tolist()
    [1.0, 2.5, -50.0]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    close = np.abs(a - b) <= ROUNDING_ATOL + ROUNDING_RTOL * np.abs(a)
    return np.where(close, a, b)
_LN2 = math.log(2.0)

# Display order and human labels of the system kinds.
KIND_LABELS = {
    "ingredient": "ingredient",
    "best_dev": "best-on-dev ingredient",
    "median": "median ingredient",
    "soup": "uniform LERP soup",
    "lerp_norm_restore": "LERP with norm restore (same t)",
    "merge": "the merge",
    "ensemble": "output ensemble",
    "control": "control checkpoint",
}


# ----------------------------------------------------------------------------- systems, metrics


@dataclass(frozen=True)
class System:
    """One evaluated system of the panel (``kind`` is a key of ``KIND_LABELS``)."""

    name: str
    kind: str
    source: str = ""
    inference_cost: int = 1

    @property
    def label(self) -> str:
        """Human label, e.g. ``"output ensemble (3x inference cost)"``."""
        base = KIND_LABELS.get(self.kind, self.kind)
        if self.kind == "ingredient":
            base = f"ingredient {self.name}"
        if self.inference_cost > 1:
            base += f" ({self.inference_cost}x inference cost)"
        return base


@dataclass(frozen=True)
class MetricSpec:
    """A per-item metric: how to read it, which way is better, how to display it."""

    name: str
    higher_is_better: bool
    unit: str
    scale: float
    binary: bool
    primary: bool


ACC = MetricSpec("acc", True, "points", 100.0, True, True)
MARGIN = MetricSpec("margin", True, "nats", 1.0, False, False)
BPB = MetricSpec("bits_per_byte", False, "bits/byte", 1.0, False, True)


def _is_blimp(task: str) -> bool:
    return task == "blimp" or task.startswith("blimp_")


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
class _TaskData:
    """One task's items, aligned across systems: meta (item_id, group, field, split, weights)."""

    task: str
    meta: pl.DataFrame
    values: dict[str, dict[str, np.ndarray]]  # metric -> system -> per-item values
    ties: dict[str, np.ndarray]
    metrics: list[MetricSpec]
    clusters: np.ndarray | None
    weights: np.ndarray | None

    def mask(self, split: str) -> np.ndarray:
        if split == "all":
            return np.ones(self.meta.height, dtype=bool)
        return (self.meta["split"] == split).to_numpy()


def _align(items: pl.DataFrame, systems: Sequence[str], task: str) -> _TaskData:
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
    if _is_blimp(task):
        clusters = meta["group"].fill_null("").to_numpy().astype(str)
    if metrics and metrics[0].name == "bits_per_byte":
        weights = meta["n_bytes"].cast(pl.Float64).to_numpy()
    return _TaskData(task, meta, values, ties, metrics, clusters, weights)


def _macro_weights(clusters: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    """1/size of each item's paradigm within the masked items: the mean becomes lm-eval's macro mean."""
    if clusters is None:
        return None
    sub = clusters[mask]
    _, codes, counts = np.unique(sub, return_inverse=True, return_counts=True)
    return 1.0 / counts[codes]


def _weights_for(td: _TaskData, metric: MetricSpec, mask: np.ndarray) -> np.ndarray | None:
    if metric.name == "bits_per_byte":
        return td.weights[mask] if td.weights is not None else None
    return _macro_weights(td.clusters, mask)


def _wmean(x: np.ndarray, w: np.ndarray | None) -> float:
    if x.size == 0:
        return float("nan")
    return float(np.mean(x)) if w is None else float(np.sum(w * x) / np.sum(w))


# ----------------------------------------------------------------------------- the panel


@dataclass
class Panel:
    """Everything the claim check computed (all tables are polars DataFrames).

    * ``systems``: name, kind, label, source, inference_cost
    * ``items``: per-item results of every system (column ``system``) with the ``split``
    * ``scores``: system x task x metric x split -> value with a bootstrap CI, tie rate
    * ``selections``: per task, the best-on-dev and median ingredient and their dev scores
    * ``comparisons``: subject - reference on the test half: estimate, CI, p-values, Holm, call
    * ``per_group``: the merge vs the best-on-dev ingredient per BLiMP field and paradigm
    * ``noise``: spread of each metric between ingredients (test half)
    * ``curve`` / ``barriers`` / ``curve_tests``: the interpolation curve (may be empty)
    """

    systems: pl.DataFrame
    items: pl.DataFrame
    scores: pl.DataFrame
    selections: pl.DataFrame
    comparisons: pl.DataFrame
    per_group: pl.DataFrame
    noise: pl.DataFrame
    curve: pl.DataFrame = field(default_factory=pl.DataFrame)
    barriers: pl.DataFrame = field(default_factory=pl.DataFrame)
    curve_tests: pl.DataFrame = field(default_factory=pl.DataFrame)
    settings: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pl.DataFrame]:
        """Name -> table, as written by :func:`write_report`."""
        return {
            "systems": self.systems,
            "scores": self.scores,
            "selections": self.selections,
            "comparisons": self.comparisons,
            "per_group": self.per_group,
            "noise_floor": self.noise,
            "curve": self.curve,
            "barriers": self.barriers,
            "curve_tests": self.curve_tests,
            "items": self.items,
        }


def _items_long(results: Mapping[str, Any]) -> pl.DataFrame:
    frames = []
    for name, res in results.items():
        df = res.items if hasattr(res, "items") and isinstance(getattr(res, "items"), pl.DataFrame) else res
        if not isinstance(df, pl.DataFrame):
            raise WorkbenchError(f"results for {name}: expected an EvalResult or a polars items table")
        frames.append(df.with_columns(pl.lit(name).alias("system")).select(["system", *df.columns]))
    return pl.concat(frames, how="diagonal_relaxed")


def build_panel(
    results: Mapping[str, Any],
    *,
    ingredients: Sequence[str],
    subject: str = "merge",
    systems: Sequence[System] | None = None,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
    alpha: float = ALPHA,
    settings: Mapping[str, Any] | None = None,
) -> Panel:
    """Statistics of a panel from per-item results (``results``: system name -> EvalResult or items).

    ``ingredients`` name the ingredient systems; ``subject`` the system whose claim is checked
    (normally ``"merge"``). ``systems`` describe every system (kind, source, inference cost);
    missing ones are inferred from the names. All systems must have been evaluated on the same
    items (items missing from some system are dropped, and the drop is recorded).
    """
    if subject not in results:
        raise WorkbenchError(f"build_panel: no results for the subject {subject!r}")
    missing = [i for i in ingredients if i not in results]
    if missing or not ingredients:
        raise WorkbenchError(f"build_panel: no results for ingredient(s) {missing or 'none given'}")
    sys_map: dict[str, System] = {s.name: s for s in (systems or [])}
    for name in results:
        if name not in sys_map:
            kind = "ingredient" if name in ingredients else (name if name in KIND_LABELS else "other")
            sys_map[name] = System(name, kind)
    names = list(results)
    items = _items_long(results)
    items = dev_test_split(items, seed=seed, dev_fraction=dev_fraction)
    tasks = list(dict.fromkeys(items["task"].to_list()))
    boot = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)

    score_rows, sel_rows, cmp_rows, group_rows, noise_rows = [], [], [], [], []
    n_dropped: dict[str, int] = {}
    split_notes: dict[str, str] = {}
    pairs = _comparison_pairs(names, ingredients, subject, sys_map)  # the same for every task
    for task in tasks:
        td = _align(items, names, task)
        n_dropped[task] = int(items.filter((pl.col("task") == task) & (pl.col("system") == names[0])).height - td.meta.height)
        dev, test = td.mask("dev"), td.mask("test")
        report_split = "test"
        if not dev.any() or not test.any():
            # Too few items to split: select and report on the same items, and say so.
            dev = test = td.mask("all")
            report_split = "all"
            split_notes[task] = (f"only {td.meta.height} items, too few for a dev/test split: selection and "
                                 f"report use the same items (optimistic)")
        # scores of every system
        for metric in td.metrics:
            for split in ("test", "all"):
                m = td.mask(split)
                if not m.any():
                    continue
                w = _weights_for(td, metric, m)
                for s in names:
                    r = bootstrap_ci(td.values[metric.name][s][m], clusters=None if td.clusters is None else td.clusters[m],
                                     weights=w, **boot)
                    score_rows.append({
                        "system": s, "task": task, "metric": metric.name, "split": split, "value": r.estimate,
                        "low": r.low, "high": r.high, "n_items": int(m.sum()),
                        "tie_rate": tie_rate(td.ties[s][m]),
                        "higher_is_better": metric.higher_is_better, "unit": metric.unit, "scale": metric.scale,
                    })
        # selection on dev (primary metric)
        primary = td.metrics[0]
        sign = 1.0 if primary.higher_is_better else -1.0
        wd = _weights_for(td, primary, dev)
        dev_scores = {i: _wmean(td.values[primary.name][i][dev], wd) for i in ingredients}
        ranked = sorted(ingredients, key=lambda i: (-sign * dev_scores[i], ingredients.index(i)))
        best, median = ranked[0], ranked[len(ranked) // 2]
        sel_rows.append({"task": task, "metric": primary.name, "best_dev": best, "median": median,
                         "ranking": ",".join(ranked), "dev_scores": json.dumps(dev_scores, sort_keys=True),
                         "n_dev": int(dev.sum()), "n_test": int(test.sum()), "reported_on": report_split,
                         "note": split_notes.get(task, "")})
        alias = {"best_dev": best, "median": median}
        # noise floor on the test half
        for metric in td.metrics:
            w = _weights_for(td, metric, test)
            nf = noise_floor({i: _wmean(td.values[metric.name][i][test], w) for i in ingredients})
            noise_rows.append({"task": task, "metric": metric.name, "spread": nf.spread, "std": nf.std, "n": nf.n,
                               "values": json.dumps(nf.values, sort_keys=True)})
        # comparisons on the test half
        cl = None if td.clusters is None else td.clusters[test]
        for metric in td.metrics:
            w = _weights_for(td, metric, test)
            vals = td.values[metric.name]
            for subj, ref in pairs:
                r, mc, identical = _paired(vals[alias.get(subj, subj)][test], vals[alias.get(ref, ref)][test], metric,
                                           clusters=cl, weights=w, boot=boot)
                cmp_rows.append({
                    "task": task, "metric": metric.name, "subject": subj, "reference": ref,
                    "subject_system": alias.get(subj, subj), "reference_system": alias.get(ref, ref),
                    "subject_label": _label(subj, alias, sys_map), "reference_label": _label(ref, alias, sys_map),
                    "split": report_split, "n_items": int(test.sum()), "estimate": r.estimate, "low": r.low,
                    "high": r.high, "se": r.se, "p_bootstrap": r.p_value,
                    "p_mcnemar": mc.p_value if mc else None, "a_only": mc.a_only if mc else None,
                    "b_only": mc.b_only if mc else None,
                    "p": mc.p_value if mc else r.p_value,
                    "identical": identical,
                    "higher_is_better": metric.higher_is_better, "unit": metric.unit, "scale": metric.scale,
                    "primary": metric.primary,
                })
        # per-group: subject vs best-on-dev ingredient (test half)
        if _is_blimp(task):
            for level, col in (("field", "field"), ("paradigm", "group")):
                labels = td.meta[col].fill_null("?").to_numpy().astype(str)
                for g in sorted(set(labels[test])):
                    gm = test & (labels == g)
                    for metric in td.metrics:
                        r = _paired(td.values[metric.name][subject][gm], td.values[metric.name][best][gm], metric,
                                    clusters=td.clusters[gm] if level == "field" else None,
                                    weights=_macro_weights(td.clusters, gm) if level == "field" else None,
                                    boot=boot)[0]
                        group_rows.append(_group_row(task, level, g, metric, subject, best, r))
        for metric in td.metrics:
            r = _paired(td.values[metric.name][subject][test], td.values[metric.name][best][test], metric,
                        clusters=cl, weights=_weights_for(td, metric, test), boot=boot)[0]
            group_rows.append(_group_row(task, "task", task, metric, subject, best, r))

    comparisons = _finish_comparisons(pl.DataFrame(cmp_rows, infer_schema_length=None), alpha)
    per_group = pl.DataFrame(group_rows, infer_schema_length=None)
    if per_group.height:
        per_group = per_group.with_columns(pl.lit(None, dtype=pl.Float64).alias("p_holm"))
        parts = []
        for key, part in per_group.group_by(["task", "level", "metric"], maintain_order=True):
            parts.append(part.with_columns(pl.Series("p_holm", holm(part["p"].to_numpy()))))
        per_group = pl.concat(parts)
    sys_df = pl.DataFrame([
        {"name": s.name, "kind": s.kind, "label": s.label, "source": s.source, "inference_cost": s.inference_cost}
        for s in (sys_map[n] for n in names)
    ])
    all_settings = {
        "subject": subject, "ingredients": list(ingredients), "tasks": tasks, "seed": seed,
        "n_resamples": n_resamples, "confidence": confidence, "dev_fraction": dev_fraction, "alpha": alpha,
        "split": "dev/test by a seeded hash of (task, item id); documents for perplexity tasks",
        "reported_on": "test", "selected_on": "dev", "items_dropped_for_alignment": n_dropped,
        "blimp_resampling": "items resampled within paradigms; accuracy is the macro mean over paradigms",
        "holm_family": "all comparisons of one metric across tasks",
        "split_notes": split_notes,
        **dict(settings or {}),
    }
    return Panel(
        systems=sys_df,
        items=items,
        scores=pl.DataFrame(score_rows, infer_schema_length=None),
        selections=pl.DataFrame(sel_rows, infer_schema_length=None),
        comparisons=comparisons,
        per_group=per_group,
        noise=pl.DataFrame(noise_rows, infer_schema_length=None),
        settings=all_settings,
    )


def _label(name: str, alias: Mapping[str, str], sys_map: Mapping[str, System]) -> str:
    if name in alias:
        return f"{KIND_LABELS[name]} ({alias[name]})"
    s = sys_map.get(name)
    return s.label if s else name


def _group_row(task: str, level: str, group: str, metric: MetricSpec, subject: str, ref: str, r) -> dict[str, Any]:
    return {"task": task, "level": level, "group": group, "metric": metric.name, "subject": subject,
            "reference": ref, "n_items": r.n_items, "estimate": r.estimate, "low": r.low, "high": r.high,
            "p": r.p_value, "higher_is_better": metric.higher_is_better, "unit": metric.unit, "scale": metric.scale}


def _comparison_pairs(names: Sequence[str], ingredients: Sequence[str], subject: str,
                      sys_map: Mapping[str, System]) -> list[tuple[str, str]]:
    """The subject against every baseline, then each non-ingredient system against the best ingredient."""
    pairs: list[tuple[str, str]] = [(subject, "best_dev"), (subject, "median")]
    others = [n for n in names if n != subject and n not in ingredients]
    pairs += [(subject, i) for i in ingredients]
    pairs += [(subject, o) for o in others]
    pairs += [(o, "best_dev") for o in others]
    out: list[tuple[str, str]] = []
    for p in pairs:
        if p not in out and p[0] != p[1]:
            out.append(p)
    return out


def _paired(a: np.ndarray, b: np.ndarray, metric: MetricSpec, *, clusters, weights, boot: Mapping[str, Any]):
    """Paired bootstrap of ``a - b`` (rounding-level differences counted as ties), with an
    exact McNemar test for binary metrics; returns ``(bootstrap, mcnemar or None, identical)``."""
    b = snap_rounding(a, b)
    r = paired_bootstrap(a, b, clusters=clusters, weights=weights, **boot)
    mc = mcnemar_exact(a > 0.5, b > 0.5) if metric.binary else None
    return r, mc, bool(np.array_equal(a, b))


def _call(row: Mapping[str, Any], alpha: float) -> str:
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


def _finish_comparisons(df: pl.DataFrame, alpha: float) -> pl.DataFrame:
    if df.height == 0:
        return df
    p_holm = np.full(df.height, np.nan)
    metrics = df["metric"].to_numpy()
    pvals = df["p"].cast(pl.Float64).to_numpy()
    for m in dict.fromkeys(metrics.tolist()):
        idx = np.flatnonzero(metrics == m)
        p_holm[idx] = holm(pvals[idx])
    df = df.with_columns(pl.Series("p_holm", p_holm))
    calls = [_call(r, alpha) for r in df.iter_rows(named=True)]
    notes = []
    for r, c in zip(df.iter_rows(named=True), calls):
        if r["identical"]:
            notes.append("identical per-item results")
        elif r["n_items"] < MIN_ITEMS_FOR_CALL:
            notes.append(f"only {r['n_items']} items: too few to call a difference")
        elif c == "no evidence" and not (r["low"] <= 0.0 <= r["high"]):
            notes.append("CI excludes 0 but not significant after Holm correction")
        else:
            notes.append("")
    return df.with_columns(pl.Series("call", calls), pl.Series("note", notes))


# ----------------------------------------------------------------------------- verdict


def _fmt(x: float, scale: float, signed: bool = True) -> str:
    v = x * scale
    digits = 1 if scale >= 100 else 3
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _ci(row: Mapping[str, Any], conf: float) -> str:
    return f"{int(round(conf * 100))}% CI {_fmt(row['low'], row['scale'])} to {_fmt(row['high'], row['scale'])}"


def verdict(panel: Panel) -> str:
    """A short markdown verdict: one paragraph per task and a table of every comparison.

    A difference is called a gain (or a loss) only when its confidence interval excludes 0 and
    its Holm-adjusted p-value is below the significance level; otherwise it reads
    "no evidence of a difference".
    """
    s = panel.settings
    conf = float(s.get("confidence", 0.95))
    alpha = float(s.get("alpha", ALPHA))
    subject = s.get("subject", "merge")
    cmp = panel.comparisons
    lines = ["# Claim check", ""]
    recipe = s.get("recipe_summary")
    head = f"Subject: **{subject}**" + (f" ({recipe})" if recipe else "") + "."
    lines += [head + f" Ingredients: {', '.join(f'`{i}`' for i in s.get('ingredients', []))}. "
              f"Best and median ingredients are chosen on the dev half of the items; every number below is "
              f"on the disjoint test half (seeded split, seed {s.get('seed')}). Intervals are paired bootstrap "
              f"{int(round(conf * 100))}% CIs ({s.get('n_resamples')} resamples; BLiMP resampled within paradigms); "
              f"accuracy differences also get an exact McNemar test; p-values are Holm-corrected across "
              f"all comparisons of a metric. A difference is called significant only when its CI excludes 0 and "
              f"the Holm-adjusted p is below {alpha:g}.", ""]
    for task in s.get("tasks", []):
        sub = cmp.filter((pl.col("task") == task) & pl.col("primary"))
        if sub.height == 0:
            continue
        metric = sub["metric"][0]
        sel = panel.selections.filter(pl.col("task") == task)
        n_test = int(sel["n_test"][0]) if sel.height else 0
        sentences = []
        for r in sub.iter_rows(named=True):
            if (r["subject"], r["reference"]) in _KEY_PAIRS or (r["reference"] == "best_dev" and r["subject"] == "control"):
                sentences.append(_sentence(r, conf, subject))
        nf = panel.noise.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        tail = ""
        if nf.height and nf["n"][0] > 1:
            sc = float(sub["scale"][0])
            tail = (f" Noise floor (spread of {metric} between the {nf['n'][0]} ingredients on test): "
                    f"{_fmt(nf['spread'][0], sc, signed=False)} {sub['unit'][0]}.")
        ties = panel.scores.filter((pl.col("task") == task) & (pl.col("split") == "test") & (pl.col("metric") == metric)
                                   & (pl.col("system") == subject))
        if ties.height and ties["tie_rate"][0] > 0:
            tail += f" Tie rate of {subject}: {ties['tie_rate'][0] * 100:.1f}%."
        where = f"{n_test} test items"
        if sel.height and sel["reported_on"][0] != "test":
            where = sel["note"][0]
        lines.append(f"**{task}** ({metric}, {where}): " + " ".join(sentences) + tail)
        lines.append("")
    if panel.barriers.height:
        parts = []
        for r in panel.barriers.iter_rows(named=True):
            bump = "a bump" if r["low"] > 0 else "no evidence of a bump"
            parts.append(f"{r['method']} on {r['task']} ({r['loss']}): {r['barrier']:.4g} at t={r['t_max']:g} "
                         f"({int(round(conf * 100))}% CI {r['low']:.4g} to {r['high']:.4g}, {bump})")
        lines += ["Interpolation barrier (max over t of the loss minus the straight line between the endpoint "
                  "losses, all items; a maximum over the grid, so it is never below 0 and biased upwards): "
                  + "; ".join(parts) + ".", ""]
    if panel.curve_tests.height:
        chosen = panel.curve_tests.filter(pl.col("selected"))
        for r in chosen.iter_rows(named=True):
            word = {"gain": "a significant gain", "loss": "a significant loss"}.get(r["call"], "no evidence of a difference")
            lines.append(f"Best t for {r['method']} on {r['task']} chosen on dev: t={r['t']:g}; on test vs the "
                         f"better endpoint ({r['reference']}): {_fmt(r['estimate'], r['scale'])} {r['unit']} "
                         f"({_ci(r, conf)}), {word}.")
        if chosen.height:
            lines.append("")
    lines += ["| task | metric | comparison | difference | CI | McNemar p | Holm p | call |",
              "|---|---|---|---|---|---|---|---|"]
    for r in cmp.iter_rows(named=True):
        mc = f"{r['p_mcnemar']:.3g}" if r["p_mcnemar"] is not None else "-"
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['subject_label']} vs {r['reference_label']} | "
            f"{_fmt(r['estimate'], r['scale'])} {r['unit']} | {_fmt(r['low'], r['scale'])} to "
            f"{_fmt(r['high'], r['scale'])} | {mc} | {r['p_holm']:.3g} | {r['call']} |"
        )
    lines.append("")
    return "\n".join(lines)


# Comparisons named in the verdict's paragraphs (the table lists every comparison).
_KEY_PAIRS = {("merge", "best_dev"), ("soup", "best_dev"), ("ensemble", "best_dev"),
              ("merge", "lerp_norm_restore"), ("merge", "control")}


def _sentence(r: Mapping[str, Any], conf: float, subject: str) -> str:
    subj = r["subject_label"] if r["subject"] != subject else subject
    what = f"{subj} vs {r['reference_label']}"
    num = f"{_fmt(r['estimate'], r['scale'])} {r['unit']} ({_ci(r, conf)}, Holm p={r['p_holm']:.3g})"
    if r["identical"]:
        return f"{what}: identical per-item results, no evidence of a difference."
    if r["n_items"] < MIN_ITEMS_FOR_CALL:
        return f"{what}: {num}; only {r['n_items']} items, too few to call, no evidence of a difference."
    if r["call"] == "gain":
        return f"{what}: {num}, a significant gain."
    if r["call"] == "loss":
        return f"{what}: {num}, a significant loss."
    if r["reference"] == "lerp_norm_restore" or r["subject"] == "lerp_norm_restore":
        bound = max(abs(r["low"]), abs(r["high"])) * r["scale"]
        return f"{what}: {num}; same within {bound:.{1 if r['scale'] >= 100 else 3}f} {r['unit']}, no evidence of a difference."
    return f"{what}: {num}, no evidence of a difference."


# ----------------------------------------------------------------------------- curve tables


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
            td = _align(long, keys, task)
            dev, test = td.mask("dev"), td.mask("test")
            for metric in td.metrics:
                vals = td.values[metric.name]
                for split in ("all", "test"):
                    m = td.mask(split)
                    if not m.any():
                        continue
                    w = _weights_for(td, metric, m)
                    for t, k in zip(ts, keys):
                        r = bootstrap_ci(vals[k][m], clusters=None if td.clusters is None else td.clusters[m], weights=w, **boot)
                        curve_rows.append({"method": method, "task": task, "metric": metric.name, "split": split, "t": t,
                                           "value": r.estimate, "low": r.low, "high": r.high, "n_items": int(m.sum()),
                                           "higher_is_better": metric.higher_is_better, "unit": metric.unit,
                                           "scale": metric.scale})
                if metric.primary:
                    wa = _weights_for(td, metric, td.mask("all"))
                    loss = [(1.0 - _wmean(vals[k], wa)) if metric.name == "acc" else _wmean(vals[k], wa) for k in keys]
                    item_loss = np.stack([(1.0 - vals[k]) if metric.name == "acc" else vals[k] for k in keys], axis=1)
                    b_low, b_high = barrier_ci(ts, item_loss, clusters=td.clusters, weights=wa, **boot)
                    barrier_rows.append({"method": method, "task": task,
                                         "loss": "error" if metric.name == "acc" else metric.name,
                                         "barrier": barrier(ts, loss), "t_max": barrier_t(ts, loss),
                                         "low": b_low, "high": b_high,
                                         "loss_t0": loss[0], "loss_t1": loss[-1], "n_items": td.meta.height})
                if len(ts) < 3 or not dev.any() or not test.any():
                    continue
                sign = 1.0 if metric.higher_is_better else -1.0
                wdev = _weights_for(td, metric, dev)
                ends = (keys[0], keys[-1])
                ref = max(ends, key=lambda k: sign * _wmean(vals[k][dev], wdev))
                wt = _weights_for(td, metric, test)
                cl = None if td.clusters is None else td.clusters[test]
                inner = [k for k in keys if k not in ends]
                rows = []
                for t, k in zip(ts, keys):
                    if k in ends:
                        continue
                    r, mc, identical = _paired(vals[k][test], vals[ref][test], metric, clusters=cl, weights=wt,
                                               boot=boot)
                    p = mc.p_value if mc else r.p_value
                    rows.append({"method": method, "task": task, "metric": metric.name, "t": t, "reference": ref,
                                 "n_items": int(test.sum()),
                                 "estimate": r.estimate, "low": r.low, "high": r.high, "p": p,
                                 "identical": identical,
                                 "higher_is_better": metric.higher_is_better, "unit": metric.unit,
                                 "scale": metric.scale, "primary": metric.primary, "selected": False})
                p_adj = holm([r["p"] for r in rows])
                # the best interior t chosen on dev (weighted like the metric), reported on test
                chosen = max(inner, key=lambda k: (sign * _wmean(vals[k][dev], wdev), -keys.index(k)))
                for r, ph in zip(rows, p_adj):
                    r["p_holm"] = float(ph)
                    r["selected"] = f"t={r['t']:g}" == chosen
                    r["call"] = _call(r, alpha)
                    test_rows.append(r)
    return (pl.DataFrame(curve_rows, infer_schema_length=None), pl.DataFrame(barrier_rows, infer_schema_length=None),
            pl.DataFrame(test_rows, infer_schema_length=None))


# ----------------------------------------------------------------------------- models


class _LogitsOutput:
    """The one attribute the scorer reads: ``.logits``."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class EnsembleLM(torch.nn.Module):
    """Output ensemble: ``logits = log(mean_i softmax(logits_i))`` over N causal LMs.

    Returns an object with ``.logits`` (log-probabilities, which a log-softmax leaves
    unchanged), so the evaluation scorer uses it like any model. Costs N forward passes.

    >>> class Const(torch.nn.Module):
    ...     def __init__(self, v):
    ...         super().__init__(); self.v = torch.nn.Parameter(torch.tensor(v))
    ...     def forward(self, input_ids, attention_mask=None):
    ...         return type("O", (), {"logits": self.v.expand(*input_ids.shape, 2)})()
    >>> ens = EnsembleLM([Const([0.0, 0.0]), Const([0.0, math.log(3.0)])])
    >>> [round(p, 4) for p in ens(input_ids=torch.zeros(1, 1, dtype=torch.long)).logits.exp()[0, 0].tolist()]
    [0.375, 0.625]
    """

    def __init__(self, models: Sequence[torch.nn.Module]):
        super().__init__()
        if not models:
            raise WorkbenchError("EnsembleLM: no models")
        self.members = torch.nn.ModuleList(models)
        cfg = getattr(models[0], "config", None)
        if cfg is not None:
            self.config = cfg

    @property
    def inference_cost(self) -> int:
        """Forward passes per call (the number of members)."""
        return len(self.members)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        acc = None
        for m in self.members:
            out = m(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            lp = torch.log_softmax(out.logits.float(), dim=-1)
            acc = lp if acc is None else torch.logaddexp(acc, lp)
        return _LogitsOutput(acc - math.log(len(self.members)))


def _recipe_t(recipe: Any) -> Any:
    params = recipe.parameters or {}
    t = params.get("t")
    if hasattr(t, "model_dump"):
        t = t.model_dump(exclude_none=True)
    elif isinstance(t, list):
        t = [x.model_dump(exclude_none=True) if hasattr(x, "model_dump") else x for x in t]
    return t


def _recipe_summary(recipe: Any) -> str:
    t = _recipe_t(recipe)
    out = recipe.merge_method
    if t is not None:
        out += f", t={json.dumps(t) if not isinstance(t, (int, float)) else f'{t:g}'}"
    return out


def interpolation_curve(
    model_a: str | Path,
    model_b: str | Path,
    ts: Sequence[float],
    tasks: str | Iterable[str],
    *,
    methods: Sequence[str] = ("lerp", "slerp"),
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
    """Per-item results along ``ts`` for each method (``lerp``, ``slerp``) between two models.

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


def run_panel(
    ingredients: Sequence[str | Path],
    recipe: Any,
    tasks: str | Iterable[str],
    *,
    data_dir: str | Path | None = None,
    limit: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    control: str | Path | None = None,
    curve_ts: Sequence[float] | None = CURVE_TS,
    curve_methods: Sequence[str] = ("lerp", "slerp"),
    n_resamples: int = 2000,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
    batch_size: int = 64,
    progress: bool = True,
    store: Any = None,
) -> Panel:
    """Evaluate the merge and every baseline on the same items and compute the statistics.

    ``ingredients`` are checkpoint directories (or Hub ids), ``recipe`` a merge recipe (path,
    YAML text, dict or MergeRecipe). ``curve_ts=None`` (or fewer than 2 points) skips the
    interpolation curve between the recipe's two models (else the first two ingredients).
    Example (needs checkpoints and data)::

        panel = run_panel(["ckpt_a", "ckpt_b", "ckpt_c"], "recipe.yaml", "blimp,arc_easy",
                          data_dir="../shared/data", limit=50)
        print(verdict(panel)); write_report(panel, "runs/claim")
    """
    from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
    from workbench.eval import evaluate, parse_tasks
    from workbench.merge import load_recipe, merged_model, simple_recipe

    names = [str(i) for i in ingredients]
    if len(names) < 2:
        raise WorkbenchError("compare: give at least two ingredients (--ingredients A B [C ...])")
    if len(set(names)) != len(names):
        raise WorkbenchError(f"compare: an ingredient is listed twice: {names}")
    task_list = parse_tasks(tasks)
    rec = load_recipe(recipe)
    cks = {n: open_checkpoint(n) for n in names}
    vocab = {n: ck.config.get("vocab_size") for n, ck in cks.items()}
    if len(set(vocab.values())) > 1:
        raise WorkbenchError(f"compare: ingredients have different vocabularies: {vocab}")
    tok = load_tokenizer(names[0])
    short = _short_names(names)
    ev = dict(data_dir=data_dir, limit=limit, seed=seed, batch_size=batch_size, progress=progress, store=store)

    def run(model: Any) -> Any:
        res = evaluate(model, tok, task_list, device=device, **ev)
        return res

    results: dict[str, Any] = {}
    systems: list[System] = []
    for n in names:
        model = load_model(cks[n], device=device)
        results[short[n]] = run(model)
        systems.append(System(short[n], "ingredient", n))
        del model
    merges: list[tuple[str, Any]] = [("soup", simple_recipe("linear", names))]
    refs = rec.referenced_models()  # base model first
    two_model = rec.merge_method in ("slerp", "lerp", "lerp_norm_restore") and len(refs) == 2
    notes = []
    if two_model and rec.merge_method != "lerp_norm_restore":
        # the same recipe (models or slices, every t setting) with the interpolation swapped
        data = rec.model_dump(mode="json", exclude_none=True)
        data["merge_method"] = "lerp_norm_restore"
        merges.append(("lerp_norm_restore", load_recipe(data)))
    elif rec.merge_method == "lerp_norm_restore":
        notes.append("lerp_norm_restore baseline skipped: the recipe is lerp_norm_restore itself")
    else:
        notes.append("lerp_norm_restore baseline skipped: it applies to two-model LERP/SLERP recipes")
    merges.append(("merge", rec))
    for kind, r in merges:
        model = merged_model(r, device=device, checkpoints=cks)
        results[kind] = run(model)
        systems.append(System(kind, kind, _recipe_summary(r)))
        del model
    members = [load_model(cks[n], device=device) for n in names]
    ens = EnsembleLM(members)
    results["ensemble"] = run(ens)
    systems.append(System("ensemble", "ensemble", "mean of probabilities of " + ", ".join(short[n] for n in names),
                          inference_cost=len(names)))
    del ens, members
    if control is not None:
        ctl = load_model(open_checkpoint(control), device=device)
        results["control"] = run(ctl)
        systems.append(System("control", "control", str(control)))
        del ctl
    settings = {
        "recipe": json.loads(rec.canonical_json()), "recipe_summary": _recipe_summary(rec),
        "ingredient_paths": {short[n]: n for n in names}, "control": str(control) if control else None,
        "data_dir": str(data_dir) if data_dir is not None else None, "limit": limit, "device": device,
        "eval_settings": next(iter(results.values())).settings, "notes": notes,
    }
    panel = build_panel(results, ingredients=[short[n] for n in names], subject="merge", systems=systems, seed=seed,
                        n_resamples=n_resamples, confidence=confidence, dev_fraction=dev_fraction, settings=settings)
    if curve_ts is not None and len(curve_ts) >= 2:
        pair = refs[:2] if two_model else names[:2]
        endpoints = {}
        if pair[0] in short:
            endpoints[0.0] = results[short[pair[0]]]
        if pair[1] in short:
            endpoints[1.0] = results[short[pair[1]]]
        curve_items = interpolation_curve(pair[0], pair[1], curve_ts, task_list, methods=curve_methods, tokenizer=tok,
                                          device=device, endpoints=endpoints, checkpoints=cks, **ev)
        panel.curve, panel.barriers, panel.curve_tests = curve_tables(
            curve_items, seed=seed, n_resamples=n_resamples, confidence=confidence, dev_fraction=dev_fraction)
        panel.settings["curve"] = {"model_a": pair[0], "model_b": pair[1], "ts": sorted(set(map(float, curve_ts))),
                                   "methods": list(curve_methods)}
    return panel


def _short_names(paths: Sequence[str]) -> dict[str, str]:
    """Short unique display names for checkpoint paths (last path components)."""
    out: dict[str, str] = {}
    for keep in range(1, 6):
        out = {p: "/".join(Path(p).parts[-keep:]) or p for p in paths}
        if len(set(out.values())) == len(paths):
            return out
    return {p: p for p in paths}


# ----------------------------------------------------------------------------- report


def _figures(panel: Panel) -> dict[str, Any]:
    from workbench import plots

    figs: dict[str, Any] = {"deltas": plots.delta_bars_figure(panel.comparisons)}
    if panel.per_group.height:
        figs["forest"] = plots.forest_figure(panel.per_group, alpha=float(panel.settings.get("alpha", ALPHA)))
    if panel.curve.height:
        figs["curve"] = plots.interpolation_figure(panel.curve, panel.barriers)
    return figs


def _markdown_to_html(md: str) -> str:
    """A minimal markdown renderer for the verdict (paragraphs, bold, code, one table)."""
    import html
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, table = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-")]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c.strip())}</{'th' if i == 0 else 'td'}>" for c in r)
                + "</tr>" for i, r in enumerate(rows)) + "</table>")
            table = []
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)


def write_report(panel: Panel, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the report atomically: ``verdict.md``, ``report.html`` (figures with plotly.js inline,
    viewable offline), ``figures/*.json``, ``tables/*.parquet`` and ``panel.json`` (settings).
    """
    from workbench.checkpoints import atomic_output_dir

    text = verdict(panel)
    figs = _figures(panel)
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        for name, df in panel.tables().items():
            df.write_parquet(tmp / "tables" / f"{name}.parquet")
        for name, fig in figs.items():
            (tmp / "figures" / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        (tmp / "verdict.md").write_text(text, encoding="utf-8")
        body = [_markdown_to_html(text)]
        for i, (name, fig) in enumerate(figs.items()):
            body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{name}"))
        page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Claim check</title>"
                "<style>body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")
        (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "panel.json").write_text(json.dumps(json_safe(panel.settings), default=str, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    return out
