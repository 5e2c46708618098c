"""Permutation alignment: the LERP barrier between independent runs before and after alignment.

On a checkpoint family's two ``independent`` runs (other random initialisations, same data
and tokenizer), evaluates LERP merges along a t grid on the family's held-out text, unaligned
and with the second run aligned to the first by weight matching and by activation matching
(on the family's training text: the corpus without the held-out documents). The barrier is
the claim check's (``workbench.claim.interpolation_curve`` / ``curve_tables``): max over t of
bits per byte minus the chord between the endpoints, with its paired bootstrap CI (the same
documents redrawn at every t). Also times each alignment and reports the weight similarity
(cosine of the whole weight vectors) before and after. Prints a markdown block for
``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/bench_align.py [--family data/families/demo] [--ts 0,0.5,1]
        [--sequences 256] [--seq-len 128] [--work benchmarks/out/align]

The family is trained first when missing (``--preset``, default ``demo``: a few minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path


def family(path: Path, preset: str, data_dir: str | None):
    from workbench.errors import WorkbenchError
    from workbench.factory import load_family, train_family

    try:
        return load_family(path)
    except WorkbenchError:
        return train_family(preset, path, data_dir=data_dir, progress=True)


def training_text(fam, out: Path, data_dir: str | None) -> Path:
    """The family's corpus without its held-out documents, as one file (activation matching's data)."""
    from workbench.factory.corpus import read_documents, resolve_corpus
    from workbench.io.datadir import resolve_data_dir

    held = set(read_documents([fam.heldout]))
    files = resolve_corpus(fam.recipe.data.corpus, resolve_data_dir(data_dir))
    docs = [d for d in read_documents(files) if d not in held]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return out


def barrier_of(a: str, b: str, ts: list[float], task: str, checkpoints: dict, tok) -> dict:
    from workbench.claim import curve_tables, interpolation_curve

    items = interpolation_curve(
        a, b, ts, [task], methods=("lerp",), tokenizer=tok, checkpoints=checkpoints, progress=False
    )
    curve, barriers, _ = curve_tables(items, seed=0, n_resamples=2000)
    row = barriers.row(0, named=True)
    # the signed excess at the midpoint (the barrier, a max over the grid, is never below 0)
    at = dict(zip(*curve.filter(curve["split"] == "all").select("t", "value").to_dict(as_series=False).values()))
    row["mid_excess"] = at[0.5] - (at[ts[0]] + at[ts[-1]]) / 2 if 0.5 in at else float("nan")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="data/families/demo")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ts", default="0,0.5,1")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--work", default="benchmarks/out/align")
    args = ap.parse_args()

    from workbench.align import find_alignment, write_aligned
    from workbench.checkpoints import load_tokenizer, open_checkpoint
    from workbench.eval.tasks import text_task

    started = datetime.now(UTC)
    fam = family(Path(args.family), args.preset, args.data_dir)
    a, b = (str(p) for p in fam.independent[:2])
    work = Path(args.work)
    ts = [float(t) for t in args.ts.split(",")]
    tok = load_tokenizer(fam.tokenizer)
    task = text_task(fam.heldout)
    data = training_text(fam, work / "train.txt", args.data_dir)

    rows = [("unaligned", None, 0.0, barrier_of(a, b, ts, task, {}, tok))]
    act = {"data": data, "n_sequences": args.sequences, "seq_len": args.seq_len}
    # each method at its default, then with the q/k pair rotations switched the other way
    for method, settings in (
        ("weight_matching", {}),
        ("activation_matching", act),
        ("weight_matching", {"rotations": True}),
        ("activation_matching", {**act, "rotations": False}),
    ):
        t0 = time.perf_counter()
        res = find_alignment(a, b, method=method, **settings)
        seconds = time.perf_counter() - t0
        out = write_aligned(res, work / f"{method}-{len(rows)}", overwrite=True)
        row = barrier_of(a, b, ts, task, {b: open_checkpoint(out)}, tok)
        row["similarity"] = (res.similarity_before, res.similarity_after)
        row["rotations"] = res.settings["rotations"]
        row["default"] = "rotations" not in settings
        rows.append((method, res, seconds, row))
    report(args, fam, ts, started, rows)


def report(args: argparse.Namespace, fam, ts: list[float], started: datetime, rows: list) -> None:
    base = rows[0][3]["barrier"]
    print(f"\n### Permutation alignment ({Path(args.family).name} family, independent runs)\n")
    print(f"Command: `.venv/bin/python benchmarks/bench_align.py --family {args.family} --ts {args.ts}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f} at the end; ")
    print(
        f"started {started:%Y-%m-%d %H:%M} UTC; t grid {ts}; held-out text {fam.heldout.name} "
        f"({rows[0][3]['n_items']} documents), bits per byte; activation matching on {args.sequences} "
        f"sequences of {args.seq_len} tokens of the training text.\n"
    )
    print(
        "| LERP between independent-1 and independent-2 | barrier (bits/byte) | 95% CI | removed | "
        "t at max | loss(0.5) - chord | weight similarity | alignment time |"
    )
    print("|---|---:|---|---:|---:|---:|---|---:|")
    for name, _, seconds, r in rows:
        removed = "" if name == "unaligned" else f"{100 * (1 - r['barrier'] / base):.0f}%"
        sim = "" if "similarity" not in r else f"{r['similarity'][0]:.3f} -> {r['similarity'][1]:.3f}"
        label = name
        if name != "unaligned":
            label = f"{name}, rotations {'on' if r['rotations'] else 'off'}{' (default)' if r['default'] else ''}"
        print(
            f"| {label} | {r['barrier']:.4f} | [{r['low']:.4f}, {r['high']:.4f}] | {removed} | "
            f"{r['t_max']:g} | {r['mid_excess']:+.4f} | {sim} | {seconds:.1f} s |"
        )
    ends = ", ".join(f"{r['loss_t1']:.4f}" for _, _, _, r in rows[1:])
    print(
        f"\nEndpoints (bits/byte): {rows[0][3]['loss_t0']:.4f} and {rows[0][3]['loss_t1']:.4f}; every aligned "
        f"second endpoint is the same function ({ends})."
    )


if __name__ == "__main__":
    main()
