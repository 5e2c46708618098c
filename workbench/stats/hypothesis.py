"""Tests on paired results: exact McNemar on discordant pairs, Holm across many comparisons.

>>> mcnemar_exact([1, 1, 0], [1, 0, 1]).n_discordant
2
>>> holm([0.01, 0.02]).round(3).tolist()
[0.02, 0.02]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array

__all__ = ["McNemarResult", "holm", "mcnemar_exact"]


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: ``a_only`` items only A gets right, ``b_only`` only B gets right."""

    a_only: int
    b_only: int
    n_discordant: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for tables and JSON)."""
        return asdict(self)


def _binom_half_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k), summed in log space (exact to float64 rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    ks = np.arange(0, k + 1, dtype=np.float64)
    logc = math.lgamma(n + 1) - np.array([math.lgamma(v + 1) + math.lgamma(n - v + 1) for v in ks])
    logp = logc - n * math.log(2.0)
    top = float(np.max(logp))
    return float(math.exp(top) * np.sum(np.exp(logp - top)))


def mcnemar_exact(a_correct: Any, b_correct: Any) -> McNemarResult:
    """Exact (binomial) two-sided McNemar test on the discordant pairs of two paired classifiers.

    The p-value is ``min(1, 2 * P(Binomial(a_only + b_only, 1/2) <= min(a_only, b_only)))``.

    >>> r = mcnemar_exact([1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1])
    >>> r.a_only, r.b_only, round(r.p_value, 6)
    (5, 0, 0.0625)
    """
    a = as_array(a_correct, name="a_correct", dtype=None).astype(bool)
    b = as_array(b_correct, name="b_correct", dtype=None).astype(bool)
    if a.shape != b.shape:
        raise WorkbenchError(f"mcnemar_exact: a has {a.shape[0]} items but b has {b.shape[0]}; pairs must match")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    n = a_only + b_only
    if n == 0:
        return McNemarResult(0, 0, 0, 1.0)
    p = min(1.0, 2.0 * _binom_half_cdf(min(a_only, b_only), n))
    return McNemarResult(a_only, b_only, n, float(p))


def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order (NaN stays NaN and is not counted).

    >>> holm([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
    [0.04, 0.09, 0.09, 0.5]
    """
    p = as_array(pvalues, name="pvalues")
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise WorkbenchError("holm: p-values must lie in [0, 1]")
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out[order] = adjusted
    return out
