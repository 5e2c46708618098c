"""Kernels of the methods on the sphere: ``slerp``, its ``lerp_norm_restore`` control,
``chained_slerp``, ``multislerp`` and ``karcher``.

The math lives in :mod:`workbench.merge.spherical`; ``slerp`` and ``lerp_norm_restore`` also
give the batched fast path's coefficients, read off the inputs' Gram matrices.

>>> import torch
>>> from workbench.merge.methods import MergeCall
>>> slerp_kernel(MergeCall("w", [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], 0, {"t": 0.5}, [{}, {}]))
tensor([0.7071, 0.7071])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workbench.merge import spherical as _sph
from workbench.merge.methods import MergeCall
from workbench.merge.methods.averages import two_model_coefficients

__all__ = [
    "chained_slerp_kernel",
    "karcher_kernel",
    "lerp_norm_restore_kernel",
    "multislerp_kernel",
    "norm_restore_coefficients",
    "slerp_coefficients",
    "slerp_kernel",
]


def slerp_kernel(call: MergeCall) -> torch.Tensor:
    """SLERP from the base (t = 0) to the other model (t = 1)."""
    return _sph.slerp(call.shared["t"], call.base, call.others[0])


def lerp_norm_restore_kernel(call: MergeCall) -> torch.Tensor:
    """LERP from the base to the other model, rescaled to SLERP's norm."""
    return _sph.lerp_norm_restore(call.shared["t"], call.base, call.others[0])


def chained_slerp_kernel(call: MergeCall) -> torch.Tensor:
    """SLERP folded over the models from the base; model k's ``t`` defaults to 1 / (k + 2)."""
    ts = [t if t is not None else 1.0 / (k + 2) for k, t in enumerate(call.of_others("t"))]
    return _sph.chained_slerp([call.base, *call.others], ts)


def multislerp_kernel(call: MergeCall) -> torch.Tensor:
    """Weighted spherical barycentre of the models (of their task vectors with a base)."""
    sh = call.shared
    return _sph.multislerp(
        call.others, call.of_others("weight"), base=call.base, normalize_weights=sh["normalize_weights"], eps=sh["eps"]
    )


def karcher_kernel(call: MergeCall) -> torch.Tensor:
    """Karcher mean of every input's direction, scaled by the mean norm."""
    return _sph.karcher(call.tensors, max_iter=call.shared["max_iter"], tol=call.shared["tol"])


def _geometry(jobs: Sequence[Any], g: torch.Tensor) -> tuple[torch.Tensor, _sph.SlerpGeometry]:
    bi = jobs[0].base_index
    t = torch.tensor([j.shared["t"] for j in jobs], dtype=torch.float64, device=g.device)
    return t, _sph.geometry_from_gram(g, bi, 1 - bi)


def slerp_coefficients(jobs: Sequence[Any], g: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[B, 2]`` (float64) of ``slerp`` from the jobs' Gram matrices ``[B, 2, 2]``."""
    t, geo = _geometry(jobs, g)
    return two_model_coefficients(jobs, *_sph.slerp_coefficients(t, geo))


def norm_restore_coefficients(jobs: Sequence[Any], g: torch.Tensor) -> torch.Tensor:
    """Coefficients ``[B, 2]`` (float64) of ``lerp_norm_restore`` from the Gram matrices."""
    t, geo = _geometry(jobs, g)
    return two_model_coefficients(jobs, *_sph.norm_restore_coefficients(t, geo))
