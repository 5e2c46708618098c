"""The panel: a merge's per-item results next to its baselines, turned into paired statistics.

:func:`build_panel` takes per-item results (system name -> EvalResult or items table) and
computes, on the *same* items: every system's score with a bootstrap CI, the best-on-dev and
median ingredients, the subject against every baseline (paired bootstrap, BLiMP clustered
within paradigms, exact McNemar for accuracy, Holm across the comparisons of a metric), the
subject against the best ingredient per BLiMP field and paradigm, the noise floor between
ingredients and, given seed checkpoints, the spread between seeds. Every comparison carries its
minimum detectable effect (:func:`~workbench.claim.metrics.mde`). Anything selected is selected
on the dev half; everything is reported on the disjoint test half.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from workbench.claim.metrics import (
    ALPHA,
    MIN_ITEMS_FOR_CALL,
    POWER,
    MetricSpec,
    TaskData,
    align_task,
    analytic_se,
    call,
    macro_weights,
    mde,
    paired,
    weighted_mean,
    weights_for,
)
from workbench.claim.noise import noise_rows, seed_ratio, seed_rows
from workbench.errors import WorkbenchError
from workbench.merge.registry import NORM_RESTORE, method_with
from workbench.stats import BootstrapResult, bootstrap_ci, dev_test_split, holm, tie_rate

__all__ = ["KIND_LABELS", "Panel", "System", "build_panel"]

# Display order and human labels of the system kinds.
KIND_LABELS = {
    "ingredient": "ingredient",
    "best_dev": "best-on-dev ingredient",
    "median": "median ingredient",
    "soup": "uniform LERP soup",
    method_with(NORM_RESTORE).name: "LERP with norm restore (same t)",  # the baseline is named after its method
    "merge": "the merge",
    "ensemble": "output ensemble",
    "control": "control checkpoint",
    "seed": "seed checkpoint",
}


#: How the panel's numbers are obtained, recorded in its settings (``panel.json``).
_METHOD_NOTES = {
    "split": "dev/test by a seeded hash of (task, item id); documents for perplexity tasks",
    "reported_on": "test",
    "selected_on": "dev",
    "blimp_resampling": "items resampled within paradigms; accuracy is the macro mean over paradigms",
    "holm_family": "all comparisons of one metric across tasks",
    "mde_alpha": "the significance level over the size of the comparison's Holm family "
    "(the level Holm's first step holds a lone real effect to)",
}


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
    * ``seed_noise``: spread of each metric between the seed checkpoints (test half; may be empty)
    * ``curve`` / ``barriers`` / ``curve_tests``: the interpolation curve (may be empty)

    ``comparisons`` also has ``mde`` (minimum detectable effect at ``settings["power"]``, in the
    metric's raw units), ``mde_alpha`` (the level it is computed at: the significance level over
    the size of the comparison's Holm family), ``se_analytic`` and, with seeds, ``seed_sd`` and
    ``seed_ratio`` (|estimate| over the seed standard deviation).
    """

    systems: pl.DataFrame
    items: pl.DataFrame
    scores: pl.DataFrame
    selections: pl.DataFrame
    comparisons: pl.DataFrame
    per_group: pl.DataFrame
    noise: pl.DataFrame
    seed_noise: pl.DataFrame = field(default_factory=pl.DataFrame)
    curve: pl.DataFrame = field(default_factory=pl.DataFrame)
    barriers: pl.DataFrame = field(default_factory=pl.DataFrame)
    curve_tests: pl.DataFrame = field(default_factory=pl.DataFrame)
    settings: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pl.DataFrame]:
        """Name -> table, as written by :func:`workbench.claim.write_report`."""
        return {
            "systems": self.systems,
            "scores": self.scores,
            "selections": self.selections,
            "comparisons": self.comparisons,
            "per_group": self.per_group,
            "noise_floor": self.noise,
            "seed_noise": self.seed_noise,
            "curve": self.curve,
            "barriers": self.barriers,
            "curve_tests": self.curve_tests,
            "items": self.items,
        }


def _items_long(results: Mapping[str, Any]) -> pl.DataFrame:
    frames = []
    for name, res in results.items():
        df = res.items if isinstance(getattr(res, "items", None), pl.DataFrame) else res
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
    power: float = POWER,
    seeds: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Panel:
    """Statistics of a panel from per-item results (``results``: system name -> EvalResult or items).

    ``ingredients`` name the ingredient systems; ``subject`` the system whose claim is checked
    (normally ``"merge"``). ``systems`` describe every system (kind, source, inference cost);
    missing ones are inferred from the names. ``seeds`` name systems trained identically but for
    the seed (they may be ingredients too): their spread is reported per metric and every
    comparison is set against it; seeds that are not ingredients enter no comparison. ``power``
    is the power at which minimum detectable effects are stated. All systems must have been
    evaluated on the same items (items missing from some system are dropped, and the drop is
    recorded).
    """
    if subject not in results:
        raise WorkbenchError(f"build_panel: no results for the subject {subject!r}")
    missing = [i for i in ingredients if i not in results]
    if missing or not ingredients:
        raise WorkbenchError(f"build_panel: no results for ingredient(s) {missing or 'none given'}")
    seeds = list(seeds)
    if [s for s in seeds if s not in results] or (seeds and len(seeds) < 2):
        raise WorkbenchError(f"build_panel: seeds {seeds} need two or more systems with results")
    sys_map = _system_map(results, ingredients, systems, seeds)
    names = list(results)
    items = dev_test_split(_items_long(results), seed=seed, dev_fraction=dev_fraction)
    tasks = list(dict.fromkeys(items["task"].to_list()))
    boot = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)

    score_rows, sel_rows, cmp_rows, group_rows, nf_rows, sd_rows = [], [], [], [], [], []
    n_dropped: dict[str, int] = {}
    split_notes: dict[str, str] = {}
    pairs = _comparison_pairs(names, ingredients, subject, seeds)  # the same for every task
    for task in tasks:
        td = align_task(items, names, task)
        n_dropped[task] = _n_items(items, task, names[0]) - td.meta.height
        dev, test, report_split = _report_masks(td)
        if report_split != "test":
            split_notes[task] = (
                f"only {td.meta.height} items, too few for a dev/test split: selection and "
                f"report use the same items (optimistic)"
            )
        score_rows += _score_rows(td, names, boot)
        sel = _selection(td, ingredients, dev, test, report_split, split_notes.get(task, ""))
        sel_rows.append(sel)
        nf_rows += noise_rows(td, ingredients, test)
        sd_rows += seed_rows(td, seeds, test)
        alias = {"best_dev": sel["best_dev"], "median": sel["median"]}
        cmp_rows += _comparison_rows(td, pairs, alias, sys_map, test, report_split, boot)
        group_rows += _group_rows(td, subject, sel["best_dev"], test, boot)

    numbers = dict(seed=seed, n_resamples=n_resamples, confidence=confidence, dev_fraction=dev_fraction, alpha=alpha)
    all_settings = {"subject": subject, "ingredients": list(ingredients), "tasks": tasks, **numbers, **_METHOD_NOTES}
    all_settings.update(items_dropped_for_alignment=n_dropped, power=power, seeds=seeds, split_notes=split_notes)
    all_settings.update(settings or {})
    seed_noise = pl.DataFrame(sd_rows, infer_schema_length=None)
    comparisons = _finish_comparisons(pl.DataFrame(cmp_rows, infer_schema_length=None), alpha, confidence, power)
    return Panel(
        systems=_systems_table([sys_map[n] for n in names]),
        items=items,
        scores=pl.DataFrame(score_rows, infer_schema_length=None),
        selections=pl.DataFrame(sel_rows, infer_schema_length=None),
        comparisons=seed_ratio(comparisons, seed_noise),
        per_group=_holm_per_group(pl.DataFrame(group_rows, infer_schema_length=None)),
        noise=pl.DataFrame(nf_rows, infer_schema_length=None),
        seed_noise=seed_noise,
        settings=all_settings,
    )


def _n_items(items: pl.DataFrame, task: str, system: str) -> int:
    return int(items.filter((pl.col("task") == task) & (pl.col("system") == system)).height)


def _system_map(
    results: Mapping[str, Any], ingredients: Sequence[str], systems: Sequence[System] | None, seeds: Sequence[str]
) -> dict[str, System]:
    """Name -> System for every result; systems not described get their kind from the name."""
    sys_map: dict[str, System] = {s.name: s for s in (systems or [])}
    for name in results:
        if name not in sys_map:
            if name in ingredients:
                kind = "ingredient"
            elif name in seeds:
                kind = "seed"
            else:
                kind = name if name in KIND_LABELS else "other"
            sys_map[name] = System(name, kind)
    return sys_map


def _systems_table(systems: Sequence[System]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"name": s.name, "kind": s.kind, "label": s.label, "source": s.source, "inference_cost": s.inference_cost}
            for s in systems
        ]
    )


def _report_masks(td: TaskData) -> tuple[np.ndarray, np.ndarray, str]:
    """(selection items, report items, split name): dev and test, or all items for both when a half is empty."""
    dev, test = td.mask("dev"), td.mask("test")
    if not dev.any() or not test.any():
        # Too few items to split: select and report on the same items (the caller says so).
        everything = td.mask("all")
        return everything, everything, "all"
    return dev, test, "test"


def _score_rows(td: TaskData, names: Sequence[str], boot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every system's score per metric, on the test half and on all items."""
    rows = []
    for metric in td.metrics:
        for split in ("test", "all"):
            m = td.mask(split)
            if not m.any():
                continue
            w = weights_for(td, metric, m)
            for s in names:
                r = bootstrap_ci(
                    td.values[metric.name][s][m],
                    clusters=None if td.clusters is None else td.clusters[m],
                    weights=w,
                    **boot,
                )
                rows.append(
                    {
                        "system": s,
                        "task": td.task,
                        "metric": metric.name,
                        "split": split,
                        "value": r.estimate,
                        "low": r.low,
                        "high": r.high,
                        "n_items": int(m.sum()),
                        "tie_rate": tie_rate(td.ties[s][m]),
                        "higher_is_better": metric.higher_is_better,
                        "unit": metric.unit,
                        "scale": metric.scale,
                    }
                )
    return rows


def _selection(
    td: TaskData, ingredients: Sequence[str], dev: np.ndarray, test: np.ndarray, report_split: str, note: str
) -> dict[str, Any]:
    """The best and the median ingredient on the dev items (primary metric; ties keep the given order)."""
    primary = td.metrics[0]
    sign = 1.0 if primary.higher_is_better else -1.0
    wd = weights_for(td, primary, dev)
    dev_scores = {i: weighted_mean(td.values[primary.name][i][dev], wd) for i in ingredients}
    ranked = sorted(ingredients, key=lambda i: (-sign * dev_scores[i], ingredients.index(i)))
    return {
        "task": td.task,
        "metric": primary.name,
        "best_dev": ranked[0],
        "median": ranked[len(ranked) // 2],
        "ranking": ",".join(ranked),
        "dev_scores": json.dumps(dev_scores, sort_keys=True),
        "n_dev": int(dev.sum()),
        "n_test": int(test.sum()),
        "reported_on": report_split,
        "note": note,
    }


def _comparison_rows(
    td: TaskData,
    pairs: Sequence[tuple[str, str]],
    alias: Mapping[str, str],
    sys_map: Mapping[str, System],
    test: np.ndarray,
    report_split: str,
    boot: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Every (subject, reference) pair on the test items; Holm and the call come later, across tasks."""
    rows = []
    cl = None if td.clusters is None else td.clusters[test]
    for metric in td.metrics:
        w = weights_for(td, metric, test)
        vals = td.values[metric.name]
        for subj, ref in pairs:
            r, mc, identical = paired(
                vals[alias.get(subj, subj)][test],
                vals[alias.get(ref, ref)][test],
                metric,
                clusters=cl,
                weights=w,
                boot=boot,
            )
            rows.append(
                {
                    "task": td.task,
                    "metric": metric.name,
                    "subject": subj,
                    "reference": ref,
                    "subject_system": alias.get(subj, subj),
                    "reference_system": alias.get(ref, ref),
                    "subject_label": _display_label(subj, alias, sys_map),
                    "reference_label": _display_label(ref, alias, sys_map),
                    "split": report_split,
                    "n_items": int(test.sum()),
                    "estimate": r.estimate,
                    "low": r.low,
                    "high": r.high,
                    "se": r.se,
                    "p_bootstrap": r.p_value,
                    "p_mcnemar": mc.p_value if mc else None,
                    "a_only": mc.a_only if mc else None,
                    "b_only": mc.b_only if mc else None,
                    "p": mc.p_value if mc else r.p_value,
                    "se_analytic": analytic_se(
                        vals[alias.get(subj, subj)][test], vals[alias.get(ref, ref)][test], clusters=cl, weights=w
                    ),
                    "binary": metric.binary,
                    "identical": identical,
                    "higher_is_better": metric.higher_is_better,
                    "unit": metric.unit,
                    "scale": metric.scale,
                    "primary": metric.primary,
                }
            )
    return rows


def _group_rows(
    td: TaskData, subject: str, best: str, test: np.ndarray, boot: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Subject vs the best-on-dev ingredient on the test items: per BLiMP field and paradigm, and per task."""
    rows = []
    if td.clusters is not None:  # clustered tasks (BLiMP) break down by field and by paradigm
        for level, col in (("field", "field"), ("paradigm", "group")):
            labels = td.meta[col].fill_null("?").to_numpy().astype(str)
            for g in sorted(set(labels[test])):
                gm = test & (labels == g)
                for metric in td.metrics:
                    r = paired(
                        td.values[metric.name][subject][gm],
                        td.values[metric.name][best][gm],
                        metric,
                        clusters=td.clusters[gm] if level == "field" else None,
                        weights=macro_weights(td.clusters, gm) if level == "field" else None,
                        boot=boot,
                    )[0]
                    rows.append(_group_row(td.task, level, g, metric, subject, best, r))
    cl = None if td.clusters is None else td.clusters[test]
    for metric in td.metrics:
        r = paired(
            td.values[metric.name][subject][test],
            td.values[metric.name][best][test],
            metric,
            clusters=cl,
            weights=weights_for(td, metric, test),
            boot=boot,
        )[0]
        rows.append(_group_row(td.task, "task", td.task, metric, subject, best, r))
    return rows


def _display_label(name: str, alias: Mapping[str, str], sys_map: Mapping[str, System]) -> str:
    if name in alias:
        return f"{KIND_LABELS[name]} ({alias[name]})"
    s = sys_map.get(name)
    return s.label if s else name


def _group_row(
    task: str, level: str, group: str, metric: MetricSpec, subject: str, ref: str, r: BootstrapResult
) -> dict[str, Any]:
    return {
        "task": task,
        "level": level,
        "group": group,
        "metric": metric.name,
        "subject": subject,
        "reference": ref,
        "n_items": r.n_items,
        "estimate": r.estimate,
        "low": r.low,
        "high": r.high,
        "p": r.p_value,
        "higher_is_better": metric.higher_is_better,
        "unit": metric.unit,
        "scale": metric.scale,
    }


def _comparison_pairs(
    names: Sequence[str], ingredients: Sequence[str], subject: str, seeds: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """The subject against every baseline, then each non-ingredient system against the best ingredient
    (seed checkpoints only measure the seed spread)."""
    pairs: list[tuple[str, str]] = [(subject, "best_dev"), (subject, "median")]
    others = [n for n in names if n != subject and n not in ingredients and n not in seeds]
    pairs += [(subject, i) for i in ingredients]
    pairs += [(subject, o) for o in others]
    pairs += [(o, "best_dev") for o in others]
    out: list[tuple[str, str]] = []
    for p in pairs:
        if p not in out and p[0] != p[1]:
            out.append(p)
    return out


def _holm_per_group(per_group: pl.DataFrame) -> pl.DataFrame:
    """Holm-adjusted p-values within each (task, level, metric) family of per-group rows."""
    if per_group.height == 0:
        return per_group
    per_group = per_group.with_columns(pl.lit(None, dtype=pl.Float64).alias("p_holm"))
    parts = []
    for _, part in per_group.group_by(["task", "level", "metric"], maintain_order=True):
        parts.append(part.with_columns(pl.Series("p_holm", holm(part["p"].to_numpy()))))
    return pl.concat(parts)


def _finish_comparisons(df: pl.DataFrame, alpha: float, confidence: float, power: float) -> pl.DataFrame:
    """Holm across all comparisons of a metric, the MDE at the family's level, then the call and a
    note explaining a non-call."""
    if df.height == 0:
        return df
    p_holm = np.full(df.height, np.nan)
    mde_alpha = np.full(df.height, np.nan)
    metrics = df["metric"].to_numpy()
    pvals = df["p"].cast(pl.Float64).to_numpy()
    for m in dict.fromkeys(metrics.tolist()):
        idx = np.flatnonzero(metrics == m)
        p_holm[idx] = holm(pvals[idx])
        mde_alpha[idx] = alpha / max(1, int(np.sum(~np.isnan(pvals[idx]))))
    mdes = [mde(r, a, confidence, power) for r, a in zip(df.iter_rows(named=True), mde_alpha)]
    df = df.with_columns(
        pl.Series("p_holm", p_holm), pl.Series("mde", mdes, dtype=pl.Float64), pl.Series("mde_alpha", mde_alpha)
    )
    calls = [call(r, alpha) for r in df.iter_rows(named=True)]
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
