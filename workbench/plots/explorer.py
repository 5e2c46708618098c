"""Figures of the merge explorer: metric vs t with the current point, and the Plotly-native t slider."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.claim.metrics import metric_label
from workbench.eval.tasks import is_perplexity_task
from workbench.labels import task_labels


def explorer_figure(tasks: Sequence[str], ingredients: Sequence[str], fields: Sequence[str]) -> go.Figure:
    """Empty two-panel figure the merge explorer fills: metric vs t (left), BLiMP field deltas (right).

    Trace layout (the explorer relies on it): for each task ``k``, trace ``2k`` is the
    curve over the t grid and ``2k+1`` the current point; then one bar trace per ingredient
    (merge minus ingredient accuracy per BLiMP field).

    >>> fig = explorer_figure(["blimp"], ["m0", "m1"], ["morphology", "syntax"])
    >>> [t.name for t in fig.data]
    ['blimp (t grid)', 'blimp (current)', 'vs m0', 'vs m1']
    """
    # accuracy tasks plot accuracy; perplexity tasks (wikitext, text:) their word perplexity
    perplexity = [t for t in tasks if is_perplexity_task(t)]
    metric = (
        "accuracy"
        if not perplexity
        else "word perplexity"
        if len(perplexity) == len(tasks)
        else "accuracy / word perplexity"
    )
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        subplot_titles=(f"{metric} vs t (dev subsample)", "merge minus ingredient, per BLiMP field"),
    )
    for task in tasks:
        fig.add_trace(
            go.Scatter(x=[], y=[], mode="lines+markers", name=f"{task} (t grid)", legendgroup=task), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(
                x=[],
                y=[],
                mode="markers",
                name=f"{task} (current)",
                legendgroup=task,
                marker={"size": 14, "symbol": "diamond", "line": {"width": 2}},
            ),
            row=1,
            col=1,
        )
    for ing in ingredients:
        fig.add_trace(go.Bar(x=list(fields), y=[0.0] * len(fields), name=f"vs {ing}"), row=1, col=2)
    fig.update_xaxes(title_text="t", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="accuracy delta", zeroline=True, row=1, col=2)
    fig.update_layout(height=420, barmode="group", margin={"t": 60, "b": 40}, legend={"orientation": "h", "y": -0.18})
    return fig


def _slider_steps(
    curve: pl.DataFrame,
    deltas: pl.DataFrame | None,
    ts: Sequence[float],
    tasks: Sequence[str],
    ingredients: Sequence[str],
    fields: Sequence[str],
    traces: list[int],
) -> list[dict[str, Any]]:
    """One slider step per t: restyle the current-point markers and the delta bars (``traces``)."""
    steps = []
    for t in ts:
        xs: list[Any] = []
        ys: list[Any] = []
        for task in tasks:
            sub = curve.filter(pl.col("task") == task)
            xs.append([t])
            ys.append([_value_at(sub, t)])
        for ing in ingredients:
            assert deltas is not None
            xs.append(list(fields))
            ys.append(_bars_at(deltas, ing, fields, t))
        steps.append({"method": "restyle", "label": f"{t:g}", "args": [{"x": xs, "y": ys}, traces]})
    return steps


def t_slider_figure(
    curve: pl.DataFrame,
    deltas: pl.DataFrame | None = None,
    *,
    metric_label: str = "accuracy",
    title: str = "Interpolation over t (precomputed grid; drag the slider)",
) -> go.Figure:
    """A Plotly-native slider over a precomputed t grid: works in a static HTML file.

    ``curve`` has columns ``t``, ``task``, ``value`` (the metric per t and task);
    ``deltas`` (optional) has ``t``, ``ingredient``, ``field``, ``delta`` (merge minus
    ingredient per BLiMP field). Each slider step moves the current point along the
    curves and redraws the bars, with no Python behind it.

    >>> c = pl.DataFrame({"t": [0.0, 0.5, 1.0], "task": ["blimp"] * 3, "value": [0.6, 0.7, 0.65]})
    >>> d = pl.DataFrame({"t": [0.0, 0.5, 1.0], "ingredient": ["a"] * 3, "field": ["syntax"] * 3, "delta": [0.0, 0.1, 0.05]})
    >>> fig = t_slider_figure(c, d)
    >>> len(fig.layout.sliders[0].steps), [s.label for s in fig.layout.sliders[0].steps]
    (3, ['0', '0.5', '1'])
    """
    ts = sorted({float(t) for t in curve["t"].to_list()})
    tasks = list(dict.fromkeys(curve["task"].to_list()))
    has_bars = deltas is not None and len(deltas) > 0
    if has_bars:
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.55, 0.45],
            subplot_titles=(f"{metric_label} vs t", "merge minus ingredient, per BLiMP field"),
        )
    else:
        fig = make_subplots(rows=1, cols=1)
    point_idx: list[int] = []
    for task in tasks:
        sub = curve.filter(pl.col("task") == task).sort("t")
        fig.add_trace(
            go.Scatter(
                x=sub["t"].to_list(), y=sub["value"].to_list(), mode="lines+markers", name=task, legendgroup=task
            ),
            row=1,
            col=1,
        )
        point_idx.append(len(fig.data))
        fig.add_trace(
            go.Scatter(
                x=[ts[0]],
                y=[_value_at(sub, ts[0])],
                mode="markers",
                showlegend=False,
                legendgroup=task,
                marker={"size": 14, "symbol": "diamond"},
            ),
            row=1,
            col=1,
        )
    bar_idx: list[int] = []
    ingredients: list[str] = []
    fields: list[str] = []
    if has_bars:
        assert deltas is not None
        ingredients = list(dict.fromkeys(deltas["ingredient"].to_list()))
        fields = sorted(set(deltas["field"].to_list()))
        for ing in ingredients:
            bar_idx.append(len(fig.data))
            fig.add_trace(go.Bar(x=fields, y=_bars_at(deltas, ing, fields, ts[0]), name=f"vs {ing}"), row=1, col=2)
        fig.update_yaxes(title_text="accuracy delta", row=1, col=2)
    steps = _slider_steps(curve, deltas, ts, tasks, ingredients, fields, point_idx + bar_idx)
    fig.update_xaxes(title_text="t", row=1, col=1)
    fig.update_yaxes(title_text=metric_label, row=1, col=1)
    fig.update_layout(
        title=title,
        height=480,
        barmode="group",
        sliders=[{"active": 0, "currentvalue": {"prefix": "t = "}, "pad": {"t": 50}, "steps": steps}],
    )
    return fig


def curve_slider_figure(curve: pl.DataFrame, *, split: str = "all", metric: str | None = None) -> go.Figure:
    """The claim check's interpolation curve (:attr:`workbench.claim.Panel.curve`) with a Plotly-native t slider.

    One panel per task (tasks by their short labels) showing its first metric (the primary one,
    or ``metric``) on the ``split`` rows, one line per method; the slider walks the t grid and
    moves a marker along every line, with no Python behind it (it works in a static HTML file).

    >>> c = pl.DataFrame({"method": ["lerp"] * 2, "task": ["blimp"] * 2, "metric": ["acc"] * 2,
    ...                   "split": ["all"] * 2, "t": [0.0, 1.0], "value": [0.6, 0.7]})
    >>> fig = curve_slider_figure(c)
    >>> [tr.name for tr in fig.data][:1], [s.label for s in fig.layout.sliders[0].steps]
    (['blimp acc (lerp)'], ['0', '1'])
    """
    sub = curve.filter(pl.col("split") == split) if "split" in curve.columns else curve
    tasks = list(dict.fromkeys(sub["task"].to_list()))
    labels = task_labels(tasks)
    ts = sorted({float(t) for t in sub["t"].to_list()})
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), subplot_titles=[labels[t] for t in tasks] or None)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    markers: list[tuple[int, pl.DataFrame]] = []
    for col, task in enumerate(tasks, start=1):
        rows = sub.filter(pl.col("task") == task)
        name = metric or rows["metric"][0]
        rows = rows.filter(pl.col("metric") == name)
        scale = float(rows["scale"][0]) if "scale" in rows.columns else 1.0
        for mi, method in enumerate(dict.fromkeys(rows["method"].to_list())):
            line = rows.filter(pl.col("method") == method).sort("t").with_columns(pl.col("value") * scale)
            color = palette[mi % len(palette)]
            fig.add_trace(
                go.Scatter(
                    x=line["t"].to_list(),
                    y=line["value"].to_list(),
                    mode="lines+markers",
                    name=f"{labels[task]} {name} ({method})",
                    line={"color": color},
                    legendgroup=method,
                ),
                row=1,
                col=col,
            )
            markers.append((len(fig.data), line))
            fig.add_trace(
                go.Scatter(
                    x=[ts[0]],
                    y=[_value_at(line, ts[0])],
                    mode="markers",
                    showlegend=False,
                    legendgroup=method,
                    marker={"size": 14, "symbol": "diamond", "color": color},
                    hovertemplate="t=%{x}<br>%{y:.4g}<extra>" + method + "</extra>",
                ),
                row=1,
                col=col,
            )
        unit = rows["unit"][0] if "unit" in rows.columns and rows.height else ""
        fig.update_xaxes(title_text="t", row=1, col=col)
        fig.update_yaxes(title_text=f"{metric_label(name)}" + (f" ({unit})" if unit else ""), row=1, col=col)
    steps = [
        {
            "method": "restyle",
            "label": f"{t:g}",
            "args": [
                {"x": [[t] for _ in markers], "y": [[_value_at(line, t)] for _, line in markers]},
                [i for i, _ in markers],
            ],
        }
        for t in ts
    ]
    fig.update_layout(
        title="Interpolation curve over t (precomputed grid; drag the slider)",
        height=480,
        sliders=[{"active": 0, "currentvalue": {"prefix": "t = "}, "pad": {"t": 50}, "steps": steps}],
    )
    return fig


def _value_at(sub: pl.DataFrame, t: float) -> float | None:
    hit = sub.filter((pl.col("t") - t).abs() < 1e-12)["value"]
    return float(hit[0]) if len(hit) else None


def _bars_at(deltas: pl.DataFrame, ingredient: str, fields: Sequence[str], t: float) -> list[float | None]:
    sub = deltas.filter((pl.col("ingredient") == ingredient) & ((pl.col("t") - t).abs() < 1e-12))
    lookup: Mapping[str, float] = dict(zip(sub["field"].to_list(), sub["delta"].to_list()))
    return [lookup.get(f) for f in fields]
