"""Figures of the claim check: differences with CI whiskers, forest plots, interpolation curves.

Tasks are shown by their short labels (:func:`workbench.labels.task_labels`: a ``text:`` task by
its file name) and metrics by name (``acc`` -> accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.claim.metrics import metric_label
from workbench.labels import task_labels

_CALL_COLORS = {"gain": "#2ca02c", "loss": "#d62728", "no evidence": "#7f7f7f"}


def delta_bars_figure(comparisons: pl.DataFrame, *, primary_only: bool = True, title: str | None = None) -> go.Figure:
    """Differences with CI whiskers against every baseline, one panel per task and metric.

    ``comparisons`` is :attr:`workbench.claim.Panel.comparisons` (estimate, low, high, scale,
    unit, call, subject_label, reference_label, task, metric, primary). Bars are coloured by the
    call (gain / loss / no evidence); a vertical line marks 0.

    >>> df = pl.DataFrame({"task": ["blimp"], "metric": ["acc"], "subject_label": ["merge"],
    ...     "reference_label": ["best-on-dev ingredient (a)"], "estimate": [0.01], "low": [-0.002],
    ...     "high": [0.02], "scale": [100.0], "unit": ["points"], "call": ["no evidence"], "primary": [True]})
    >>> len(delta_bars_figure(df).data)
    1
    """
    df = comparisons.filter(pl.col("primary")) if primary_only and "primary" in comparisons.columns else comparisons
    keys = list(dict.fromkeys(zip(df["task"].to_list(), df["metric"].to_list())))
    labels = task_labels([t for t, _ in keys])
    n_bars = max(1, df.height)
    height = 220 + 28 * n_bars + 90 * len(keys)
    fig = make_subplots(
        rows=max(1, len(keys)),
        cols=1,
        subplot_titles=[f"{labels[t]}: {metric_label(m)}" for t, m in keys] or None,
        # about 90 px between panels: room for the axis title above the next panel's title
        vertical_spacing=min(0.3, 90 / height) if len(keys) > 1 else 0.1,
    )
    for row, (task, metric) in enumerate(keys, start=1):
        sub = df.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        scale = sub["scale"].to_numpy()
        est = sub["estimate"].to_numpy() * scale
        low = sub["low"].to_numpy() * scale
        high = sub["high"].to_numpy() * scale
        names = [f"{s} vs {r}" for s, r in zip(sub["subject_label"].to_list(), sub["reference_label"].to_list())]
        calls = sub["call"].to_list()
        fig.add_trace(
            go.Bar(
                x=est.tolist(),
                y=names,
                orientation="h",
                marker_color=[_CALL_COLORS.get(c, "#1f77b4") for c in calls],
                error_x=dict(
                    type="data", symmetric=False, array=(high - est).tolist(), arrayminus=(est - low).tolist()
                ),
                customdata=list(zip(low.tolist(), high.tolist(), calls)),
                hovertemplate="%{y}<br>%{x:.3g} (CI %{customdata[0]:.3g} to %{customdata[1]:.3g})<br>%{customdata[2]}"
                "<extra></extra>",
                name=f"{labels[task]} {metric_label(metric)}",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        fig.add_vline(x=0, line_color="black", line_width=1, row=row, col=1)
        fig.update_xaxes(title_text=f"difference ({sub['unit'][0]})" if sub.height else None, row=row, col=1)
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    fig.update_layout(
        title=title or "Merge vs baselines (test half; bars: difference, whiskers: CI)",
        height=height,
        margin=dict(l=320),
    )
    return fig


def forest_figure(
    per_group: pl.DataFrame,
    *,
    metric: str | None = None,
    levels: Sequence[str] = ("task", "field", "paradigm"),
    title: str | None = None,
    alpha: float = 0.05,
) -> go.Figure:
    """Forest plot: the merge vs the best-on-dev ingredient per task, BLiMP field and paradigm.

    ``per_group`` is :attr:`workbench.claim.Panel.per_group`. One row per group with its
    CI; filled markers where the Holm-adjusted p is below ``alpha`` (the panel's, 0.05 by default).

    >>> df = pl.DataFrame({"task": ["blimp", "blimp"], "level": ["task", "field"], "group": ["blimp", "syntax"],
    ...     "metric": ["acc", "acc"], "estimate": [0.01, 0.02], "low": [-0.01, -0.02], "high": [0.03, 0.05],
    ...     "scale": [100.0, 100.0], "unit": ["points", "points"], "p_holm": [0.3, 0.6]})
    >>> [tr.name for tr in forest_figure(df).data]
    ['task', 'field']
    """
    if metric is None:
        metric = per_group["metric"][0] if per_group.height else "acc"
    df = per_group.filter(pl.col("metric") == metric)
    fig = go.Figure()
    n_rows = 0
    for level in levels:
        sub = df.filter(pl.col("level") == level)
        if sub.height == 0:
            continue
        n_rows += sub.height
        scale = sub["scale"].to_numpy()
        est = sub["estimate"].to_numpy() * scale
        low = sub["low"].to_numpy() * scale
        high = sub["high"].to_numpy() * scale
        sig = [(p is not None and p < alpha) for p in sub["p_holm"].to_list()]
        tl = task_labels(sub["task"].to_list())
        labels = [
            f"{tl[t]}: {g}" if level != "task" else f"{tl.get(g, g)} (all)"
            for t, g in zip(sub["task"].to_list(), sub["group"].to_list())
        ]
        fig.add_trace(
            go.Scatter(
                x=est.tolist(),
                y=labels,
                mode="markers",
                name=level,
                marker=dict(symbol=["circle" if s else "circle-open" for s in sig], size=8),
                error_x=dict(
                    type="data", symmetric=False, array=(high - est).tolist(), arrayminus=(est - low).tolist()
                ),
                hovertemplate="%{y}<br>%{x:.3g}<extra>" + level + "</extra>",
            )
        )
    fig.add_vline(x=0, line_color="black", line_width=1)
    unit = df["unit"][0] if df.height else ""
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=title or f"Merge vs best-on-dev ingredient by group ({metric_label(metric)}, test half)",
        xaxis_title=f"difference ({unit})",
        height=200 + 18 * max(1, n_rows),
        margin=dict(l=360),
    )
    return fig


def _add_method_traces(
    fig: go.Figure, sub: pl.DataFrame, method: str, color: str, col: int, task: str, barriers: pl.DataFrame | None
) -> None:
    """One method's curve on one task's panel: values with CI whiskers, the endpoint line and the barrier."""
    scale = float(sub["scale"][0])
    t = sub["t"].to_list()
    v = (sub["value"].to_numpy() * scale).tolist()
    lo = (sub["low"].to_numpy() * scale).tolist()
    hi = (sub["high"].to_numpy() * scale).tolist()
    fig.add_trace(
        go.Scatter(
            x=t,
            y=v,
            mode="lines+markers",
            name=method,
            line=dict(color=color),
            legendgroup=method,
            showlegend=col == 1,
            error_y=dict(
                type="data",
                symmetric=False,
                array=[h - y for h, y in zip(hi, v)],
                arrayminus=[y - lo_ for y, lo_ in zip(v, lo)],
            ),
        ),
        row=1,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=[t[0], t[-1]],
            y=[v[0], v[-1]],
            mode="lines",
            name=f"{method}: endpoint line",
            line=dict(color=color, dash="dash", width=1),
            legendgroup=method,
            showlegend=False,
        ),
        row=1,
        col=col,
    )
    if barriers is not None and barriers.height:
        b = barriers.filter((pl.col("method") == method) & (pl.col("task") == task))
        if b.height:
            tb = float(b["t_max"][0])
            yb = v[t.index(tb)] if tb in t else None
            if yb is not None:
                frac = (tb - t[0]) / (t[-1] - t[0]) if t[-1] != t[0] else 0.0
                chord = v[0] + frac * (v[-1] - v[0])
                fig.add_trace(
                    go.Scatter(
                        x=[tb, tb],
                        y=[chord, yb],
                        mode="lines+markers",
                        name=f"{method}: barrier {b['barrier'][0]:.3g}",
                        line=dict(color=color, width=3),
                        marker=dict(symbol="line-ew", size=10),
                        legendgroup=method,
                        showlegend=False,
                        hovertemplate=f"barrier {b['barrier'][0]:.3g} ({b['loss'][0]}) at t={tb:g}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )


def interpolation_figure(
    curve: pl.DataFrame,
    barriers: pl.DataFrame | None = None,
    *,
    split: str = "all",
    metric: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Metric vs t for each interpolation method, one panel per task, with the barrier marked.

    ``curve`` / ``barriers`` are :attr:`workbench.claim.Panel.curve` and ``.barriers``. The
    dashed line joins the endpoints; a vertical segment marks the barrier (largest excess of
    the loss over that line) at its t.

    >>> c = pl.DataFrame({"method": ["lerp"] * 3, "task": ["blimp"] * 3, "metric": ["acc"] * 3, "split": ["all"] * 3,
    ...     "t": [0.0, 0.5, 1.0], "value": [0.7, 0.6, 0.72], "low": [0.65, 0.55, 0.67], "high": [0.75, 0.65, 0.77],
    ...     "scale": [100.0] * 3, "unit": ["points"] * 3, "higher_is_better": [True] * 3})
    >>> b = pl.DataFrame({"method": ["lerp"], "task": ["blimp"], "loss": ["error"], "barrier": [0.11], "t_max": [0.5]})
    >>> [tr.name for tr in interpolation_figure(c, b).data]
    ['lerp', 'lerp: endpoint line', 'lerp: barrier 0.11']
    """
    df = curve.filter(pl.col("split") == split) if "split" in curve.columns else curve
    tasks = list(dict.fromkeys(df["task"].to_list()))
    labels = task_labels(tasks)
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), subplot_titles=[labels[t] for t in tasks] or None)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    methods = list(dict.fromkeys(df["method"].to_list()))
    for col, task in enumerate(tasks, start=1):
        sub_t = df.filter(pl.col("task") == task)
        m_name = metric or sub_t["metric"][0]
        sub_t = sub_t.filter(pl.col("metric") == m_name)
        for mi, method in enumerate(methods):
            sub = sub_t.filter(pl.col("method") == method).sort("t")
            if sub.height == 0:
                continue
            _add_method_traces(fig, sub, method, palette[mi % len(palette)], col, task, barriers)
        unit = sub_t["unit"][0] if sub_t.height else ""
        fig.update_xaxes(title_text="t", row=1, col=col)
        fig.update_yaxes(title_text=f"{metric_label(m_name)} ({unit})", row=1, col=col)
    fig.update_layout(
        title=title or "Interpolation curve (error bars: CI; dashed: endpoint line; bold: barrier)", height=420
    )
    return fig
