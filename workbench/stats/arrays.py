"""Per-item arrays and the argument checks every statistic shares.

>>> as_array([True, False, True]).tolist()
[1.0, 0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

__all__ = ["as_array", "check_resampling", "checked_weights"]


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


def checked_weights(weights: Any, n: int) -> np.ndarray:
    """Per-item weights (ones when None); one clear error for a wrong length or a bad value.

    >>> checked_weights(None, 3).tolist()
    [1.0, 1.0, 1.0]
    """
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = as_array(weights, name="weights")
    if w.shape[0] != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise WorkbenchError("weights: need one finite non-negative weight per item, not all zero")
    return w


def check_resampling(n_resamples: int, confidence: float) -> None:
    """Refuse a non-positive resample count or a confidence level outside (0, 1)."""
    if n_resamples < 1:
        raise WorkbenchError(f"n_resamples: must be positive, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise WorkbenchError(f"confidence: must be in (0, 1), got {confidence}")
