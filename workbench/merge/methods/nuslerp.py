"""``nuslerp``: SLERP of two models, or of their task vectors around a base (mergekit 0.1.5).

The position is ``t = w2 / (w1 + w2)`` from the two models' weights (0.5 when they sum to
about 0). With a base, ``base + S(t, x1 - base, x2 - base)``, else ``S(t, x1, x2)``, where
``S`` interpolates on the sphere whole tensors (``nuslerp_flatten``, the default) or each row
(each column with ``nuslerp_row_wise``): ``(sin((1-t)θ) v0 + sin(tθ) v1) / sin θ``, with θ
from the vectors normalised by ``max(|v|, 1e-7)``, and LERP where ``1 - cos²θ <= 1e-16``.
Unlike ``slerp`` there is no 0.9995 threshold. Norms and dots come from
:func:`workbench.numerics.gram` (float64); the combination runs in float32.

>>> import torch
>>> interpolate(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
tensor([0.7071, 0.7071])
"""

from __future__ import annotations

import torch

from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall
from workbench.numerics import gram

__all__ = ["interpolate", "nuslerp_kernel"]

_NORM_EPS = 1e-7
_COLINEAR_EPS = 1e-8


def interpolate(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool = True, row_wise: bool = False
) -> torch.Tensor:
    """``S(t, v0, v1)``: spherical interpolation of whole tensors (``flatten``), of rows, or of
    columns (``row_wise`` with ``flatten`` off), in the dtype of ``v0`` (float32 math).

    >>> import torch
    >>> v0, v1 = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    >>> interpolate(0.5, v0, v1, flatten=False)  # row 0 on the circle; row 1 colinear: LERP
    tensor([[0.7071, 0.7071],
            [3.0000, 0.0000]])
    """
    dt = compute_dtype(v0)
    a, b = v0.to(dt), v1.to(dt)
    shape = a.shape
    if flatten or a.dim() < 2:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    rows = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    g = gram(torch.stack(rows, dim=1))  # [rows, 2, 2]: both norms and the dot of every row pair
    n0 = g[:, 0, 0].clamp_min(0).sqrt().clamp_min(_NORM_EPS)
    n1 = g[:, 1, 1].clamp_min(0).sqrt().clamp_min(_NORM_EPS)
    cos = (g[:, 0, 1] / (n0 * n1)).clamp(-1.0, 1.0)
    colinear = (1 - cos * cos) <= _COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    s = torch.where(colinear, torch.ones_like(theta), torch.sin(theta))
    ca = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / s).to(dt)
    cb = torch.where(colinear, torch.full_like(theta, t), torch.sin(t * theta) / s).to(dt)
    out = ca[:, None] * rows[0] + cb[:, None] * rows[1]
    out = out.reshape(a.shape)
    if not flatten and row_wise and v0.dim() >= 2:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp_kernel(call: MergeCall) -> torch.Tensor:
    """NuSLERP of the two non-base models (of their task vectors when there is a base)."""
    w1, w2 = call.of_others("weight")
    total = w1 + w2
    t = 0.5 if abs(total) < 1e-6 else w2 / total
    x1, x2 = call.others
    kw = dict(flatten=call.shared["nuslerp_flatten"], row_wise=call.shared["nuslerp_row_wise"])
    if call.base is None:
        return interpolate(t, x1, x2, **kw)
    dt = compute_dtype(call.base)
    b = call.base.to(dt)
    return b + interpolate(t, x1.to(dt) - b, x2.to(dt) - b, **kw)
