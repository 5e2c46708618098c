"""Weighted averages: ``linear`` (model soups) and two-model ``lerp``.

All functions compute in float32 (float64 when the inputs are float64) and return the
dtype of the first input.

>>> import torch
>>> a, b = torch.zeros(3), torch.ones(3)
>>> lerp(0.25, a, b)
tensor([0.2500, 0.2500, 0.2500])
>>> linear([a, b], [1.0, 3.0])
tensor([0.7500, 0.7500, 0.7500])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["compute_dtype", "linear", "lerp", "lerp_batched"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def linear(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted sum of tensors, divided by the sum of weights when ``normalize``.

    >>> import torch
    >>> linear([torch.tensor([1.0]), torch.tensor([3.0])], [1, 1], normalize=False)
    tensor([4.])
    """
    if len(tensors) != len(weights):
        raise ValueError(f"linear: {len(tensors)} tensors but {len(weights)} weights")
    first = tensors[0]
    dt = compute_dtype(first)
    out = torch.zeros(first.shape, dtype=dt, device=first.device)
    for x, w in zip(tensors, weights):
        out.add_(x.to(dt), alpha=float(w))
    if normalize:
        total = float(sum(float(w) for w in weights))
        out.div_(total)
    return out.to(first.dtype)


def lerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(1 - t) * a + t * b``; t = 0 gives ``a`` exactly, t = 1 gives ``b``.

    >>> import torch
    >>> torch.equal(lerp(0.0, torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0])), torch.tensor([1.0, 2.0]))
    True
    """
    dt = compute_dtype(a)
    return ((1.0 - t) * a.to(dt) + t * b.to(dt)).to(a.dtype)


def lerp_batched(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LERP of stacks ``a[i], b[i]`` with one ``t[i]`` per row (leading axis), float result.

    >>> import torch
    >>> lerp_batched(torch.tensor([0.0, 1.0]), torch.zeros(2, 2), torch.ones(2, 2))
    tensor([[0., 0.],
            [1., 1.]])
    """
    dt = compute_dtype(a)
    shape = (-1,) + (1,) * (a.dim() - 1)
    tt = t.to(dt).reshape(shape)
    return (1.0 - tt) * a.to(dt) + tt * b.to(dt)
