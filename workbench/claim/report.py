"""The claim-check report on disk: tables, figures, the verdict, one offline HTML page and the explorer page.

:func:`write_report` writes, atomically, ``verdict.md``, ``report.html``, ``explorer.html``
(the interpolation curve as a Plotly-native t slider, when there is a curve),
``figures/*.json``, ``tables/*.parquet`` (and ``tables/*.csv``, all but the per-item table) and
``panel.json`` (the settings). ``report.html`` reads headline first: the claim and the answer
per task (what fits the first screen), then the figures, the details, and the tables folded in
``<details>`` blocks with links to their files; what the short labels stand for in a folded
"Sources" block (paths without their machine prefix, :func:`workbench.labels.shared_path`).
plotly.js is inlined once, so the page opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import polars as pl
from markdown_it import MarkdownIt

from workbench.claim.metrics import ALPHA, metric_label
from workbench.claim.panel import Panel
from workbench.claim.verdict import verdict, verdict_sections
from workbench.claim.wording import fmt
from workbench.eval.result import json_safe
from workbench.io.atomic import atomic_output_dir
from workbench.labels import task_labels

__all__ = ["markdown_to_html", "report_html", "tables_html", "write_report"]

_STYLE = (
    "body{font-family:sans-serif;max-width:80em;margin:auto;padding:0 1em;line-height:1.35}"
    "h1{font-size:1.5em;margin:.4em 0}#headline p,#headline li{margin:.25em 0}#headline ul{padding-left:1.2em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
    "details{margin:.5em 0}summary{cursor:pointer;font-weight:bold}"
)
#: Tables written as CSV too (the per-item table is parquet only: it can be large).
_NO_CSV = ("items",)


def _figures(panel: Panel) -> dict[str, Any]:
    """Report figures in page order: differences, interpolation curve, per-group forest."""
    from workbench import plots  # plotly loads only when a report is written

    figs: dict[str, Any] = {"deltas": plots.delta_bars_figure(panel.comparisons)}
    if panel.curve.height:
        figs["curve"] = plots.interpolation_figure(panel.curve, panel.barriers)
    if panel.per_group.height:
        figs["forest"] = plots.forest_figure(panel.per_group, alpha=float(panel.settings.get("alpha", ALPHA)))
    return figs


def markdown_to_html(md: str) -> str:
    """HTML of the verdict's markdown: CommonMark plus tables, raw HTML escaped.

    Each line of a paragraph keeps its own line (``breaks``): the verdict writes one finding
    per line.

    >>> print(markdown_to_html("# T\\n\\n**a** `b` <i>\\n\\n| x | y |\\n|---|---|\\n| 1 | 2 |"))
    <h1>T</h1>
    <p><strong>a</strong> <code>b</code> &lt;i&gt;</p>
    <table>
    <thead>
    <tr>
    <th>x</th>
    <th>y</th>
    </tr>
    </thead>
    <tbody>
    <tr>
    <td>1</td>
    <td>2</td>
    </tr>
    </tbody>
    </table>
    <BLANKLINE>
    """
    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table").render(md)


def _scores_markdown(panel: Panel) -> str:
    """Every system's score per task and metric on the test half, with its CI."""
    labels = task_labels(list(panel.settings.get("tasks", [])))
    lines = ["| system | task | metric | score | CI | items | tie rate |", "|---|---|---|---|---|---|---|"]
    if panel.scores.height == 0:
        return ""
    for r in panel.scores.filter(pl.col("split") == "test").iter_rows(named=True):
        lines.append(
            f"| {r['system']} | {labels.get(r['task'], r['task'])} | {metric_label(r['metric'])} | "
            f"{fmt(r['value'], r['scale'], signed=False)} {r['unit']} | {fmt(r['low'], r['scale'], signed=False)} to "
            f"{fmt(r['high'], r['scale'], signed=False)} | {r['n_items']} | {r['tie_rate'] * 100:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def _links(names: list[str], link_dir: str | None) -> str:
    if link_dir is None:
        return ""
    files = []
    for name in names:
        files.append(f'<a href="{html.escape(f"{link_dir}tables/{name}.parquet")}">{name}.parquet</a>')
        if name not in _NO_CSV:
            files.append(f'<a href="{html.escape(f"{link_dir}tables/{name}.csv")}">{name}.csv</a>')
    return "<p>Files: " + ", ".join(files) + "</p>\n"


def tables_html(panel: Panel, *, link_dir: str | None = "") -> str:
    """The report's tables, each folded in a ``<details>`` block with links to its files.

    ``link_dir`` is the report directory relative to the page (``""``: the page is in it; None:
    no links, e.g. in a notebook whose report is not written).
    """
    n_cmp = panel.comparisons.height
    blocks = [
        ("comparisons", f"All comparisons ({n_cmp} rows)", markdown_to_html(verdict_sections(panel)["table"])),
        ("scores", "Scores of every system (test half)", markdown_to_html(_scores_markdown(panel))),
    ]
    out = []
    for name, title, body in blocks:
        extra = ["systems", "selections"] if name == "scores" else []
        out.append(
            f'<details id="table-{name}"><summary>{html.escape(title)}</summary>\n'
            + _links([name, *extra], link_dir)
            + body
            + "</details>"
        )
    others = [n for n, df in panel.tables().items() if n not in ("comparisons", "scores", "systems", "selections")]
    others = [n for n in others if panel.tables()[n].height]
    if link_dir is not None and others:
        out.append(
            '<details id="table-files"><summary>More tables (files)</summary>\n'
            + _links(others, link_dir)
            + "</details>"
        )
    return "\n".join(out)


def sources_html(panel: Panel) -> str:
    """The folded block saying what each short label stands for (the only place with full paths)."""
    text = verdict_sections(panel)["sources"]
    if not text:
        return ""
    return f'<details id="sources"><summary>Sources (task names and checkpoint paths)</summary>\n{markdown_to_html(text)}</details>'


def report_html(panel: Panel, figs: dict[str, Any] | None = None, *, files: bool = True) -> str:
    """The whole report page: headline, figures, details, folded tables and sources (plotly.js inline once).

    ``files=False`` leaves out the links to the report's files (a page shown away from them).
    """
    parts = verdict_sections(panel)
    figs = _figures(panel) if figs is None else figs
    body = [f'<section id="headline">\n{markdown_to_html(parts["headline"])}</section>']
    if files and panel.curve.height:
        body.append('<p><a href="explorer.html">Move t yourself: the interpolation curve as a slider</a></p>')
    for i, (name, fig) in enumerate(figs.items()):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{name}"))
    body.append(f'<section id="details">\n<h2>Details</h2>\n{markdown_to_html(parts["details"])}</section>')
    body.append('<section id="tables">\n<h2>Tables</h2>\n' + tables_html(panel, link_dir="" if files else None))
    body.append(sources_html(panel) + "\n</section>")
    if files:
        body.append(
            '<p>Also: <a href="verdict.md">verdict.md</a>, <a href="panel.json">panel.json</a> (settings), '
            "figures/*.json (the figures' data).</p>"
        )
    return _page("Claim check", "\n".join(body))


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def explorer_html(panel: Panel) -> str:
    """The static explorer page: the interpolation curve with a Plotly-native t slider (no kernel needed)."""
    from workbench import plots

    fig = plots.curve_slider_figure(panel.curve)
    intro = (
        "<h1>Interpolation explorer</h1><p>Drag the slider to move t along the precomputed grid; each panel "
        "shows one task's primary metric for LERP and SLERP between the curve's two models (all items). "
        '<a href="report.html">Back to the claim check</a>.</p>'
    )
    return _page(
        "Interpolation explorer", intro + fig.to_html(full_html=False, include_plotlyjs=True, div_id="explorer")
    )


def write_report(panel: Panel, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the report atomically: ``verdict.md``, ``report.html`` (figures with plotly.js inline,
    viewable offline), ``explorer.html`` (with a curve), ``figures/*.json``, ``tables/*.parquet``
    and ``tables/*.csv`` (all but the items), and ``panel.json`` (settings).
    """
    text = verdict(panel)
    figs = _figures(panel)
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        (tmp / "tables").mkdir()
        (tmp / "figures").mkdir()
        for name, df in panel.tables().items():
            df.write_parquet(tmp / "tables" / f"{name}.parquet")
            if name not in _NO_CSV:
                df.write_csv(tmp / "tables" / f"{name}.csv")
        for name, fig in figs.items():
            (tmp / "figures" / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        (tmp / "verdict.md").write_text(text, encoding="utf-8")
        (tmp / "report.html").write_text(report_html(panel, figs), encoding="utf-8")
        if panel.curve.height:
            (tmp / "explorer.html").write_text(explorer_html(panel), encoding="utf-8")
        (tmp / "panel.json").write_text(
            json.dumps(json_safe(panel.settings), default=str, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return out
