"""Plotly figures: pure functions, data in (polars tables, dicts), ``plotly`` figure out.

Shared by the notebooks, the merge explorer widget and the claim-check report. Nothing
here reads files, merges or evaluates; every figure is built from the tables that
:mod:`workbench.geometry`, :mod:`workbench.eval` and :mod:`workbench.claim` return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.eval.tasks import is_perplexity_task
from workbench.labels import short_label

# ----------------------------------------------------------------------------------------
# Notebooks, explorer and layer geometry figures

#: Display order of tensor groups (those of workbench.geometry.tensor_angles).
GROUP_ORDER = (
    "embed",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "norm",
    "lm_head",
    "other",
)


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


def _groups_present(groups: Sequence[str]) -> list[str]:
    known = [g for g in GROUP_ORDER if g in set(groups)]
    return known + sorted(set(groups) - set(known))


def _layer_grid(angles: pl.DataFrame, value: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(row labels, group labels, z) for a layers x groups heatmap; numel-weighted means."""
    df = angles.with_columns(
        pl.when(pl.col("layer").is_null())
        .then(pl.col("group"))
        .otherwise(pl.concat_str([pl.lit("layer "), pl.col("layer").cast(pl.Int64).cast(pl.Utf8)]))
        .alias("_row")
    )
    agg = df.group_by(["_row", "group"]).agg(
        ((pl.col(value).cast(pl.Float64) * pl.col("numel")).sum() / pl.col("numel").sum()).alias("v")
    )
    groups = _groups_present(agg["group"].to_list())
    layers = sorted({int(x) for x in df["layer"].drop_nulls().to_list()})
    rows = [f"layer {i}" for i in layers]
    extra = [g for g in ("embed", "norm", "lm_head", "other") if g in set(df.filter(pl.col("layer").is_null())["group"].to_list())]
    rows = [r for r in extra if r == "embed"] + rows + [r for r in extra if r != "embed"]
    lookup = {(r, g): v for r, g, v in agg.select("_row", "group", "v").iter_rows()}
    z = [[lookup.get((r, g)) for g in groups] for r in rows]
    return rows, groups, z


def angles_heatmap(angles: pl.DataFrame, *, value: str = "angle_deg", title: str | None = None) -> go.Figure:
    """Heatmap: layers (rows) x tensor groups (columns) of ``value`` (numel-weighted mean).

    ``angles`` is a :func:`workbench.geometry.tensor_angles` table. Tensors outside the
    layer stack (embeddings, final norm, lm_head) get a row of their own.

    >>> df = pl.DataFrame({"name": ["a", "b", "c"], "layer": [0, 1, None], "group": ["attn_q", "attn_q", "embed"],
    ...                    "numel": [4, 4, 8], "angle_deg": [10.0, 20.0, 5.0]})
    >>> fig = angles_heatmap(df)
    >>> fig.data[0].y, fig.data[0].x
    (('embed', 'layer 0', 'layer 1'), ('embed', 'attn_q'))
    """
    rows, groups, z = _layer_grid(angles, value)
    label = {"angle_deg": "angle (deg)", "norm_factor": "|slerp| / |lerp|", "cosine": "cosine"}.get(value, value)
    fig = go.Figure(
        go.Heatmap(
            z=z, x=groups, y=rows, colorscale="Viridis", colorbar={"title": {"text": label}},
            hovertemplate="%{y} / %{x}: %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{label} per layer and tensor group",
        xaxis_title="tensor group", yaxis_title="", yaxis={"autorange": "reversed"},
        height=max(300, 28 * len(rows) + 160),
    )
    return fig


def norm_factor_heatmap(angles: pl.DataFrame, *, t: float | None = None) -> go.Figure:
    """Heatmap of the SLERP/LERP norm factor ``|slerp(t)| / |lerp(t)|`` per layer and group.

    >>> df = pl.DataFrame({"name": ["a"], "layer": [0], "group": ["mlp_up"], "numel": [4], "norm_factor": [1.02]})
    >>> norm_factor_heatmap(df, t=0.5).layout.title.text
    'SLERP / LERP norm factor at t = 0.5'
    """
    title = "SLERP / LERP norm factor" + (f" at t = {t:g}" if t is not None else "")
    return angles_heatmap(angles, value="norm_factor", title=title)


def pairwise_angle_matrix(pairs: pl.DataFrame, *, labels: Sequence[str] | None = None) -> go.Figure:
    """N x N heatmap of the numel-weighted mean angle between every pair of checkpoints.

    ``pairs`` is a :func:`workbench.geometry.pairwise_angles` table (columns model_a,
    model_b, numel, angle_deg). ``labels`` renames the models (same order as first seen).

    >>> df = pl.DataFrame({"model_a": ["x", "x", "y"], "model_b": ["y", "z", "z"],
    ...                    "numel": [1, 1, 1], "angle_deg": [10.0, 20.0, 30.0]})
    >>> pairwise_angle_matrix(df).data[0].z
    ([0.0, 10.0, 20.0], [10.0, 0.0, 30.0], [20.0, 30.0, 0.0])
    """
    agg = pairs.group_by(["model_a", "model_b"], maintain_order=True).agg(
        ((pl.col("angle_deg") * pl.col("numel")).sum() / pl.col("numel").sum()).alias("v")
    )
    models: list[str] = []
    for a, b in agg.select("model_a", "model_b").iter_rows():
        for m in (a, b):
            if m not in models:
                models.append(m)
    idx = {m: i for i, m in enumerate(models)}
    z = [[0.0] * len(models) for _ in models]
    for a, b, v in agg.iter_rows():
        z[idx[a]][idx[b]] = z[idx[b]][idx[a]] = float(v)
    names = list(labels) if labels is not None else models
    fig = go.Figure(
        go.Heatmap(z=z, x=names, y=names, colorscale="Viridis", colorbar={"title": {"text": "angle (deg)"}},
                   hovertemplate="%{y} vs %{x}: %{z:.3g} deg<extra></extra>")
    )
    fig.update_layout(title="Mean angle between checkpoints (numel-weighted)", yaxis={"autorange": "reversed"},
                      height=max(320, 60 * len(models) + 160))
    return fig


def pairwise_angles_heatmaps(pairs: pl.DataFrame, *, value: str = "angle_deg", max_pairs: int = 6) -> go.Figure:
    """One layers x groups heatmap per pair of checkpoints (first ``max_pairs`` pairs), shared colour scale.

    >>> df = pl.DataFrame({"model_a": ["x", "x"], "model_b": ["y", "z"], "name": ["w", "w"], "layer": [0, 0],
    ...                    "group": ["mlp_up", "mlp_up"], "numel": [4, 4], "angle_deg": [3.0, 4.0]})
    >>> len(pairwise_angles_heatmaps(df).data)
    2
    """
    keys = pairs.select("model_a", "model_b").unique(maintain_order=True).rows()[:max_pairs]
    n = len(keys)
    cols = min(3, max(n, 1))
    nrows = (n + cols - 1) // cols
    titles = [f"{short_label(a)} vs {short_label(b)}" for a, b in keys]
    fig = make_subplots(rows=max(nrows, 1), cols=cols, subplot_titles=titles, horizontal_spacing=0.08)
    vmax = float(pairs[value].max()) if len(pairs) else 1.0
    vmin = float(pairs[value].min()) if len(pairs) else 0.0
    for i, (a, b) in enumerate(keys):
        rows, groups, z = _layer_grid(pairs.filter((pl.col("model_a") == a) & (pl.col("model_b") == b)), value)
        fig.add_trace(
            go.Heatmap(z=z, x=groups, y=rows, zmin=vmin, zmax=vmax, colorscale="Viridis", showscale=i == 0,
                       hovertemplate="%{y} / %{x}: %{z:.4g}<extra></extra>"),
            row=i // cols + 1, col=i % cols + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"{value} per layer and group, every pair", height=max(360, 420 * max(nrows, 1)))
    return fig


def norms_figure(angles: pl.DataFrame, *, labels: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Per-layer tensor norms of both checkpoints, one line per (group, checkpoint).

    >>> df = pl.DataFrame({"name": ["a", "b"], "layer": [0, 1], "group": ["mlp_up"] * 2, "numel": [4, 4],
    ...                    "norm_a": [1.0, 2.0], "norm_b": [1.5, 2.5]})
    >>> [t.name for t in norms_figure(df).data]
    ['mlp_up (A)', 'mlp_up (B)']
    """
    df = angles.filter(pl.col("layer").is_not_null())
    agg = (
        df.group_by(["layer", "group"])
        .agg(pl.col("norm_a").pow(2).sum().sqrt().alias("a"), pl.col("norm_b").pow(2).sum().sqrt().alias("b"))
        .sort(["group", "layer"])
    )
    fig = go.Figure()
    for g in _groups_present(agg["group"].unique().to_list()):
        sub = agg.filter(pl.col("group") == g)
        fig.add_trace(go.Scatter(x=sub["layer"].to_list(), y=sub["a"].to_list(), mode="lines+markers",
                                 name=f"{g} ({labels[0]})", legendgroup=g))
        fig.add_trace(go.Scatter(x=sub["layer"].to_list(), y=sub["b"].to_list(), mode="lines+markers",
                                 name=f"{g} ({labels[1]})", legendgroup=g, line={"dash": "dot"}))
    fig.update_layout(title="Frobenius norm per layer and group", xaxis_title="layer", yaxis_title="norm")
    return fig


def fallback_share_figure(angles: pl.DataFrame) -> go.Figure:
    """Share of tensors (and of parameters) per group where SLERP falls back to LERP (|cos| > 0.9995).

    >>> df = pl.DataFrame({"name": ["a", "b"], "layer": [0, 1], "group": ["norm"] * 2, "numel": [4, 12],
    ...                    "fallback": [True, False]})
    >>> fallback_share_figure(df).data[0].y
    (0.5,)
    """
    agg = angles.group_by("group").agg(
        pl.col("fallback").cast(pl.Float64).mean().alias("tensors"),
        ((pl.col("fallback").cast(pl.Float64) * pl.col("numel")).sum() / pl.col("numel").sum()).alias("params"),
    )
    order = _groups_present(agg["group"].to_list())
    lookup = {g: (a, b) for g, a, b in agg.iter_rows()}
    fig = go.Figure([
        go.Bar(x=order, y=[lookup[g][0] for g in order], name="share of tensors"),
        go.Bar(x=order, y=[lookup[g][1] for g in order], name="share of parameters"),
    ])
    fig.update_layout(title="SLERP falls back to LERP (|cos| > 0.9995)", yaxis={"title": "share", "range": [0, 1]},
                      barmode="group", xaxis_title="tensor group")
    return fig


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
    metric = "accuracy" if not perplexity else "word perplexity" if len(perplexity) == len(tasks) else \
        "accuracy / word perplexity"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=(f"{metric} vs t (dev subsample)", "merge minus ingredient, per BLiMP field"))
    for task in tasks:
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=f"{task} (t grid)", legendgroup=task), row=1, col=1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name=f"{task} (current)", legendgroup=task,
                                 marker={"size": 14, "symbol": "diamond", "line": {"width": 2}}), row=1, col=1)
    for ing in ingredients:
        fig.add_trace(go.Bar(x=list(fields), y=[0.0] * len(fields), name=f"vs {ing}"), row=1, col=2)
    fig.update_xaxes(title_text="t", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="accuracy delta", zeroline=True, row=1, col=2)
    fig.update_layout(height=420, barmode="group", margin={"t": 60, "b": 40}, legend={"orientation": "h", "y": -0.18})
    return fig


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
        fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                            subplot_titles=(f"{metric_label} vs t", "merge minus ingredient, per BLiMP field"))
    else:
        fig = make_subplots(rows=1, cols=1)
    point_idx: list[int] = []
    for task in tasks:
        sub = curve.filter(pl.col("task") == task).sort("t")
        fig.add_trace(go.Scatter(x=sub["t"].to_list(), y=sub["value"].to_list(), mode="lines+markers",
                                 name=task, legendgroup=task), row=1, col=1)
        point_idx.append(len(fig.data))
        fig.add_trace(go.Scatter(x=[ts[0]], y=[_value_at(sub, ts[0])], mode="markers", showlegend=False,
                                 legendgroup=task, marker={"size": 14, "symbol": "diamond"}), row=1, col=1)
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
            xs.append(fields)
            ys.append(_bars_at(deltas, ing, fields, t))
        steps.append({"method": "restyle", "label": f"{t:g}", "args": [{"x": xs, "y": ys}, point_idx + bar_idx]})
    fig.update_xaxes(title_text="t", row=1, col=1)
    fig.update_yaxes(title_text=metric_label, row=1, col=1)
    fig.update_layout(
        title=title, height=480, barmode="group",
        sliders=[{"active": 0, "currentvalue": {"prefix": "t = "}, "pad": {"t": 50}, "steps": steps}],
    )
    return fig


def curve_slider_figure(curve: pl.DataFrame, *, split: str = "all") -> go.Figure:
    """:func:`t_slider_figure` of a claim-check interpolation curve (:attr:`workbench.claim.Panel.curve`).

    One line per (task, metric, method) on the ``split`` rows; the slider walks the t grid.

    >>> c = pl.DataFrame({"method": ["lerp"] * 2, "task": ["blimp"] * 2, "metric": ["acc"] * 2,
    ...                   "split": ["all"] * 2, "t": [0.0, 1.0], "value": [0.6, 0.7]})
    >>> [tr.name for tr in curve_slider_figure(c).data][:1]
    ['blimp acc (lerp)']
    """
    sub = curve.filter(pl.col("split") == split) if "split" in curve.columns else curve
    table = sub.select(
        pl.col("t").cast(pl.Float64),
        pl.concat_str([pl.col("task"), pl.lit(" "), pl.col("metric"), pl.lit(" ("), pl.col("method"), pl.lit(")")]).alias("task"),
        pl.col("value").cast(pl.Float64),
    )
    return t_slider_figure(table, None, metric_label="metric",
                           title="Interpolation curve (precomputed t grid; drag the slider)")


def _value_at(sub: pl.DataFrame, t: float) -> float | None:
    hit = sub.filter((pl.col("t") - t).abs() < 1e-12)["value"]
    return float(hit[0]) if len(hit) else None


def _bars_at(deltas: pl.DataFrame, ingredient: str, fields: Sequence[str], t: float) -> list[float | None]:
    sub = deltas.filter((pl.col("ingredient") == ingredient) & ((pl.col("t") - t).abs() < 1e-12))
    lookup: Mapping[str, float] = dict(zip(sub["field"].to_list(), sub["delta"].to_list()))
    return [lookup.get(f) for f in fields]


# ----------------------------------------------------------------------------------------
# Claim check figures (tables from workbench.claim)

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
    fig = make_subplots(rows=max(1, len(keys)), cols=1, subplot_titles=[f"{t}: {m}" for t, m in keys] or None,
                        vertical_spacing=0.08 if len(keys) > 1 else 0.1)
    for row, (task, metric) in enumerate(keys, start=1):
        sub = df.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        scale = sub["scale"].to_numpy()
        est = sub["estimate"].to_numpy() * scale
        low = sub["low"].to_numpy() * scale
        high = sub["high"].to_numpy() * scale
        labels = [f"{s} vs {r}" for s, r in zip(sub["subject_label"].to_list(), sub["reference_label"].to_list())]
        calls = sub["call"].to_list()
        fig.add_trace(
            go.Bar(
                x=est.tolist(), y=labels, orientation="h",
                marker_color=[_CALL_COLORS.get(c, "#1f77b4") for c in calls],
                error_x=dict(type="data", symmetric=False, array=(high - est).tolist(), arrayminus=(est - low).tolist()),
                customdata=list(zip(low.tolist(), high.tolist(), calls)),
                hovertemplate="%{y}<br>%{x:.3g} (CI %{customdata[0]:.3g} to %{customdata[1]:.3g})<br>%{customdata[2]}"
                              "<extra></extra>",
                name=f"{task} {metric}", showlegend=False,
            ),
            row=row, col=1,
        )
        fig.add_vline(x=0, line_color="black", line_width=1, row=row, col=1)
        fig.update_xaxes(title_text=f"difference ({sub['unit'][0]})" if sub.height else None, row=row, col=1)
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    n_bars = max(1, df.height)
    fig.update_layout(title=title or "Merge vs baselines (test half; bars: difference, whiskers: CI)",
                      height=220 + 28 * n_bars + 60 * len(keys), margin=dict(l=320))
    return fig


def forest_figure(per_group: pl.DataFrame, *, metric: str | None = None,
                  levels: Sequence[str] = ("task", "field", "paradigm"), title: str | None = None,
                  alpha: float = 0.05) -> go.Figure:
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
        labels = [f"{t}: {g}" if level != "task" else f"{g} (all)" for t, g in zip(sub["task"].to_list(), sub["group"].to_list())]
        fig.add_trace(go.Scatter(
            x=est.tolist(), y=labels, mode="markers", name=level,
            marker=dict(symbol=["circle" if s else "circle-open" for s in sig], size=8),
            error_x=dict(type="data", symmetric=False, array=(high - est).tolist(), arrayminus=(est - low).tolist()),
            hovertemplate="%{y}<br>%{x:.3g}<extra>" + level + "</extra>",
        ))
    fig.add_vline(x=0, line_color="black", line_width=1)
    unit = df["unit"][0] if df.height else ""
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"Merge vs best-on-dev ingredient by group ({metric}, test half)",
                      xaxis_title=f"difference ({unit})", height=200 + 18 * max(1, n_rows), margin=dict(l=360))
    return fig


def interpolation_figure(curve: pl.DataFrame, barriers: pl.DataFrame | None = None, *, split: str = "all",
                         metric: str | None = None, title: str | None = None) -> go.Figure:
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
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), subplot_titles=tasks or None)
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
            color = palette[mi % len(palette)]
            scale = float(sub["scale"][0])
            t = sub["t"].to_list()
            v = (sub["value"].to_numpy() * scale).tolist()
            lo = (sub["low"].to_numpy() * scale).tolist()
            hi = (sub["high"].to_numpy() * scale).tolist()
            fig.add_trace(go.Scatter(
                x=t, y=v, mode="lines+markers", name=method, line=dict(color=color), legendgroup=method,
                showlegend=col == 1,
                error_y=dict(type="data", symmetric=False, array=[h - y for h, y in zip(hi, v)],
                             arrayminus=[y - lo_ for y, lo_ in zip(v, lo)]),
            ), row=1, col=col)
            fig.add_trace(go.Scatter(x=[t[0], t[-1]], y=[v[0], v[-1]], mode="lines", name=f"{method}: endpoint line",
                                     line=dict(color=color, dash="dash", width=1), legendgroup=method,
                                     showlegend=False), row=1, col=col)
            if barriers is not None and barriers.height:
                b = barriers.filter((pl.col("method") == method) & (pl.col("task") == task))
                if b.height:
                    tb = float(b["t_max"][0])
                    yb = v[t.index(tb)] if tb in t else None
                    if yb is not None:
                        frac = (tb - t[0]) / (t[-1] - t[0]) if t[-1] != t[0] else 0.0
                        chord = v[0] + frac * (v[-1] - v[0])
                        fig.add_trace(go.Scatter(
                            x=[tb, tb], y=[chord, yb], mode="lines+markers", name=f"{method}: barrier {b['barrier'][0]:.3g}",
                            line=dict(color=color, width=3), marker=dict(symbol="line-ew", size=10),
                            legendgroup=method, showlegend=False,
                            hovertemplate=f"barrier {b['barrier'][0]:.3g} ({b['loss'][0]}) at t={tb:g}<extra></extra>",
                        ), row=1, col=col)
        unit = sub_t["unit"][0] if sub_t.height else ""
        fig.update_xaxes(title_text="t", row=1, col=col)
        fig.update_yaxes(title_text=f"{m_name} ({unit})", row=1, col=col)
    fig.update_layout(title=title or "Interpolation curve (error bars: CI; dashed: endpoint line; bold: barrier)",
                      height=420)
    return fig
