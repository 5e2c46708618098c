"""Interpolation barriers: the bump of a loss curve along t above the chord between its ends.

>>> barrier([0.0, 0.5, 1.0], [1.0, 2.0, 1.0]), barrier_t([0.0, 0.5, 1.0], [1.0, 2.0, 1.0])
(1.0, 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.errors import WorkbenchError
from workbench.stats.arrays import as_array, check_resampling, checked_weights
from workbench.stats.bootstrap import bootstrap_distribution, cluster_layout

__all__ = ["barrier", "barrier_ci", "barrier_t"]


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
    w = checked_weights(weights, n)
    check_resampling(n_resamples, confidence)
    order, sizes, offsets = cluster_layout(clusters, n)
    means = np.stack(
        [
            bootstrap_distribution(
                m[:, k], w, order, sizes, offsets, int(n_resamples), int(seed), "within", gather=True
            )
            for k in range(t.shape[0])
        ],
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
