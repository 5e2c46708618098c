"""Benchmark: full BLiMP (67 paradigms x 1000 pairs) with workbench vs lm-eval 0.4.13.

Both run end to end as command-line programs in the same run (lm-eval in the background
while the workbench runs), on the same small model
(2-layer Llama, byte-level BPE tokenizer that adds BOS, made by tests/_eval_model.py),
with the same number of torch threads. lm-eval reads the local BLiMP files through task
YAMLs that include its own BLiMP template (``--include_path``, offline). Reports each
tool's CPU time (user + system of its process, the robust figure on shared cores) and
wall time, the speed-up, and whether every per-pair decision is identical.

    .venv/bin/python benchmarks/bench_eval.py [--data-dir ../shared/data] [--threads 1]
        [--lm-eval-batch-size 64] [--batch-size 64,512] [--paradigms N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _start(cmd: list[str], env: dict) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), time.perf_counter()


def _finish(proc: subprocess.Popen, t0: float) -> tuple[float, float]:
    """Wait for ``proc``; its wall time and CPU time (user + system, from wait4)."""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args[0]} failed with status {proc.returncode}")
    return wall, ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("WORKBENCH_DATA_DIR", ROOT.parent / "shared" / "data"))
    )
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "eval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", default="64,512", help="workbench batch sizes (comma-separated)")
    ap.add_argument("--lm-eval-batch-size", default="64")
    ap.add_argument("--paradigms", type=int, default=67, help="first N paradigms (67 = full BLiMP)")
    args = ap.parse_args()

    import lm_eval
    from _eval_model import build_tiny_model

    from workbench.eval.data import BLIMP_PARADIGMS

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_model(work / "model", args.data_dir)
    paradigms = BLIMP_PARADIGMS[: args.paradigms]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WORKBENCH_CACHE": str(work / "cache"),
    }

    # lm-eval: CLI end to end on local copies of its BLiMP task definitions; it runs in
    # the background while the workbench runs, and each tool is charged its own CPU time
    tdir = work / "lm_eval_tasks"
    tdir.mkdir(exist_ok=True)
    tmpl = Path(lm_eval.__file__).parent / "tasks" / "blimp" / "_template_yaml"
    names = []
    for uid in paradigms:
        (tdir / f"wbb_{uid}.yaml").write_text(
            f"include: {tmpl}\ntask: wbb_{uid}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    train: {args.data_dir}/blimp/{uid}.jsonl\n"
        )
        names.append(f"wbb_{uid}")
    lm_out = work / "lm_eval_out"
    shutil.rmtree(lm_out, ignore_errors=True)  # only this run's sample files are compared
    cmd_lm = [
        str(ROOT / ".venv" / "bin" / "lm_eval"),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir}",
        "--tasks",
        ",".join(names),
        "--include_path",
        str(tdir),
        "--batch_size",
        str(args.lm_eval_batch_size),
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(lm_out),
    ]
    lm_proc, lm_t0 = _start(cmd_lm, env)

    # workbench: CLI end to end, cache off, at each batch size
    tasks = "blimp" if len(paradigms) == 67 else ",".join(f"blimp_{p}" for p in paradigms)
    t_wb, c_wb = {}, {}
    cmds_wb = []
    for bs in [int(x) for x in str(args.batch_size).split(",")]:
        wb_out = work / f"workbench_out_bs{bs}"
        cmd_wb = [
            str(ROOT / ".venv" / "bin" / "workbench"),
            "eval",
            str(model_dir),
            "--tasks",
            tasks,
            "--data-dir",
            str(args.data_dir),
            "--batch-size",
            str(bs),
            "--device",
            "cpu",
            "--no-cache",
            "--out",
            str(wb_out),
            "--overwrite",
        ]
        t_wb[bs], c_wb[bs] = _finish(*_start(cmd_wb, env))
        cmds_wb.append(" ".join(cmd_wb))
        print(f"workbench batch {bs}: wall {t_wb[bs]:.1f}s, cpu {c_wb[bs]:.1f}s", flush=True)
    t_lm, c_lm = _finish(lm_proc, lm_t0)
    print(f"lm-eval: wall {t_lm:.1f}s, cpu {c_lm:.1f}s", flush=True)

    # compare decisions pair by pair
    import polars as pl

    sizes = list(t_wb)
    ours = pl.read_parquet(work / f"workbench_out_bs{sizes[-1]}" / "items.parquet")
    for bs in sizes[:-1]:  # every other batch size gives the same decisions
        other = pl.read_parquet(work / f"workbench_out_bs{bs}" / "items.parquet")
        assert other["correct"].to_list() == ours["correct"].to_list(), f"batch size {bs} changed a decision"
    ours_map = {r["item_id"]: (r["correct"], r["loglik"], r["loglik_alt"]) for r in ours.iter_rows(named=True)}
    n = same = 0
    max_dll = 0.0
    seen = set()
    # every sample file of this run; each sample is matched on its own document's UID
    for f in sorted(glob.glob(str(lm_out / "**" / "samples_wbb_*.jsonl"), recursive=True)):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                s = json.loads(line)
                key = f"{s['doc']['UID']}/{s['doc']['pairID']}"
                if key in seen:
                    continue
                seen.add(key)
                good, bad = (float(x[0]) for x in s["filtered_resps"])
                c, lg, lb = ours_map[key]
                n += 1
                same += int(c == bool(s["acc"]))
                max_dll = max(max_dll, abs(lg - good), abs(lb - bad))
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}",
        "pairs": n,
        "identical_decisions": same,
        "max_abs_loglik_diff": max_dll,
        "lm_eval_batch_size": args.lm_eval_batch_size,
        "lm_eval_cpu_s": round(c_lm, 1),
        "lm_eval_wall_s": round(t_lm, 1),
        "workbench_cpu_s": {bs: round(t, 1) for bs, t in c_wb.items()},
        "workbench_wall_s": {bs: round(t, 1) for bs, t in t_wb.items()},
        "speedup_cpu": {bs: round(c_lm / t, 2) for bs, t in c_wb.items()},
        "workbench_cmds": cmds_wb,
        "lm_eval_cmd": " ".join(cmd_lm),
    }
    print(json.dumps(report, indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
