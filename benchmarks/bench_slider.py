"""Slider latency of the merge explorer, and the demo's time cold and warm.

Latency = from setting ``t_slider.value`` (what a drag does) to the FigureWidget's data
being updated: debounce + in-memory merge on the device + evaluation on the stratified dev
subsample + figure update. Measured through the real widget objects (no browser).

    .venv/bin/python benchmarks/bench_slider.py                        # latency on the demo family
    .venv/bin/python benchmarks/bench_slider.py --family DIR --n 30    # any family dir
    .venv/bin/python benchmarks/bench_slider.py --synthetic            # two random 2.1M-parameter Llamas
    .venv/bin/python benchmarks/bench_slider.py --demo                 # also time `workbench demo` cold and warm

Prints one JSON line per measurement (copy the figures into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}"


def family_pair(family_dir: Path, data) -> tuple[list[Path], str]:
    """Two checkpoints of a family dir (the demo preset is trained there when absent)."""
    from workbench.factory import load_family, train_family

    fam = (
        load_family(family_dir)
        if (family_dir / "family.yaml").is_file()
        else train_family("demo", family_dir, data_dir=data, progress=False)
    )
    b = fam.independent[0] if fam.independent else fam.siblings[1]
    return [fam.siblings[0], b], f"family {family_dir} ({fam.recipe.name})"


def synthetic_pair(root: Path) -> tuple[list[Path], str]:
    """Two random 2.1M-parameter Llamas (hidden 256, 2 layers, vocab 1024, character tokenizer), b = a + noise."""
    from workbench.testing import write_random_llama

    a = write_random_llama(
        root / "a",
        seed=0,
        hidden_size=256,
        num_layers=2,
        vocab_size=1024,
        intermediate_size=688,
        max_position_embeddings=512,
    )
    b = write_random_llama(root / "b", seed=1, like=a, noise=0.02)
    return [a, b], "synthetic random Llama pair (hidden 256, 2 layers, vocab 1024, character tokenizer)"


def latency(models: list[Path], what: str, n: int, limit: int, debounce: float, data, seed: int) -> dict:
    import torch

    from workbench.widgets import ExplorerSession, MergeExplorer

    t0 = time.perf_counter()
    session = ExplorerSession(models, tasks=["blimp"], limit=limit, seed=seed, device="cpu", data_dir=data)
    setup_s = time.perf_counter() - t0
    params = sum(p.numel() for p in session.model.parameters())
    ex = MergeExplorer(session, t_grid=[0.0, 0.25, 0.5, 0.75, 1.0], t=0.5, debounce_s=debounce)
    ex.wait(600, grid=True)  # the curve fills in first, as it does while the user looks at the page
    ex.latencies.clear()
    ex.results.clear()
    values = [round(0.05 + 0.9 * ((i * 0.37) % 1.0), 2) for i in range(n)]
    for v in values:
        if abs(ex.t_slider.value - v) < 1e-9:
            v = round(v + 0.01, 2)
        ex.t_slider.value = v
        if not ex.wait(120):
            raise RuntimeError("explorer did not answer within 120 s")
    ex.close()
    lat = sorted(ex.latencies)
    merge = [r.merge_s for r in ex.results]
    ev = [r.eval_s for r in ex.results]
    return {
        "what": "slider latency (slider change -> figure data updated)",
        "models": what,
        "params": params,
        "dev_items": session.n_items,
        "limit_per_paradigm": limit,
        "debounce_s": debounce,
        "n": len(lat),
        "torch_threads": torch.get_num_threads(),
        "median_s": round(statistics.median(lat), 3),
        "p90_s": round(lat[int(0.9 * (len(lat) - 1))], 3),
        "min_s": round(lat[0], 3),
        "max_s": round(lat[-1], 3),
        "median_merge_s": round(statistics.median(merge), 3),
        "median_eval_s": round(statistics.median(ev), 3),
        "session_setup_s": round(setup_s, 1),
        "machine": _machine(),
    }


def demo_times(data_dir: str | None) -> list[dict]:
    """`workbench demo` from nothing (fresh family dir and output) and again (family reused)."""
    exe = str(Path(sys.executable).with_name("workbench"))
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        fam, dest = Path(tmp) / "family", Path(tmp) / "demo"
        extra = ["--data-dir", data_dir] if data_dir else []
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            subprocess.run(
                [exe, "demo", "--out", str(dest), "--family-dir", str(fam), *extra],
                check=True,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            out.append(
                {
                    "what": f"workbench demo ({label})",
                    "seconds": round(time.perf_counter() - t0, 1),
                    "machine": _machine(),
                }
            )
        shutil.rmtree(fam, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--family",
        type=Path,
        default=REPO / "data" / "families" / "demo",
        help="family dir (trained with the demo preset if absent)",
    )
    ap.add_argument("--synthetic", action="store_true", help="use two random 2.1M-parameter Llamas instead")
    ap.add_argument("--n", type=int, default=20, help="slider changes to time")
    ap.add_argument("--limit", type=int, default=4, help="items per BLiMP paradigm before the dev split")
    ap.add_argument("--debounce", type=float, default=0.15, help="explorer debounce in seconds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo", action="store_true", help="also time `workbench demo` cold and warm")
    args = ap.parse_args()

    from workbench.io.datadir import resolve_data_dir

    data = resolve_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="bench-slider-") as tmp:
        models, what = synthetic_pair(Path(tmp)) if args.synthetic else family_pair(args.family, data)
        print(json.dumps(latency(models, what, args.n, args.limit, args.debounce, data, args.seed)), flush=True)
    if args.demo:
        for row in demo_times(args.data_dir):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
