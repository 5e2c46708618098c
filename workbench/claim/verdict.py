"""The verdict: a short markdown text that says what the panel shows, and no more.

One paragraph per task (the merge against the key baselines, the noise floor, the tie rate),
the interpolation barrier and the best t, then a table of every comparison. A difference is
called a gain (or a loss) only when its CI excludes 0 and its Holm-adjusted p is below the
significance level; otherwise it reads "no evidence of a difference".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from workbench.claim.metrics import ALPHA, MIN_ITEMS_FOR_CALL
from workbench.claim.panel import Panel

__all__ = ["verdict"]

# Comparisons named in the verdict's paragraphs (the table lists every comparison).
_KEY_PAIRS = {
    ("merge", "best_dev"),
    ("soup", "best_dev"),
    ("ensemble", "best_dev"),
    ("merge", "lerp_norm_restore"),
    ("merge", "control"),
}


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
    lines = ["# Claim check", "", _method_paragraph(s, conf), ""]
    for task in s.get("tasks", []):
        paragraph = _task_paragraph(panel, task, conf)
        if paragraph:
            lines += [paragraph, ""]
    lines += _curve_lines(panel, conf)
    lines += _comparison_table(panel.comparisons)
    lines.append("")
    return "\n".join(lines)


def _method_paragraph(s: Mapping[str, Any], conf: float) -> str:
    """Subject, ingredients, and how every number was obtained."""
    alpha = float(s.get("alpha", ALPHA))
    recipe = s.get("recipe_summary")
    head = f"Subject: **{s.get('subject', 'merge')}**" + (f" ({recipe})" if recipe else "") + "."
    return (
        head + f" Ingredients: {', '.join(f'`{i}`' for i in s.get('ingredients', []))}. "
        f"Best and median ingredients are chosen on the dev half of the items; every number below is "
        f"on the disjoint test half (seeded split, seed {s.get('seed')}). Intervals are paired bootstrap "
        f"{int(round(conf * 100))}% CIs ({s.get('n_resamples')} resamples; BLiMP resampled within paradigms); "
        f"accuracy differences also get an exact McNemar test; p-values are Holm-corrected across "
        f"all comparisons of a metric. A difference is called significant only when its CI excludes 0 and "
        f"the Holm-adjusted p is below {alpha:g}."
    )


def _task_paragraph(panel: Panel, task: str, conf: float) -> str:
    """The key comparisons of one task on its primary metric ("" when the task has none)."""
    subject = panel.settings.get("subject", "merge")
    sub = panel.comparisons.filter((pl.col("task") == task) & pl.col("primary"))
    if sub.height == 0:
        return ""
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
        tail = (
            f" Noise floor (spread of {metric} between the {nf['n'][0]} ingredients on test): "
            f"{_fmt(nf['spread'][0], sc, signed=False)} {sub['unit'][0]}."
        )
    ties = panel.scores.filter(
        (pl.col("task") == task)
        & (pl.col("split") == "test")
        & (pl.col("metric") == metric)
        & (pl.col("system") == subject)
    )
    if ties.height and ties["tie_rate"][0] > 0:
        tail += f" Tie rate of {subject}: {ties['tie_rate'][0] * 100:.1f}%."
    where = f"{n_test} test items"
    if sel.height and sel["reported_on"][0] != "test":
        where = sel["note"][0]
    return f"**{task}** ({metric}, {where}): " + " ".join(sentences) + tail


def _curve_lines(panel: Panel, conf: float) -> list[str]:
    """The barrier paragraph and one line per method, task and metric on the best t (may be empty)."""
    lines: list[str] = []
    if panel.barriers.height:
        parts = []
        for r in panel.barriers.iter_rows(named=True):
            bump = "a bump" if r["low"] > 0 else "no evidence of a bump"
            parts.append(
                f"{r['method']} on {r['task']} ({r['loss']}): {r['barrier']:.4g} at t={r['t_max']:g} "
                f"({int(round(conf * 100))}% CI {r['low']:.4g} to {r['high']:.4g}, {bump})"
            )
        lines += [
            "Interpolation barrier (max over t of the loss minus the straight line between the endpoint "
            "losses, all items; a maximum over the grid, so it is never below 0 and biased upwards): "
            + "; ".join(parts)
            + ".",
            "",
        ]
    if panel.curve_tests.height:
        chosen = panel.curve_tests.filter(pl.col("selected"))
        for r in chosen.iter_rows(named=True):
            word = {"gain": "a significant gain", "loss": "a significant loss"}.get(
                r["call"], "no evidence of a difference"
            )
            lines.append(
                f"Best t for {r['method']} on {r['task']} chosen on dev: t={r['t']:g}; on test vs the "
                f"better endpoint ({r['reference']}): {_fmt(r['estimate'], r['scale'])} {r['unit']} "
                f"({_ci(r, conf)}), {word}."
            )
        if chosen.height:
            lines.append("")
    return lines


def _comparison_table(cmp: pl.DataFrame) -> list[str]:
    """The markdown table of every comparison."""
    lines = [
        "| task | metric | comparison | difference | CI | McNemar p | Holm p | call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in cmp.iter_rows(named=True):
        mc = f"{r['p_mcnemar']:.3g}" if r["p_mcnemar"] is not None else "-"
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['subject_label']} vs {r['reference_label']} | "
            f"{_fmt(r['estimate'], r['scale'])} {r['unit']} | {_fmt(r['low'], r['scale'])} to "
            f"{_fmt(r['high'], r['scale'])} | {mc} | {r['p_holm']:.3g} | {r['call']} |"
        )
    return lines


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
