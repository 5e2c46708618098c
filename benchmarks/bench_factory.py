"""Checkpoint factory figures: training throughput, family build times, and the soup effect.

Builds the ``tiny`` and ``demo`` families (timed, from scratch), measures training tokens/s of
both model sizes, then scores the demo family on its held-out text: every checkpoint, the
uniform soup of the trajectory checkpoints (``workbench.merge``, method ``linear``) and the
annealed control. Prints a markdown block for ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/bench_factory.py [--work benchmarks/out/factory] [--skip-tiny]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace


def throughput(preset: str, steps: int = 20) -> float:
    """Training tokens/s of a preset's model (random blocks, after 5 warm-up steps)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.factory import load_train_recipe
    from workbench.factory.trainer import _new_optimizer

    r = load_train_recipe(preset)
    m = r.model
    cfg = LlamaConfig(
        vocab_size=r.tokenizer.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        max_position_embeddings=r.optim.seq_len,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    opt = _new_optimizer(model, r)
    B, S = r.optim.batch_size, r.optim.seq_len
    x = torch.randint(0, cfg.vocab_size, (B, S))
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * B * S / (time.perf_counter() - t0)


def build(preset: str, out: Path) -> tuple[float, object]:
    from workbench.factory import train_family

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    fam = train_family(preset, out, progress=False)
    return time.perf_counter() - t0, fam


def members(root: Path) -> SimpleNamespace:
    """The checkpoint dirs present under a family root (a build still running is fine)."""

    def present(pattern: str) -> list[Path]:
        return sorted(p for p in root.glob(pattern) if (p / "model.safetensors").is_file())

    annealed = root / "annealed"
    return SimpleNamespace(
        tokenizer=root / "tokenizer",
        heldout=root / "heldout.txt",
        trajectory=present("trajectory/step-*"),
        siblings=present("siblings/sibling-*"),
        independent=present("independent/independent-*"),
        annealed=annealed if (annealed / "model.safetensors").is_file() else None,
    )


def soup_table(fam) -> list[tuple[str, str, float, float]]:
    """(member, kind, held-out perplexity, nll) for every checkpoint, the soup and the control."""
    from workbench.checkpoints import load_model, load_tokenizer
    from workbench.factory import heldout_perplexity
    from workbench.merge import merged_model, simple_recipe

    tok = load_tokenizer(fam.tokenizer)
    rows = []

    def score(name: str, kind: str, model) -> None:
        r = heldout_perplexity(model, tok, fam.heldout)
        rows.append((name, kind, r["perplexity"], r["nll"]))

    for p in fam.trajectory:
        score(f"trajectory/{p.name}", "checkpoint", load_model(p))
    recipe = simple_recipe("linear", [str(p) for p in fam.trajectory])
    score(f"uniform soup of {len(fam.trajectory)} trajectory checkpoints", "soup", merged_model(recipe))
    if fam.annealed is not None:
        score("annealed (same start, same tokens, LR decayed)", "control", load_model(fam.annealed))
    for p in fam.siblings:
        score(f"siblings/{p.name}", "sibling", load_model(p))
    if len(fam.siblings) > 1:
        recipe = simple_recipe("linear", [str(p) for p in fam.siblings])
        score(f"uniform soup of {len(fam.siblings)} siblings", "soup", merged_model(recipe))
    for p in fam.independent:
        score(f"independent/{p.name}", "independent", load_model(p))
    return rows


def print_table(rows: list[tuple[str, str, float, float]]) -> None:
    print("\n| member | held-out perplexity | nll (nats/token) |\n|---|---:|---:|")
    for name, _, ppl, nll in rows:
        print(f"| {name} | {ppl:.3f} | {nll:.4f} |")
    best = min(r[2] for r in rows if r[1] == "checkpoint")
    soup = next(r for r in rows if r[1] == "soup")
    print(
        f"\nsoup vs best trajectory checkpoint: {soup[2]:.3f} vs {best:.3f} "
        f"({'soup better' if soup[2] < best else 'soup NOT better'})",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/factory"))
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--reuse-demo", action="store_true", help="score an already built demo family (no build timing)")
    ap.add_argument(
        "--score-only",
        type=Path,
        default=None,
        help="only score the checkpoints present in this family dir (no throughput, no builds)",
    )
    args = ap.parse_args()
    import torch

    from workbench.factory import load_family

    args.work.mkdir(parents=True, exist_ok=True)
    if args.score_only is not None:
        print_table(soup_table(members(args.score_only)))
        return
    load = os.getloadavg()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}, load average {load[0]:.1f}",
        flush=True,
    )
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
        print(f"cpu: {model}", flush=True)
    except OSError:
        pass
    for preset in ("tiny", "demo"):
        print(f"training throughput {preset}: {throughput(preset):,.0f} tokens/s", flush=True)
    if args.reuse_demo:
        fam = load_family(args.work / "demo")
        secs = fam.info["build"]["seconds"]
        print(f"demo family (reused) build time recorded: {secs:.1f} s", flush=True)
    else:
        secs, fam = build("demo", args.work / "demo")
        print(
            f"demo family build: {secs:.1f} s ({fam.info['n_params']:,} parameters; "
            f"per-run tokens/s {fam.info['build']['tokens_per_s']})",
            flush=True,
        )
    print(f"load average after the demo build: {os.getloadavg()[0]:.1f}", flush=True)
    print_table(soup_table(fam))
    if not args.skip_tiny:
        secs, tiny = build("tiny", args.work / "tiny")
        print(
            f"tiny family build: {secs:.1f} s ({tiny.info['n_params']:,} parameters; "
            f"per-run tokens/s {tiny.info['build']['tokens_per_s']}); load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
