"""Power of paired comparisons: the minimum detectable effect (MDE) and sample-size planning.

The claim check calls an accuracy difference with an exact McNemar test on the discordant
pairs (plus a bootstrap CI) and a continuous difference (margin, bits per byte) with the
bootstrap; the functions here give the power of exactly those tests, so that a reported MDE
is the effect the call would detect with the stated probability.

* :func:`paired_se`: the standard error of a (weighted) mean paired difference as the
  workbench's bootstrap sees it (items redrawn within clusters, rescaled by
  ``sqrt(n_k / (n_k - 1))``), in closed form.
* :func:`normal_mde` / :func:`normal_items`: a test that rejects when ``|estimate| / se``
  exceeds the normal quantile (the bootstrap p-value and percentile CI are that test for means
  of many items): MDE = (z_{1-alpha/2} + z_power) * se.
* :func:`mcnemar_power` / :func:`mcnemar_mde` / :func:`mcnemar_items`: the exact McNemar test,
  averaged over the number of discordant pairs (binomial in the number of items).
* :func:`discordance_rate`: the share of items on which two classifiers disagree, from their
  accuracies and the correlation of their per-item correctness (planning from assumptions).

Effects are in the metric's raw units (a fraction for accuracy). Everything is two-sided.

>>> round(normal_mde(0.01, alpha=0.05), 4)  # (1.96 + 0.84) standard errors
0.028
>>> mcnemar_items(0.05, 0.2, alpha=0.05) > mcnemar_items(0.10, 0.2, alpha=0.05)
True
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array, checked_weights
from workbench.stats.bootstrap import cluster_layout

__all__ = [
    "POWER",
    "discordance_rate",
    "mcnemar_items",
    "mcnemar_mde",
    "mcnemar_power",
    "normal_items",
    "normal_mde",
    "paired_se",
    "z_quantile",
]

#: The power at which minimum detectable effects are stated.
POWER = 0.8
# Beyond this many discordant pairs the exact binomial sums give way to the normal approximation
# (their difference is far below the precision any planning needs).
_EXACT_MAX_DISCORDANT = 20_000
# Discordant counts averaged over: the binomial's mean +- this many standard deviations ...
_WINDOW_SD = 6.0
# ... at most about this many points (the power is smooth in the count).
_WINDOW_POINTS = 121
_LOG_FACTORIAL = np.zeros(1)


def z_quantile(p: float) -> float:
    """The standard normal quantile: ``z_quantile(0.975)`` is about 1.96.

    >>> round(z_quantile(0.975), 3), round(z_quantile(0.8), 4)
    (1.96, 0.8416)
    """
    if not 0.0 < p < 1.0:
        raise WorkbenchError(f"quantile level must be in (0, 1), got {p}")
    return NormalDist().inv_cdf(p)


def _check_level(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise WorkbenchError(f"alpha: must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise WorkbenchError(f"power: must be in (0, 1), got {power}")


def paired_se(x: Any, y: Any = None, *, clusters: Any = None, weights: Any = None) -> float:
    """Standard error of the (weighted) mean of ``x - y`` under the workbench's bootstrap.

    Items are resampled within ``clusters`` (BLiMP paradigms) and each cluster keeps its total
    weight; the within-cluster deviations are rescaled by ``sqrt(n_k / (n_k - 1))`` as in
    :func:`~workbench.stats.paired_bootstrap`. So the variance is
    ``sum_k n_k / (n_k - 1) * sum_{i in k} w_i^2 (d_i - r_k)^2 / W^2`` with ``r_k`` the
    cluster's weighted mean and ``W`` the total weight (for equal weights and no clusters: the
    sample standard deviation over sqrt(n)). ``y=None`` takes ``x`` as the differences.

    >>> round(paired_se([1.0, 0.0, 1.0, 0.0]), 4)  # sd 0.5774 / sqrt(4)
    0.2887
    """
    d = as_array(x, name="x")
    if y is not None:
        ya = as_array(y, name="y")
        if ya.shape != d.shape:
            raise WorkbenchError(f"paired_se: x has {d.shape[0]} items but y has {ya.shape[0]}; pairs must match")
        d = d - ya
    n = d.shape[0]
    if n == 0:
        raise WorkbenchError("paired_se: no items")
    if not np.all(np.isfinite(d)):
        raise WorkbenchError("paired_se: non-finite per-item values (NaN or inf)")
    w = checked_weights(weights, n)
    order, sizes, offsets = cluster_layout(clusters, n)
    ds, ws = d[order], w[order]
    wk = np.add.reduceat(ws, offsets)
    rk = np.add.reduceat(ws * ds, offsets) / np.where(wk > 0, wk, 1.0)
    dev = ws * (ds - np.repeat(rk, sizes))
    ss = np.add.reduceat(dev * dev, offsets)
    var = float(np.sum(sizes / np.maximum(sizes - 1, 1) * ss)) / float(np.sum(ws)) ** 2
    return math.sqrt(max(var, 0.0))


def normal_mde(se: float, *, alpha: float, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``alpha`` detects with ``power``, when
    the estimate is normal with standard error ``se``: ``(z_{1-alpha/2} + z_power) * se``.

    >>> round(normal_mde(1.0, alpha=0.05, power=0.5), 3)
    1.96
    """
    _check_level(alpha, power)
    if not se >= 0.0:
        raise WorkbenchError(f"se: must be a non-negative number, got {se}")
    return (z_quantile(1.0 - alpha / 2.0) + z_quantile(power)) * float(se)


def normal_items(effect: float, sd: float, *, alpha: float, power: float = POWER) -> int:
    """Items needed for :func:`normal_mde` to reach ``effect`` when one item's difference has
    standard deviation ``sd``: ``ceil(((z_{1-alpha/2} + z_power) * sd / effect)^2)``.

    >>> normal_items(0.1, 1.0, alpha=0.05)  # (2.8 / 0.1)^2
    785
    """
    _check_level(alpha, power)
    if not effect > 0.0:
        raise WorkbenchError(f"effect: must be positive, got {effect}")
    if not sd >= 0.0:
        raise WorkbenchError(f"sd: must be a non-negative number, got {sd}")
    k = z_quantile(1.0 - alpha / 2.0) + z_quantile(power)
    return max(1, math.ceil((k * sd / effect) ** 2 - 1e-9))


def discordance_rate(acc_a: float, acc_b: float, correlation: float = 0.0) -> float:
    """Share of items on which two classifiers disagree, from their accuracies and the correlation
    of their per-item correctness: ``pa(1-pb) + pb(1-pa) - 2 rho sqrt(pa(1-pa) pb(1-pb))``.

    >>> round(discordance_rate(0.6, 0.65), 4)  # independent answers
    0.47
    >>> discordance_rate(0.7, 0.7, correlation=1.0)
    0.0
    """
    for name, p in (("acc_a", acc_a), ("acc_b", acc_b)):
        if not 0.0 <= p <= 1.0:
            raise WorkbenchError(f"{name}: an accuracy must be in [0, 1], got {p}")
    if not -1.0 <= correlation <= 1.0:
        raise WorkbenchError(f"correlation: must be in [-1, 1], got {correlation}")
    cov = correlation * math.sqrt(acc_a * (1 - acc_a) * acc_b * (1 - acc_b))
    rate = acc_a * (1 - acc_b) + acc_b * (1 - acc_a) - 2.0 * cov
    # a correlation the two accuracies cannot reach is clipped to the nearest possible rate
    return float(min(max(rate, abs(acc_a - acc_b)), 1.0))


def _log_factorial(n: int) -> np.ndarray:
    """log(k!) for k = 0..n (a table grown on demand and kept)."""
    global _LOG_FACTORIAL
    if _LOG_FACTORIAL.shape[0] <= n:
        size = max(n + 1, 2 * _LOG_FACTORIAL.shape[0])
        _LOG_FACTORIAL = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, size, dtype=np.float64)))])
    return _LOG_FACTORIAL


@functools.lru_cache(maxsize=65536)
def _critical(nd: int, alpha: float) -> int:
    """The largest k with exact two-sided McNemar p = 2 P(Bin(nd, 1/2) <= k) below alpha (-1: none)."""
    lf = _log_factorial(nd)
    k = np.arange(0, nd // 2 + 1)
    cdf = np.cumsum(np.exp(lf[nd] - lf[k] - lf[nd - k] - nd * math.log(2.0)))
    return int(np.searchsorted(cdf, alpha / 2.0, side="left")) - 1


def _conditional_power(nd: int, p1: float, alpha: float) -> float:
    """P(the exact McNemar test rejects | nd discordant pairs, each won by A with probability p1)."""
    if nd > _EXACT_MAX_DISCORDANT:
        z = z_quantile(1.0 - alpha / 2.0)
        sd = math.sqrt(nd * p1 * (1.0 - p1)) or 1e-300
        hi = nd / 2.0 + z * math.sqrt(nd) / 2.0
        lo = nd / 2.0 - z * math.sqrt(nd) / 2.0
        dist = NormalDist(nd * p1, sd)
        return float(1.0 - dist.cdf(hi) + dist.cdf(lo))
    c = _critical(nd, alpha)
    if c < 0:
        return 0.0
    lf = _log_factorial(nd)
    k = np.concatenate([np.arange(0, c + 1), np.arange(nd - c, nd + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = lf[nd] - lf[k] - lf[nd - k] + k * np.log(p1) + (nd - k) * np.log1p(-p1)
    logp = np.where(((k == 0) & (p1 == 0.0)) | ((k == nd) & (p1 == 1.0)), 0.0, logp)
    return float(min(1.0, np.sum(np.exp(np.nan_to_num(logp, nan=-np.inf)))))


def _discordant_counts(n_items: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Discordant-pair counts to average the power over, with their binomial weights (summing to 1)."""
    if rate <= 0.0:
        return np.array([0]), np.array([1.0])
    if rate >= 1.0:
        return np.array([n_items]), np.array([1.0])
    mean, sd = n_items * rate, math.sqrt(n_items * rate * (1.0 - rate))
    lo = max(0, math.floor(mean - _WINDOW_SD * sd))
    hi = min(n_items, math.ceil(mean + _WINDOW_SD * sd))
    counts = np.unique(np.linspace(lo, hi, min(_WINDOW_POINTS, hi - lo + 1)).round().astype(np.int64))
    lf = _log_factorial(n_items)
    logw = (
        lf[n_items]
        - lf[counts]
        - lf[n_items - counts]
        + counts * math.log(rate)
        + (n_items - counts) * math.log1p(-rate)
    )
    w = np.exp(logw - logw.max())
    return counts, w / w.sum()


def mcnemar_power(n_items: int, discordance: float, effect: float, *, alpha: float) -> float:
    """Power of the two-sided exact McNemar test at ``alpha`` on ``n_items`` paired items.

    ``discordance`` is the share of items on which the two systems disagree and ``effect`` the
    difference in accuracy (a fraction): of the discordant pairs, a share
    ``(discordance + effect) / (2 discordance)`` is won by the better system. Since an effect
    needs at least that many discordant pairs, a discordance below ``|effect|`` is raised to it.
    The power is averaged over the binomial number of discordant pairs.

    >>> mcnemar_power(500, 0.2, 0.0, alpha=0.05) < 0.05 < mcnemar_power(500, 0.2, 0.06, alpha=0.05)
    True
    """
    if n_items < 1:
        return 0.0
    effect = abs(float(effect))
    if not 0.0 <= discordance <= 1.0 or effect > 1.0:
        raise WorkbenchError(f"mcnemar_power: discordance and effect must be in [0, 1], got {discordance}, {effect}")
    rate = max(float(discordance), effect)
    if rate == 0.0:
        return 0.0
    p1 = (rate + effect) / (2.0 * rate)
    counts, weights = _discordant_counts(int(n_items), rate)
    return float(sum(w * _conditional_power(int(nd), p1, alpha) for nd, w in zip(counts, weights)))


def mcnemar_mde(n_items: int, discordance: float, *, alpha: float, power: float = POWER) -> float:
    """The smallest accuracy difference (a fraction) the exact McNemar test detects with ``power``.

    Infinite when even a difference on every item would not reach the power (too few items).

    >>> round(mcnemar_mde(500, 0.2, alpha=0.05), 3)
    0.057
    """
    _check_level(alpha, power)
    if n_items < 1 or mcnemar_power(n_items, discordance, 1.0, alpha=alpha) < power:
        return math.inf

    def enough(effect: float) -> bool:
        return mcnemar_power(n_items, discordance, effect, alpha=alpha) >= power

    # bracket around the normal approximation, then bisect to 1e-6 of it (far below any reported digit)
    guess = normal_mde(math.sqrt(max(discordance, 1.0 / n_items) / n_items), alpha=alpha, power=power)
    lo, hi = min(guess / 2.0, 1.0), min(guess * 2.0, 1.0)
    while lo > 0.0 and enough(lo):
        lo /= 2.0
    while hi < 1.0 and not enough(hi):
        lo, hi = hi, min(2.0 * hi, 1.0)
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2.0
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def mcnemar_items(
    effect: float, discordance: float, *, alpha: float, power: float = POWER, max_items: int = 100_000_000
) -> int:
    """The fewest paired items for the exact McNemar test to detect ``effect`` with ``power``.

    ``discordance`` is the expected share of items on which the systems disagree.

    >>> mcnemar_items(0.05, 0.47, alpha=0.05)  # the normal approximation says 1,473; the exact test is discrete
    1514
    """
    _check_level(alpha, power)
    if not 0.0 < abs(effect) <= 1.0:
        raise WorkbenchError(f"effect: an accuracy difference must be in (0, 1], got {effect}")
    if not 0.0 <= discordance <= 1.0:
        raise WorkbenchError(f"discordance: must be in [0, 1], got {discordance}")

    def enough(n: int) -> bool:
        return mcnemar_power(n, discordance, effect, alpha=alpha) >= power

    hi = 8
    while not enough(hi):
        hi *= 2
        if hi > max_items:
            raise WorkbenchError(f"mcnemar_items: more than {max_items} items would be needed")
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
