"""After the search: the claim check of the winner, the winner's curse made visible, the outputs.

The winner was selected on the dev half, so its dev score is optimistic by construction (the
maximum of many noisy scores). :func:`dev_test_gaps` puts, for the winner against every
baseline, the paired difference on the dev half (where it was selected) next to the one on the
test half (what the claim check reports), both with bootstrap CIs from the claim check's own
paired test (:func:`workbench.claim.metrics.paired`: BLiMP clustered within paradigms, bits per
byte weighted by bytes); :func:`split_scores` does the same for every system's score and
:func:`split_objectives` for the search objective. The verdict (:func:`search_verdict`) says
that the recipe was selected on dev, shows those gaps, then gives the claim check's verdict.

Pure part, runnable without models::

    >>> import numpy as np, polars as pl
    >>> from workbench.eval.result import items_frame
    >>> rng = np.random.default_rng(0)
    >>> def rows(system):
    ...     return items_frame({"task": ["arc_easy"] * 200, "item_id": [f"q{i}" for i in range(200)],
    ...         "group": ["arc_easy"] * 200, "correct": (rng.random(200) < 0.6).tolist(), "tie": [False] * 200,
    ...         "margin": rng.normal(size=200).tolist()}).with_columns(pl.lit(system).alias("system"))
    >>> from workbench.stats import dev_test_split
    >>> items = dev_test_split(pl.concat([rows("a"), rows("b")]), seed=0)
    >>> gaps = dev_test_gaps(items, subject="a", references=["b"], n_resamples=200)
    >>> gaps.select("metric", "reference").rows()
    [('acc', 'b'), ('margin', 'b')]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from workbench.claim.metrics import align_task, metric_label, paired, weighted_mean, weights_for
from workbench.claim.wording import fmt
from workbench.eval.tasks.evaluation import DEFAULT_BATCH_SIZE
from workbench.search.objective import Term, objective_values
from workbench.search.spec import SearchSpec

__all__ = [
    "SearchResult",
    "claim_check",
    "dev_test_gaps",
    "search_result",
    "search_verdict",
    "split_objectives",
    "split_scores",
]


def dev_test_gaps(
    items: pl.DataFrame,
    *,
    subject: str,
    references: Sequence[str],
    alias: Mapping[str, Mapping[str, str]] | None = None,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> pl.DataFrame:
    """Subject minus each reference, per task and metric, on the dev half and on the test half.

    ``items`` is a long per-item table (``system`` and ``split`` columns, e.g. ``Panel.items``);
    ``alias`` maps a reference name to the system it stands for per task (``best_dev`` -> task ->
    ingredient). Columns: ``dev_estimate``/``dev_low``/``dev_high`` and the same for ``test``,
    ``optimism`` (the dev difference minus the test one, in the better direction: positive when dev
    flattered the subject), the item counts and the metric's display facts.
    """
    boot = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    rows = []
    for task in dict.fromkeys(items["task"].to_list()):
        refs = {r: (alias or {}).get(r, {}).get(task, r) for r in references}
        refs = {r: s for r, s in refs.items() if s != subject}
        td = align_task(items, list(dict.fromkeys([subject, *refs.values()])), task)
        masks = {split: td.mask(split) for split in ("dev", "test")}
        for metric in td.metrics:
            vals = td.values[metric.name]
            for ref, system in refs.items():
                row: dict[str, Any] = {"task": task, "metric": metric.name, "subject": subject, "reference": ref}
                row.update(reference_system=system, primary=metric.primary, higher_is_better=metric.higher_is_better)
                row.update(unit=metric.unit, scale=metric.scale)
                for split, m in masks.items():
                    row[f"n_{split}"] = int(m.sum())
                    if not m.any():
                        row.update({f"{split}_{k}": math.nan for k in ("estimate", "low", "high")})
                        continue
                    cl = None if td.clusters is None else td.clusters[m]
                    r = paired(vals[subject][m], vals[system][m], metric, clusters=cl, weights=weights_for(td, metric, m), boot=boot)[0]  # fmt: skip
                    row.update({f"{split}_estimate": r.estimate, f"{split}_low": r.low, f"{split}_high": r.high})
                sign = 1.0 if metric.higher_is_better else -1.0
                row["optimism"] = sign * (row["dev_estimate"] - row["test_estimate"])
                rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def split_scores(items: pl.DataFrame, systems: Sequence[str]) -> pl.DataFrame:
    """Every system's score per task and metric on the dev half and on the test half, and the gap."""
    rows = []
    for task in dict.fromkeys(items["task"].to_list()):
        td = align_task(items, list(systems), task)
        for metric in td.metrics:
            sign = 1.0 if metric.higher_is_better else -1.0
            for s in systems:
                row: dict[str, Any] = {"system": s, "task": task, "metric": metric.name, "primary": metric.primary}
                for split in ("dev", "test"):
                    m = td.mask(split)
                    row[split] = weighted_mean(td.values[metric.name][s][m], weights_for(td, metric, m))
                row.update(optimism=sign * (row["dev"] - row["test"]), unit=metric.unit, scale=metric.scale)
                rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def split_objectives(
    items: pl.DataFrame,
    systems: Sequence[str],
    terms: Sequence[Term],
    ingredients: Sequence[str],
    scales: Mapping[tuple[str, str], float],
) -> pl.DataFrame:
    """The search objective of every system on the dev half and on the test half (each term centred
    on the ingredients' mean on the same half, scaled by the dev spread), and the gap."""
    out: dict[str, dict[str, float]] = {s: {} for s in systems}
    for split in ("dev", "test"):
        sub = items.filter(pl.col("split") == split)
        if sub.height == 0:
            continue
        for s, score in objective_values(sub, systems, terms, ingredients, scales).items():
            out[s][split] = score.value
    rows = [{"system": s, "dev": v.get("dev", math.nan), "test": v.get("test", math.nan)} for s, v in out.items()]
    return pl.DataFrame(rows).with_columns((pl.col("dev") - pl.col("test")).alias("optimism"))


# ----------------------------------------------------------------------------- the claim check


def claim_check(outcome: Any, store: Any, *, device: str, progress: bool) -> Any:
    """The winner through :func:`workbench.claim.run_panel` against every baseline (each ingredient,
    the best-on-dev ingredient, the uniform soup, the output ensemble, the norm-restore control of a
    two-model interpolation, the control checkpoint), every difference on the test half."""
    from workbench.claim import run_panel

    spec: SearchSpec = outcome.setup.spec
    claim = (
        f"the recipe a {spec.optimizer.name} search selected on the dev half ({len(outcome.trials)} trials) "
        "beats the best single ingredient"
    )
    return run_panel(
        list(outcome.setup.paths.values()),
        outcome.winner.recipe,
        spec.tasks,
        data_dir=outcome.setup.data_dir,
        limit=spec.limit,
        seed=spec.seed,
        device=device,
        control=spec.control,
        claim=claim,
        curve_ts=None,
        n_resamples=spec.n_resamples,
        dev_fraction=spec.dev_fraction,
        batch_size=spec.batch_size or DEFAULT_BATCH_SIZE,
        progress=progress,
        store=store,
    )


def _baselines() -> tuple[str, ...]:
    """Systems of the panel the winner is set against, in the order the verdict lists them (the
    norm-restore baseline is named after its method, which the registry owns)."""
    from workbench.merge.registry import NORM_RESTORE, method_with

    return ("best_dev", "soup", "ensemble", method_with(NORM_RESTORE).name, "control")


def _panel_tables(outcome: Any, panel: Any) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(gaps, scores, objectives) of the panel's systems on dev and test."""
    spec = outcome.setup.spec
    systems = panel.systems["name"].to_list()
    ingredients = panel.settings["ingredients"]
    alias = {"best_dev": {r["task"]: r["best_dev"] for r in panel.selections.iter_rows(named=True)}}
    refs = [b for b in _baselines() if b == "best_dev" or b in systems] + list(ingredients)
    gaps = dev_test_gaps(
        panel.items, subject="merge", references=refs, alias=alias, seed=spec.seed, n_resamples=spec.n_resamples
    )
    scores = split_scores(panel.items, systems)
    scales = outcome.reference.scales
    objectives = split_objectives(panel.items, systems, outcome.setup.terms, ingredients, scales)
    return gaps, scores, objectives


def _row(gaps: pl.DataFrame, task: str, metric: str, ref: str) -> dict[str, Any] | None:
    hit = gaps.filter((pl.col("task") == task) & (pl.col("metric") == metric) & (pl.col("reference") == ref))
    return hit.row(0, named=True) if hit.height else None


def _diff(row: Mapping[str, Any], split: str) -> str:
    s = row["scale"]
    est, lo, hi = row[f"{split}_estimate"], row[f"{split}_low"], row[f"{split}_high"]
    return f"{fmt(est, s)} ({fmt(lo, s)} to {fmt(hi, s)})"


def search_verdict(result: SearchResult) -> str:
    """The verdict in markdown: how the recipe was selected (on dev), the winner's curse (dev next
    to test for the winner and every baseline), then the claim check's own verdict."""
    from workbench.claim import verdict
    from workbench.eval import is_perplexity_task
    from workbench.labels import task_labels

    spec, best = result.spec, result.best
    tl = task_labels(list(spec.tasks))
    terms = " + ".join(f"{o.weight:g} x {tl.get(o.task, o.task)} {metric_label(str(o.metric))}" for o in spec.objective)
    rungs = spec.fidelity.rungs()
    how = (
        f"successive halving over {', '.join(f'{f:g}' for f in rungs)} of the dev half"
        if len(rungs) > 1
        else "each on the whole dev half"
    )
    n_dev = "; ".join(
        f"{tl.get(t, t)}: {n} {'documents' if is_perplexity_task(t) else 'items'}" for t, n in result.n_dev.items()
    )
    lines = [
        "# Merge search: a recipe selected on dev, checked on test",
        "",
        f"**Selected on dev.** The recipe in `best.yaml` (trial {best['trial']}: {best['label']}) was selected by "
        f"{spec.optimizer.name} among {result.n_trials} trials ({result.n_evaluations} evaluations; {how}) "
        f"for its objective on the **dev half** ({n_dev}); no candidate was scored on the test half, which "
        "only the claim check reads. Its dev score is optimistic by selection (the winner's curse): "
        "below, every dev figure stands next to the test figure of the same system, and the claim check "
        "reports every difference on the disjoint test half only.",
        "",
        f"**Objective** (higher is better): {terms}, each standardised by its spread between the ingredients on dev.",
        f"Best dev objective: **{best['objective']:+.3f}**.",
        "",
    ]
    if result.panel is None:
        return "\n".join([*lines, "The claim check was not run (check_claim=False).", ""])
    labels = dict(zip(result.panel.systems["name"].to_list(), result.panel.systems["label"].to_list()))
    lines += ["## The winner's curse: dev vs test", "", "| system | dev objective | test objective | dev - test |"]
    lines.append("|---|---|---|---|")
    for r in result.objectives.iter_rows(named=True):
        name = "**the search's recipe**" if r["system"] == "merge" else labels.get(r["system"], r["system"])
        lines.append(f"| {name} | {r['dev']:+.3f} | {r['test']:+.3f} | {r['optimism']:+.3f} |")
    lines += [
        "",
        "| the search's recipe vs | task, metric | on dev (selected there) | on test (reported) | dev - test |",
    ]
    lines.append("|---|---|---|---|---|")
    for task in spec.tasks:
        prim = result.gaps.filter((pl.col("task") == task) & pl.col("primary"))
        best_dev = {r["reference_system"] for r in prim.iter_rows(named=True) if r["reference"] == "best_dev"}
        for r in prim.iter_rows(named=True):
            if r["reference"] != "best_dev" and r["reference"] in best_dev:
                continue  # that ingredient already has its row, as the best-on-dev one
            who = labels.get(r["reference_system"], r["reference_system"])
            if r["reference"] == "best_dev":
                who = f"best-on-dev ingredient ({r['reference_system']})"
            unit = f"{metric_label(r['metric'])}, {r['unit']}"
            gap = fmt(r["dev_estimate"] - r["test_estimate"], r["scale"])
            lines.append(f"| {who} | {tl.get(task, task)}, {unit} | {_diff(r, 'dev')} | {_diff(r, 'test')} | {gap} |")
    lines += [
        "",
        "Differences are the search's recipe minus the baseline with 95% bootstrap CIs; only the test column "
        "is evidence. A dev difference well above the test one is the selection's optimism, not a gain.",
        "",
    ]
    return "\n".join(lines) + "\n" + verdict(result.panel)


# ----------------------------------------------------------------------------- the result


@dataclass
class SearchResult:
    """A finished search: trials, the winner, the claim check and the dev-vs-test tables.

    ``trials``: one row per evaluation (see :func:`workbench.search.trials.trials_table`);
    ``best``: trial, label, params, recipe (ingredient paths), fingerprint, dev objective and parts;
    ``panel``: the claim check (None with ``check_claim=False``); ``gaps`` / ``scores`` /
    ``objectives``: dev vs test of the winner against each baseline, of every system's score, of
    the objective; ``seconds``: time spent on the ingredients, the search and the claim check.
    """

    spec: SearchSpec
    trials: pl.DataFrame
    best: dict[str, Any]
    panel: Any
    dims: list[str]
    n_dev: dict[str, int]
    computed: int
    cached: int
    seconds: dict[str, float]
    gaps: pl.DataFrame = field(default_factory=pl.DataFrame)
    scores: pl.DataFrame = field(default_factory=pl.DataFrame)
    objectives: pl.DataFrame = field(default_factory=pl.DataFrame)
    verdict: str = ""

    @property
    def n_trials(self) -> int:
        """Candidates proposed (infeasible ones included)."""
        return int(self.trials["trial"].n_unique()) if self.trials.height else 0

    @property
    def n_evaluations(self) -> int:
        """(Trial, rung) evaluations, computed or from the cache."""
        return int(self.trials.filter(pl.col("status") != "infeasible").height) if self.trials.height else 0

    def figures(self) -> dict[str, Any]:
        """Name -> plotly figure: objective vs trial, parameter vs objective, dev vs test."""
        from workbench.search import figures

        out = {
            "objective": figures.objective_figure(self.trials),
            "parameters": figures.parameters_figure(self.trials, self.dims),
        }
        if self.objectives.height:
            out["dev_test"] = figures.dev_test_figure(self.objectives, self.gaps)
        return out

    def best_yaml(self) -> str:
        """``best.yaml``: the winner as a mergekit recipe (``workbench merge`` and ``mergekit-yaml`` read it)."""
        import yaml

        from workbench.merge import load_recipe

        data = load_recipe(self.best["recipe"]).model_dump(mode="json", exclude_none=True)
        head = f"# selected on the dev half by a {self.spec.optimizer.name} search (trial {self.best['trial']}); see verdict.md\n"
        return head + yaml.safe_dump(data, sort_keys=False)

    def write(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``trials.parquet``, ``best.yaml``, ``verdict.md``, ``report.html``, ``search.yaml``,
        ``dev_test.parquet`` and the claim check's report (``claim/``) into ``out_dir`` atomically."""
        import yaml

        from workbench.claim import write_report
        from workbench.io.atomic import atomic_output_dir
        from workbench.search.figures import report_html

        figs = self.figures()
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            tmp = Path(tmp)
            self.trials.write_parquet(tmp / "trials.parquet")
            (tmp / "best.yaml").write_text(self.best_yaml(), encoding="utf-8")
            (tmp / "verdict.md").write_text(self.verdict, encoding="utf-8")
            (tmp / "report.html").write_text(report_html(self, figs), encoding="utf-8")
            spec = self.spec.model_dump(mode="json", exclude_none=True)
            (tmp / "search.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            if self.gaps.height:
                self.gaps.write_parquet(tmp / "dev_test.parquet")
            if self.panel is not None:
                write_report(self.panel, tmp / "claim")
            (tmp / "best.json").write_text(json.dumps(self.best, indent=1, sort_keys=True, default=str) + "\n")
        return Path(out_dir)


def search_result(outcome: Any, panel: Any) -> SearchResult:
    """Assemble the :class:`SearchResult` of a finished loop (and its claim check, when run)."""
    from workbench.search.trials import trials_table

    dims = [d.name for d in outcome.setup.space.dims]
    win = outcome.winner
    top = max(win.evaluations)
    ev = win.evaluations[top]
    label = ", ".join(f"{k}={_short(v)}" for k, v in win.params.items()) or "given recipe"
    best = {
        "trial": win.index, "label": label, "params": win.params, "recipe": win.recipe,
        "fingerprint": win.fingerprint, "objective": ev.score.value, "parts": ev.score.parts,
    }  # fmt: skip
    n_dev = {t: len(ids) for t, ids in outcome.reference.subsets[-1].items()}
    result = SearchResult(
        outcome.setup.spec,
        trials_table(outcome.trials, dims, win.index),
        best,
        panel,
        dims,
        n_dev,
        outcome.computed,
        outcome.cached,
        dict(outcome.seconds),
    )
    if panel is not None:
        result.gaps, result.scores, result.objectives = _panel_tables(outcome, panel)
    result.verdict = search_verdict(result)
    return result


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)
