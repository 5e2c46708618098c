"""Trials: what each candidate is, the trial log that survives SIGKILL, and the trial table.

A :class:`Trial` is one candidate recipe; each of its evaluations (one per fidelity rung it
reached) is one row of ``trials.parquet``. Results themselves live in the results cache (keyed
by recipe fingerprint and evaluation settings); the :class:`TrialLog` only remembers how long each
computed evaluation took and on which worker, so that a resumed search reports the original
figures. The log is a JSON-lines file appended one fsynced line at a time: a line cut short by a
kill is skipped when read and never glued to the next one.

>>> import tempfile
>>> from pathlib import Path
>>> log = TrialLog(Path(tempfile.mkdtemp()) / "log.jsonl")
>>> log.append({"key": "k1", "seconds": 1.5})
>>> with open(log.path, "a") as f:
...     _ = f.write('{"key": "k2", "sec')  # a write cut short by a kill
>>> log.append({"key": "k3", "seconds": 2.0})
>>> sorted(TrialLog(log.path).entries)
['k1', 'k3']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from workbench.search.objective import Score
from workbench.search.optimizers import Candidate

__all__ = ["Evaluation", "Trial", "TrialLog", "trials_table"]


@dataclass
class Evaluation:
    """One trial scored at one rung: its score and where it came from."""

    rung: int
    fraction: float
    score: Score
    status: str  # computed | cached
    seconds: float
    worker: int | None
    backend: str


@dataclass
class Trial:
    """One candidate: its parameters, recipe (ingredient paths) and fingerprint, and its evaluations.

    ``note`` says why a candidate could not be merged (it is then ``infeasible`` and never scored).
    """

    index: int
    generation: int
    params: dict[str, Any]
    candidate: Candidate
    recipe: dict[str, Any] | None = None
    fingerprint: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    model_dtype: str | None = None
    note: str = ""
    evaluations: dict[int, Evaluation] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """Whether the candidate's recipe could be planned (merged)."""
        return self.fingerprint is not None

    @property
    def top_rung(self) -> int:
        """The highest rung it was scored at (-1: never scored)."""
        return max(self.evaluations, default=-1)

    def objective(self, rung: int | None = None) -> float:
        """Its objective at ``rung`` (default: its highest); -inf when not scored there."""
        rung = self.top_rung if rung is None else rung
        ev = self.evaluations.get(rung)
        return ev.score.value if ev is not None else float("-inf")

    def rank_key(self) -> tuple[int, float, int]:
        """Sort key, best first: more rungs survived, then a higher objective there, then earlier."""
        return (-self.top_rung, -self.objective(), self.index)


class TrialLog:
    """An append-only JSON-lines log of computed evaluations, keyed by their results-cache key."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        try:
            raw = self.path.read_bytes()
        except OSError:
            return
        for line in raw.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                self.entries[row["key"]] = row

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row (it must have a ``key``) as one line, flushed and fsynced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(dict(row), sort_keys=True, default=str) + "\n").encode()
        with open(self.path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the previous writer was killed mid-line
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.entries[str(row["key"])] = dict(row)


def _param_column(values: Sequence[Any]) -> pl.Series | list[Any]:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


def trials_table(trials: Sequence[Trial], dims: Sequence[str], best: int | None) -> pl.DataFrame:
    """One row per evaluation: trial, generation, rung, fidelity, items, status, the parameters,
    objective and its parts, seconds, worker, backend, fingerprint; ``final`` marks a trial's
    highest rung and ``best`` the winner's full-dev row. Infeasible trials get one row with their note."""
    rows: list[dict[str, Any]] = []
    for tr in trials:
        base = {"trial": tr.index, "generation": tr.generation, **{d: tr.params[d] for d in dims}}
        if not tr.evaluations:
            rows.append({**base, "status": "infeasible", "note": tr.note, "final": True, "best": False})
            continue
        for rung, ev in sorted(tr.evaluations.items()):
            rows.append(
                {
                    **base,
                    "rung": rung,
                    "fidelity": ev.fraction,
                    "n_items": int(sum(ev.score.n_items.values())),
                    "status": ev.status,
                    "objective": ev.score.value,
                    **ev.score.parts,
                    "seconds": ev.seconds,
                    "worker": ev.worker,
                    "backend": ev.backend,
                    "fingerprint": tr.fingerprint,
                    "final": rung == tr.top_rung,
                    "best": tr.index == best and rung == tr.top_rung,
                    "note": tr.note,
                }
            )
    if not rows:
        return pl.DataFrame()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    data = {c: [r.get(c) for r in rows] for c in columns}
    for d in dims:
        data[d] = _param_column(data[d])
    return pl.DataFrame(data, strict=False)
