"""The ``eval`` command: per-item evaluation with lm-eval conventions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workbench.cli.app import app, user_errors
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import torch

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
        Path | None,
        typer.Option(
            "--data-dir", help="Data directory laid out like ../shared/data (else $WORKBENCH_DATA_DIR, else the Hub)."
        ),
    ] = None,
    limit: Annotated[
        float | None,
        typer.Option(
            "--limit", help="At most N items per stratum (BLiMP paradigm, ARC, WikiText docs); a fraction if < 1."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --limit subsample.")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 64,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse results from the results cache ($WORKBENCH_CACHE).")
    ] = True,
    share_prefixes: Annotated[
        bool,
        typer.Option(
            "--share-prefixes/--no-share-prefixes",
            help="Run tokens shared by several sequences once (float32/float64 models; checked against the plain path).",
        ),
    ] = True,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Weights' dtype during evaluation: float32 (default), bfloat16, float16, or auto (the checkpoint's own).",
        ),
    ] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")] = False,
) -> None:
    """Evaluate MODEL on TASKS and write per-item results and an lm-eval style summary to --out."""
    import json as _json

    from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
    from workbench.devices import resolve_device
    from workbench.eval import evaluate, parse_tasks
    from workbench.io.atomic import check_output_dir
    from workbench.store import ResultStore

    task_list = parse_tasks(tasks)
    check_output_dir(out, overwrite=overwrite)
    dev = resolve_device(device)
    ck = open_checkpoint(model)
    tok = load_tokenizer(ck)
    net = load_model(ck, device=dev, dtype=_eval_dtype(dtype, ck))
    limit_arg = int(limit) if limit is not None and limit >= 1 and float(limit).is_integer() else limit
    result = evaluate(
        net,
        tok,
        task_list,
        data_dir=data_dir,
        limit=limit_arg,
        seed=seed,
        batch_size=batch_size,
        device=dev,
        progress=True,
        store=ResultStore() if cache else None,
        model_fingerprint=ck.fingerprint() if cache else None,
        share_prefixes=None if share_prefixes else False,
    )
    result.settings["model"] = str(ck.path)
    result.write(out, overwrite=overwrite)
    for task in task_list:
        metrics = {k: round(v, 6) for k, v in result.summary[task].items() if "," in k and isinstance(v, float)}
        typer.echo(f"{task}: {_json.dumps(metrics)}")
    typer.echo(str(out))


def _eval_dtype(name: str, ck) -> torch.dtype:
    """``--dtype``: a torch dtype, or the checkpoint's own floating dtype for ``auto``."""
    import torch

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        dtypes = {ck.dtype(n) for n in ck.names() if ck.dtype(n).is_floating_point}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32
    if name not in choices:
        raise WorkbenchError(f"--dtype: expected auto, {', '.join(choices)}; got {name!r}")
    return choices[name]
