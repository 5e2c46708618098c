"""Benchmark: SLERP of two ~100M-parameter Llama checkpoints, workbench vs mergekit-yaml.

Generates two random Llama checkpoints (float32, ~96M parameters each: hidden 768, 10 layers,
intermediate 2048, vocab 16384) into ``benchmarks/out/`` (git-ignored), then measures in the
same run on the same machine:

* whole process: ``workbench merge R.yaml OUT`` vs ``mergekit-yaml R.yaml OUT`` (wall time,
  peak RSS of the process, from ``resource.getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper);
* in process: the merge call alone after imports: ``merge_to_disk`` and ``merge_in_memory``
  (cold and warm ingredient cache) vs mergekit's ``run_merge``;
* GB/s: (bytes read + bytes written) / time;
* floors, in the same run: ``python -c pass`` and ``python -c 'import torch'`` as whole
  processes (no torch-based tool can start faster), and reading both inputs plus writing
  one output's bytes with no math (no to-disk merge can be faster), each with the best
  ratio against mergekit it allows.

Usage::

    .venv/bin/python benchmarks/bench_merge.py [--repeats 3] [--device cpu] [--json out.json]

Prints a markdown table ready for benchmarks/RESULTS.md.
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
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
DIMS = dict(hidden_size=768, num_layers=10, intermediate_size=2048, vocab_size=16384, num_heads=12)

WRAPPER = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    t0 = time.perf_counter()
    rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024}))
    """
)

INPROC = textwrap.dedent(
    """
    import json, os, resource, shutil, sys, time
    which, recipe, out, device = sys.argv[1:5]
    os.environ["HF_HUB_OFFLINE"] = "1"
    res = {}
    if which == "workbench":
        from workbench.merge import load_recipe, merge_in_memory, merge_to_disk
        r = load_recipe(recipe)
        t0 = time.perf_counter(); merge_to_disk(r, out, device=device, progress=False)
        res["to_disk_s"] = time.perf_counter() - t0
        if device.startswith("cuda"):
            import torch; torch.cuda.synchronize()
        t0 = time.perf_counter(); sd = merge_in_memory(r, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        res["in_memory_cold_s"] = time.perf_counter() - t0
        del sd
        warm = []
        for _ in range(3):
            t0 = time.perf_counter(); sd = merge_in_memory(r, device=device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            warm.append(time.perf_counter() - t0); del sd
        res["in_memory_warm_s"] = min(warm)
        sd = merge_in_memory(r, device=device)
        into = []
        for _ in range(3):
            t0 = time.perf_counter(); merge_in_memory(r, device=device, out=sd)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            into.append(time.perf_counter() - t0)
        res["in_memory_into_s"] = min(into)
    else:
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions
        cfg = MergeConfiguration.model_validate(yaml.safe_load(open(recipe)))
        opts = MergeOptions(quiet=True, cuda=device.startswith("cuda"))
        t0 = time.perf_counter(); run_merge(cfg, out, opts)
        res["to_disk_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))
    """
)


COPY_FLOOR = textwrap.dedent(
    """
    import json, os, sys, time
    a, b, out = sys.argv[1:4]
    chunk = 8 << 20  # cache-resident buffers: the copies, not page faults, are measured
    buf_a, buf_b = bytearray(chunk), bytearray(chunk)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
        fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size, off = os.path.getsize(a), 0
        while off < size:
            got = os.preadv(fa, [buf_a], off)
            os.preadv(fb, [buf_b], off)
            os.pwrite(fo, memoryview(buf_a)[:got], off)
            off += got
        for fd in (fa, fb, fo):
            os.close(fd)
        best = min(best, time.perf_counter() - t0)
        os.unlink(out)
    print(json.dumps({"copy_s": best}))
    """
)


def make_models(out: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from workbench.testing import write_random_llama

    a, b = out / "model_a", out / "model_b"
    for seed, p in ((0, a), (1, b)):
        if not (p / "model.safetensors").is_file():
            shutil.rmtree(p, ignore_errors=True)
            write_random_llama(p, seed=seed, **DIMS)
    return a, b


def run_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "merge")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    a, b = make_models(args.out)
    model_bytes = (a / "model.safetensors").stat().st_size
    n_params = model_bytes // 4
    recipe = args.out / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
        "parameters:\n  t: [0.0, 0.5, 1.0]\ndtype: float32\n"
    )
    io_bytes = 3 * model_bytes  # two inputs read, one output written
    wb_cli = [str(BIN / "workbench"), "merge", str(recipe), "OUT", "--device", args.device]
    mk_cli = [str(BIN / "mergekit-yaml"), str(recipe), "OUT"] + (["--cuda"] if args.device.startswith("cuda") else [])
    results: dict[str, list[dict]] = {
        "workbench_cli": [],
        "mergekit_cli": [],
        "workbench_inproc": [],
        "mergekit_inproc": [],
        "python_cli": [],
        "import_torch_cli": [],
        "copy_floor": [],
    }
    for i in range(args.repeats):
        # floors: what any Python + torch process, and any to-disk merge, costs on this machine
        for key, code in (("python_cli", "pass"), ("import_torch_cli", "import torch")):
            results[key].append(run_json([sys.executable, "-c", WRAPPER, sys.executable, "-c", code]))
        results["copy_floor"].append(
            run_json(
                [
                    sys.executable,
                    "-c",
                    COPY_FLOOR,
                    str(a / "model.safetensors"),
                    str(b / "model.safetensors"),
                    str(args.out / "copy_floor.bin"),
                ]
            )
        )
        for key, cmd in (("workbench_cli", wb_cli), ("mergekit_cli", mk_cli)):
            out = args.out / f"{key}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            results[key].append(
                run_json([sys.executable, "-c", WRAPPER] + [out.as_posix() if c == "OUT" else c for c in cmd])
            )
            shutil.rmtree(out, ignore_errors=True)
        for key, which in (("workbench_inproc", "workbench"), ("mergekit_inproc", "mergekit")):
            out = args.out / f"{key}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            results[key].append(run_json([sys.executable, "-c", INPROC, which, str(recipe), str(out), args.device]))
            shutil.rmtree(out, ignore_errors=True)

    med = lambda key, field: statistics.median(r[field] for r in results[key])  # noqa: E731
    wb_w, mk_w = med("workbench_cli", "wall_s"), med("mergekit_cli", "wall_s")
    wb_d, mk_d = med("workbench_inproc", "to_disk_s"), med("mergekit_inproc", "to_disk_s")
    wb_c, wb_h = med("workbench_inproc", "in_memory_cold_s"), med("workbench_inproc", "in_memory_warm_s")
    wb_i = med("workbench_inproc", "in_memory_into_s")
    py_w, torch_w = med("python_cli", "wall_s"), med("import_torch_cli", "wall_s")
    copy_s = med("copy_floor", "copy_s")
    gbs = lambda s: io_bytes / s / 1e9  # noqa: E731
    import torch

    machine = f"{platform.node()} · {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine += f" · {torch.cuda.get_device_name(0)}"
    lines = [
        f"- model: {n_params / 1e6:.1f}M parameters per checkpoint, float32, {model_bytes / 1e6:.0f} MB; "
        f"recipe: slerp with gradient t [0, 0.5, 1]; device {args.device}; median of {args.repeats} runs",
        f"- machine: {machine}",
        "",
        "| measure | workbench | mergekit 0.1.5 | ratio |",
        "|---|---|---|---|",
        f"| whole process, wall (s) | {wb_w:.2f} | {mk_w:.2f} | {mk_w / wb_w:.1f}x |",
        f"| whole process, peak RSS (MB) | {med('workbench_cli', 'peak_rss_mb'):.0f} | "
        f"{med('mergekit_cli', 'peak_rss_mb'):.0f} | |",
        f"| in process, merge to disk (s) | {wb_d:.2f} | {mk_d:.2f} | {mk_d / wb_d:.1f}x |",
        f"| in process, merge in memory, cold (s) | {wb_c:.2f} | | {mk_d / wb_c:.1f}x |",
        f"| in process, merge in memory, warm cache (s) | {wb_h:.3f} | | {mk_d / wb_h:.1f}x |",
        f"| in process, merge in memory, warm cache, into existing tensors (s) | {wb_i:.3f} | | {mk_d / wb_i:.1f}x |",
        f"| GB/s (read + written) merge to disk | {gbs(wb_d):.2f} | {gbs(mk_d):.2f} | |",
        f"| GB/s merge in memory, warm, into existing tensors | {gbs(wb_i):.2f} | | |",
        "",
        "Floors on this machine, same run (no merge tool involved):",
        "",
        "| floor | time | best ratio any tool could reach against mergekit |",
        "|---|---|---|",
        f"| `python -c pass`, whole process (s) | {py_w:.2f} | |",
        f"| `python -c 'import torch'`, whole process (s) | {torch_w:.2f} | {mk_w / torch_w:.1f}x (whole process) |",
        f"| `python -c 'import torch'`, peak RSS (MB) | {med('import_torch_cli', 'peak_rss_mb'):.0f} | |",
        f"| read both inputs + write one output in 8 MB chunks, no math, in process, best of 3 (s) | {copy_s:.2f} | "
        f"{mk_d / copy_s:.1f}x (in process, to disk) |",
    ]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "model_bytes": model_bytes}, indent=2))


if __name__ == "__main__":
    main()
