"""``workbench align``: write one checkpoint permuted into another's basis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app, user_errors


@app.command("align")
@user_errors
def align_command(
    reference: Annotated[str, typer.Argument(help="Reference model directory (or Hub id): the basis to align into.")],
    other: Annotated[str, typer.Argument(help="Model to align (directory or Hub id).")],
    out_dir: Annotated[Path, typer.Argument(help="Output model directory (written atomically).")],
    method: Annotated[
        str, typer.Option("--method", help="weight (weight matching, no data) or activation (needs --data).")
    ] = "weight",
    data: Annotated[
        str | None,
        typer.Option("--data", help="Text file(s) or glob for activation matching, or 'corpus' (the data dir's)."),
    ] = None,
    sequences: Annotated[int, typer.Option("--sequences", help="Sequences for activation matching.")] = 256,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence for activation matching.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sequence sample.")] = 0,
    rotations: Annotated[
        bool | None,
        typer.Option(
            "--rotations/--no-rotations",
            help="Also rotate q/k RoPE pairs where exact (default: on for activation, off for weight matching).",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory (for --data corpus).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto (activation matching).")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT_DIR.")] = False,
) -> None:
    """Write OTHER permuted into REFERENCE's basis (same function, units reordered) to OUT_DIR.

    The output is a normal Hugging Face checkpoint plus workbench_align.json (the method, its
    settings and every permutation); merging it with REFERENCE merges matching units.
    """
    from workbench.align import align_checkpoints, canonical_method, read_alignment

    settings = {"rotations": rotations, "data": data}
    if canonical_method(method) == "activation_matching":
        settings.update(n_sequences=sequences, seq_len=seq_len, seed=seed)
    out = align_checkpoints(
        reference,
        other,
        out_dir,
        method=method,
        overwrite=overwrite,
        device=device,
        data_dir=data_dir,
        progress=True,
        **settings,
    )
    _, record = read_alignment(out)
    typer.echo(
        f"{out}: {record['method']}, weight similarity to the reference "
        f"{record['similarity_before']:.4f} -> {record['similarity_after']:.4f}"
    )
