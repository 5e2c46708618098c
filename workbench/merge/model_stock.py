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

from typing import Sequence

import torch

from workbench.merge.linear import compute_dtype

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
    if filter_wise:
        w0 = base.to(dt)
        ws = [x.to(dt) for x in tensors]
        if w0.dim() == 1:
            w0 = w0.unsqueeze(0)
            ws = [x.unsqueeze(0) for x in ws]
    else:
        w0 = base.to(dt).reshape(-1)
        ws = [x.to(dt).reshape(-1) for x in tensors]
    offs = [x - w0 for x in ws]
    norms = [torch.linalg.vector_norm(o, dim=-1) for o in offs]  # once per offset, not once per pair
    cosines = []
    for i in range(len(offs)):
        for j in range(i + 1, len(offs)):
            den = norms[i] * norms[j]
            cosines.append(((offs[i] * offs[j]).sum(-1) / den.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    k = len(ws)
    den = 1 + (k - 1) * cos
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(den), den))
    avg = sum(ws) / k
    return (t * avg + (1 - t) * w0).reshape(shape).to(base.dtype)
