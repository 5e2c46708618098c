"""Claim check: a merge against fair baselines, with paired statistics and a plain verdict.

A merge's score means little on its own. :func:`run_panel` evaluates, on the *same* items,

* every ingredient, and (chosen on the dev half) the best ingredient and the median ingredient;
* the uniform LERP soup of the ingredients;
* ``lerp_norm_restore`` at the recipe's t (isolates any spherical effect of a SLERP recipe);
* the recipe's merge itself;
* the output ensemble of the ingredients (average of probabilities; N x the inference cost);
* optionally a user control checkpoint (e.g. an annealed or EMA checkpoint of matched compute);
* optionally seed checkpoints (trained identically but for the seed), whose spread every gain is
  set against;

and an interpolation curve (LERP and SLERP along a t grid) between two ingredients with its
barrier. :func:`build_panel` turns per-item results into tables: every difference is paired,
bootstrapped (BLiMP clustered within paradigms), McNemar-tested (accuracy), Holm-corrected, and
reported on the test half while anything selected is selected on the dev half; every comparison
carries its minimum detectable effect (80% power). :func:`verdict` writes the markdown, headline
first (:func:`verdict_sections` gives its parts); :func:`write_report` writes tables (parquet and
CSV), figures (HTML with plotly.js inline, and figure JSON), the static explorer page and
``verdict.md`` atomically. :func:`plan_from_pilot` / :func:`plan_from_assumptions` say how many
items an evaluation needs to detect an effect of a given size.

Modules: :mod:`~workbench.claim.metrics` (metrics, item alignment, the paired test, its call and
MDE), :mod:`~workbench.claim.panel` (:class:`Panel`, :func:`build_panel`),
:mod:`~workbench.claim.noise` (noise floor, seed spread), :mod:`~workbench.claim.curve`
(interpolation curve and barrier), :mod:`~workbench.claim.wording` and
:mod:`~workbench.claim.verdict` (the text), :mod:`~workbench.claim.report` (files and HTML),
:mod:`~workbench.claim.plan` (sample sizes), :mod:`~workbench.claim.run` (evaluates models).
Importing this package loads no torch: models are loaded only inside :func:`run_panel` and
:func:`interpolation_curve`.
"""

from __future__ import annotations

from workbench.claim.curve import CURVE_TS, curve_tables, interpolation_curve
from workbench.claim.metrics import ACC, ALPHA, BPB, MARGIN, POWER, MetricSpec, mde, snap_rounding, task_metrics
from workbench.claim.panel import KIND_LABELS, Panel, System, build_panel
from workbench.claim.plan import Plan, plan_from_assumptions, plan_from_pilot
from workbench.claim.report import report_html, sources_html, tables_html, write_report
from workbench.claim.run import run_panel
from workbench.claim.verdict import headline, verdict, verdict_sections

__all__ = [
    "ACC",
    "ALPHA",
    "BPB",
    "CURVE_TS",
    "KIND_LABELS",
    "MARGIN",
    "POWER",
    "MetricSpec",
    "Panel",
    "Plan",
    "System",
    "build_panel",
    "curve_tables",
    "headline",
    "interpolation_curve",
    "mde",
    "plan_from_assumptions",
    "plan_from_pilot",
    "report_html",
    "run_panel",
    "snap_rounding",
    "sources_html",
    "tables_html",
    "task_metrics",
    "verdict",
    "verdict_sections",
    "write_report",
]
