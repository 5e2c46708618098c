"""Commands that run many merges: ``sweep`` and ``search``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, user_errors

# options both commands take, defined once
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster HOST:PORT, ray://HOST:PORT or auto (default: start one here)."),
]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache", help="Results cache directory (default: $WORKBENCH_CACHE or data/cache/results)."),
]
RayTimeout = Annotated[
    float, typer.Option("--ray-timeout", help="Seconds to wait for the Ray cluster to answer before giving up.")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")]

# --- sweep: grids of (merge, evaluation) points, cached and resumable, local or on Ray -----


@app.command("sweep")
@user_errors
def sweep_command(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep file (YAML): ingredients, recipe, axes, tasks.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output directory: results.parquet, items.parquet, points.json, log.jsonl.")
    ],
    backend: Annotated[
        str, typer.Option("--backend", help="local (one process) or ray (one Ray task per point).")
    ] = "local",
    ray_address: RayAddress = None,
    cache: CacheDir = None,
    ray_timeout: RayTimeout = 60.0,
    overwrite: Overwrite = False,
) -> None:
    """Merge and evaluate every point of SWEEP_FILE; points already in the cache are reused."""
    from workbench.store import ResultStore
    from workbench.sweep import run_sweep

    result = run_sweep(
        sweep_file,
        out,
        backend=backend,
        ray_address=ray_address,  # type: ignore[arg-type]
        store=ResultStore(cache) if cache is not None else None,
        overwrite=overwrite,
        ray_timeout=ray_timeout,
    )
    n = len(result.points)
    typer.echo(f"{n} points: {len(result.computed)} computed, {n - len(result.computed)} from the cache")
    typer.echo(f"results: {out / 'results.parquet'} ({result.table.height} rows), items: {out / 'items.parquet'}")


# --- search: optimise a recipe on dev items, claim-check the winner on test items ----------


@app.command("search")
@user_errors
def search_command(
    search_file: Annotated[
        Path, typer.Argument(help="Search file (YAML): ingredients, base recipe, space, tasks, objective, budget.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Output directory: trials.parquet, best.yaml, verdict.md, report.html, search.yaml."
        ),
    ],
    backend: Annotated[
        str, typer.Option("--backend", help="local (one process) or ray (trials in parallel Ray workers).")
    ] = "local",
    ray_address: RayAddress = None,
    cache: CacheDir = None,
    ray_timeout: RayTimeout = 60.0,
    overwrite: Overwrite = False,
) -> None:
    """Search recipe parameters on the dev half, then claim-check the best recipe on the test half.

    Evaluations already in the cache are reused, so a search that was stopped resumes where it stopped.
    """
    from workbench.search import run_search
    from workbench.store import ResultStore

    result = run_search(
        search_file,
        out,
        backend=backend,  # type: ignore[arg-type]
        ray_address=ray_address,
        store=ResultStore(cache) if cache is not None else None,
        overwrite=overwrite,
        ray_timeout=ray_timeout,
    )
    best = result.best
    typer.echo(
        f"{result.n_trials} trials, {result.n_evaluations} evaluations: {result.computed} computed, "
        f"{result.cached} from the cache"
    )
    typer.echo(
        f"best (selected on dev): trial {best['trial']}, dev objective {best['objective']:+.3f}: {best['label']}"
    )
    typer.echo(f"recipe: {out / 'best.yaml'}; verdict (test half): {out / 'verdict.md'}")
