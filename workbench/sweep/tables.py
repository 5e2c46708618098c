"""A sweep's outputs: the long table, the per-item table, and :class:`SweepResult` (written atomically)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workbench.sweep.points import Point
from workbench.sweep.spec import SweepSpec


@dataclass
class SweepResult:
    """A finished sweep: the long table, the per-item results, the points and the run log."""

    table: Any  # pl.DataFrame: point, label, <axes>, fingerprint, parent, task, metric, value, stderr
    items: Any  # pl.DataFrame: point, <axes>, then the evaluation engine's item columns
    points: list[dict[str, Any]]  # point, label, params, fingerprint, recipe
    log: list[dict[str, Any]]  # point, status (computed | cached | partial), tasks computed, seconds, worker
    spec: SweepSpec

    @property
    def computed(self) -> list[int]:
        """Indices of the points merged and evaluated by this run (the rest came from the cache)."""
        return [row["point"] for row in self.log if row["tasks_computed"]]

    def write(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``results.parquet``, ``items.parquet``, ``points.json``, ``log.jsonl`` and
        ``sweep.yaml`` into ``out_dir`` atomically."""
        from workbench.io.atomic import atomic_output_dir

        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            self.table.write_parquet(tmp / "results.parquet")
            self.items.write_parquet(tmp / "items.parquet")
            (tmp / "points.json").write_text(json.dumps(self.points, indent=1, sort_keys=True, default=str) + "\n")
            (tmp / "log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.log))
            spec = self.spec.model_dump(mode="json", exclude_none=True)
            (tmp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return Path(out_dir)


def _param_columns(points: Sequence[Point]) -> dict[str, list[Any]]:
    """One column per axis; numbers stay numbers, ingredient lists read ``a+b``."""
    columns: dict[str, list[Any]] = {}
    for name in points[0].params if points else []:
        values = [p.params[name] for p in points]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            columns[name] = [float(v) for v in values]
        elif all(isinstance(v, str) for v in values):
            columns[name] = values
        elif all(isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) for v in values):
            columns[name] = ["+".join(v) for v in values]
        else:
            columns[name] = [json.dumps(v, sort_keys=True) for v in values]
    return columns


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def long_table(
    points: Sequence[Point], fingerprints: Sequence[str], tasks: Sequence[str], results: Mapping[tuple[int, str], Any]
) -> Any:
    """The sweep's long table: one row per (point, task, metric) with its stderr when known.

    ``task`` is each entry of the evaluation summary (the task itself, then its parts, e.g.
    ``blimp`` then ``blimp_adjunct_island``, ...) and ``parent`` the task that was asked for;
    metrics keep the lm-eval style keys (``"acc,none"``), whose stderr is ``"acc_stderr,none"``.
    """
    import polars as pl

    params = _param_columns(points)
    rows: dict[str, list[Any]] = {
        "point": [],
        "label": [],
        **{k: [] for k in params},
        "fingerprint": [],
        "parent": [],
        "task": [],
        "metric": [],
        "value": [],
        "stderr": [],
    }
    for j, (p, fp) in enumerate(zip(points, fingerprints)):
        for parent in tasks:
            summary = results[(p.index, parent)].summary
            names = [parent] + sorted(k for k in summary if k != parent)
            for task in names:
                entry = summary.get(task, {})
                for metric in sorted(entry):
                    name, _, filt = metric.partition(",")
                    if name.endswith("_stderr"):
                        continue
                    stderr_key = f"{name}_stderr,{filt}" if filt else f"{name}_stderr"
                    rows["point"].append(p.index)
                    rows["label"].append(p.label)
                    for k in params:
                        rows[k].append(params[k][j])
                    rows["fingerprint"].append(fp)
                    rows["parent"].append(parent)
                    rows["task"].append(task)
                    rows["metric"].append(metric)
                    rows["value"].append(_float_or_none(entry[metric]))
                    rows["stderr"].append(_float_or_none(entry.get(stderr_key)))
    schema = {
        "point": pl.Int64,
        "label": pl.Utf8,
        "fingerprint": pl.Utf8,
        "parent": pl.Utf8,
        "task": pl.Utf8,
        "metric": pl.Utf8,
        "value": pl.Float64,
        "stderr": pl.Float64,
    }
    schema.update({k: (pl.Float64 if params[k] and isinstance(params[k][0], float) else pl.Utf8) for k in params})
    return pl.DataFrame(rows, schema={k: schema[k] for k in rows})


def items_table(points: Sequence[Point], tasks: Sequence[str], results: Mapping[tuple[int, str], Any]) -> Any:
    """All per-item results, each row tagged with its point and the point's axis values."""
    import polars as pl

    params = _param_columns(points)
    frames = []
    for j, p in enumerate(points):
        for task in tasks:
            items = results[(p.index, task)].items
            if "task" in items.columns:
                items = items.filter(pl.col("task") == task)
            tags = [pl.lit(p.index, dtype=pl.Int64).alias("point")]
            tags += [pl.lit(params[k][j]).alias(k) for k in params]
            frames.append(
                items.select([*tags, *[pl.col(c) for c in items.columns if c not in params and c != "point"]])
            )
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


def assemble(
    spec: SweepSpec,
    points: Sequence[Point],
    fingerprints: Sequence[str],
    results: Mapping[tuple[int, str], Any],
    log: list[dict[str, Any]],
) -> SweepResult:
    """The :class:`SweepResult` of a sweep whose every (point, task) result is in ``results``."""
    table = long_table(points, fingerprints, spec.tasks, results)
    items = items_table(points, spec.tasks, results)
    rows = [
        {"point": p.index, "label": p.label, "params": p.params, "fingerprint": fp, "recipe": p.recipe}
        for p, fp in zip(points, fingerprints)
    ]
    return SweepResult(table, items, rows, log, spec)
