"""The live merge explorer: sliders -> merge in memory -> evaluate -> Plotly FigureWidget.

Two layers, so that the logic is testable without a browser:

- :class:`ExplorerSession` (no UI): opens two checkpoints once, keeps one model instance on
  the device, fixes a stratified dev subsample of the evaluation items (at most ``limit``
  items per BLiMP paradigm, then the ``dev`` half of :func:`workbench.stats.dev_test_split`)
  and evaluates the ingredients on it once. :meth:`ExplorerSession.point` merges one
  setting in memory (:func:`workbench.merge.merge_in_memory`, ingredient tensors cached on
  the device), loads it into the model in place and evaluates it
  (:func:`workbench.eval.evaluate`, same items), returning timings.
- :class:`MergeExplorer` (ipywidgets): a ``t`` slider, attention / MLP sliders (per-group t,
  enabled by a checkbox), a method dropdown (the registry's interpolation methods), a
  ``plotly.graph_objects.FigureWidget`` (metric vs t over the grid with the current point;
  per-field BLiMP deltas vs each ingredient) and a latency readout. Widget callbacks only
  record the requested setting; one worker thread computes, latest value wins, after a
  short debounce, so a slow evaluation never blocks the slider. The t-grid curve is filled
  in when no slider request is waiting.

Example (in a notebook)::

    from workbench.widgets import ExplorerSession, MergeExplorer
    session = ExplorerSession([model_a, model_b], tasks=["blimp"], limit=4, data_dir="../shared/data")
    MergeExplorer(session, t_grid=[0, 0.25, 0.5, 0.75, 1]).widget
"""

from __future__ import annotations

from workbench.widgets.explorer import MergeExplorer
from workbench.widgets.notebook import notebook_models, soup_recipe
from workbench.widgets.session import (
    METHODS,
    ExplorerSession,
    PointResult,
    field_accuracy,
    primary_metric,
    t_parameter,
)

__all__ = [
    "METHODS",
    "ExplorerSession",
    "MergeExplorer",
    "PointResult",
    "field_accuracy",
    "notebook_models",
    "primary_metric",
    "soup_recipe",
    "t_parameter",
]
