"""Benchmark: an 11-point t sweep against 11 separate ``workbench merge`` + ``workbench eval`` runs,
and the Ray backend's overhead per point on one machine.

All timed commands are the real command-line programs, run one after the other on the same
checkpoint family (the factory's ``tiny`` preset, trained once into ``--family`` if missing):

1. ``workbench sweep`` (local backend, empty cache): SLERP between the first and the last
   trajectory checkpoints at t = 0, 0.1, ..., 1, each point merged in memory and evaluated;
2. for each t: ``workbench merge`` of the same recipe to disk, then ``workbench eval`` of that
   directory (no cache): the per-model route a user would script by hand;
3. ``workbench sweep --backend ray --ray-address ...`` on a Ray head node started here on
   127.0.0.1 (empty cache), then the local backend again: overhead per point =
   (ray wall - local wall) / points.

Reports wall time and CPU time (user + system of the process tree, from ``wait4``; the robust
figure on shared cores; Ray workers are not children of the driver, so Ray rows give wall only),
the ratio sweep / one evaluation (goal <= 4x), and checks that the sweep's accuracies equal
the separate runs'.

    .venv/bin/python benchmarks/bench_sweep.py [--data-dir ../shared/data] [--family data/families/tiny]
        [--tasks blimp] [--limit 10] [--points 11] [--no-ray]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
WB = [PY, "-m", "workbench.cli"]


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd``; its wall time and CPU time (user + system of it and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{out}\n{err[-3000:]}")
    return wall, ru.ru_utime + ru.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ray(env: dict, temp: Path) -> tuple[subprocess.Popen, str, float]:
    ray_bin = str(Path(PY).with_name("ray"))
    for attempt in range(5):
        port, client, dash = _free_port(), _free_port(), _free_port()
        log = temp / f"ray-start-{attempt}.log"
        t0 = time.perf_counter()
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [
                    ray_bin,
                    "start",
                    "--head",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--port={port}",
                    f"--num-cpus={os.cpu_count()}",
                    "--disable-usage-stats",
                    "--include-dashboard=false",
                    "--no-monitor",
                    f"--ray-client-server-port={client}",
                    f"--dashboard-port={dash}",
                    f"--temp-dir={temp}",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        while proc.poll() is None and time.perf_counter() - t0 < 180:
            if b"Ray runtime started" in log.read_bytes():
                return proc, f"127.0.0.1:{port}", time.perf_counter() - t0
            time.sleep(0.5)
        _stop_ray(proc)
    raise SystemExit(f"could not start a Ray head node; see {temp}")


def _stop_ray(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("WORKBENCH_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--family", default=str(ROOT / "data" / "families" / "tiny"))
    ap.add_argument("--tasks", default="blimp")
    ap.add_argument("--limit", type=float, default=10)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--skip-separate", action="store_true", help="only the sweeps (local and Ray), no separate runs")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    args = ap.parse_args()

    from workbench.factory import train_family

    family = train_family("tiny", args.family, data_dir=args.data_dir, progress=False)
    a, b = str(family.trajectory[0]), str(family.trajectory[-1])
    ts = [round(i / (args.points - 1), 6) for i in range(args.points)]
    limit = int(args.limit) if float(args.limit).is_integer() else args.limit
    tasks = [t for t in args.tasks.split(",") if t]

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_sweep."))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "TQDM_DISABLE": "1",
        "WORKBENCH_CACHE": str(work / "unused-cache"),
    }
    import yaml

    sweep_doc = {
        "ingredients": {"a": a, "b": b},
        "method": "slerp",
        "models": ["a", "b"],
        "axes": {"t": ts},
        "tasks": tasks,
        "limit": limit,
        "seed": 0,
        "data_dir": args.data_dir,
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(sweep_doc, sort_keys=False))

    rows: dict[str, tuple[float, float | None]] = {}
    print(f"family: {family.root}\nscratch: {work}", flush=True)

    # 1. the sweep, local backend, empty cache
    rows["sweep_local"] = _run(
        [
            *WB,
            "sweep",
            str(work / "sweep.yaml"),
            "--out",
            str(work / "sweep-local"),
            "--cache",
            str(work / "cache-local"),
        ],
        env,
    )
    print("sweep local", rows["sweep_local"], flush=True)

    # 2. separate merge + eval runs
    merge_wall = merge_cpu = eval_wall = eval_cpu = 0.0
    separate: dict[float, dict] = {}
    for t in [] if args.skip_separate else ts:
        recipe = {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"t": t},
            "dtype": "float32",
        }
        rp = work / f"recipe-{t}.yaml"
        rp.write_text(yaml.safe_dump(recipe, sort_keys=False))
        w, c = _run([*WB, "merge", str(rp), str(work / f"merged-{t}")], env)
        merge_wall += w
        merge_cpu += c
        w, c = _run(
            [
                *WB,
                "eval",
                str(work / f"merged-{t}"),
                "--tasks",
                ",".join(tasks),
                "--data-dir",
                args.data_dir,
                "--limit",
                str(limit),
                "--out",
                str(work / f"eval-{t}"),
                "--no-cache",
            ],
            env,
        )
        eval_wall += w
        eval_cpu += c
        separate[t] = json.loads((work / f"eval-{t}" / "summary.json").read_text())["summary"]
        shutil.rmtree(work / f"merged-{t}")
        print(f"separate t={t}: merge+eval done", flush=True)
    n = len(ts)
    rows["separate_total"] = (merge_wall + eval_wall, merge_cpu + eval_cpu)
    rows["one_eval"] = (eval_wall / n, eval_cpu / n)
    rows["one_merge"] = (merge_wall / n, merge_cpu / n)

    import polars as pl

    table = pl.read_parquet(work / "sweep-local" / "results.parquet")
    mismatches = 0
    for t in [] if args.skip_separate else ts:
        for task in tasks:
            key = "acc,none" if "acc,none" in separate[t][task] else "word_perplexity,none"
            v = table.filter((pl.col("t") == t) & (pl.col("task") == task) & (pl.col("metric") == key))["value"][0]
            if abs(v - separate[t][task][key]) > 1e-9 * max(1.0, abs(v)):
                mismatches += 1

    # 3. Ray backend on a head node started here (points in parallel on the node's cores, then
    #    one point at a time with all cores, like the local backend), then local again
    ray_rows: dict[str, float] = {}
    if not args.no_ray:
        serial_doc = dict(sweep_doc, resources={"num_cpus": os.cpu_count(), "num_gpus": 0})
        (work / "sweep-serial.yaml").write_text(yaml.safe_dump(serial_doc, sort_keys=False))
        temp = Path(tempfile.mkdtemp(prefix="wbbr", dir="/tmp"))
        proc, address, startup = _start_ray(env, temp)
        try:
            ray_rows["cluster_start"] = startup
            ray_rows["sweep_ray"] = _run(
                [
                    *WB,
                    "sweep",
                    str(work / "sweep.yaml"),
                    "--out",
                    str(work / "sweep-ray"),
                    "--backend",
                    "ray",
                    "--ray-address",
                    address,
                    "--cache",
                    str(work / "cache-ray"),
                ],
                env,
            )[0]
            ray_rows["sweep_ray_serial"] = _run(
                [
                    *WB,
                    "sweep",
                    str(work / "sweep-serial.yaml"),
                    "--out",
                    str(work / "sweep-ray-serial"),
                    "--backend",
                    "ray",
                    "--ray-address",
                    address,
                    "--cache",
                    str(work / "cache-ray-serial"),
                ],
                env,
            )[0]
            ray_rows["sweep_ray_cached"] = _run(
                [
                    *WB,
                    "sweep",
                    str(work / "sweep.yaml"),
                    "--out",
                    str(work / "sweep-ray-2"),
                    "--backend",
                    "ray",
                    "--ray-address",
                    address,
                    "--cache",
                    str(work / "cache-ray"),
                ],
                env,
            )[0]
        finally:
            _stop_ray(proc)
            shutil.rmtree(temp, ignore_errors=True)
        ray_rows["sweep_local_again"] = _run(
            [
                *WB,
                "sweep",
                str(work / "sweep.yaml"),
                "--out",
                str(work / "sweep-local-2"),
                "--cache",
                str(work / "cache-local-2"),
            ],
            env,
        )[0]
        same = all(
            pl.read_parquet(work / d / "results.parquet").equals(table) for d in ("sweep-ray", "sweep-ray-serial")
        )
        ray_rows["same_numbers"] = float(same)

        def point_seconds(d: str) -> tuple[float, float]:
            log = [json.loads(x) for x in (work / d / "log.jsonl").read_text().splitlines()]
            secs = sorted(r["seconds"] for r in log)
            return sum(secs) / len(secs), secs[len(secs) // 2]

        ray_rows["pt_local"], ray_rows["pt_local_median"] = point_seconds("sweep-local-2")
        ray_rows["pt_ray"], ray_rows["pt_ray_median"] = point_seconds("sweep-ray-serial")

    sw, sc = rows["sweep_local"]
    print()
    print(
        f"- command: `.venv/bin/python benchmarks/bench_sweep.py --tasks {args.tasks} --limit {args.limit} "
        f"--points {args.points}{' --skip-separate' if args.skip_separate else ''}`"
    )
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(f"- date: {dt.date.today().isoformat()}")
    print(f"- workload: {n} points, SLERP t = 0..1, tasks {tasks}, limit {limit} per stratum, family {family.root}")
    print()
    print("| measure | wall (s) | CPU (s) |")
    print("|---|---|---|")
    print(f"| `workbench sweep` ({n} points, local) | {sw:.1f} | {sc:.1f} |")
    if not args.skip_separate:
        ew, ec = rows["one_eval"]
        tw, tc = rows["separate_total"]
        print(f"| {n} x (`workbench merge` + `workbench eval`) | {tw:.1f} | {tc:.1f} |")
        print(f"| one `workbench merge` (mean) | {rows['one_merge'][0]:.1f} | {rows['one_merge'][1]:.1f} |")
        print(f"| one `workbench eval` (mean) | {ew:.1f} | {ec:.1f} |")
        print(f"| sweep / one evaluation | {sw / ew:.2f}x | {sc / ec:.2f}x |")
        print(f"| separate runs / sweep | {tw / sw:.2f}x | {tc / sc:.2f}x |")
        print(f"| accuracies differing between sweep and separate runs | {mismatches} | |")
    if ray_rows:
        per_point = (ray_rows["sweep_ray_serial"] - ray_rows["sweep_local_again"]) / n
        cpus = os.cpu_count()
        print(f"| Ray head node start (`ray start`, not counted below) | {ray_rows['cluster_start']:.1f} | |")
        print(
            f"| `workbench sweep --backend ray`, num_cpus 1 per point ({cpus} points at a time) | "
            f"{ray_rows['sweep_ray']:.1f} | |"
        )
        print(
            f"| `workbench sweep --backend ray`, num_cpus {cpus} per point (one at a time) | "
            f"{ray_rows['sweep_ray_serial']:.1f} | |"
        )
        print(f"| `workbench sweep` local, same run | {ray_rows['sweep_local_again']:.1f} | |")
        print(f"| Ray overhead per point ((ray one at a time - local) / {n}) | {per_point:.2f} | |")
        print(
            f"| time inside a point, mean / median: local | {ray_rows['pt_local']:.2f} / "
            f"{ray_rows['pt_local_median']:.2f} | |"
        )
        print(
            f"| time inside a point, mean / median: Ray worker (one at a time) | {ray_rows['pt_ray']:.2f} / "
            f"{ray_rows['pt_ray_median']:.2f} | |"
        )
        print(f"| rerun with every point cached (no Ray work) | {ray_rows['sweep_ray_cached']:.1f} | |")
        print(f"| Ray tables equal local table | {'yes' if ray_rows['same_numbers'] else 'no'} | |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
