"""The ``train`` command: checkpoint families from a training recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, list_option, user_errors
from workbench.errors import WorkbenchError

# --- train: tokenizer + small Llama checkpoint families (workbench.factory) ----------------


@app.command(
    "train",
    context_settings={"allow_extra_args": True},
    epilog="Examples: workbench train --preset tiny runs/tiny;  workbench train my.yaml runs/fam --corpus 'texts/*.txt'",
)
@user_errors
def train_command(
    ctx: typer.Context,
    recipe: Annotated[
        str | None, typer.Argument(help="Training recipe YAML (omit it when --preset is given).", show_default=False)
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Argument(help="Family directory (created; an interrupted build resumes).", show_default=False),
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Built-in recipe: tiny or demo.")] = None,
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            "--corpus", help="Text files or quoted globs (repeat, or comma-separate); default: the recipe's corpus."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Data directory for the recipe's relative corpus (else $WORKBENCH_DATA_DIR, else ../shared/data).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a checkpoint family (trajectory, siblings, independent runs, annealed control, held-out text)."""
    from workbench.factory import PRESETS, train_family

    if preset is not None:
        if recipe is not None and out_dir is not None:
            raise WorkbenchError("train: with --preset give only OUT_DIR (repeat --corpus for several files)")
        recipe, out_dir = preset, Path(recipe) if recipe is not None else None
        if preset not in PRESETS:
            raise WorkbenchError(f"train: unknown preset {preset!r} ({', '.join(PRESETS)})")
    if recipe is None or out_dir is None:
        raise WorkbenchError("train: give RECIPE.yaml OUT_DIR, or --preset tiny|demo OUT_DIR")
    if preset is None and not Path(recipe).is_file():
        raise WorkbenchError(f"training recipe {recipe} does not exist (use --preset tiny|demo for the presets)")
    files = list_option(corpus or [], ctx, "train")
    if ctx.args and not corpus:
        raise WorkbenchError(f"train: unexpected argument(s) {ctx.args}")
    fam = train_family(recipe, out_dir, corpus=files or None, device=device, progress=not quiet, data_dir=data_dir)
    build = fam.info.get("build", {})
    typer.echo(
        f"family {fam.recipe.name!r}: {len(fam.trajectory)} trajectory, {len(fam.siblings)} siblings, "
        f"{len(fam.independent)} independent, annealed {'yes' if fam.annealed else 'no'}; "
        f"{fam.info.get('n_params', 0):,} parameters; built in {build.get('seconds', 0)} s on {build.get('device', '?')}"
    )
    typer.echo(str(fam.root))
