"""What every task uses: the scoring context, item selection (ids, seeded stratified
subsamples) and lm-eval's standard errors."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.eval.tasks.tokenizer import _Tok


class TaskContext:
    """What every task runner needs: the model, the tokenizer conventions, the scorer's settings."""

    def __init__(
        self,
        model: Any,
        tok: _Tok,
        max_length: int,
        batch_size: int,
        device: Any,
        progress: bool,
        share_prefixes: bool | None = None,
    ):
        self.model, self.tok, self.max_length = model, tok, max_length
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.share_prefixes = share_prefixes
        self.shared_prefixes = False  # whether a scoring call since the last reset packed prefix trees

    def score(self, requests: Sequence[tuple[list[int], list[int]]], desc: str) -> Any:
        """Score ``requests`` with the batched scorer; a :class:`~workbench.eval.scoring.ScoreResult`."""
        from workbench.eval.scoring import score_requests  # torch: only once a task is run

        res = score_requests(
            self.model,
            requests,
            max_length=self.max_length,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
            desc=desc,
            share_prefixes=self.share_prefixes,
        )
        self.shared_prefixes = self.shared_prefixes or res.prefix_sharing
        return res


def stratified_subsample(strata: Sequence[str], limit: float | None, seed: int) -> np.ndarray:
    """Indices to keep: at most ``limit`` per stratum (a fraction if 0 < limit < 1),
    drawn with ``seed``, returned in ascending order.

    >>> stratified_subsample(["a", "a", "a", "b"], 2, 0).tolist()
    [1, 2, 3]
    >>> stratified_subsample(["a", "a"], None, 0).tolist()
    [0, 1]
    """
    n = len(strata)
    if limit is None:
        return np.arange(n)
    if limit <= 0:
        raise WorkbenchError(f"limit must be positive, got {limit}")
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by.setdefault(s, []).append(i)
    keep: list[int] = []
    for s in sorted(by):
        idx = np.array(by[s])
        k = math.ceil(limit * len(idx)) if limit < 1 else int(limit)
        if k >= len(idx):
            keep.extend(idx.tolist())
        else:
            keep.extend(np.sort(rng.choice(idx, size=k, replace=False)).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def select_items(
    ids: Sequence[str], strata: Sequence[str], wanted: Collection[str] | None, limit: float | None, seed: int
) -> np.ndarray:
    """Indices of the items a task scores: those in ``wanted`` (all when None), then
    :func:`stratified_subsample` of them, in data order.

    >>> select_items(["x", "y", "z"], ["s", "s", "s"], {"x", "z"}, None, 0).tolist()
    [0, 2]
    """
    if wanted is None:
        keep = np.arange(len(ids))
    else:
        w = set(wanted)
        keep = np.array([i for i, x in enumerate(ids) if x in w], dtype=np.int64)
    return keep[stratified_subsample([strata[i] for i in keep], limit, seed)]


def mean_stderr(x: np.ndarray) -> float:
    """Standard error of the mean with the n-1 sample deviation (lm-eval's ``mean_stderr``).

    >>> round(mean_stderr(np.array([1.0, 0.0, 1.0, 0.0])), 4)
    0.2887
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """Group standard error from subtask standard errors (pooled variance), as lm-eval
    reports for groups such as ``blimp``.

    >>> round(pooled_stderr([0.1, 0.1], [100, 100]), 4)
    0.0707
    """
    n = sum(sizes)
    k = len(sizes)
    if n - k <= 0:
        return float("nan")
    var = sum((m - 1) * se**2 * m for m, se in zip(sizes, stderrs)) / (n - k)
    return math.sqrt(var / n)
