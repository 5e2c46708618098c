"""Speed of the paired bootstrap at full BLiMP size: 67 paradigms x 1000 items, 2000 resamples.

Four cases: accuracy (0/1 per item, the multinomial-count resampler) and log-likelihood margin
(continuous, the item-gather resampler), each unclustered and clustered within paradigms.
Prints one line per case (best of --repeat runs) and the machine's load average.

    .venv/bin/python benchmarks/bench_bootstrap.py [--resamples 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from workbench.stats import paired_bootstrap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n_paradigms, per = 67, 1000
    n = n_paradigms * per
    clusters = np.repeat([f"paradigm_{i}" for i in range(n_paradigms)], per)
    difficulty = np.repeat(rng.uniform(0.5, 0.95, n_paradigms), per)
    a = rng.random(n) < difficulty
    b = rng.random(n) < difficulty
    ma, mb = rng.normal(1.0, 2.0, n), rng.normal(0.9, 2.0, n)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"items: {n}, resamples: {args.resamples}")
    for name, x, y in (("accuracy", a, b), ("margin", ma, mb)):
        for label, cl in (("unclustered", None), ("within paradigms", clusters)):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = paired_bootstrap(x, y, clusters=cl, n_resamples=args.resamples, seed=0)
                best = min(best, time.perf_counter() - t)
            print(
                f"{name:9s} {label:17s} {best:7.3f} s  (estimate {r.estimate:+.4f}, CI {r.low:+.4f} to {r.high:+.4f})"
            )


if __name__ == "__main__":
    main()
