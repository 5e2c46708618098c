"""Sweeps: grids of (merge, evaluation) points, cached and resumable, local or on Ray.

A sweep file names the ingredients, a base recipe (mergekit-style), the axes to vary and the
evaluation settings. :func:`expand` turns it into :class:`Point` s, each one merge recipe;
:func:`run_sweep` merges every point in memory (never on disk), evaluates it, and collects one
long table (point parameters, task, metric, value, stderr) plus the per-item results.

Every (point, task) result goes through :class:`workbench.store.ResultStore` under the key
``EvalSettings.key(recipe_fingerprint(point recipe), task)`` (the evaluation engine's one key
rule, :class:`workbench.eval.EvalSettings`): a point whose tasks are all in the store is not
merged again, so a sweep that was killed (even with SIGKILL) and is started again finishes the
remaining points and loses nothing.

A sweep file::

    ingredients:            # name -> checkpoint directory (relative to the sweep file) or Hub id
      a: family/trajectory/step-0400
      b: family/siblings/sib-1
    recipe:                 # the base recipe: a mergekit dict, or a path to a recipe YAML
      merge_method: slerp
      base_model: a
      models: [{model: a}, {model: b}]
      parameters: {t: 0.5}
    axes:                   # cartesian product (``mode: zip`` pairs them instead)
      t: {start: 0.0, stop: 1.0, num: 11}
    tasks: [blimp, wikitext]
    limit: 200
    seed: 0

Axis names: a merge parameter (``t``, ``weight``, ``density``, ``epsilon``, ``lambda``) sets the
recipe's global ``parameters``; ``<parameter>.<filter>`` (e.g. ``t.self_attn``, ``t.mlp``)
sets the value for the tensors whose name contains ``<filter>`` (mergekit filter list, the
axis order is the match order, the plain ``<parameter>`` value or the base recipe's is the
catch-all); ``method`` sets ``merge_method``; ``models`` takes lists of ingredient names;
``base_model`` takes ingredient names.

Modules: :mod:`.spec` (the sweep file, axes), :mod:`.points` (expansion), :mod:`.backends`
(computing points locally or on Ray), :mod:`.run` (planning, cache look-ups, the driver),
:mod:`.tables` (the long and per-item tables, the written outputs).
"""

from __future__ import annotations

from workbench.sweep.backends import Job, PointOutcome, compute_point, connect_ray
from workbench.sweep.points import Point, base_recipe_dict, expand
from workbench.sweep.run import plan, run_sweep
from workbench.sweep.spec import MERGE_PARAMETERS, STRUCTURAL_AXES, Resources, SweepSpec, axis_values, load_sweep
from workbench.sweep.tables import SweepResult, items_table, long_table

__all__ = [
    "MERGE_PARAMETERS",
    "STRUCTURAL_AXES",
    "Job",
    "Point",
    "PointOutcome",
    "Resources",
    "SweepResult",
    "SweepSpec",
    "axis_values",
    "base_recipe_dict",
    "compute_point",
    "connect_ray",
    "expand",
    "items_table",
    "load_sweep",
    "long_table",
    "plan",
    "run_sweep",
]
