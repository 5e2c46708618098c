"""Numerics over tensors shared by every module: finiteness checks (and, next to them, the
accurate reductions the merge engine and geometry use).

>>> import torch
>>> nonfinite_kind(torch.tensor([1.0, float("nan")])), nonfinite_kind(torch.ones(3))
('NaN', None)
"""

from __future__ import annotations

import torch

__all__ = ["nonfinite_kind"]


def nonfinite_kind(x: torch.Tensor) -> str | None:
    """``"NaN"`` or ``"Inf"`` when a floating-point tensor holds such values, else None.

    A single sum answers the common case (all finite) in one pass; only a non-finite sum
    pays for the element-wise scan that tells NaN from Inf (a finite tensor can overflow the
    sum, so the scan, not the sum, decides).

    >>> import torch
    >>> nonfinite_kind(torch.tensor([float("inf"), 1.0])), nonfinite_kind(torch.tensor([3e38, 3e38]))
    ('Inf', None)
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    s = torch.sum(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(s)) or bool(torch.isfinite(x).all()):
        return None
    return "NaN" if bool(torch.isnan(x).any()) else "Inf"
