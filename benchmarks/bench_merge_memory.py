"""Benchmark: in-memory SLERP of two 134M-parameter Llamas, workbench vs mergekit's ``merge_state_dicts``.

Generates two random Llama checkpoints once into ``benchmarks/out/memory/`` (git-ignored):
float32, SmolLM-135M's shape (hidden 576, 30 layers, intermediate 1536, 9 heads, 3 KV heads,
vocab 49152, tied embeddings: 134.5M parameters, 538 MB each). Then, in one process, with one
torch thread count for everything, it times a slider: SLERP at a sequence of different t
(a drag from t = 0.2 to 0.8 through 0.5, no value repeated), each call timed:

* mergekit 0.1.5 ``merge_state_dicts`` on both state dicts already in memory (loaded once
  with ``safetensors.torch.load_file`` and copied into ordinary memory; float32 like the files);
* ``workbench.merge.merge_in_memory``: warm (ingredients cached: a slider's steady state;
  each result is kept until the next call returns, as ``state = merge_in_memory(...)`` in a
  loop does) and cold (cache cleared before each call);
* ``merge_in_memory(out=model.state_dict())``: the results written into a loaded model;
* the floor, same bytes, no merge tool: one ``torch.add(a, b, out=c)`` over both models'
  weights laid end to end (read both inputs, write one output: the least memory traffic any
  merge needs, in one call, so no per-tensor overhead; no implementation that writes a merged
  model can be faster), and ``torch.add(a, b)`` into a fresh tensor (the same plus the first
  touch of newly allocated memory, which an implementation pays whenever it allocates its
  results anew).

The calls are interleaved (one of each per t), so a changing machine load hits all alike.
The same run checks the results: workbench against mergekit (largest difference relative to
each tensor's largest magnitude) and ``out=`` against the returned tensors (bit-identical).

Usage::

    .venv/bin/python benchmarks/bench_merge_memory.py [--repeats 9] [--threads N] [--json FILE]
    .venv/bin/python benchmarks/bench_merge_memory.py --report FILE   # the table of an earlier --json

Prints a markdown table ready for benchmarks/RESULTS.md. On a loaded machine compare the best
times as well as the medians: mergekit runs thousands of small kernels, each a barrier for
torch's threads, so it slows far more than the few large kernels of the others when a core
is taken.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DIMS = dict(
    hidden_size=576,
    num_layers=30,
    intermediate_size=1536,
    num_heads=9,
    num_kv_heads=3,
    vocab_size=49152,
    tie=True,
)


def make_models(out: Path) -> tuple[Path, Path]:
    """The two random checkpoints, written once (seeds 0 and 1)."""
    from workbench.testing import write_random_llama

    paths = out / "model_a", out / "model_b"
    for seed, p in enumerate(paths):
        if not (p / "model.safetensors").is_file():
            write_random_llama(p, seed=seed, overwrite=True, **DIMS)
    return paths


def t_sequence(n: int) -> list[float]:
    """n distinct t values from 0.2 to 0.8 in slider order (0.5 among them when n is odd)."""
    return [round(0.2 + 0.6 * k / max(n - 1, 1), 4) for k in range(n)]


def timed(fn: Callable[..., object], *args: object) -> tuple[float, float, int, object]:
    """(wall seconds, CPU seconds of this process, minor page faults, result) of ``fn(*args)``.

    Minor page faults count first touches of memory the process had not used yet (4 KiB each):
    what allocating fresh results costs beyond the arithmetic."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0, t0 = time.process_time(), time.perf_counter()
    res = fn(*args)
    wall, used = time.perf_counter() - t0, time.process_time() - c0
    return wall, used, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, res


def rel_diff(got: dict, want: dict) -> float:
    """Largest |got - want| over all tensors, each relative to its reference's largest magnitude."""
    import torch

    worst = 0.0
    for name, w in want.items():
        scale = float(w.abs().max()) or 1.0
        worst = max(worst, float((got[name].to(torch.float64) - w.to(torch.float64)).abs().max()) / scale)
    return worst


def run(args: argparse.Namespace) -> dict:
    """Time every contender on the same t sequence; returns the raw per-call times and checks."""
    import torch
    from mergekit.merge_methods import merge_state_dicts
    from safetensors.torch import load_file

    from workbench.merge import merge_in_memory, merged_model, simple_recipe
    from workbench.merge.memory import clear_ingredient_cache

    torch.set_num_threads(args.threads)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    a, b = make_models(args.out)
    # load_file maps the file; clone into ordinary memory so that nothing is paged in while timed
    sa, sb = ({k: v.clone() for k, v in load_file(p / "model.safetensors").items()} for p in (a, b))
    recipe = lambda t: simple_recipe("slerp", [a, b], t=t)  # noqa: E731
    mk = lambda t: merge_state_dicts({"a": sa, "b": sb}, "slerp", base="a", parameters={"t": t})  # noqa: E731
    ts = t_sequence(args.repeats)
    keys = ("mergekit", "cold", "warm", "out", "floor_out", "floor_fresh")
    times: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    faults: dict[str, list[int]] = {k: [] for k in keys}

    def record(key: str, fn: Callable[..., object], *args: object) -> object:
        wall, used, flt, res = timed(fn, *args)
        times[key].append(wall)
        cpu[key].append(used)
        faults[key].append(flt)
        return res

    for _ in range(args.cold):
        clear_ingredient_cache()
        record("cold", lambda: merge_in_memory(recipe(0.5)))
    model = merged_model(recipe(0.5))
    into = model.state_dict()
    # the floor's operands: both state dicts' bytes laid end to end, so one add moves them all
    flat_a, flat_b = (torch.cat([v.reshape(-1) for v in sd.values()]) for sd in (sa, sb))
    flat_out = torch.empty_like(flat_a)
    ref_mk = mk(0.5)
    ref_wb = merge_in_memory(recipe(0.5))
    merge_in_memory(recipe(0.5), out=into)
    checks = {
        "workbench_vs_mergekit_rel": rel_diff(ref_wb, {k: v for k, v in ref_mk.items() if k in ref_wb}),
        "out_bit_identical": all(torch.equal(into[k], v) for k, v in ref_wb.items()),
        "tensors": len(ref_wb),
    }
    state = ref_wb
    del ref_mk, ref_wb  # from here on only `state` holds a result, as in a slider's loop
    for t in ts:
        record("mergekit", mk, t)  # its result is dropped after the call, like the floors'
        state = record("warm", lambda t: merge_in_memory(recipe(t)), t)  # the previous state lives until here
        record("out", lambda t: merge_in_memory(recipe(t), out=into), t)
        record("floor_out", lambda: torch.add(flat_a, flat_b, out=flat_out))
        record("floor_fresh", lambda: torch.add(flat_a, flat_b))
    checks["out_bit_identical_last"] = all(torch.equal(into[k], v) for k, v in state.items())
    n_params = sum(v.numel() for v in sa.values())
    return {
        "times": times,
        "cpu": cpu,
        "faults": faults,
        "checks": checks,
        "ts": ts,
        "threads": torch.get_num_threads(),
        "params": n_params,
        "model_bytes": sum(v.numel() * v.element_size() for v in sa.values()),
        "torch": torch.__version__,
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "loadavg": {"start": load_start, "end": Path("/proc/loadavg").read_text().split()[:3]},
    }


def report(res: dict) -> str:
    """The markdown block for RESULTS.md."""
    t = res["times"]
    med = {k: statistics.median(v) for k, v in t.items()}
    best = {k: min(v) for k, v in t.items()}
    io = 3 * res["model_bytes"]
    mk_med = med["mergekit"]
    rows = [
        ("mergekit 0.1.5 `merge_state_dicts`", "mergekit"),
        ("workbench `merge_in_memory`, warm cache", "warm"),
        ("workbench `merge_in_memory(out=model.state_dict())`", "out"),
        ("workbench `merge_in_memory`, cold (cache cleared first)", "cold"),
        ("floor: one `torch.add(a, b, out=c)` over all the weights", "floor_out"),
        ("floor: one `torch.add(a, b)` into a fresh tensor", "floor_fresh"),
    ]
    c = res["checks"]
    lines = [
        f"- model: {res['params'] / 1e6:.1f}M parameters per checkpoint, float32, "
        f"{res['model_bytes'] / 1e6:.0f} MB; {len(res['ts'])} t values "
        f"({', '.join(str(x) for x in res['ts'])}), {len(t['cold'])} cold calls",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {res['torch']}, "
        f"{res['threads']} torch threads for every contender; "
        f"date {res['date']}; "
        f"load average (1, 5, 15 min) {' '.join(res['loadavg']['start'])} at the start, "
        f"{' '.join(res['loadavg']['end'])} at the end",
        f"- checks: workbench vs mergekit, largest difference relative to each tensor's scale "
        f"{c['workbench_vs_mergekit_rel']:.2g} over {c['tensors']} tensors; `out=` bit-identical to the "
        f"returned tensors: {c['out_bit_identical'] and c['out_bit_identical_last']}",
        "",
        "| contender | median (s) | best (s) | median vs mergekit | best vs mergekit's best | median vs floor | "
        "CPU, median (s) | fresh memory touched, median (MB) | GB/s (2 read + 1 written), median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, key in rows:
        used = statistics.median(res["cpu"][key])
        touched = statistics.median(res["faults"][key]) * resource.getpagesize() / 1e6
        lines.append(
            f"| {label} | {med[key]:.3f} | {best[key]:.3f} | {mk_med / med[key]:.1f}x | "
            f"{best['mergekit'] / best[key]:.1f}x | {med[key] / med['floor_out']:.2f}x | {used:.3f} | "
            f"{touched:.0f} | {io / med[key] / 1e9:.1f} |"
        )
    lines += [
        "",
        f"Goals (medians): warm >= 3x: **{mk_med / med['warm']:.1f}x**; `out=` >= 10x: "
        f"**{mk_med / med['out']:.1f}x**. The in-place floor allows at most {mk_med / med['floor_out']:.1f}x "
        f"against mergekit's median here, {best['mergekit'] / best['floor_out']:.1f}x best against best.",
    ]
    return "\n".join(lines)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9, help="number of t values (timed calls per contender)")
    ap.add_argument("--cold", type=int, default=3, help="number of cold calls")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=HERE / "out" / "memory")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--report", type=Path, default=None, help="only print the table of an earlier --json")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
