"""The claim-check report on disk: tables, figures, the verdict, and one offline HTML page.

:func:`write_report` writes, atomically, ``verdict.md``, ``report.html`` (the verdict rendered
from markdown, then the figures, plotly.js inline once so the page opens offline),
``figures/*.json``, ``tables/*.parquet`` and ``panel.json`` (the settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from workbench.claim.metrics import ALPHA
from workbench.claim.panel import Panel
from workbench.claim.verdict import verdict
from workbench.eval.result import json_safe
from workbench.io.atomic import atomic_output_dir

__all__ = ["markdown_to_html", "write_report"]

_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
)


def _figures(panel: Panel) -> dict[str, Any]:
    from workbench import plots  # plotly loads only when a report is written

    figs: dict[str, Any] = {"deltas": plots.delta_bars_figure(panel.comparisons)}
    if panel.per_group.height:
        figs["forest"] = plots.forest_figure(panel.per_group, alpha=float(panel.settings.get("alpha", ALPHA)))
    if panel.curve.height:
        figs["curve"] = plots.interpolation_figure(panel.curve, panel.barriers)
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


def write_report(panel: Panel, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the report atomically: ``verdict.md``, ``report.html`` (figures with plotly.js inline,
    viewable offline), ``figures/*.json``, ``tables/*.parquet`` and ``panel.json`` (settings).
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
        for name, fig in figs.items():
            (tmp / "figures" / f"{name}.json").write_text(fig.to_json(), encoding="utf-8")
        (tmp / "verdict.md").write_text(text, encoding="utf-8")
        body = [markdown_to_html(text)]
        for i, (name, fig) in enumerate(figs.items()):
            body.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{name}"))
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Claim check</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )
        (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "panel.json").write_text(
            json.dumps(json_safe(panel.settings), default=str, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return out
