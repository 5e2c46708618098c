"""The search's figures (pure: tables in, plotly figures out) and its report page.

* :func:`objective_figure`: the dev objective of every evaluation against the trial number, one
  colour per fidelity rung, the best-so-far on the whole dev half as a line, the winner ringed;
* :func:`parameters_figure`: one panel per dimension, each trial's value against its objective
  at the highest rung it reached;
* :func:`dev_test_figure`: every system's objective on dev (x) against test (y), with the
  diagonal: the winner sits below it by its selection's optimism; and the winner's difference
  from each baseline on dev next to the one on test.

>>> import polars as pl
>>> trials = pl.DataFrame({"trial": [0, 1, 1], "rung": [0, 0, 1], "fidelity": [0.5, 0.5, 1.0],
...                        "objective": [0.1, 0.3, 0.2], "final": [True, False, True], "best": [False, False, True],
...                        "status": ["computed"] * 3, "t": [0.2, 0.7, 0.7]})
>>> len(objective_figure(trials).data), len(parameters_figure(trials, ["t"]).data)
(4, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

__all__ = ["dev_test_figure", "objective_figure", "parameters_figure", "report_html"]


def _scored(trials: pl.DataFrame) -> pl.DataFrame:
    if trials.height == 0 or "objective" not in trials.columns:
        return pl.DataFrame({"trial": [], "rung": [], "fidelity": [], "objective": [], "final": [], "best": []})
    return trials.filter(pl.col("status") != "infeasible")


def objective_figure(trials: pl.DataFrame) -> Any:
    """Dev objective vs trial, one marker colour per fidelity rung, best-so-far (whole dev half) as a line."""
    import plotly.graph_objects as go

    df = _scored(trials)
    fig = go.Figure()
    for fraction in sorted(set(df["fidelity"].to_list())):
        sub = df.filter(pl.col("fidelity") == fraction)
        fig.add_trace(
            go.Scatter(
                x=sub["trial"].to_list(),
                y=sub["objective"].to_list(),
                mode="markers",
                name=f"{fraction:g} of dev",
                hovertemplate="trial %{x}<br>objective %{y:+.3f}<extra></extra>",
            )
        )
    top = df["fidelity"].max() if df.height else None
    full = df.filter(pl.col("fidelity") == top).sort("trial") if top is not None else df
    best_x, best_y, running = [], [], float("-inf")
    for x, y in zip(full["trial"].to_list(), full["objective"].to_list()):
        running = max(running, y)
        best_x.append(x)
        best_y.append(running)
    fig.add_trace(go.Scatter(x=best_x, y=best_y, mode="lines", line={"shape": "hv"}, name="best so far (all dev)"))
    win = df.filter(pl.col("best"))
    fig.add_trace(
        go.Scatter(
            x=win["trial"].to_list(),
            y=win["objective"].to_list(),
            mode="markers",
            marker={"size": 16, "symbol": "circle-open", "line": {"width": 2}},
            name="selected (on dev)",
        )
    )
    fig.update_layout(
        title="Dev objective of every evaluation", xaxis_title="trial", yaxis_title="dev objective (higher is better)"
    )
    return fig


def parameters_figure(trials: pl.DataFrame, dims: Sequence[str]) -> Any:
    """One panel per dimension: each trial's value against its objective at the highest rung it reached."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = _scored(trials)
    final = df.filter(pl.col("final")) if df.height else df
    n = max(1, len(dims))
    cols = min(3, n)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(dims) or ["(no dimensions)"], shared_yaxes=True)
    for i, d in enumerate(dims):
        if d not in final.columns:
            continue
        fig.add_trace(
            go.Scatter(
                x=final[d].to_list(),
                y=final["objective"].to_list(),
                mode="markers",
                marker={"color": final["fidelity"].to_list(), "colorscale": "Viridis", "cmin": 0, "cmax": 1},
                text=[
                    f"trial {t}, {f:g} of dev" for t, f in zip(final["trial"].to_list(), final["fidelity"].to_list())
                ],
                hovertemplate="%{text}<br>" + d + " %{x}<br>objective %{y:+.3f}<extra></extra>",
                showlegend=False,
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    win = final.filter(pl.col("best")) if final.height else final
    if win.height and dims and dims[0] in win.columns:
        fig.add_trace(
            go.Scatter(
                x=win[dims[0]].to_list(),
                y=win["objective"].to_list(),
                mode="markers",
                marker={"size": 14, "symbol": "circle-open", "line": {"width": 2}},
                name="selected (on dev)",
            ),
            row=1,
            col=1,
        )
    fig.update_layout(title="Parameter vs dev objective (colour: fraction of the dev half)", height=320 * rows)
    return fig


def dev_test_figure(objectives: pl.DataFrame, gaps: pl.DataFrame) -> Any:
    """Left: every system's objective on dev vs on test, with the diagonal. Right: the winner minus each
    baseline on the primary metric of each task, on dev and on test, with 95% CIs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["objective: dev vs test", "the search's recipe minus each baseline"]
    )
    names = objectives["system"].to_list()
    dev, test = objectives["dev"].to_list(), objectives["test"].to_list()
    fig.add_trace(
        go.Scatter(
            x=dev, y=test, mode="markers+text", text=["search's recipe" if n == "merge" else n for n in names],
            textposition="top center", name="systems", showlegend=False,
        ),
        row=1, col=1,
    )  # fmt: skip
    both = [v for v in dev + test if v == v]
    lo, hi = (min(both), max(both)) if both else (0.0, 1.0)
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"}, name="dev = test"), row=1, col=1
    )
    prim = gaps.filter(pl.col("primary")) if gaps.height else gaps
    labels = [f"{r['reference_system']} ({r['task']})" for r in prim.iter_rows(named=True)]
    for split in ("dev", "test"):
        if not prim.height:
            break
        scale = prim["scale"].to_numpy()
        est = prim[f"{split}_estimate"].to_numpy() * scale
        fig.add_trace(
            go.Bar(
                x=labels,
                y=est,
                name=f"on {split}" + (" (selected there)" if split == "dev" else " (reported)"),
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": prim[f"{split}_high"].to_numpy() * scale - est,
                    "arrayminus": est - prim[f"{split}_low"].to_numpy() * scale,
                },
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="dev objective", row=1, col=1)
    fig.update_yaxes(title_text="test objective", row=1, col=1)
    fig.update_yaxes(title_text="difference (metric units)", row=1, col=2)
    fig.update_layout(title="Dev vs test: the winner's curse", barmode="group")
    return fig


def report_html(result: Any, figs: dict[str, Any]) -> str:
    """The search's page: the verdict's search part, the figures, the claim check's verdict; plotly.js
    inlined once, so it opens offline."""
    from workbench.claim.report import _page, markdown_to_html

    text = result.verdict
    head, sep, rest = text.partition("\n# Claim check")
    body = [f'<section id="search">{markdown_to_html(head)}</section>']
    for i, (name, fig) in enumerate(figs.items()):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{name}"))
    if sep:
        body.append(f'<section id="claim">{markdown_to_html(sep.strip() + rest)}</section>')
        body.append('<p>The claim check\'s own report: <a href="claim/report.html">claim/report.html</a>.</p>')
    body.append(
        '<p>Files: <a href="best.yaml">best.yaml</a>, <a href="verdict.md">verdict.md</a>, '
        '<a href="trials.parquet">trials.parquet</a>, <a href="search.yaml">search.yaml</a>.</p>'
    )
    return _page("Merge search", "\n".join(body))  # the claim report's page shell and style
