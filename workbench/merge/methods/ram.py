"""``ram`` and ``ramplus_tl`` (Reinforced Agent Merging, mergekit 0.1.5).

With task vectors ``τ_i = x_i - base``, model i contributes to an entry when
``|τ_i| > epsilon``. ``ram``: an entry takes the lone contributor's delta, the mean of the
contributing deltas, or nothing. ``ramplus_tl`` also scales model i's unique contributions by
``1 + r * clamp(ρ_i, 0, alpha)``, with ``ρ_i`` the ratio of its shared to its unique
contributions over the whole tensor. No weights; counts are exact, the rest float32.

>>> import torch
>>> b = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
>>> xs = [b + torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.0, 0.0]]), b + torch.tensor([[-0.5, 0.0, 1.0], [0.4, 0.0, 0.5]])]
>>> ram(b, xs)
tensor([[ 0.5000, -1.0000,  1.5000],
        [ 0.3000,  3.0000, -0.5000]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall

__all__ = ["ram", "ram_kernel", "ramplus_tl_kernel"]


def ram(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: float = 1e-5,
    r: float | None = None,
    alpha: float = 0.2,
) -> torch.Tensor:
    """RAM merge of ``tensors`` around ``base``; with ``r`` given, RAM+ (tensor-local)."""
    if not tensors:
        return base.clone()
    dt = compute_dtype(base)
    b = base.to(dt)
    tv = torch.stack([x.to(dt).reshape(-1) - b.reshape(-1) for x in tensors])
    contributes = tv.abs() > epsilon
    counts = contributes.sum(0, keepdim=True)
    overlap, unique = counts > 1, counts == 1
    tvz = tv * contributes
    lone = tvz * unique
    if r is not None:
        shared_n = (contributes & overlap).sum(1).double()
        unique_n = (contributes & unique).sum(1).double()
        boost = 1 + r * (shared_n / unique_n.clamp(min=epsilon)).clamp(min=0, max=alpha)
        lone = lone * boost.to(dt).unsqueeze(-1)
    merged = (lone + tvz * overlap / counts.clamp(min=1)).sum(0)
    return b + merged.reshape(base.shape)


def ram_kernel(call: MergeCall) -> torch.Tensor:
    """RAM of the non-base models around the base."""
    return ram(call.base, call.others, epsilon=call.shared["epsilon"])


def ramplus_tl_kernel(call: MergeCall) -> torch.Tensor:
    """RAM+ (tensor-local) of the non-base models around the base."""
    sh = call.shared
    return ram(call.base, call.others, epsilon=sh["epsilon"], r=sh["r"], alpha=sh["alpha"])
