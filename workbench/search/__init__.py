"""Merge search: optimise a recipe on dev items, report it on untouched test items.

A search file names the ingredients, a base recipe and a ``space`` of parameter ranges (written
like sweep axes, checked against the merge registry: :mod:`.space`), the tasks and a declared
``objective`` (a weighted sum of task metrics, each standardised by its spread between the
ingredients: :mod:`.objective`). :func:`run_search` proposes candidates with CMA-ES or a Sobol
baseline (:mod:`.optimizers`), merges each in memory, scores it on the **dev half** only (the
claim check's seeded item split), first on a small fixed dev subset and, by successive halving,
the promising ones on more (:mod:`.run`); every result is cached by recipe fingerprint and
evaluation settings, so a killed search resumes where it stopped. The best candidate on the
whole dev half then goes through the claim check against every baseline on the **test half**,
and the report puts its dev score next to its test score, with the same gap for the baselines
(:mod:`.report`, :mod:`.figures`).

A search file::

    ingredients:                 # name -> checkpoint directory (relative to this file) or Hub id
      early: family/trajectory/step-000260
      late: family/trajectory/step-000300
    method: slerp                # base recipe: method, models, base_model, parameters (or recipe:)
    models: [early, late]
    parameters: {t: 0.5}
    space:                       # ranges ({low, high[, knots]}) or lists of choices
      t.self_attn: {low: 0, high: 1}
      t.mlp: {low: 0, high: 1}
      t: {low: 0, high: 1}       # the catch-all
    tasks: [blimp, "text:family/heldout.txt"]
    objective:                   # task -> weight, or {metric, weight}
      blimp: {metric: acc, weight: 1}
      "text:family/heldout.txt": {metric: bits_per_byte, weight: 1}
    limit: 20
    optimizer: {name: cmaes, popsize: 8}
    budget: {trials: 24, seconds: 3600}
    fidelity: {min_fraction: 0.25, eta: 2}

Outputs (atomic): ``trials.parquet``, ``best.yaml`` (a mergekit recipe), ``verdict.md``,
``report.html``, ``search.yaml``, ``dev_test.parquet``, ``best.json`` and ``claim/`` (the claim
check's report).
"""

from __future__ import annotations

from workbench.search.objective import Score, Term, dev_subsets, ingredient_scales, objective_values
from workbench.search.optimizers import Candidate, CMAESOptimizer, SobolOptimizer, make_optimizer
from workbench.search.report import SearchResult, dev_test_gaps, search_verdict, split_objectives, split_scores
from workbench.search.run import prepare, run_search, score_recipes, trial_recipe
from workbench.search.space import Dimension, Space, parse_space
from workbench.search.spec import SearchSpec, load_search

__all__ = [
    "CMAESOptimizer",
    "Candidate",
    "Dimension",
    "Score",
    "SearchResult",
    "SearchSpec",
    "SobolOptimizer",
    "Space",
    "Term",
    "dev_subsets",
    "dev_test_gaps",
    "ingredient_scales",
    "load_search",
    "make_optimizer",
    "objective_values",
    "parse_space",
    "prepare",
    "run_search",
    "score_recipes",
    "search_verdict",
    "split_objectives",
    "split_scores",
    "trial_recipe",
]
