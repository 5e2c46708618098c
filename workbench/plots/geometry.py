"""Figures of layer geometry: angles, norms, SLERP norm factors and fallbacks per layer and tensor group."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from workbench.labels import short_label
from workbench.naming import GROUPS as GROUP_ORDER  # display order of tensor groups
from workbench.naming import INPUT_GROUPS


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
    # tensors outside the stack: one row per group, input-side groups above the layers
    extra = _groups_present(df.filter(pl.col("layer").is_null())["group"].to_list())
    rows = [r for r in extra if r in INPUT_GROUPS] + rows + [r for r in extra if r not in INPUT_GROUPS]
    lookup = {(r, g): v for r, g, v in agg.select("_row", "group", "v").iter_rows()}
    z = [[lookup.get((r, g)) for g in groups] for r in rows]
    return rows, groups, z


def angles_heatmap(angles: pl.DataFrame, *, value: str = "angle_deg", title: str | None = None) -> go.Figure:
    """Heatmap: layers (rows) x tensor groups (columns) of ``value`` (numel-weighted mean).

    ``angles`` is a :func:`workbench.geometry.tensor_angles` table. Tensors outside the
    layer stack get one row per group (embeddings above the layers; final norm, heads,
    lm_head and unclassified ``other`` tensors below). Columns follow
    :data:`workbench.naming.GROUPS`.

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
            z=z,
            x=groups,
            y=rows,
            colorscale="Viridis",
            colorbar={"title": {"text": label}},
            hovertemplate="%{y} / %{x}: %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{label} per layer and tensor group",
        xaxis_title="tensor group",
        yaxis_title="",
        yaxis={"autorange": "reversed"},
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
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            colorscale="Viridis",
            colorbar={"title": {"text": "angle (deg)"}},
            hovertemplate="%{y} vs %{x}: %{z:.3g} deg<extra></extra>",
        )
    )
    fig.update_layout(
        title="Mean angle between checkpoints (numel-weighted)",
        yaxis={"autorange": "reversed"},
        height=max(320, 60 * len(models) + 160),
    )
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
            go.Heatmap(
                z=z,
                x=groups,
                y=rows,
                zmin=vmin,
                zmax=vmax,
                colorscale="Viridis",
                showscale=i == 0,
                hovertemplate="%{y} / %{x}: %{z:.4g}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
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
        fig.add_trace(
            go.Scatter(
                x=sub["layer"].to_list(),
                y=sub["a"].to_list(),
                mode="lines+markers",
                name=f"{g} ({labels[0]})",
                legendgroup=g,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=sub["layer"].to_list(),
                y=sub["b"].to_list(),
                mode="lines+markers",
                name=f"{g} ({labels[1]})",
                legendgroup=g,
                line={"dash": "dot"},
            )
        )
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
    fig = go.Figure(
        [
            go.Bar(x=order, y=[lookup[g][0] for g in order], name="share of tensors"),
            go.Bar(x=order, y=[lookup[g][1] for g in order], name="share of parameters"),
        ]
    )
    fig.update_layout(
        title="SLERP falls back to LERP (|cos| > 0.9995)",
        yaxis={"title": "share", "range": [0, 1]},
        barmode="group",
        xaxis_title="tensor group",
    )
    return fig
