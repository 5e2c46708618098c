"""Benchmark: merge search on the ``demo`` family, what it finds and how fast it runs.

Part ``demo`` (what it finds): a 24-trial CMA-ES search over the linear weights of the five
trajectory checkpoints (objective: BLiMP accuracy + held-out bits per byte, each standardised by
the ingredients' spread, on the dev half; successive halving over 1/4, 1/2 and all of it), the
same budget with the Sobol baseline, and an 11-point SLERP t sweep between the first and the
last trajectory checkpoint scored with the same objective on the same dev items
(:func:`workbench.search.score_recipes`). The search's winner goes through the claim check; its
verdict (test half) is written to ``--out``/demo.

Part ``throughput`` (how fast): the same candidates (linear weights, BLiMP only, every trial on
the whole dev half, no halving) as trials per minute of

1. ``run_search`` with the local backend (this process; empty cache),
2. ``run_search`` with the Ray backend (a local Ray cluster started here, its start timed apart),
3. separate ``workbench merge`` + ``workbench eval`` processes per candidate, on as many BLiMP
   pairs (``--limit`` half the search's, so the counts match the dev half's; no cache),

and the floors: one in-process evaluation of a loaded model on the dev items (what any trial
costs at least here), and one interpreter start importing torch and transformers (what each of
the two separate processes costs at least). The load average is printed next to every figure.

    .venv/bin/python benchmarks/bench_search.py [--family data/families/demo] [--data-dir ../shared/data]
        [--part demo|throughput|all] [--out benchmarks/out/search] [--trials 24] [--separate 6]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
WB = [PY, "-m", "workbench.cli"]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _family(path: Path, data_dir: str | None):
    from workbench.factory import load_family, train_family

    try:
        return load_family(path)
    except Exception:
        print(f"training the demo family into {path} (a few minutes)", flush=True)
        return train_family("demo", path, data_dir=data_dir)


def _linear_search(family, data_dir: str | None, **over) -> dict:
    heldout = f"text:{family.heldout}"
    doc = {
        "ingredients": {p.name: str(p) for p in family.trajectory},
        "method": "linear",
        "space": {"weight@*": {"low": 0.0, "high": 1.0}},
        "tasks": ["blimp", heldout],
        "objective": [
            {"task": "blimp", "metric": "acc", "weight": 1.0},
            {"task": heldout, "metric": "bits_per_byte", "weight": 1.0},
        ],
        "limit": {"blimp": 20},
        "seed": 0,
        "data_dir": data_dir,
        "optimizer": {"name": "cmaes", "popsize": 8},
        "budget": {"trials": 24},
        "fidelity": {"min_fraction": 0.25, "eta": 2},
        "control": str(family.annealed) if family.annealed else None,
    }
    doc.update(over)
    return doc


def _write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def part_demo(family, data_dir: str | None, out: Path, trials: int) -> dict:
    """The search, the Sobol baseline and the 11-point t sweep, all on the same dev items."""
    from workbench.search import run_search, score_recipes
    from workbench.store import ResultStore

    shutil.rmtree(out / "cache", ignore_errors=True)  # timed from nothing; the Sobol run then shares it
    store = ResultStore(out / "cache")
    path = _write(out / "demo.yaml", _linear_search(family, data_dir, budget={"trials": trials}))
    load0 = _load()
    t0 = time.perf_counter()
    result = run_search(path, out / "demo", store=store, overwrite=True)
    wall = time.perf_counter() - t0
    sobol_path = _write(
        out / "demo-sobol.yaml",
        _linear_search(family, data_dir, optimizer={"name": "sobol", "popsize": 8}, budget={"trials": trials}),
    )
    sobol = run_search(sobol_path, out / "demo-sobol", store=store, overwrite=True)
    first, last = family.trajectory[0].name, family.trajectory[-1].name
    ts = [round(i / 10, 1) for i in range(11)]
    recipes = [
        {"merge_method": "slerp", "base_model": first, "models": [{"model": first}, {"model": last}],
         "parameters": {"t": t}, "dtype": "float32"}
        for t in ts
    ]  # fmt: skip
    sweep = score_recipes(path, recipes, store=store)
    sweep_values = [s.value for s in sweep]
    best_i = max(range(len(ts)), key=lambda i: sweep_values[i])
    panel = result.panel
    cmp = panel.comparisons
    primary = cmp.filter(cmp["primary"] & (cmp["subject"] == "merge") & (cmp["reference"] == "best_dev"))
    merge = result.objectives.filter(result.objectives["system"] == "merge").row(0, named=True)
    return {
        "load_before": load0,
        "load_after": _load(),
        "wall_s": round(wall, 1),
        "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "trials": result.n_trials,
        "evaluations": result.n_evaluations,
        "best": {
            "trial": result.best["trial"],
            "label": result.best["label"],
            "dev_objective": result.best["objective"],
        },
        "best_test_objective": merge["test"],
        "sobol_best": {
            "trial": sobol.best["trial"],
            "label": sobol.best["label"],
            "dev_objective": sobol.best["objective"],
        },
        "sobol_best_test_objective": sobol.objectives.filter(sobol.objectives["system"] == "merge")["test"][0],
        "sweep": {
            "t": ts,
            "dev_objective": sweep_values,
            "best_t": ts[best_i],
            "best_dev_objective": sweep_values[best_i],
        },
        "search_beats_sweep_on_dev": result.best["objective"] >= sweep_values[best_i],
        "objectives": result.objectives.to_dicts(),
        "test_vs_best_dev": primary.select("task", "metric", "estimate", "low", "high", "call").to_dicts(),
        "verdict": str(out / "demo" / "verdict.md"),
    }


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def _floor_in_process(family, data_dir: str | None) -> float:
    """One evaluation of an already loaded model on the search's dev items, the memo warm."""
    from workbench.checkpoints import load_model, load_tokenizer
    from workbench.eval import evaluate
    from workbench.search.objective import dev_subsets

    p = family.trajectory[-1]
    model, tok = load_model(p), load_tokenizer(p)
    # the same subsample and dev items as the search's trials (limit and seed as in its search file)
    kwargs = {"data_dir": data_dir, "limit": 10, "seed": 0, "progress": False}
    full = evaluate(model, tok, ["blimp"], **kwargs)
    subsets, _ = dev_subsets(full.items, ["blimp"], [1.0], seed=0, dev_fraction=0.5)
    evaluate(model, tok, ["blimp"], item_ids=subsets[0], **kwargs)  # warm: data and tokenisation memoised
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        evaluate(model, tok, ["blimp"], item_ids=subsets[0], **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def _start_ray(connect) -> float:
    """Start a local Ray cluster (3 tries: a start can miss Ray's own agent timeouts under load); seconds."""
    from workbench.errors import WorkbenchError

    for attempt in range(3):
        t0 = time.perf_counter()
        try:
            connect(None)
            return time.perf_counter() - t0
        except WorkbenchError as err:
            print(f"Ray start {attempt + 1} failed: {err}", flush=True)
    raise SystemExit("could not start a local Ray cluster in 3 tries")


def part_throughput(family, data_dir: str | None, out: Path, trials: int, separate: int) -> dict:
    import ray

    from workbench.search import prepare, run_search, trial_recipe
    from workbench.search.spec import load_search
    from workbench.store import ResultStore
    from workbench.sweep.backends import connect_ray

    doc = _linear_search(
        family, data_dir, tasks=["blimp"], objective=[{"task": "blimp", "metric": "acc", "weight": 1.0}],
        limit={"blimp": 10}, budget={"trials": trials}, fidelity={"min_fraction": 1.0}, control=None,
    )  # fmt: skip
    path = _write(out / "throughput.yaml", doc)
    shutil.rmtree(out / "tp-cache-local", ignore_errors=True)
    shutil.rmtree(out / "tp-cache-ray", ignore_errors=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # the floors first, in a fresh process: measured at the end (after the Ray session and the
    # separate processes) the same evaluation took 6.0 s against 0.6 s here, so it was no floor
    floor = _floor_in_process(family, data_dir)
    start = _timed([PY, "-c", "import torch, transformers"], env)
    rows = {}
    load0 = _load()
    local = run_search(path, None, store=ResultStore(out / "tp-cache-local"), check_claim=False, progress=False)
    rows["local"] = {"loop_s": local.seconds["search"], "load": f"{load0} -> {_load()}"}
    load0 = _load()
    print(json.dumps({"local": rows["local"]}), flush=True)
    ray_start = _start_ray(connect_ray)
    try:
        remote = run_search(
            path, None, backend="ray", store=ResultStore(out / "tp-cache-ray"), check_claim=False, progress=False
        )
    finally:
        ray.shutdown()
    rows["ray"] = {"loop_s": remote.seconds["search"], "start_s": ray_start, "load": f"{load0} -> {_load()}"}
    same = local.trials["objective"].to_list() == remote.trials["objective"].to_list()

    # the same candidates as separate processes, on as many BLiMP pairs as the dev half has
    setup = prepare(load_search(path))
    work = out / "separate"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load0 = _load()
    times = []
    first = local.trials.sort("trial").head(separate)
    for row in first.iter_rows(named=True):
        recipe = trial_recipe(setup, {d: row[d] for d in local.dims})
        r = _write(work / f"trial-{row['trial']}.yaml", recipe)
        merged, evaluated = work / f"merged-{row['trial']}", work / f"eval-{row['trial']}"
        m = _timed([*WB, "merge", str(r), str(merged)], env)
        e = _timed(
            [*WB, "eval", str(merged), "--tasks", "blimp", "--limit", "5", "--no-cache", "--out", str(evaluated),
             *(["--data-dir", data_dir] if data_dir else [])],
            env,
        )  # fmt: skip
        times.append((m, e))
    rows["separate"] = {
        "per_trial_s": sum(m + e for m, e in times) / len(times),
        "merge_s": sum(m for m, _ in times) / len(times),
        "eval_s": sum(e for _, e in times) / len(times),
        "n": len(times),
        "load": f"{load0} -> {_load()}",
    }
    n_dev = sum(local.n_dev.values())
    out_rows = {
        "trials": trials,
        "dev_items": n_dev,
        "local_trials_per_min": 60 * trials / rows["local"]["loop_s"],
        "ray_trials_per_min": 60 * trials / rows["ray"]["loop_s"],
        "separate_trials_per_min": 60 / rows["separate"]["per_trial_s"],
        "floor_eval_s": floor,
        "floor_trials_per_min": 60 / floor,
        "floor_process_start_s": start,
        "local_equals_ray": same,
        **{f"{k}_{m}": v for k, d in rows.items() for m, v in d.items()},
    }
    out_rows["ratio_local"] = out_rows["local_trials_per_min"] / out_rows["separate_trials_per_min"]
    out_rows["ratio_ray"] = out_rows["ray_trials_per_min"] / out_rows["separate_trials_per_min"]
    return out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default=str(ROOT / "data" / "families" / "demo"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--part", choices=["demo", "throughput", "all"], default="all")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "search"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--throughput-trials", type=int, default=16)
    ap.add_argument("--separate", type=int, default=6, help="candidates run as separate processes")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out = Path(args.out)
    family = _family(Path(args.family), args.data_dir)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    if args.part in ("demo", "all"):
        report["demo"] = part_demo(family, args.data_dir, out, args.trials)
        print(json.dumps(report["demo"], indent=1, default=str), flush=True)
    if args.part in ("throughput", "all"):
        report["throughput"] = part_throughput(family, args.data_dir, out, args.throughput_trials, args.separate)
        print(json.dumps(report["throughput"], indent=1, default=str), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"report-{args.part}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
