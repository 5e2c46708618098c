"""``sce`` (mergekit 0.1.5): Select, Calculate, Erase over the task vectors ``τ_i = x_i - base``.

1. Select (``select_topk < 1``): keep, in every task vector, the entries whose variance across
   the models is among the top ``int(select_topk * #nonzero variances)``.
2. Calculate: model weights ``s_i = mean(τ_i²)``, normalised to sum 1 (uniform when they sum
   to about 0).
3. Erase: TIES' sign election on the (unweighted) task vectors.

``base + Σ τ_i s_i e_i / max(Σ s_i e_i, 1e-6)``. The weights' sums of squares come from
:func:`workbench.numerics.norm` (float64); the rest is element-wise across models, float32.

>>> import torch
>>> b = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
>>> xs = [torch.tensor([[1.5, -1.0, 0.0], [0.2, 2.0, -1.5]]), torch.tensor([[0.5, -2.5, 1.5], [-0.4, 3.5, -0.5]])]
>>> sce(b, xs, select_topk=0.5)
tensor([[ 1.0000, -1.0000,  1.5000],
        [ 0.0000,  2.0000, -1.0000]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench import numerics as nx
from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall
from workbench.merge.task_vectors import consensus_mask

__all__ = ["sce", "sce_kernel", "select_mask"]


def select_mask(task_vectors: torch.Tensor, fraction: float) -> torch.Tensor:
    """The entries (mask of one task vector's shape) whose variance across models is among the
    top ``int(fraction * #nonzero variances)``."""
    like = task_vectors[0]
    if fraction <= 0:
        return torch.zeros_like(like)
    if fraction >= 1:
        return torch.ones_like(like)
    var = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * fraction)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    # torch's topk on the same float32 values as mergekit: the same choice among equal variances
    idx = torch.topk(var.abs().reshape(-1), k=k, largest=True).indices
    mask.view(-1)[idx] = 1
    return mask


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, select_topk: float = 1.0) -> torch.Tensor:
    """SCE merge of ``tensors`` around ``base`` (float32 math)."""
    if not tensors:
        return base.clone()
    dt = compute_dtype(base)
    b = base.to(dt)
    tv = torch.stack([x.to(dt) - b for x in tensors])
    if select_topk < 1:
        tv = tv * select_mask(tv, select_topk).unsqueeze(0)
    erase = consensus_mask(tv, "sum").to(dt)
    energy = torch.stack([nx.norm(t) ** 2 for t in tv]) / max(1, tv[0].numel())
    total = float(energy.sum())
    w = (torch.full_like(energy, 1.0 / len(tensors)) if abs(total) < 1e-6 else energy / total).to(dt)
    kept = w.reshape(-1, *([1] * base.dim())) * erase
    return b + (tv * kept).sum(0) / kept.sum(0).clamp(min=1e-6)


def sce_kernel(call: MergeCall) -> torch.Tensor:
    """SCE of the non-base models around the base."""
    return sce(call.base, call.others, select_topk=call.shared["select_topk"])
