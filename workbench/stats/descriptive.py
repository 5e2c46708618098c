"""Descriptive summaries: the tie rate of two-choice items and the noise floor between ingredients.

>>> tie_rate([True, False]), noise_floor([0.5, 0.7]).n
(0.5, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array

__all__ = ["NoiseFloor", "noise_floor", "tie_rate"]


def tie_rate(ties: Any) -> float:
    """Fraction of items whose two choices scored exactly the same (degenerate merges tie a lot).

    >>> tie_rate([False, True, False, False])
    0.25
    """
    t = as_array(ties, name="ties", dtype=None)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t.astype(bool)))


@dataclass(frozen=True)
class NoiseFloor:
    """Spread of one metric between ingredients (e.g. sibling checkpoints differing by seed).

    ``spread`` is max - min, ``std`` the sample standard deviation (0 for one ingredient).
    A merge-vs-ingredient difference smaller than ``spread`` is within the noise floor.
    """

    spread: float
    std: float
    n: int
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for tables and JSON)."""
        return asdict(self)


def noise_floor(values: Mapping[str, float] | Sequence[float]) -> NoiseFloor:
    """Noise floor from the spread of a metric between ingredients.

    >>> nf = noise_floor({"a": 0.61, "b": 0.64, "c": 0.62})
    >>> round(nf.spread, 4), round(nf.std, 4), nf.n
    (0.03, 0.0153, 3)
    """
    if isinstance(values, Mapping):
        named = {str(k): float(v) for k, v in values.items()}
    else:
        named = {str(i): float(v) for i, v in enumerate(values)}
    if not named:
        raise WorkbenchError("noise_floor: need at least one ingredient value")
    arr = np.array(list(named.values()), dtype=np.float64)
    spread = float(arr.max() - arr.min())
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return NoiseFloor(spread=spread, std=std, n=int(arr.size), values=named)
