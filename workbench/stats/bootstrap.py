"""Paired bootstrap of per-item differences: intervals, standard errors and p-values.

Items can be grouped in clusters (BLiMP paradigms): resampling *within* clusters keeps every
cluster's weight fixed, as the benchmark's own average does. Seeded and vectorised.

>>> r = bootstrap_ci([1, 1, 1, 0], n_resamples=500)
>>> r.estimate, r.n_items
(0.75, 4)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array, check_resampling, checked_weights

__all__ = ["BootstrapResult", "bootstrap_ci", "bootstrap_distribution", "cluster_layout", "paired_bootstrap"]

# Elements drawn per chunk of resamples (bounds memory: ~3 arrays of this many 8-byte values).
_CHUNK_ELEMENTS = 1 << 22
# Differences with at most this many distinct values use the multinomial-count resampler.
_MAX_DISCRETE_VALUES = 16


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap estimate of a (weighted) mean difference ``x - y`` with its interval.

    ``p_value`` is the two-sided bootstrap p-value of "the difference is 0"
    (``2 * min(P*(d <= 0), P*(d >= 0))`` with a +1 correction, so never exactly 0); it agrees
    with the interval: the interval covers 0 when ``p_value`` is above ``1 - confidence``
    (up to resampling granularity).
    """

    estimate: float
    low: float
    high: float
    se: float
    p_value: float
    confidence: float
    n_items: int
    n_clusters: int
    n_resamples: int
    seed: int
    resample: str

    @property
    def covers_zero(self) -> bool:
        """True when the interval contains 0: no evidence of a difference."""
        return bool(self.low <= 0.0 <= self.high)

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return not self.covers_zero

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for tables and JSON).

        >>> sorted(paired_bootstrap([1, 0, 1], [1, 0, 1], n_resamples=10).to_dict())[:3]
        ['confidence', 'estimate', 'high']
        """
        return asdict(self)


def cluster_layout(clusters: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order grouping items by cluster, and each cluster's size and offset."""
    if clusters is None:
        return np.arange(n), np.array([n], dtype=np.int64), np.array([0], dtype=np.int64)
    labels = as_array(clusters, name="clusters", dtype=None)
    if labels.shape[0] != n:
        raise WorkbenchError(f"clusters: has {labels.shape[0]} entries for {n} items")
    if labels.dtype == object:
        labels = labels.astype(str)
    _, codes = np.unique(labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return order, sizes, offsets


def bootstrap_distribution(
    d: np.ndarray,
    w: np.ndarray,
    order: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    n_resamples: int,
    seed: int,
    resample: str,
    gather: bool = False,
) -> np.ndarray:
    """Resampled weighted means; vectorised in chunks of resamples (same stream for any chunking).

    ``gather=True`` forces the item-gather resampler, whose resampled items depend only on the
    seed and the cluster layout: several columns resampled with one seed share their resamples.

    >>> order, sizes, offsets = cluster_layout(None, 4)
    >>> d = np.array([1.0, 0.0, 1.0, 0.0])
    >>> boot = bootstrap_distribution(d, np.ones(4), order, sizes, offsets, 50, 0, "within")
    >>> again = bootstrap_distribution(d, np.ones(4), order, sizes, offsets, 50, 0, "within")
    >>> boot.shape, bool(np.array_equal(boot, again))  # seeded: the same resamples every time
    ((50,), True)
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    if resample == "clusters":
        return _whole_clusters(rng, d, w, order, sizes, offsets, n_resamples)
    # resample == "within": items are drawn with replacement inside each cluster (stratified).
    w_sorted = w[order]
    cluster_w = w_sorted[offsets]
    cluster_constant_w = bool(np.all(w_sorted == np.repeat(cluster_w, sizes)))
    values, value_codes = np.unique(d, return_inverse=True)
    if not gather and cluster_constant_w and values.shape[0] <= _MAX_DISCRETE_VALUES:
        return _value_counts_within(rng, d, order, sizes, cluster_w, values, value_codes, n_resamples)
    return _items_within(rng, d, w, order, sizes, offsets, n_resamples)


def _rescale(sizes: np.ndarray) -> np.ndarray:
    # Rescaled within-cluster bootstrap: a resampled cluster mean varies by (n_k - 1) / n_k of the
    # cluster's variance of the mean; stretching its deviation by sqrt(n_k / (n_k - 1)) removes
    # that shrinkage, which matters when clusters are small (e.g. a few items per paradigm).
    return np.sqrt(sizes / np.maximum(sizes - 1, 1)).astype(np.float64)


def _whole_clusters(
    rng: np.random.Generator,
    d: np.ndarray,
    w: np.ndarray,
    order: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    n_resamples: int,
) -> np.ndarray:
    """Whole clusters redrawn with replacement (``resample="clusters"``)."""
    out = np.empty(n_resamples, dtype=np.float64)
    wd = w * d
    starts = offsets
    sums = np.add.reduceat(wd[order], starts)
    wsums = np.add.reduceat(w[order], starts)
    g = sizes.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // g)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, g, size=(rows, g))
        out[start : start + rows] = sums[idx].sum(axis=1) / wsums[idx].sum(axis=1)
    return out


def _value_counts_within(
    rng: np.random.Generator,
    d: np.ndarray,
    order: np.ndarray,
    sizes: np.ndarray,
    cluster_w: np.ndarray,
    values: np.ndarray,
    value_codes: np.ndarray,
    n_resamples: int,
) -> np.ndarray:
    """Within-cluster resampling as multinomial counts of each distinct difference.

    Few distinct differences (accuracy: -1, 0, +1) and one weight per cluster (e.g. 1/size
    for a macro mean over paradigms): redrawing n_k items from a cluster is the same as
    drawing multinomial counts of each distinct value, which is far cheaper.
    """
    out = np.empty(n_resamples, dtype=np.float64)
    rescale = _rescale(sizes)
    n_values = values.shape[0]
    n_clusters = sizes.shape[0]
    cluster_codes = np.repeat(np.arange(n_clusters), sizes)
    table = np.bincount(cluster_codes * n_values + value_codes[order], minlength=n_clusters * n_values).reshape(
        n_clusters, n_values
    )
    probs = table / sizes[:, None]
    cluster_sum = np.bincount(cluster_codes, weights=d[order], minlength=n_clusters)
    cluster_mean = cluster_sum / sizes
    stratum_w = cluster_w * sizes
    total_w = float(np.sum(stratum_w))
    chunk = max(1, _CHUNK_ELEMENTS // (n_clusters * n_values))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        counts = rng.multinomial(sizes, probs, size=(rows, n_clusters))
        means = (counts @ values) / sizes  # (rows, clusters): resampled mean in each cluster
        means = cluster_mean + rescale * (means - cluster_mean)
        out[start : start + rows] = (means @ stratum_w) / total_w
    return out


def _items_within(
    rng: np.random.Generator,
    d: np.ndarray,
    w: np.ndarray,
    order: np.ndarray,
    sizes: np.ndarray,
    offsets: np.ndarray,
    n_resamples: int,
) -> np.ndarray:
    """Within-cluster resampling by gathering redrawn items (any values, any weights)."""
    n = d.shape[0]
    out = np.empty(n_resamples, dtype=np.float64)
    rescale = _rescale(sizes)
    uniform_weights = bool(np.all(w == 1.0))
    w_sorted = w[order]
    d_sorted = (w * d)[order]
    pos_size = np.repeat(sizes, sizes).astype(np.float64)
    pos_offset = np.repeat(offsets, sizes)
    pos_max = np.repeat(sizes - 1, sizes)
    stratum_w = np.add.reduceat(w_sorted, offsets)
    cluster_ratio = np.add.reduceat(d_sorted, offsets) / np.where(stratum_w > 0, stratum_w, 1.0)
    total_w = float(np.sum(stratum_w))
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        u = rng.random((rows, n))
        u *= pos_size
        idx = np.minimum(u.astype(np.int64), pos_max)
        idx += pos_offset
        num = np.add.reduceat(d_sorted[idx], offsets, axis=1)
        if uniform_weights:
            den = sizes.astype(np.float64)
        else:
            den = np.add.reduceat(w_sorted[idx], offsets, axis=1)
            den = np.where(den > 0, den, 1.0)
        ratio = cluster_ratio + rescale * (num / den - cluster_ratio)
        out[start : start + rows] = (ratio @ stratum_w) / total_w
    return out


def paired_bootstrap(
    x: Any,
    y: Any,
    *,
    clusters: Any = None,
    weights: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    resample: str = "within",
) -> BootstrapResult:
    """Paired bootstrap interval of the mean per-item difference ``x - y``.

    ``x`` and ``y`` are per-item values of two systems on the same items, in the same order
    (booleans for accuracy, floats for margins or log-likelihoods). ``clusters`` (e.g. the BLiMP
    paradigm of each item) makes the resampling clustered: with ``resample="within"`` (the
    default, the workbench's convention) items are redrawn with replacement *inside* each cluster, so
    every cluster keeps its size; ``resample="clusters"`` redraws whole clusters instead.
    ``weights`` turn the mean into ``sum(w*d)/sum(w)`` (e.g. bytes per document for a
    bits-per-byte difference). Percentile interval; vectorised and seeded.

    >>> r = paired_bootstrap([1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 0, 1], n_resamples=2000, seed=1)
    >>> round(r.estimate, 4), r.n_resamples, r.covers_zero  # six items are too few to tell
    (0.3333, 2000, True)
    >>> paired_bootstrap([1, 0], [0, 1], clusters=["a", "b"], n_resamples=100).n_clusters
    2
    """
    xa = as_array(x, name="x")
    ya = as_array(y, name="y")
    if xa.shape != ya.shape:
        raise WorkbenchError(f"paired_bootstrap: x has {xa.shape[0]} items but y has {ya.shape[0]}; pairs must match")
    n = xa.shape[0]
    if n == 0:
        raise WorkbenchError("paired_bootstrap: no items to compare")
    d = xa - ya
    if not np.all(np.isfinite(d)):
        raise WorkbenchError("paired_bootstrap: non-finite per-item values (NaN or inf) in x or y")
    w = checked_weights(weights, n)
    check_resampling(n_resamples, confidence)
    if resample not in ("within", "clusters"):
        raise WorkbenchError(f"resample: must be 'within' or 'clusters', got {resample!r}")
    order, sizes, offsets = cluster_layout(clusters, n)
    boot = bootstrap_distribution(d, w, order, sizes, offsets, int(n_resamples), int(seed), resample)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    # the rescaled resampler can overshoot for tiny clusters; a mean never leaves the data's range
    low, high = max(float(low), float(d.min())), min(float(high), float(d.max()))
    estimate = float(np.sum(w * d) / np.sum(w))
    k = min(int(np.sum(boot <= 0.0)), int(np.sum(boot >= 0.0)))
    p_value = min(1.0, 2.0 * (k + 1) / (n_resamples + 1))
    return BootstrapResult(
        estimate=estimate,
        low=float(low),
        high=float(high),
        se=float(np.std(boot, ddof=1)) if n_resamples > 1 else 0.0,
        p_value=float(p_value),
        confidence=float(confidence),
        n_items=int(n),
        n_clusters=int(sizes.shape[0]),
        n_resamples=int(n_resamples),
        seed=int(seed),
        resample=resample,
    )


def bootstrap_ci(
    x: Any,
    *,
    clusters: Any = None,
    weights: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Bootstrap interval of one system's (weighted) mean, e.g. an accuracy.

    >>> r = bootstrap_ci([1, 1, 1, 0], n_resamples=500)
    >>> r.estimate, 0.0 <= r.low <= r.high <= 1.0
    (0.75, True)
    """
    xa = as_array(x, name="x")
    return paired_bootstrap(
        xa,
        np.zeros_like(xa),
        clusters=clusters,
        weights=weights,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
