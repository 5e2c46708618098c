"""The ``compare`` command (the claim check against fair baselines) and ``plan`` (how many items it takes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from workbench.cli.app import app, list_option, user_errors
from workbench.errors import WorkbenchError


class MultiValueCommand(TyperCommand):
    """A command whose list options take several words: ``--seeds A B C`` is ``--seeds A --seeds B --seeds C``.

    The words after a list option, up to the next option, are its values (the command has no
    positional arguments). Values may also be comma-separated or the option repeated.
    """

    list_options: tuple[str, ...] = ()

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Spread every run of words after a list option into one option per word."""
        out: list[str] = []
        current: str | None = None
        for word in args:
            if word.startswith("-"):
                current = word if word in self.list_options else None
                if current is None:
                    out.append(word)
                continue
            if current is not None:
                out += [current, word]
            else:
                out.append(word)
        return super().parse_args(ctx, out)


class _CompareCommand(MultiValueCommand):
    list_options = ("--ingredients", "--seeds")


class _PlanCommand(MultiValueCommand):
    list_options = ("--systems",)


def _grid(curve_ts: str) -> list[float] | None:
    if curve_ts.strip().lower() in ("", "none", "off"):
        return None
    try:
        return [float(x) for x in curve_ts.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError(f"--curve-ts: expected comma-separated numbers, got {curve_ts!r}") from None


# --- compare: the claim check (baselines, paired statistics, verdict, figures) -------------


@app.command(
    "compare",
    cls=_CompareCommand,
    context_settings={"allow_extra_args": True},
    epilog="Example: workbench compare --ingredients ckpt/a ckpt/b ckpt/c --recipe soup.yaml "
    "--tasks blimp,arc_easy --limit 50 --seeds ckpt/a ckpt/s1 ckpt/s2 --out runs/claim",
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
    seeds: Annotated[
        list[str] | None,
        typer.Option(
            "--seeds",
            help="Checkpoints trained identically but for the seed (two or more; ingredients may be among them): "
            "the verdict compares each gain with their spread.",
        ),
    ] = None,
    claim: Annotated[
        str | None, typer.Option("--claim", help="The claim in words, quoted in the verdict's headline.")
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
    from workbench.devices import resolve_device
    from workbench.io.atomic import check_output_dir
    from workbench.labels import task_labels

    names = list_option(ingredients, ctx, "compare")
    seed_list = [p for item in seeds or [] for p in item.split(",") if p]
    check_output_dir(out, overwrite=overwrite)
    if not recipe.is_file():
        raise WorkbenchError(f"recipe file {recipe} does not exist")
    grid = _grid(curve_ts)
    panel = run_panel(
        names,
        recipe,
        tasks,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        device=resolve_device(device),
        control=control,
        seeds=seed_list or None,
        claim=claim,
        curve_ts=grid,
        n_resamples=resamples,
        dev_fraction=dev_fraction,
        batch_size=batch_size,
    )
    path = write_report(panel, out, overwrite=overwrite)
    labels = task_labels(panel.settings.get("tasks", []))
    for r in panel.comparisons.iter_rows(named=True):
        if r["subject"] == "merge" and r["reference"] == "best_dev" and r["primary"]:
            typer.echo(
                f"{labels.get(r['task'], r['task'])} ({r['metric']}): merge vs best-on-dev ingredient "
                f"{r['estimate'] * r['scale']:+.3g} {r['unit']} "
                f"(CI {r['low'] * r['scale']:+.3g} to {r['high'] * r['scale']:+.3g}): {r['call']}"
            )
    typer.echo(f"report: {path / 'verdict.md'}, {path / 'report.html'}")


# --- plan: items needed to detect an effect -------------------------------------------------


@app.command(
    "plan",
    cls=_PlanCommand,
    epilog="Examples: workbench plan --pilot runs/eval/base/items.parquet --effect 2; "
    "workbench plan --effect 2 --accuracy 0.7 --correlation 0.6 --paradigms 67",
)
@user_errors
def plan_command(
    effect: Annotated[
        float, typer.Option("--effect", help="Difference to detect, in the metric's units (points, nats, bits/byte).")
    ],
    pilot: Annotated[
        Path | None,
        typer.Option(
            "--pilot", help="Pilot items.parquet (workbench eval, or a compare report's tables/items.parquet)."
        ),
    ] = None,
    systems: Annotated[
        list[str] | None, typer.Option("--systems", help="The two systems of a compare pilot to pair: --systems A B.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="acc, margin or bits_per_byte (default: each task's primary).")
    ] = None,
    power: Annotated[float, typer.Option("--power", help="Probability of calling a real effect.")] = 0.8,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the call.")] = 0.05,
    comparisons: Annotated[
        int, typer.Option("--comparisons", help="Comparisons in the Holm family: the test level is alpha / this.")
    ] = 1,
    accuracy: Annotated[float | None, typer.Option("--accuracy", help="Without a pilot: baseline accuracy.")] = None,
    discordance: Annotated[
        float | None, typer.Option("--discordance", help="Without a pilot: share of items the two systems disagree on.")
    ] = None,
    correlation: Annotated[
        float | None,
        typer.Option("--correlation", help="Correlation of the two systems' per-item results (default 0.5)."),
    ] = None,
    sd: Annotated[
        float | None, typer.Option("--sd", help="Without a pilot, continuous metrics: sd of a per-item difference.")
    ] = None,
    paradigms: Annotated[
        int, typer.Option("--paradigms", help="Without a pilot: clusters the items are spread over (BLiMP: 67).")
    ] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the plan as .csv or .parquet.")] = None,
) -> None:
    """How many items (per paradigm for BLiMP) an evaluation needs to detect an effect of a given size."""
    from workbench.claim.plan import DEFAULT_CORRELATION, Plan, plan_from_assumptions, plan_from_pilot

    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise WorkbenchError(f"--out {out}: use a .csv or .parquet file name")
    pair = [p for item in systems or [] for p in item.split(",") if p]
    if pair and len(pair) != 2:
        raise WorkbenchError(f"--systems: give exactly two systems, got {pair}")
    if pilot is not None:
        plans = plan_from_pilot(
            pilot,
            effect,
            systems=(pair[0], pair[1]) if pair else None,
            metric=metric,
            correlation=DEFAULT_CORRELATION if correlation is None else correlation,
            power=power,
            alpha=alpha,
            comparisons=comparisons,
        ).to_dicts()
    else:
        one = plan_from_assumptions(
            effect,
            metric=metric or "acc",
            accuracy=accuracy,
            discordance=discordance,
            correlation=correlation,
            sd=sd,
            paradigms=paradigms,
            power=power,
            alpha=alpha,
            comparisons=comparisons,
        )
        plans = [one.to_dict()]
    for p in plans:
        typer.echo(Plan(**p).sentence())
    if out is not None:
        _write_table(plans, out)
        typer.echo(f"plan: {out}")


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """Rows as a .csv or .parquet file, written atomically."""
    import io

    import polars as pl

    from workbench.io.atomic import write_bytes_atomic

    buf = io.BytesIO()
    df = pl.DataFrame(rows)
    if out.suffix == ".csv":
        df.write_csv(buf)
    else:
        df.write_parquet(buf)
    write_bytes_atomic(out, buf.getvalue())
