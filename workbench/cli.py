"""Command-line interface: ``workbench merge | angles | eval | train | compare | sweep | run | demo``.

Each command is a thin wrapper: it parses arguments, calls one library function and
turns :class:`~workbench.errors.WorkbenchError` into one clear message and a non-zero
exit. Heavy imports happen inside the commands so that ``workbench --help`` is instant.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="Merge language-model checkpoints and judge the merge honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


def user_errors(func: F) -> F:
    """Print a WorkbenchError as one line on stderr and exit with status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except WorkbenchError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


# --- commands are registered below, one block per command --------------------------------


# --- merge: run a mergekit-style recipe into a model directory ----------------------------


@app.command("merge")
@user_errors
def merge_command(
    recipe: Annotated[Path, typer.Argument(help="Merge recipe (mergekit YAML).")],
    out_dir: Annotated[Path, typer.Argument(help="Output model directory (written atomically).")],
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT_DIR.")] = False,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="Merge even if an input holds NaN/Inf.")
    ] = False,
    allow_extrapolation: Annotated[
        bool, typer.Option("--allow-extrapolation", help="Allow t outside [0, 1].")
    ] = False,
) -> None:
    """Merge checkpoints as RECIPE says and write a Hugging Face model directory to OUT_DIR."""
    from workbench.merge import load_recipe, merge_to_disk

    out = merge_to_disk(
        load_recipe(recipe), out_dir, device=device, overwrite=overwrite, allow_nonfinite=allow_nonfinite,
        allow_extrapolation=allow_extrapolation, progress=True,
    )
    typer.echo(str(out))


# --- angles: per-tensor angles and norms between two checkpoints --------------------------


@app.command("angles")
@user_errors
def angles_command(
    model_a: Annotated[str, typer.Argument(help="First model directory (or Hub id).")],
    model_b: Annotated[str, typer.Argument(help="Second model directory (or Hub id).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the table to FILE.parquet or FILE.csv.")] = None,
    t: Annotated[float, typer.Option("--t", help="Interpolation point for the SLERP/LERP norm factor.")] = 0.5,
) -> None:
    """Per-tensor norms, cosine, angle and SLERP norm factor between MODEL_A and MODEL_B."""
    import io

    from workbench.checkpoints import write_bytes_atomic
    from workbench.geometry import tensor_angles

    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise WorkbenchError(f"{out}: --out must end in .parquet or .csv")
    df = tensor_angles(model_a, model_b, t=t, progress=True)
    if out is None:
        import polars as pl

        summary = (
            df.group_by("group")
            .agg(pl.len().alias("tensors"), pl.col("angle_deg").mean().alias("mean_angle_deg"),
                 pl.col("norm_factor").mean().alias("mean_norm_factor"), pl.col("fallback").sum().alias("fallbacks"))
            .sort("group")
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


# --- eval: BLiMP / ARC-Easy / WikiText / text perplexity with lm-eval conventions -----------


@app.command("eval")
@user_errors
def eval_command(
    model: Annotated[str, typer.Argument(help="Model directory (config, safetensors, tokenizer) or Hub id.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: items.parquet + summary.json.")],
    tasks: Annotated[
        str, typer.Option("--tasks", help="Comma-separated: blimp, blimp_<paradigm>, arc_easy, wikitext, text:<file>.")
    ] = "blimp,arc_easy,wikitext",
    data_dir: Annotated[
        Optional[Path], typer.Option("--data-dir", help="Data directory laid out like ../shared/data (else $WORKBENCH_DATA_DIR, else the Hub).")
    ] = None,
    limit: Annotated[
        Optional[float], typer.Option("--limit", help="At most N items per stratum (BLiMP paradigm, ARC, WikiText docs); a fraction if < 1.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --limit subsample.")] = 0,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse results from the results cache ($WORKBENCH_CACHE).")] = True,
    share_prefixes: Annotated[
        bool, typer.Option("--share-prefixes/--no-share-prefixes",
                           help="Run tokens shared by several sequences once (float32/float64 models; checked against the plain path).")
    ] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")] = False,
) -> None:
    """Evaluate MODEL on TASKS and write per-item results and an lm-eval style summary to --out."""
    import json as _json

    from workbench.checkpoints import check_output_dir, load_model, load_tokenizer, open_checkpoint, resolve_device
    from workbench.eval import evaluate, parse_tasks
    from workbench.store import ResultStore

    task_list = parse_tasks(tasks)
    check_output_dir(out, overwrite=overwrite)
    dev = resolve_device(device)
    ck = open_checkpoint(model)
    tok = load_tokenizer(ck)
    net = load_model(ck, device=dev)
    limit_arg = int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit
    result = evaluate(
        net, tok, task_list, data_dir=data_dir, limit=limit_arg, seed=seed, batch_size=batch_size, device=dev,
        progress=True, store=ResultStore() if cache else None, model_fingerprint=ck.fingerprint() if cache else None,
        share_prefixes=None if share_prefixes else False,
    )
    result.settings["model"] = str(ck.path)
    result.write(out, overwrite=overwrite)
    for task in task_list:
        metrics = {k: round(v, 6) for k, v in result.summary[task].items() if "," in k and isinstance(v, float)}
        typer.echo(f"{task}: {_json.dumps(metrics)}")
    typer.echo(str(out))


# --- run: execute a notebook headlessly (papermill) and export offline HTML ---------------


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def run_command(
    ctx: typer.Context,
    notebook: Annotated[Path, typer.Argument(help="Notebook to execute (e.g. notebooks/layer_angles.ipynb).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for NAME.ipynb and NAME.html.")],
    params_file: Annotated[
        Optional[Path], typer.Option("-f", "--params-file", help="YAML mapping of parameters (-p wins).")
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
        Optional[Path], typer.Option("--data-dir", help="Evaluation data (default: $WORKBENCH_DATA_DIR, ../shared/data).")
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """From nothing: build or reuse the demo family, run soup_report and layer_angles, write HTML."""
    from workbench.demo import run_demo

    report = run_demo(out, family_dir=family_dir, data_dir=data_dir, device=device)
    typer.echo(f"report: {report}")


# --- sweep: grids of (merge, evaluation) points, cached and resumable, local or on Ray -----


@app.command("sweep")
@user_errors
def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (YAML): ingredients, recipe, axes, tasks.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: results.parquet, items.parquet, points.json, log.jsonl.")],
    backend: Annotated[str, typer.Option("--backend", help="local (one process) or ray (one Ray task per point).")] = "local",
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="Ray cluster HOST:PORT, ray://HOST:PORT or auto (default: start one here).")
    ] = None,
    cache: Annotated[
        Optional[Path], typer.Option("--cache", help="Results cache directory (default: $WORKBENCH_CACHE or data/cache/results).")
    ] = None,
    ray_timeout: Annotated[
        float, typer.Option("--ray-timeout", help="Seconds to wait for the Ray cluster to answer before giving up.")
    ] = 60.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")] = False,
) -> None:
    """Merge and evaluate every point of SWEEP_FILE; points already in the cache are reused."""
    from workbench.store import ResultStore
    from workbench.sweep import run_sweep

    result = run_sweep(sweep_file, out, backend=backend, ray_address=ray_address,  # type: ignore[arg-type]
                       store=ResultStore(cache) if cache is not None else None, overwrite=overwrite,
                       ray_timeout=ray_timeout)
    n = len(result.points)
    typer.echo(f"{n} points: {len(result.computed)} computed, {n - len(result.computed)} from the cache")
    typer.echo(f"results: {out / 'results.parquet'} ({result.table.height} rows), items: {out / 'items.parquet'}")


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
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated tasks: blimp, arc_easy, wikitext, ...")] = "blimp",
    data_dir: Annotated[
        Optional[Path], typer.Option("--data-dir", help="Evaluation data (default: $WORKBENCH_DATA_DIR, else the Hub).")
    ] = None,
    limit: Annotated[Optional[float], typer.Option("--limit", help="Items per BLiMP paradigm / per task (or a fraction).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of subsampling, dev/test split and bootstrap.")] = 0,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when present).")] = None,
    control: Annotated[
        Optional[Path], typer.Option("--control", help="Optional control checkpoint (e.g. annealed or EMA, matched compute).")
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
    from workbench.checkpoints import check_output_dir
    from workbench.compare import run_panel, write_report

    names = _list_option(ingredients, ctx, "compare")
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
    from workbench.checkpoints import resolve_device

    device = resolve_device(device)
    panel = run_panel(
        names, recipe, tasks, data_dir=data_dir, limit=limit, seed=seed, device=device, control=control,
        curve_ts=grid, n_resamples=resamples, dev_fraction=dev_fraction, batch_size=batch_size,
    )
    path = write_report(panel, out, overwrite=overwrite)
    for r in panel.comparisons.iter_rows(named=True):
        if r["subject"] == "merge" and r["reference"] == "best_dev" and r["primary"]:
            typer.echo(f"{r['task']}: merge vs best-on-dev ingredient {r['estimate'] * r['scale']:+.3g} {r['unit']} "
                       f"(CI {r['low'] * r['scale']:+.3g} to {r['high'] * r['scale']:+.3g}): {r['call']}")
    typer.echo(f"report: {path / 'verdict.md'}, {path / 'report.html'}")


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
        Optional[str], typer.Argument(help="Training recipe YAML (omit it when --preset is given).", show_default=False)
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Argument(help="Family directory (created; an interrupted build resumes).", show_default=False)
    ] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Built-in recipe: tiny or demo.")] = None,
    corpus: Annotated[
        Optional[list[str]],
        typer.Option("--corpus", help="Text files or quoted globs (repeat, or comma-separate); default: the recipe's corpus."),
    ] = None,
    data_dir: Annotated[
        Optional[Path], typer.Option("--data-dir", help="Data directory for the recipe's relative corpus (else $WORKBENCH_DATA_DIR, else ../shared/data).")
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present).")] = None,
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
    files = _list_option(corpus or [], ctx, "train")
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


def _list_option(values: list[str], ctx: typer.Context, command: str) -> list[str]:
    """A repeatable, comma-separable option: its values plus the extra words after it
    (``--corpus a.txt b.txt``); a stray ``-x`` among them is an unknown option."""
    stray = [a for a in ctx.args if a.startswith("-")]
    if stray:
        raise WorkbenchError(f"{command}: unknown option(s) {stray}")
    return [p for item in list(values) + list(ctx.args) for p in item.split(",") if p]


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
