"""``nearswap`` (mergekit 0.1.5): per entry, ``w = clamp(t / max(|base - x|, 1e-6), 0, 1)`` and
``w x + (1 - w) base``: entries within ``t`` of the base take the other model's value, entries
further apart move towards it by ``t / |base - x|``. Element-wise, float32.

>>> import torch
>>> swap(0.3, torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.5, -1.0, 0.6]))
tensor([ 1.3000, -1.7000,  0.6000])
"""

from __future__ import annotations

import torch

from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall

__all__ = ["nearswap_kernel", "swap"]


def swap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """NearSwap of ``other`` into ``base`` at distance ``t``."""
    dt = compute_dtype(base)
    a, b = base.to(dt), other.to(dt)
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * b + (1 - w) * a


def nearswap_kernel(call: MergeCall) -> torch.Tensor:
    """NearSwap of the other model into the base."""
    return swap(call.shared["t"], call.base, call.others[0])
