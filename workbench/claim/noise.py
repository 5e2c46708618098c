"""How much scores move without any merge: the spread between ingredients and between training seeds.

:func:`noise_rows` gives the noise floor (spread of each metric between the ingredients);
:func:`seed_rows` the spread between checkpoints trained identically but for the seed (the
factory's siblings or independent runs, evaluated on the same items); :func:`seed_ratio` sets
every comparison against that spread ("+2.0 points, 1.3x the seed spread").

>>> import polars as pl
>>> cmp = pl.DataFrame({"task": ["blimp"], "metric": ["acc"], "estimate": [0.02]})
>>> seeds = pl.DataFrame({"task": ["blimp"], "metric": ["acc"], "sd": [0.015]})
>>> round(seed_ratio(cmp, seeds)["seed_ratio"][0], 2)
1.33
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from workbench.claim.metrics import TaskData, weighted_mean, weights_for
from workbench.stats import noise_floor

__all__ = ["noise_rows", "seed_ratio", "seed_rows"]


def _spread_rows(td: TaskData, systems: Sequence[str], mask: np.ndarray) -> list[dict[str, Any]]:
    """Per metric: range and standard deviation of the systems' scores on the masked items."""
    rows = []
    for metric in td.metrics:
        w = weights_for(td, metric, mask)
        nf = noise_floor({s: weighted_mean(td.values[metric.name][s][mask], w) for s in systems})
        rows.append(
            {
                "task": td.task,
                "metric": metric.name,
                "spread": nf.spread,
                "std": nf.std,
                "n": nf.n,
                "values": json.dumps(nf.values, sort_keys=True),
            }
        )
    return rows


def noise_rows(td: TaskData, ingredients: Sequence[str], test: np.ndarray) -> list[dict[str, Any]]:
    """Spread of each metric between the ingredients on the test items (the noise floor)."""
    return _spread_rows(td, ingredients, test)


def seed_rows(td: TaskData, seeds: Sequence[str], test: np.ndarray) -> list[dict[str, Any]]:
    """Spread of each metric between seed checkpoints on the test items: ``sd`` (sample standard
    deviation, the seed spread comparisons are set against), ``range`` (max - min); [] without seeds."""
    if len(seeds) < 2:
        return []
    rows = _spread_rows(td, seeds, test)
    for r in rows:
        r["sd"] = r.pop("std")
        r["range"] = r.pop("spread")
        r["n_items"] = int(test.sum())
    return rows


def seed_ratio(comparisons: pl.DataFrame, seed_noise: pl.DataFrame) -> pl.DataFrame:
    """``comparisons`` with ``seed_sd`` (the seed spread of its task and metric) and ``seed_ratio``
    (|estimate| / seed_sd; infinite when the seeds agree exactly); both null without seeds."""
    if comparisons.height == 0:
        return comparisons
    if seed_noise.height == 0:
        return comparisons.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("seed_sd"), pl.lit(None, dtype=pl.Float64).alias("seed_ratio")
        )
    sd = seed_noise.select("task", "metric", pl.col("sd").alias("seed_sd"))
    out = comparisons.join(sd, on=["task", "metric"], how="left", maintain_order="left")
    ratio = [
        None if s is None else (abs(e) / s if s > 0 else (0.0 if e == 0 else float("inf")))
        for e, s in zip(out["estimate"].to_list(), out["seed_sd"].to_list())
    ]
    return out.with_columns(pl.Series("seed_ratio", ratio, dtype=pl.Float64))
