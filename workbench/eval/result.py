"""Evaluation results: per-item table, lm-eval style summary, settings.

>>> r = EvalResult(empty_items(), {"blimp": {"acc,none": 1.0}}, {"seed": 0})
>>> r.summary["blimp"]["acc,none"], r.items.height
(1.0, 0)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

#: The per-item columns every task fills (null where a column does not apply).
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "task": pl.String,
    "item_id": pl.String,
    "group": pl.String,
    "field": pl.String,
    "term": pl.String,
    "correct": pl.Boolean,
    "correct_norm": pl.Boolean,
    "tie": pl.Boolean,
    "margin": pl.Float64,
    "loglik": pl.Float64,
    "loglik_alt": pl.Float64,
    "n_tokens": pl.Int64,
    "n_words": pl.Int64,
    "n_bytes": pl.Int64,
}


def empty_items() -> pl.DataFrame:
    """An items table with no rows and the standard columns."""
    return pl.DataFrame(schema=ITEM_SCHEMA)


def items_frame(rows: dict[str, list]) -> pl.DataFrame:
    """Build an items table from column lists; missing columns are filled with nulls."""
    n = len(next(iter(rows.values()))) if rows else 0
    cols = {name: pl.Series(name, rows.get(name, [None] * n), dtype=dt) for name, dt in ITEM_SCHEMA.items()}
    return pl.DataFrame(cols)


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class EvalResult:
    """Per-item results (``items``), lm-eval style ``summary`` (task -> {"acc,none": ...})
    and the ``settings`` that produced them."""

    items: pl.DataFrame
    summary: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary_json(self) -> str:
        """The summary and settings as canonical JSON text (sorted keys)."""
        return (
            json.dumps(json_safe({"summary": self.summary, "settings": self.settings}), indent=2, sort_keys=True) + "\n"
        )

    def write(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``items.parquet`` and ``summary.json`` into ``out_dir`` atomically
        (a temporary directory renamed into place)."""
        from workbench.io.atomic import atomic_output_dir

        out_dir = Path(out_dir)
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            tmp = Path(tmp)
            self.items.write_parquet(tmp / "items.parquet")
            (tmp / "summary.json").write_text(self.summary_json(), encoding="utf-8")
        return out_dir

    @classmethod
    def read(cls, out_dir: str | os.PathLike) -> "EvalResult":
        """Read a directory written by :meth:`write`."""
        out_dir = Path(out_dir)
        meta = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        return cls(pl.read_parquet(out_dir / "items.parquet"), meta["summary"], meta.get("settings", {}))

    @staticmethod
    def concat(results: list["EvalResult"]) -> "EvalResult":
        """Join per-task results into one (settings merged, per-task entries kept)."""
        if not results:
            return EvalResult(empty_items(), {}, {})
        items = pl.concat([r.items for r in results], how="vertical")
        summary: dict[str, dict[str, float]] = {}
        settings: dict[str, Any] = {}
        for r in results:
            summary.update(r.summary)
            for k, v in r.settings.items():
                if k == "tasks":
                    settings.setdefault("tasks", [])
                    settings["tasks"] += [t for t in v if t not in settings["tasks"]]
                elif k == "per_task":
                    settings.setdefault("per_task", {}).update(v)
                else:
                    settings.setdefault(k, v)
        return EvalResult(items, summary, settings)

    def aggregate(self, by: str = "group", task: str | None = None) -> pl.DataFrame:
        """Accuracy and tie rate per ``group`` (BLiMP paradigm), ``field`` or ``term``.

        >>> r = EvalResult(items_frame({"task": ["blimp"] * 2, "group": ["a", "b"], "correct": [True, False],
        ...                              "tie": [False, False]}), {}, {})
        >>> r.aggregate("group")["acc"].to_list()
        [1.0, 0.0]
        """
        df = self.items.filter(pl.col("correct").is_not_null())
        if task is not None:
            df = df.filter(pl.col("task") == task)
        return (
            df.group_by("task", by)
            .agg(pl.col("correct").mean().alias("acc"), pl.col("tie").mean().alias("tie_rate"), pl.len().alias("n"))
            .sort("task", by)
        )
