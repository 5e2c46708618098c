"""Model Stock (Jang et al. 2024): interpolate between the base and the average of fine-tunes.

With offsets ``d_i = x_i - base`` and ``cos`` their mean pairwise cosine, the ratio is
``t = k cos / (1 + (k - 1) cos)`` for ``k`` fine-tunes and the result is
``t * mean(x_i) + (1 - t) * base``. ``filter_wise`` computes one ratio per row. When the
denominator vanishes the base is kept (mergekit 0.1.5 semantics).

>>> import torch
>>> base = torch.zeros(2)
>>> model_stock(base, [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])])
tensor([1., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.merge.linear import compute_dtype
from workbench.numerics import gram

__all__ = ["model_stock"]


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    """Model Stock merge of ``tensors`` (at least two fine-tunes) around ``base``.

    >>> import torch
    >>> model_stock(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    tensor([0., 0.])
    """
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least two models besides the base")
    dt = compute_dtype(base)
    shape = base.shape
    w0 = base.to(dt)
    if not filter_wise or w0.dim() == 0:
        w0 = w0.reshape(1, -1)
    elif w0.dim() == 1:
        w0 = w0.unsqueeze(0)
    ws = [x.to(dt).reshape(w0.shape) for x in tensors]
    k = len(ws)
    offs = torch.empty((k, *w0.shape), dtype=dt, device=w0.device)
    for i, x in enumerate(ws):
        torch.sub(x, w0, out=offs[i])
    # one Gram matrix per row (the whole tensor is one row unless filter_wise) gives every norm
    # and pairwise dot; rows x models x columns without copying the offsets
    g = gram(offs.reshape(k, -1, w0.shape[-1]).transpose(0, 1))
    norms = g.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
    i, j = torch.triu_indices(k, k, 1, device=g.device)
    den = (norms[:, i] * norms[:, j]).clamp(min=1e-6)
    cos = (g[:, i, j] / den).clamp(-1, 1).mean(1)
    den = 1 + (k - 1) * cos
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(den), den))
    t = t.to(dt).reshape(*w0.shape[:-1], 1)
    avg = sum(ws) / k
    return (t * avg + (1 - t) * w0).reshape(shape).to(base.dtype)
