"""Kernels of the weighted averages: ``linear`` (model soups) and two-model ``lerp``.

The math lives in :mod:`workbench.merge.linear`; both methods also give the batched fast
path's coefficients (a weighted average needs no Gram matrix at all).

>>> import torch
>>> from workbench.merge.methods import MergeCall
>>> lerp_kernel(MergeCall("w", [torch.zeros(2), torch.ones(2)], 0, {"t": 0.25}, [{}, {}]))
tensor([0.2500, 0.2500])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workbench.merge import linear as _lin
from workbench.merge.methods import MergeCall

__all__ = ["lerp_coefficients", "lerp_kernel", "linear_coefficients", "linear_kernel", "two_model_coefficients"]


def linear_kernel(call: MergeCall) -> torch.Tensor:
    """``sum w_i x_i`` (divided by ``sum w_i`` with ``normalize``) over every input."""
    return _lin.linear(call.tensors, [p["weight"] for p in call.per_input], normalize=call.shared["normalize"])


def lerp_kernel(call: MergeCall) -> torch.Tensor:
    """``(1 - t) base + t other``."""
    return _lin.lerp(call.shared["t"], call.base, call.others[0])


def linear_coefficients(jobs: Sequence[Any], g: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[B, M]`` (float64) of ``linear`` for a batch of same-layout jobs."""
    w = torch.tensor([[p["weight"] for p in j.per_input] for j in jobs], dtype=torch.float64, device=g.device)
    if jobs[0].shared["normalize"]:
        w = w / w.sum(1, keepdim=True)
    return w


def two_model_coefficients(jobs: Sequence[Any], ca: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """Place the base's coefficients ``ca`` and the other model's ``cb`` in a ``[B, 2]`` tensor."""
    bi = jobs[0].base_index
    coef = torch.zeros(len(jobs), 2, dtype=torch.float64, device=ca.device)
    coef[:, bi] = ca
    coef[:, 1 - bi] = cb
    return coef


def lerp_coefficients(jobs: Sequence[Any], g: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[B, 2]`` of ``lerp``: ``1 - t`` on the base, ``t`` on the other model."""
    t = torch.tensor([j.shared["t"] for j in jobs], dtype=torch.float64, device=g.device)
    return two_model_coefficients(jobs, 1.0 - t, t)
