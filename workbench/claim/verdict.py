"""The verdict: a short markdown text that says what the panel shows, and no more, headline first.

:func:`verdict_sections` gives the parts :func:`verdict` joins (and the HTML report lays out
with the figures between them):

* ``headline``: the claim being checked and, per task, one sentence answering it on the task's
  primary metric (the merge against the best ingredient chosen on dev: difference, CI, call, and
  for "no evidence" the size of difference the evaluation would have detected), then the cost
  caveat of the output ensemble;
* ``details``: how every number was obtained, one line per key comparison of each task, the
  noise floor and the seed spread, tie rates, the interpolation barrier and the best t;
* ``table``: every comparison;
* ``sources``: what the short labels stand for (task names and checkpoint paths, shown without
  their machine-specific prefix).

A difference is called a gain (or a loss) only when its CI excludes 0 and its Holm-adjusted p is
below the significance level; otherwise it reads "no evidence of a difference". Every line names
its metric; tasks and checkpoints are named by short labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from workbench.claim.metrics import ALPHA, POWER, metric_label
from workbench.claim.panel import Panel
from workbench.claim.wording import CALL_WORDS, brief_phrase, ci_text, count, fmt, mde_text, result_phrase
from workbench.labels import task_labels
from workbench.merge.registry import NORM_RESTORE, method_with

__all__ = ["comparison_table", "headline", "verdict", "verdict_sections"]

# Comparisons named in the details, in this order (the table lists every comparison).
_KEY_PAIRS = (
    ("merge", "best_dev"),
    ("merge", "control"),
    ("merge", method_with(NORM_RESTORE).name),
    ("soup", "best_dev"),
    ("ensemble", "best_dev"),
    ("control", "best_dev"),
)


def _conf(panel: Panel) -> float:
    return float(panel.settings.get("confidence", 0.95))


def _power(panel: Panel) -> float:
    return float(panel.settings.get("power", POWER))


def _labels(panel: Panel) -> dict[str, str]:
    return task_labels(list(panel.settings.get("tasks", [])))


def _primary_rows(panel: Panel, task: str) -> pl.DataFrame:
    cmp = panel.comparisons
    if cmp.height == 0:
        return cmp
    return cmp.filter((pl.col("task") == task) & pl.col("primary"))


def _row(rows: pl.DataFrame, subject: str, reference: str) -> dict[str, Any] | None:
    hit = rows.filter((pl.col("subject") == subject) & (pl.col("reference") == reference))
    return hit.row(0, named=True) if hit.height else None


def _where(panel: Panel, task: str) -> str:
    sel = panel.selections.filter(pl.col("task") == task) if panel.selections.height else panel.selections
    if sel.height and sel["reported_on"][0] != "test":
        return str(sel["note"][0])
    n = int(sel["n_test"][0]) if sel.height else 0
    return f"{count(n, _primary_metric(panel, task))} on test"


def _primary_metric(panel: Panel, task: str) -> str | None:
    rows = _primary_rows(panel, task)
    return rows["metric"][0] if rows.height else None


def verdict(panel: Panel) -> str:
    """The whole verdict in markdown: headline, details, the table of every comparison, sources.

    A difference is called a gain (or a loss) only when its confidence interval excludes 0 and
    its Holm-adjusted p-value is below the significance level; otherwise it reads
    "no evidence of a difference".
    """
    parts = verdict_sections(panel)
    out = [parts["headline"], "## Details", "", parts["details"], "## All comparisons", "", parts["table"]]
    if parts["sources"]:
        out += ["## Sources", "", parts["sources"]]
    return "\n".join(out)


def verdict_sections(panel: Panel) -> dict[str, str]:
    """The verdict's parts as markdown: ``headline``, ``details``, ``table``, ``sources``."""
    return {
        "headline": headline(panel),
        "details": _details(panel),
        "table": comparison_table(panel),
        "sources": _sources(panel),
    }


def _claim_line(panel: Panel) -> str:
    s = panel.settings
    subject = s.get("subject", "merge")
    recipe = s.get("recipe_summary")
    who = f"the {subject}" + (f" ({recipe})" if recipe else "")
    how = f"{who} against the best single ingredient chosen on the dev half, on the disjoint test half"
    if s.get("claim"):
        return f"**Claim:** “{s['claim']}”. **Checked as:** {how}."
    return f"**Claim checked:** {who} is better than the best single ingredient (chosen on the dev half); every number is on the disjoint test half."


def headline(panel: Panel) -> str:
    """The claim and, per task, one sentence answering it; then the ensemble's cost caveat (markdown)."""
    s = panel.settings
    subject = s.get("subject", "merge")
    conf, power = _conf(panel), _power(panel)
    labels = _labels(panel)
    lines = ["# Claim check", "", _claim_line(panel), ""]
    for task in s.get("tasks", []):
        rows = _primary_rows(panel, task)
        best = _row(rows, subject, "best_dev")
        if best is None:
            continue
        sentence = (
            f"- **{labels.get(task, task)}** ({metric_label(best['metric'])}, {_where(panel, task)}): "
            f"the {subject} vs the {best['reference_label']}: {result_phrase(best, conf, power=power)}"
        )
        control = _row(rows, subject, "control")
        if control is not None:
            sentence += f"; vs the control checkpoint: {result_phrase(control, conf, short=True, seeds=False)}"
        lines.append(_bold_call(sentence) + ".")
    cost = _cost_line(panel, labels)
    if cost:
        lines.append(cost)
    lines.append("")
    return "\n".join(lines)


def _bold_call(text: str) -> str:
    """The first call phrase of a headline sentence in bold (the word a reader looks for)."""
    for word in CALL_WORDS.values():
        if word in text:
            return text.replace(word, f"**{word}**", 1)
    return text


def _cost_line(panel: Panel, labels: Mapping[str, str]) -> str:
    """The output ensemble against the best ingredient, with its inference cost (``""`` without one)."""
    ens = panel.systems.filter(pl.col("kind") == "ensemble") if panel.systems.height else panel.systems
    if ens.height == 0:
        return ""
    cost = int(ens["inference_cost"][0])
    parts = []
    for task in panel.settings.get("tasks", []):
        r = _row(_primary_rows(panel, task), "ensemble", "best_dev")
        if r is not None:
            parts.append(f"{labels.get(task, task)} {metric_label(r['metric'])} {brief_phrase(r)}")
    if not parts:
        return ""
    return (
        f"- **Cost:** the output ensemble needs {cost}x the inference of the merge; "
        f"vs the best-on-dev ingredient: " + ", ".join(parts) + "."
    )


def _method_lines(panel: Panel) -> list[str]:
    """Subject, ingredients, and how every number was obtained."""
    s = panel.settings
    conf, alpha, power = _conf(panel), float(s.get("alpha", ALPHA)), _power(panel)
    recipe = s.get("recipe_summary")
    head = f"Subject: **{s.get('subject', 'merge')}**" + (f" ({recipe})" if recipe else "") + "."
    text = (
        head + f" Ingredients: {', '.join(f'`{i}`' for i in s.get('ingredients', []))}. "
        f"Best and median ingredients are chosen on the dev half of the items; every number below is "
        f"on the disjoint test half (seeded split, seed {s.get('seed')}). Intervals are paired bootstrap "
        f"{int(round(conf * 100))}% CIs ({s.get('n_resamples')} resamples; BLiMP resampled within paradigms); "
        f"accuracy differences also get an exact McNemar test; p-values are Holm-corrected across "
        f"all comparisons of a metric. A difference is called significant only when its CI excludes 0 and "
        f"the Holm-adjusted p is below {alpha:g}. "
        f"Power: each comparison's minimum detectable effect (MDE) is the true difference its call would "
        f"detect with {int(round(power * 100))}% power, from the variance of its paired per-item differences "
        f"(BLiMP clustered by paradigm, as in the bootstrap; accuracy by the exact McNemar test's power on "
        f"the discordant pairs), at α = {alpha:g} / m with m the comparisons of the metric (Holm's first step)."
    )
    seeds = s.get("seeds") or []
    if seeds:
        text += (
            f" Seed spread: the standard deviation of each metric between the {len(seeds)} seed checkpoints "
            f"({', '.join(f'`{x}`' for x in seeds)}), trained identically but for the seed and evaluated on the "
            f"same items; differences are also given as a multiple of it."
        )
    return [text, ""]


def _details(panel: Panel) -> str:
    lines = _method_lines(panel)
    labels = _labels(panel)
    for task in panel.settings.get("tasks", []):
        lines += _task_lines(panel, task, labels.get(task, task))
    lines += _curve_lines(panel, labels)
    return "\n".join(lines)


def _task_lines(panel: Panel, task: str, label: str) -> list[str]:
    """The key comparisons of one task on its primary metric, one per line ([] when it has none)."""
    subject = panel.settings.get("subject", "merge")
    rows = _primary_rows(panel, task)
    if rows.height == 0:
        return []
    metric = rows["metric"][0]
    name, conf, power = metric_label(metric), _conf(panel), _power(panel)
    scale, unit = float(rows["scale"][0]), rows["unit"][0]
    out = [f"**{label}** ({name}, {_where(panel, task)}):", ""]
    for subj, ref in _KEY_PAIRS:
        r = _row(rows, subject if subj == "merge" else subj, ref)
        if r is None:
            continue
        who = subject if r["subject"] == subject else r["subject_label"]
        out.append(f"- {name}, {who} vs {r['reference_label']}: {result_phrase(r, conf, power=power)}.")
    nf = panel.noise.filter((pl.col("task") == task) & (pl.col("metric") == metric)) if panel.noise.height else None
    if nf is not None and nf.height and nf["n"][0] > 1:
        out.append(
            f"- {name} noise floor (spread between the {nf['n'][0]} ingredients on test): "
            f"{fmt(nf['spread'][0], scale, signed=False)} {unit}."
        )
    sn = panel.seed_noise
    sd = sn.filter((pl.col("task") == task) & (pl.col("metric") == metric)) if sn.height else None
    if sd is not None and sd.height:
        out.append(
            f"- {name} seed spread (standard deviation between the {sd['n'][0]} seed checkpoints on test): "
            f"{fmt(sd['sd'][0], scale, signed=False)} {unit} (range {fmt(sd['range'][0], scale, signed=False)})."
        )
    ties = panel.scores.filter(
        (pl.col("task") == task)
        & (pl.col("split") == "test")
        & (pl.col("metric") == metric)
        & (pl.col("system") == subject)
    )
    if ties.height and ties["tie_rate"][0] > 0:
        out.append(f"- {name}: tie rate of {subject} {ties['tie_rate'][0] * 100:.1f}% (ties count as correct).")
    return out + [""]


def _curve_lines(panel: Panel, labels: Mapping[str, str]) -> list[str]:
    """One line per barrier (method, task) and per best t (method, task, metric); [] without a curve."""
    lines: list[str] = []
    conf = _conf(panel)
    if panel.barriers.height:
        lines += [
            "Interpolation barrier: max over t of the loss minus the straight line between the endpoint losses "
            "(all items; a maximum over the grid, so it is never below 0 and biased upwards):",
            "",
        ]
        for r in panel.barriers.iter_rows(named=True):
            bump = "a bump" if r["low"] > 0 else "no evidence of a bump"
            loss, scale, unit = _loss_display(r["loss"])
            lines.append(
                f"- barrier of {r['method']} on {labels.get(r['task'], r['task'])} ({loss}): "
                f"{fmt(r['barrier'], scale, signed=False)} {unit} at t={r['t_max']:g} ({ci_text({**r, 'scale': scale}, conf)}), {bump}."
            )
        lines.append("")
    if panel.curve_tests.height:
        chosen = panel.curve_tests.filter(pl.col("selected"))
        if chosen.height:
            lines += ["Best t of each method, task and metric, chosen on dev and reported on test:", ""]
        for r in chosen.iter_rows(named=True):
            lines.append(
                f"- Best t for {r['method']} on {labels.get(r['task'], r['task'])}, {metric_label(r['metric'])} "
                f"(chosen on dev): t={r['t']:g}; on test vs the better endpoint ({r['reference']}): "
                f"{result_phrase(r, conf, power=_power(panel))}."
            )
        if chosen.height:
            lines.append("")
    return lines


def _loss_display(loss: str) -> tuple[str, float, str]:
    """(name, scale, unit) of a barrier's loss: error in points of accuracy, else the metric's own."""
    if loss == "error":
        return "loss: error = 1 - accuracy", 100.0, "points"
    return f"loss: {metric_label(loss)}", 1.0, "bits/byte" if loss == "bits_per_byte" else ""


def comparison_table(panel: Panel) -> str:
    """The markdown table of every comparison (tasks by their labels, metrics by name)."""
    cmp = panel.comparisons
    labels = _labels(panel)
    seeds = "seed_ratio" in cmp.columns and cmp["seed_ratio"].null_count() < cmp.height
    head = "| task | metric | comparison | difference | CI | MDE |" + (" vs seed sd |" if seeds else "")
    head += " McNemar p | Holm p | call |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in cmp.iter_rows(named=True):
        mc = f"{r['p_mcnemar']:.3g}" if r["p_mcnemar"] is not None else "-"
        m = mde_text(r, short=True).removeprefix("would detect ")
        row = (
            f"| {labels.get(r['task'], r['task'])} | {metric_label(r['metric'])} | {r['subject_label']} vs "
            f"{r['reference_label']} | {fmt(r['estimate'], r['scale'])} {r['unit']} | {fmt(r['low'], r['scale'])} to "
            f"{fmt(r['high'], r['scale'])} | {m or '-'} |"
        )
        if seeds:
            ratio = r.get("seed_ratio")
            row += f" {ratio:.1f}x |" if ratio is not None else " - |"
        lines.append(row + f" {mc} | {r['p_holm']:.3g} | {r['call']} |")
    return "\n".join(lines) + "\n"


def _sources(panel: Panel) -> str:
    """What each short label stands for: task names, checkpoint paths, control and seeds (paths
    without their machine-specific prefix; the full ones are in ``panel.json``)."""
    from workbench.labels import shared_path, shared_task

    s = panel.settings
    lines = [f"- task `{label}`: `{shared_task(task)}`" for task, label in _labels(panel).items() if label != task]
    for label, path in (s.get("ingredient_paths") or {}).items():
        lines.append(f"- checkpoint `{label}`: `{shared_path(path)}`")
    for label, path in (s.get("seed_paths") or {}).items():
        lines.append(f"- seed checkpoint `{label}`: `{shared_path(path)}`")
    if s.get("control"):
        lines.append(f"- control checkpoint: `{shared_path(s['control'])}`")
    return "\n".join(lines) + ("\n" if lines else "")
