"""Benchmark: SLERP at scale, workbench vs mergekit-yaml, against a no-math copy of the same bytes.

For random float32 Llamas of about 0.1B, 0.5B and 1.5B parameters (0.44 / 2.1 / 5.9 GB each,
written into ``benchmarks/out/scale/`` (git-ignored) with
:func:`workbench.testing.write_random_llama`), measures in the same run, each as a separate
process under ``/usr/bin/time -v`` (wall clock and maximum resident set size of the process):

* ``workbench merge R.yaml OUT`` and ``mergekit-yaml R.yaml OUT`` (offline, default options);
* the floor: a Python process with no torch that reads both inputs and writes one output of
  the same size (shard by shard) through buffers of the disk engine's chunk size
  (``CHUNK_ELEMENTS`` float32 elements per input), no arithmetic: no to-disk merge can be
  faster on this machine;
* ``python -c 'import torch'``: the start-up every torch-based tool pays on top of that.

GB/s = (2 inputs read + 1 output written) / wall time. Each run starts from the same page
cache state: ``cold`` (the inputs evicted with ``posix_fadvise(DONTNEED)`` after a ``sync``)
or ``warm`` (the inputs read once just before). Outputs are deleted after each run; the
models are deleted at the end unless ``--keep``. Free disk space is checked first (two
models plus one output per size).

Usage::

    .venv/bin/python benchmarks/bench_scale.py [--sizes 0.1B,0.5B,1.5B] [--cache cold,warm]
        [--repeats 1] [--keep] [--json FILE] [--variant NAME=DIR ...]

Prints markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
if importlib.util.find_spec("workbench") is None:  # not installed: the checkout's own package
    sys.path.insert(0, str(ROOT))
SIZES = {
    "0.1B": dict(hidden_size=768, num_layers=12, intermediate_size=2048, vocab_size=16384, num_heads=12),
    "0.5B": dict(hidden_size=1280, num_layers=22, intermediate_size=3456, vocab_size=32000, num_heads=16),
    "1.5B": dict(hidden_size=2048, num_layers=26, intermediate_size=5632, vocab_size=32000, num_heads=16),
}

COPY_FLOOR = textwrap.dedent(
    """
    import os, sys
    chunk, out = int(sys.argv[1]), sys.argv[2]
    files = sys.argv[3:]
    half = len(files) // 2
    bufs = [bytearray(chunk), bytearray(chunk)]
    os.mkdir(out)
    for a, b in zip(files[:half], files[half:]):  # shard i of one model with shard i of the other
        fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
        fo = os.open(os.path.join(out, os.path.basename(a)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size, off = os.path.getsize(a), 0
        while off < size:
            got = os.preadv(fa, [bufs[0]], off)
            os.preadv(fb, [bufs[1]], off)
            os.pwrite(fo, memoryview(bufs[0])[:got], off)
            off += got
        for fd in (fa, fb, fo):
            os.close(fd)
    """
)

_TIME_FIELDS = {
    "wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)"),
    "rss_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "cpu_pct": re.compile(r"Percent of CPU this job got: (\d+)%"),
    "user": re.compile(r"User time \(seconds\): ([\d.]+)"),
    "sys": re.compile(r"System time \(seconds\): ([\d.]+)"),
    "major_faults": re.compile(r"Major \(requiring I/O\) page faults: (\d+)"),
    "fs_in": re.compile(r"File system inputs: (\d+)"),
    "fs_out": re.compile(r"File system outputs: (\d+)"),
}


def _seconds(clock: str) -> float:
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: wall seconds, peak RSS (MB) and I/O counters."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    got = {k: rx.search(proc.stderr) for k, rx in _TIME_FIELDS.items()}
    missing = [k for k, m in got.items() if m is None]
    if missing:
        raise SystemExit(f"/usr/bin/time -v output lacks {missing}:\n{proc.stderr[-2000:]}")
    return {
        "wall_s": _seconds(got["wall"][1]),
        "peak_rss_mb": int(got["rss_kb"][1]) / 1024,
        "cpu_pct": int(got["cpu_pct"][1]),
        "cpu_s": float(got["user"][1]) + float(got["sys"][1]),
        "major_faults": int(got["major_faults"][1]),
        "fs_in_gb": int(got["fs_in"][1]) * 512 / 1e9,
        "fs_out_gb": int(got["fs_out"][1]) * 512 / 1e9,
    }


def model_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file())


def set_cache(files: list[Path], state: str) -> None:
    """Put ``files`` in the page cache (``warm``) or out of it (``cold``)."""
    os.sync()  # dirty pages (the last output) cannot be evicted; write them out first
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if state == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 64 << 20):
                    pass
        finally:
            os.close(fd)


def make_models(out: Path, dims: dict) -> tuple[Path, Path]:
    from workbench.testing import write_random_llama

    a, b = out / "model_a", out / "model_b"
    for seed, p in ((0, a), (1, b)):
        if not (p / "config.json").is_file():  # written atomically: a directory there is complete
            shutil.rmtree(p, ignore_errors=True)
            t0 = time.perf_counter()
            write_random_llama(p, seed=seed, **dims)
            print(f"  wrote {p} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return a, b


def _params(dims: dict) -> int:
    from workbench.testing import llama_config, llama_shapes

    cfg = llama_config(**dims)
    total = 0
    for _, shape in llama_shapes(cfg):
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def bench_size(label: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Every measurement of one model size; the models are written first if absent."""
    from workbench.merge.disk import CHUNK_ELEMENTS

    dims = SIZES[label]
    out = args.out / label
    out.mkdir(parents=True, exist_ok=True)
    n_params = _params(dims)
    need = 3 * n_params * 4 * 1.05 - sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    free = shutil.disk_usage(out).free
    if free < need:
        raise SystemExit(f"{label}: needs {need / 1e9:.1f} GB free in {out}, {free / 1e9:.1f} GB available")
    a, b = make_models(out, dims)
    weights = [sorted(m.glob("*.safetensors")) for m in (a, b)]
    if [p.name for p in weights[0]] != [p.name for p in weights[1]]:
        raise SystemExit(f"{a} and {b} are sharded differently: delete them to regenerate")
    model_bytes = sum(p.stat().st_size for p in weights[0])
    recipe = out / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
        "parameters:\n  t: [0.0, 0.5, 1.0]\ndtype: float32\n"
    )
    target = out / "merged"
    cmds = {
        "copy floor": [
            sys.executable,
            "-c",
            COPY_FLOOR,
            str(CHUNK_ELEMENTS * 4),
            str(target),
            *map(str, weights[0] + weights[1]),
        ],
        "workbench merge": [str(BIN / "workbench"), "merge", str(recipe), str(target)],
        "mergekit-yaml": [str(BIN / "mergekit-yaml"), str(recipe), str(target)],
    }
    envs = {key: env for key in cmds}
    for name, path in args.variant:  # the same command on a patched copy of the package
        cmds[f"workbench merge ({name})"] = cmds["workbench merge"]
        envs[f"workbench merge ({name})"] = dict(env, PYTHONPATH=path)
    inputs = model_files(a) + model_files(b)
    runs: dict[str, dict[str, list[dict]]] = {}
    for state in args.cache:
        runs[state] = {k: [] for k in cmds}
        for _ in range(args.repeats):
            for key, cmd in cmds.items():
                set_cache(inputs, state)
                r = timed(cmd, envs[key])
                print(f"  {label} {state} {key}: {r}", file=sys.stderr)
                runs[state][key].append(r)
                shutil.rmtree(target)
    torch_start = timed([sys.executable, "-c", "import torch"], env)
    if not args.keep:
        shutil.rmtree(out)
    return {"label": label, "params": n_params, "model_bytes": model_bytes, "runs": runs, "import_torch": torch_start}


def _best(rs: list[dict]) -> dict:
    return min(rs, key=lambda r: r["wall_s"])


def table(res: dict) -> list[str]:
    io = 3 * res["model_bytes"]
    head = (
        f"**{res['label']}**: {res['params'] / 1e6:.0f}M parameters per model, "
        f"{res['model_bytes'] / 1e9:.2f} GB each; `python -c 'import torch'`: "
        f"{res['import_torch']['wall_s']:.2f} s, {res['import_torch']['peak_rss_mb']:.0f} MB"
    )
    lines = [head, ""]
    lines += [
        "| page cache | process | wall (s) | CPU (s) | peak RSS (MB) | GB/s | x copy floor | x (floor + torch import) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for state, by_tool in res["runs"].items():
        floor = _best(by_tool["copy floor"])["wall_s"]
        for tool, rs in by_tool.items():
            r = _best(rs)
            ratio = r["wall_s"] / floor
            torch_floor = floor + res["import_torch"]["wall_s"]
            vs_torch = "" if tool == "copy floor" else f"{r['wall_s'] / torch_floor:.2f}"
            lines.append(
                f"| {state} | {tool} | {r['wall_s']:.2f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} "
                f"| {io / r['wall_s'] / 1e9:.2f} "
                f"| {ratio:.2f} | {vs_torch} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.1B,0.5B,1.5B", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--cache", default="cold,warm", help="page cache state(s) each run starts from")
    ap.add_argument("--repeats", type=int, default=1, help="runs per tool and cache state (the best is shown)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "scale")
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also time `workbench merge` with DIR first on PYTHONPATH (a patched copy of the package)",
    )
    args = ap.parse_args()
    args.cache = [c for c in args.cache.split(",") if c]
    if any("=" not in v for v in args.variant):
        raise SystemExit("--variant takes NAME=DIR")
    args.variant = [tuple(v.split("=", 1)) for v in args.variant]
    if any(c not in ("cold", "warm") for c in args.cache):
        raise SystemExit("--cache takes cold and/or warm")
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size(s) {unknown}; known: {list(SIZES)}")
    if not Path("/usr/bin/time").is_file():
        raise SystemExit("/usr/bin/time (GNU time) is needed for peak RSS: apt-get install time")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = [bench_size(s, args, env) for s in sizes]
    import torch

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    print(
        f"- date: {started}; machine: {platform.machine()}, {os.cpu_count()} CPUs, {mem_gb:.0f} GB RAM, "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"- command: `.venv/bin/python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`".rstrip() + "\n")
    for res in results:
        print("\n".join(table(res)) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
