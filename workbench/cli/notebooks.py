"""Notebook commands: ``run`` (papermill + offline HTML) and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, user_errors

# --- run: execute a notebook headlessly (papermill) and export offline HTML ---------------


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def run_command(
    ctx: typer.Context,
    notebook: Annotated[Path, typer.Argument(help="Notebook to execute (e.g. notebooks/layer_angles.ipynb).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for NAME.ipynb and NAME.html.")],
    params_file: Annotated[
        Path | None, typer.Option("-f", "--params-file", help="YAML mapping of parameters (-p wins).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-cell timeout in seconds (0: none).")] = 1800,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")] = False,
) -> None:
    """Execute NOTEBOOK with parameters; write the executed notebook and a self-contained HTML.

    Parameters: -p NAME VALUE (repeatable; VALUE parsed as YAML, so lists and dicts work)
    and -f PARAMS.yaml (-p wins). Unknown names are refused.
    """
    from workbench.runner import collect_parameters, parse_param_pairs, run_notebook

    params = collect_parameters(parse_param_pairs(ctx.args), params_file)
    result = run_notebook(notebook, out, parameters=params, timeout=timeout or None, overwrite=overwrite)
    typer.echo(f"executed notebook: {result.notebook}")
    typer.echo(f"html report: {result.html}")


# --- demo: train (or reuse) the demo family, run the reports, write runs/demo/*.html ------


@app.command("demo")
@user_errors
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Where the HTML reports go.")] = Path("runs/demo"),
    family_dir: Annotated[
        Path, typer.Option("--family-dir", help="Where the demo checkpoint family is built or reused.")
    ] = Path("data/families/demo"),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Evaluation data (default: $WORKBENCH_DATA_DIR, ../shared/data).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """From nothing: build or reuse the demo family, run soup_report and layer_angles, write HTML."""
    from workbench.demo import run_demo

    report = run_demo(out, family_dir=family_dir, data_dir=data_dir, device=device)
    typer.echo(f"report: {report}")
