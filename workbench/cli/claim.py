"""The ``compare`` command: the claim check against fair baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, list_option, user_errors
from workbench.errors import WorkbenchError

# --- compare: the claim check (baselines, paired statistics, verdict, figures) -------------


@app.command(
    "compare",
    context_settings={"allow_extra_args": True},
    epilog="Example: workbench compare --ingredients ckpt/a ckpt/b ckpt/c --recipe soup.yaml "
    "--tasks blimp,arc_easy --limit 50 --out runs/claim",
)
@user_errors
def compare_command(
    ctx: typer.Context,
    ingredients: Annotated[
        list[str],
        typer.Option("--ingredients", help="Ingredient checkpoints: --ingredients A B C (or repeat the option)."),
    ],
    recipe: Annotated[Path, typer.Option("--recipe", help="Merge recipe (mergekit YAML) whose claim is checked.")],
    out: Annotated[Path, typer.Option("--out", help="Report directory (tables, figures, verdict.md).")],
    tasks: Annotated[
        str, typer.Option("--tasks", help="Comma-separated tasks: blimp, arc_easy, wikitext, ...")
    ] = "blimp",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Evaluation data (default: $WORKBENCH_DATA_DIR, else the Hub).")
    ] = None,
    limit: Annotated[
        float | None, typer.Option("--limit", help="Items per BLiMP paradigm / per task (or a fraction).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of subsampling, dev/test split and bootstrap.")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    control: Annotated[
        Path | None,
        typer.Option("--control", help="Optional control checkpoint (e.g. annealed or EMA, matched compute)."),
    ] = None,
    curve_ts: Annotated[
        str, typer.Option("--curve-ts", help="t grid of the LERP/SLERP interpolation curve, or 'none'.")
    ] = "0,0.25,0.5,0.75,1",
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (>= 2000 recommended).")] = 2000,
    dev_fraction: Annotated[float, typer.Option("--dev-fraction", help="Share of items in the dev half.")] = 0.5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation batch size.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")] = False,
) -> None:
    """Check a merge's claim: evaluate it and fair baselines on the same items, write the verdict."""
    from workbench.claim import run_panel, write_report
    from workbench.io.atomic import check_output_dir

    names = list_option(ingredients, ctx, "compare")
    check_output_dir(out, overwrite=overwrite)
    if not recipe.is_file():
        raise WorkbenchError(f"recipe file {recipe} does not exist")
    if curve_ts.strip().lower() in ("", "none", "off"):
        grid = None
    else:
        try:
            grid = [float(x) for x in curve_ts.split(",") if x.strip()]
        except ValueError:
            raise WorkbenchError(f"--curve-ts: expected comma-separated numbers, got {curve_ts!r}") from None
    from workbench.devices import resolve_device

    device = resolve_device(device)
    panel = run_panel(
        names,
        recipe,
        tasks,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        device=device,
        control=control,
        curve_ts=grid,
        n_resamples=resamples,
        dev_fraction=dev_fraction,
        batch_size=batch_size,
    )
    path = write_report(panel, out, overwrite=overwrite)
    for r in panel.comparisons.iter_rows(named=True):
        if r["subject"] == "merge" and r["reference"] == "best_dev" and r["primary"]:
            typer.echo(
                f"{r['task']}: merge vs best-on-dev ingredient {r['estimate'] * r['scale']:+.3g} {r['unit']} "
                f"(CI {r['low'] * r['scale']:+.3g} to {r['high'] * r['scale']:+.3g}): {r['call']}"
            )
    typer.echo(f"report: {path / 'verdict.md'}, {path / 'report.html'}")
