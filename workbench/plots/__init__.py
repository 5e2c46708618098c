"""Plotly figures: pure functions, data in (polars tables, dicts), ``plotly`` figure out.

Shared by the notebooks, the merge explorer widget and the claim-check report. Nothing
here reads files, merges or evaluates; every figure is built from the tables that
:mod:`workbench.geometry`, :mod:`workbench.eval` and :mod:`workbench.claim` return.
"""

from __future__ import annotations

from workbench.plots.claim import delta_bars_figure, forest_figure, interpolation_figure
from workbench.plots.explorer import curve_slider_figure, explorer_figure, t_slider_figure
from workbench.plots.geometry import (
    GROUP_ORDER,
    angles_heatmap,
    fallback_share_figure,
    norm_factor_heatmap,
    norms_figure,
    pairwise_angle_matrix,
    pairwise_angles_heatmaps,
)

__all__ = [
    "GROUP_ORDER",
    "angles_heatmap",
    "curve_slider_figure",
    "delta_bars_figure",
    "explorer_figure",
    "fallback_share_figure",
    "forest_figure",
    "interpolation_figure",
    "norm_factor_heatmap",
    "norms_figure",
    "pairwise_angle_matrix",
    "pairwise_angles_heatmaps",
    "setup_offline_html",
    "t_slider_figure",
]


def setup_offline_html() -> str:
    """Make figures displayed in a notebook survive nbconvert as offline HTML.

    Sets plotly's default renderer to ``plotly_mimetype+notebook``: JupyterLab draws the
    plotly mimetype, while the ``text/html`` part (which nbconvert keeps; it drops the
    plotly mimetype) uses plotly.js embedded once in the notebook instead of a CDN.
    Returns the renderer name; call it once at the top of a notebook.

    >>> setup_offline_html()
    'plotly_mimetype+notebook'
    """
    import plotly.io as pio

    name = "plotly_mimetype+notebook"
    pio.renderers.default = name
    return name
