"""Commands that read or write model weights: ``merge`` and ``angles``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, user_errors
from workbench.errors import WorkbenchError

# --- merge: run a mergekit-style recipe into a model directory ----------------------------


def _merge_help() -> str:
    from workbench.merge.registry import method_help

    lines = method_help().splitlines()
    return (
        "Merge checkpoints as RECIPE says and write a Hugging Face model directory to OUT_DIR.\n\n"
        "Methods (merge_method; * marks a required parameter):\n\n" + "\n\n".join(f"- {ln}" for ln in lines)
    )


@app.command("merge", help=_merge_help())
@user_errors
def merge_command(
    recipe: Annotated[Path, typer.Argument(help="Merge recipe (mergekit YAML).")],
    out_dir: Annotated[Path, typer.Argument(help="Output model directory (written atomically).")],
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT_DIR.")] = False,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="Merge even if an input holds NaN/Inf.")
    ] = False,
    allow_extrapolation: Annotated[bool, typer.Option("--allow-extrapolation", help="Allow t outside [0, 1].")] = False,
    random_seed: Annotated[
        int | None,
        typer.Option(
            "--random-seed",
            help="Draw random masks (dare, della, arcee_fusion) from mergekit's stream seeded so: "
            "the masks of mergekit-yaml --random-seed.",
        ),
    ] = None,
) -> None:
    """Merge checkpoints as RECIPE says and write a Hugging Face model directory to OUT_DIR."""
    from workbench.merge import load_recipe, merge_to_disk

    rec = load_recipe(recipe)
    if random_seed is not None:
        rec = load_recipe({**rec.model_dump(mode="json", exclude_none=True), "random_seed": random_seed})
    out = merge_to_disk(
        rec,
        out_dir,
        device=device,
        overwrite=overwrite,
        allow_nonfinite=allow_nonfinite,
        allow_extrapolation=allow_extrapolation,
        progress=True,
    )
    typer.echo(str(out))


# --- angles: per-tensor angles and norms between two checkpoints --------------------------


@app.command("angles")
@user_errors
def angles_command(
    model_a: Annotated[str, typer.Argument(help="First model directory (or Hub id).")],
    model_b: Annotated[str, typer.Argument(help="Second model directory (or Hub id).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the table to FILE.parquet or FILE.csv.")] = None,
    t: Annotated[float, typer.Option("--t", help="Interpolation point for the SLERP/LERP norm factor.")] = 0.5,
) -> None:
    """Per-tensor norms, cosine, angle and SLERP norm factor between MODEL_A and MODEL_B.

    Tensors the architecture table does not know are kept (group ``other``) and listed once by name.
    """
    import io

    from workbench.geometry import tensor_angles, unclassified_tensors
    from workbench.io.atomic import write_bytes_atomic
    from workbench.naming import GROUPS

    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise WorkbenchError(f"{out}: --out must end in .parquet or .csv")
    df = tensor_angles(model_a, model_b, t=t, progress=True)
    unknown = unclassified_tensors(df)
    if unknown:
        typer.echo(f"unclassified tensors (group 'other', {len(unknown)}): {', '.join(unknown)}")
    if out is None:
        import polars as pl

        summary = (
            df.group_by("group")
            .agg(
                pl.len().alias("tensors"),
                pl.col("angle_deg").mean().alias("mean_angle_deg"),
                pl.col("norm_factor").mean().alias("mean_norm_factor"),
                pl.col("fallback").sum().alias("fallbacks"),
            )
            .sort(pl.col("group").replace_strict(GROUPS, range(len(GROUPS)), default=len(GROUPS)))
        )
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            typer.echo(str(summary))
        return
    buf = io.BytesIO()
    if out.suffix.lower() == ".parquet":
        df.write_parquet(buf)
    else:
        df.write_csv(buf)
    write_bytes_atomic(out, buf.getvalue())
    typer.echo(str(out))
