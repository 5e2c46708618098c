"""Slider latency of the merge explorer, and the demo's time cold and warm.

Latency = from setting ``t_slider.value`` (what a drag does) to the FigureWidget's data
being updated: debounce + in-memory merge on the device + evaluation on the stratified dev
subsample + figure update. Measured through the real widget objects (no browser).

    .venv/bin/python benchmarks/bench_slider.py                        # latency on the demo family
    .venv/bin/python benchmarks/bench_slider.py --family DIR --n 30    # any 2-model family dir
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


def latency(family_dir: Path, n: int, limit: int, debounce: float, data_dir: str | None, seed: int) -> dict:
    import torch

    from workbench.demo import demo_data_dir
    from workbench.factory import train_family
    from workbench.widgets import ExplorerSession, MergeExplorer

    data = demo_data_dir(data_dir)
    t0 = time.perf_counter()
    fam = train_family("demo", family_dir, data_dir=data, progress=False)
    family_s = time.perf_counter() - t0
    a, b = fam.siblings[0], (fam.independent[0] if fam.independent else fam.siblings[1])
    t0 = time.perf_counter()
    session = ExplorerSession([a, b], tasks=["blimp"], limit=limit, seed=seed, device="cpu", data_dir=data)
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
        "family": str(family_dir), "params": params, "dev_items": session.n_items, "limit_per_paradigm": limit,
        "debounce_s": debounce, "n": len(lat), "torch_threads": torch.get_num_threads(),
        "median_s": round(statistics.median(lat), 3), "p90_s": round(lat[int(0.9 * (len(lat) - 1))], 3),
        "min_s": round(lat[0], 3), "max_s": round(lat[-1], 3),
        "median_merge_s": round(statistics.median(merge), 3), "median_eval_s": round(statistics.median(ev), 3),
        "session_setup_s": round(setup_s, 1), "family_ready_s": round(family_s, 1), "machine": _machine(),
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
            subprocess.run([exe, "demo", "--out", str(dest), "--family-dir", str(fam), *extra], check=True,
                           cwd=REPO, stdout=subprocess.DEVNULL)
            out.append({"what": f"workbench demo ({label})", "seconds": round(time.perf_counter() - t0, 1),
                        "machine": _machine()})
        shutil.rmtree(fam, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, default=REPO / "data" / "families" / "demo",
                    help="family dir (trained with the demo preset if absent)")
    ap.add_argument("--n", type=int, default=20, help="slider changes to time")
    ap.add_argument("--limit", type=int, default=4, help="items per BLiMP paradigm before the dev split")
    ap.add_argument("--debounce", type=float, default=0.15, help="explorer debounce in seconds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo", action="store_true", help="also time `workbench demo` cold and warm")
    args = ap.parse_args()
    print(json.dumps(latency(args.family, args.n, args.limit, args.debounce, args.data_dir, args.seed)), flush=True)
    if args.demo:
        for row in demo_times(args.data_dir):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
