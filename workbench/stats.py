"""Paired statistics on per-item results: bootstrap, McNemar, Holm, barrier, dev/test split.

Everything here is pure (arrays in, numbers out) and seeded, so the same inputs and seed give
identical statistics. Conventions (see the README, "Claim check"):

* the unit is the item; two models are compared on the *same* items, so differences are paired;
* BLiMP confidence intervals resample items *within* paradigms (``clusters=paradigm``), which
  keeps every paradigm's weight fixed as in the benchmark's own average;
* accuracy differences also get an exact McNemar test on the discordant pairs;
* many comparisons (a sweep over t, a panel of baselines) are Holm-corrected;
* anything that is *selected* (best t, best ingredient) is selected on a dev split and reported
  on the disjoint test split (:func:`dev_test_split`, :func:`select_and_report`);
* a difference whose confidence interval covers 0 is never called a gain.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.random(500) < 0.70
>>> b = rng.random(500) < 0.60
>>> r = paired_bootstrap(a, b, n_resamples=2000, seed=0)
>>> r.low < r.estimate < r.high, r.covers_zero
(True, False)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from workbench.errors import WorkbenchError

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "NoiseFloor",
    "Selection",
    "as_array",
    "barrier",
    "barrier_ci",
    "barrier_t",
    "bootstrap_ci",
    "dev_test_split",
    "dev_mask",
    "holm",
    "mcnemar_exact",
    "noise_floor",
    "paired_bootstrap",
    "select_and_report",
    "split_unit_hash",
    "tie_rate",
]

# Elements drawn per chunk of resamples (bounds memory: ~3 arrays of this many 8-byte values).
_CHUNK_ELEMENTS = 1 << 22
# Differences with at most this many distinct values use the multinomial-count resampler.
_MAX_DISCRETE_VALUES = 16


def as_array(values: Any, *, name: str = "values", dtype: Any = np.float64) -> np.ndarray:
    """Turn a list, numpy array, torch tensor or polars Series into a 1-D numpy array.

    >>> as_array([True, False, True]).tolist()
    [1.0, 0.0, 1.0]
    """
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        values = values.to_numpy()  # polars / pandas
    elif hasattr(values, "detach"):
        values = values.detach().cpu().numpy()  # torch
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise WorkbenchError(f"{name}: expected a 1-D array of per-item values, got shape {arr.shape}")
    if dtype is not None:
        try:
            arr = arr.astype(dtype)
        except (TypeError, ValueError) as err:
            raise WorkbenchError(f"{name}: cannot convert to numbers ({err})") from None
    return arr


# ----------------------------------------------------------------------------- bootstrap


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


def _cluster_layout(clusters: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _bootstrap_distribution(
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
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    n = d.shape[0]
    out = np.empty(n_resamples, dtype=np.float64)
    if resample == "clusters":
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
    # resample == "within": items are drawn with replacement inside each cluster (stratified).
    uniform_weights = bool(np.all(w == 1.0))
    w_sorted = w[order]
    cluster_w = w_sorted[offsets]
    cluster_constant_w = bool(np.all(w_sorted == np.repeat(cluster_w, sizes)))
    # Rescaled within-cluster bootstrap: a resampled cluster mean varies by (n_k - 1) / n_k of the
    # cluster's variance of the mean; stretching its deviation by sqrt(n_k / (n_k - 1)) removes
    # that shrinkage, which matters when clusters are small (e.g. a few items per paradigm).
    rescale = np.sqrt(sizes / np.maximum(sizes - 1, 1)).astype(np.float64)
    values, value_codes = np.unique(d, return_inverse=True)
    if not gather and cluster_constant_w and values.shape[0] <= _MAX_DISCRETE_VALUES:
        # Few distinct differences (accuracy: -1, 0, +1) and one weight per cluster (e.g. 1/size
        # for a macro mean over paradigms): redrawing n_k items from a cluster is the same as
        # drawing multinomial counts of each distinct value, which is far cheaper.
        n_values = values.shape[0]
        n_clusters = sizes.shape[0]
        cluster_codes = np.repeat(np.arange(n_clusters), sizes)
        table = np.bincount(
            cluster_codes * n_values + value_codes[order], minlength=n_clusters * n_values
        ).reshape(n_clusters, n_values)
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
    w = _checked_weights(weights, n)
    _check_resampling(n_resamples, confidence)
    if resample not in ("within", "clusters"):
        raise WorkbenchError(f"resample: must be 'within' or 'clusters', got {resample!r}")
    order, sizes, offsets = _cluster_layout(clusters, n)
    boot = _bootstrap_distribution(d, w, order, sizes, offsets, int(n_resamples), int(seed), resample)
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


# ----------------------------------------------------------------------------- McNemar, Holm


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


# ----------------------------------------------------------------------------- small metrics


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


def barrier(ts: Any, losses: Any) -> float:
    """Interpolation barrier: max over t of the loss minus the straight line between endpoint losses.

    The endpoints are the smallest and largest t of the grid (normally 0 and 1). A convex or
    linear path gives 0 (the endpoints themselves contribute 0); a bump gives its height.

    >>> barrier([0.0, 0.5, 1.0], [2.0, 3.5, 3.0])
    1.0
    >>> barrier([0.0, 0.5, 1.0], [2.0, 2.0, 3.0])
    0.0
    """
    t, loss = _curve(ts, losses)
    return float(np.max(loss - _chord(t, loss)))


def barrier_t(ts: Any, losses: Any) -> float:
    """The t where the barrier (loss minus the chord) is largest.

    >>> barrier_t([0.0, 0.25, 0.5, 1.0], [2.0, 2.9, 3.5, 3.0])
    0.5
    """
    t, loss = _curve(ts, losses)
    return float(t[int(np.argmax(loss - _chord(t, loss)))])


def _checked_weights(weights: Any, n: int) -> np.ndarray:
    """Per-item weights (ones when None); one clear error for a wrong length or a bad value."""
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = as_array(weights, name="weights")
    if w.shape[0] != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise WorkbenchError("weights: need one finite non-negative weight per item, not all zero")
    return w


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise WorkbenchError(f"n_resamples: must be positive, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise WorkbenchError(f"confidence: must be in (0, 1), got {confidence}")


def barrier_ci(
    ts: Any,
    item_losses: Any,
    *,
    clusters: Any = None,
    weights: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Paired bootstrap interval of the :func:`barrier` from per-item losses along the t grid.

    ``item_losses`` has one row per item and one column per t (the same items at every t), so
    every resample redraws the same items for all t; ``clusters`` / ``weights`` as in
    :func:`paired_bootstrap`. The barrier is a maximum over the grid, so even its interval is
    optimistic about the bump's height: read it as "is there a bump at all".

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> bump = np.stack([rng.random(300) < p for p in (0.3, 0.5, 0.3)], axis=1).astype(float)
    >>> low, high = barrier_ci([0, 0.5, 1], bump, n_resamples=500)
    >>> 0.0 < low < high
    True
    """
    t = as_array(ts, name="ts")
    m = np.asarray(item_losses.to_numpy() if hasattr(item_losses, "to_numpy") else item_losses, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != t.shape[0] or m.shape[0] == 0:
        raise WorkbenchError(f"barrier_ci: item_losses must be (items, {t.shape[0]} t values), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise WorkbenchError("barrier_ci: non-finite per-item losses")
    _curve(t, m[0])  # the grid's own checks: finite, >= 2 points, some width
    n = m.shape[0]
    w = _checked_weights(weights, n)
    _check_resampling(n_resamples, confidence)
    order, sizes, offsets = _cluster_layout(clusters, n)
    means = np.stack(
        [_bootstrap_distribution(m[:, k], w, order, sizes, offsets, int(n_resamples), int(seed), "within", gather=True)
         for k in range(t.shape[0])],
        axis=1,
    )
    idx = np.argsort(t, kind="stable")
    ts_sorted, means = t[idx], means[:, idx]
    frac = (ts_sorted - ts_sorted[0]) / (ts_sorted[-1] - ts_sorted[0])
    chord = means[:, :1] + frac[None, :] * (means[:, -1:] - means[:, :1])
    boot = np.max(means - chord, axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _curve(ts: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    t = as_array(ts, name="ts")
    loss = as_array(losses, name="losses")
    if t.shape != loss.shape or t.size < 2:
        raise WorkbenchError(f"barrier: need matching ts and losses with >= 2 points, got {t.size} and {loss.size}")
    if not np.all(np.isfinite(loss)) or not np.all(np.isfinite(t)):
        raise WorkbenchError("barrier: ts and losses must be finite")
    order = np.argsort(t, kind="stable")
    t, loss = t[order], loss[order]
    if t[-1] == t[0]:
        raise WorkbenchError("barrier: the t grid has no width")
    return t, loss


def _chord(t: np.ndarray, loss: np.ndarray) -> np.ndarray:
    frac = (t - t[0]) / (t[-1] - t[0])
    return loss[0] + frac * (loss[-1] - loss[0])


# ----------------------------------------------------------------------------- dev/test split


def split_unit_hash(task: str, unit: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from a seeded hash of (task, unit id); stable across runs.

    >>> split_unit_hash("blimp", "adjunct_island/0") == split_unit_hash("blimp", "adjunct_island/0")
    True
    >>> 0.0 <= split_unit_hash("arc_easy", "Mercury_7175875", seed=3) < 1.0
    True
    """
    digest = hashlib.blake2b(f"{int(seed)}\x1f{task}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def dev_mask(tasks: Any, units: Any, *, seed: int = 0, dev_fraction: float = 0.5) -> np.ndarray:
    """Boolean mask (True = dev) from a seeded hash of each (task, unit id).

    Each unit's side depends only on its own id and the seed, so the split is stable when the
    items are subsampled (``--limit``) or reordered.

    >>> full = dev_mask(["t"] * 4, ["a", "b", "c", "d"], seed=0)
    >>> sub = dev_mask(["t"] * 2, ["c", "a"], seed=0)
    >>> sub.tolist() == [full[2], full[0]]
    True
    """
    if not 0.0 < dev_fraction < 1.0:
        raise WorkbenchError(f"dev_fraction: must be in (0, 1), got {dev_fraction}")
    task_arr = as_array(tasks, name="tasks", dtype=None).astype(str)
    unit_arr = as_array(units, name="units", dtype=None).astype(str)
    if task_arr.shape != unit_arr.shape:
        raise WorkbenchError("dev_mask: tasks and units must have the same length")
    return np.fromiter(
        (split_unit_hash(t, u, seed) < dev_fraction for t, u in zip(task_arr, unit_arr)),
        dtype=bool,
        count=task_arr.shape[0],
    )


def dev_test_split(items: Any, *, seed: int = 0, dev_fraction: float = 0.5) -> Any:
    """Add a ``split`` column ("dev" / "test") to a per-item table, deterministically.

    ``items`` is a polars DataFrame with the evaluation columns ``task``, ``item_id``,
    ``group`` and ``correct``. The split unit is the item (BLiMP minimal pair, ARC question),
    except for perplexity items (``correct`` is null), whose unit is the document (``group``),
    so a WikiText document never straddles the split. A unit goes to dev when the seeded hash
    of (task, unit id) is below ``dev_fraction``: every BLiMP paradigm is split in that
    proportion in expectation (stratified by paradigm up to rounding noise), and a unit's side
    never depends on which other items are present.

    >>> import polars as pl
    >>> items = pl.DataFrame({"task": ["blimp"] * 4, "item_id": ["p/0", "p/1", "p/2", "p/3"],
    ...                       "group": ["p"] * 4, "correct": [True, False, True, True]})
    >>> out = dev_test_split(items, seed=0)
    >>> out.columns[-1], sorted(set(out["split"].to_list())) <= ["dev", "test"]
    ('split', True)
    """
    import polars as pl

    if not isinstance(items, pl.DataFrame):
        raise WorkbenchError("dev_test_split: expected a polars DataFrame of per-item results")
    missing = [c for c in ("task", "item_id") if c not in items.columns]
    if missing:
        raise WorkbenchError(f"dev_test_split: items table lacks column(s) {missing}")
    if items.height == 0:
        return items.with_columns(pl.lit(None, dtype=pl.Utf8).alias("split"))
    item_ids = items["item_id"].cast(pl.Utf8).to_numpy()
    units = item_ids.copy()
    if "correct" in items.columns and "group" in items.columns:
        doc_level = items["correct"].is_null().to_numpy()
        groups = items["group"].cast(pl.Utf8).fill_null("").to_numpy()
        units = np.where(doc_level, groups, units)
    mask = dev_mask(items["task"].cast(pl.Utf8).to_numpy(), units, seed=seed, dev_fraction=dev_fraction)
    split = np.where(mask, "dev", "test")
    return items.with_columns(pl.Series("split", split, dtype=pl.Utf8))


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """The outcome of choosing the best of several candidates against a reference.

    ``selected_on`` / ``reported_on`` say which items were used for each step; ``flagged`` is
    True when they are the same items (the reported number is inflated by the selection).
    ``result`` is the chosen candidate minus the reference on the reporting items;
    ``p_holm`` its Holm-adjusted p-value over all candidates on the reporting items;
    ``naive_estimate`` is what best-of-all-on-all-items would have claimed.
    """

    chosen: str
    n_candidates: int
    selected_on: str
    reported_on: str
    flagged: bool
    result: BootstrapResult
    p_holm: float
    naive_choice: str
    naive_estimate: float
    note: str


def select_and_report(
    candidates: Mapping[str, Any],
    reference: Any,
    *,
    dev: Any = None,
    clusters: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> Selection:
    """Choose the best candidate (e.g. the best t) and report it honestly against ``reference``.

    ``candidates`` maps names to per-item values on the same items as ``reference``. With a
    ``dev`` mask (True = dev item) the choice is made on dev and the difference is reported on
    the test items only; without one, choice and report use the same items and the result is
    flagged as optimistic by selection (with a Holm-adjusted p-value over all candidates).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.random(400) < 0.6
    >>> cands = {f"t={t}": rng.random(400) < 0.6 for t in (0.1, 0.3, 0.5, 0.7, 0.9)}
    >>> naive = select_and_report(cands, ref, n_resamples=500)
    >>> honest = select_and_report(cands, ref, dev=np.arange(400) % 2 == 0, n_resamples=500)
    >>> naive.flagged, honest.flagged, honest.reported_on
    (True, False, 'test')
    """
    if not candidates:
        raise WorkbenchError("select_and_report: no candidates to choose from")
    ref = as_array(reference, name="reference")
    values = {str(k): as_array(v, name=f"candidate {k}") for k, v in candidates.items()}
    for k, v in values.items():
        if v.shape != ref.shape:
            raise WorkbenchError(f"select_and_report: candidate {k} has {v.shape[0]} items, reference {ref.shape[0]}")
    sign = 1.0 if higher_is_better else -1.0
    names = list(values)
    cl = None if clusters is None else as_array(clusters, name="clusters", dtype=None)

    def best_on(mask: np.ndarray) -> str:
        means = [sign * float(np.mean(values[k][mask])) for k in names]
        return names[int(np.argmax(means))]  # ties: the first candidate

    all_items = np.ones(ref.shape[0], dtype=bool)
    naive_choice = best_on(all_items)
    naive_estimate = float(np.mean(values[naive_choice] - ref))
    if dev is None:
        select_mask = report_mask = all_items
        selected_on, reported_on = "all items", "all items"
    else:
        dmask = as_array(dev, name="dev", dtype=None).astype(bool)
        if dmask.shape != ref.shape:
            raise WorkbenchError("select_and_report: the dev mask must have one entry per item")
        if not dmask.any() or dmask.all():
            raise WorkbenchError("select_and_report: the dev/test split leaves one side empty")
        select_mask, report_mask = dmask, ~dmask
        selected_on, reported_on = "dev", "test"
    chosen = best_on(select_mask)
    sub_cl = None if cl is None else cl[report_mask]
    results = {
        k: paired_bootstrap(
            values[k][report_mask],
            ref[report_mask],
            clusters=sub_cl,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
        for k in names
    }
    p_adj = holm([results[k].p_value for k in names])
    p_holm = float(p_adj[names.index(chosen)])
    flagged = dev is None and len(names) > 1
    if flagged:
        note = (
            f"best of {len(names)} chosen on the same items it is reported on: the estimate is "
            f"optimistic by selection; Holm-adjusted p over {len(names)} candidates = {p_holm:.3g}"
        )
    else:
        note = f"chosen on dev among {len(names)} candidates, reported on the disjoint test items"
    return Selection(
        chosen=chosen,
        n_candidates=len(names),
        selected_on=selected_on,
        reported_on=reported_on,
        flagged=flagged,
        result=results[chosen],
        p_holm=p_holm,
        naive_choice=naive_choice,
        naive_estimate=naive_estimate,
        note=note,
    )
