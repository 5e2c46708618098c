"""``arcee_fusion`` (mergekit 0.1.5): keep the other model's changes whose importance is an
upper outlier, leave the rest at the base.

Importance ``I = |x - base| * KL_row``, with ``KL_row = sum p log(p / q)`` over the last
dimension, ``p = softmax(x) + 1e-8``, ``q = softmax(base) + 1e-8`` (a 1-D tensor is one row).
The threshold is ``median + 1.5 (q3 - q1)`` of ``I``'s entries, the quartiles read off the
sorted entries at ``int(q * (n - 1))``; tensors of more than 1,000,000 entries estimate them
from 1,000,000 entries drawn with replacement (the only random draw, from the generator).
The KL row sums come from :func:`workbench.numerics.gram` (float64).

>>> import torch
>>> b = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
>>> x = torch.tensor([[1.5, -1.0, 0.0], [0.2, 2.0, -1.5]])
>>> fuse(b, x)
tensor([[ 1.0000, -1.0000,  0.5000],
        [ 0.0000,  3.0000, -1.0000]])
"""

from __future__ import annotations

import torch

from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall
from workbench.numerics import gram

__all__ = ["QUANTILE_SAMPLE", "arcee_fusion_kernel", "fuse", "importance"]

#: entries above which the quartiles are estimated from a sample of this many
QUANTILE_SAMPLE = 1_000_000


def importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|x - base|`` times the KL divergence of the rows' softmaxes (broadcast over each row)."""
    rows_x = x.reshape(-1, x.shape[-1])
    rows_b = base.reshape(rows_x.shape)
    p = torch.softmax(rows_x, dim=-1) + 1e-8
    q = torch.softmax(rows_b, dim=-1) + 1e-8
    # KL per row = <p, log(p / q)>: one accurate dot product per row
    kl = gram(torch.stack([p, torch.log(p / q)], dim=1))[:, 0, 1].to(x.dtype)
    return ((x - base).abs().reshape(rows_x.shape) * kl[:, None]).reshape(x.shape)


def _threshold(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flat = scores.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        pick = torch.randint(flat.numel(), (QUANTILE_SAMPLE,), device=flat.device, generator=generator)
        flat = flat[pick]
    ordered = torch.sort(flat).values
    # quartile positions computed as mergekit does (float32 product, truncated)
    at = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long().to(ordered.device)
    q1, median, q3 = ordered[at]
    return median + 1.5 * (q3 - q1)


def fuse(base: torch.Tensor, other: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Arcee Fusion of ``other`` into ``base`` (float32 math)."""
    dt = compute_dtype(base)
    b, x = base.to(dt), other.to(dt)
    scores = importance(x, b)
    mask = (scores >= _threshold(scores, generator)).to(dt)
    return b + (x - b) * mask


def arcee_fusion_kernel(call: MergeCall) -> torch.Tensor:
    """Arcee Fusion of the other model into the base."""
    return fuse(call.base, call.others[0], generator=call.generator)
