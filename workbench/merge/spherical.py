"""Interpolation on the sphere: SLERP, its norm-matched LERP control, multi-model SLERP.

Conventions (mergekit 0.1.5): tensors are flattened; the angle comes from the normalised
vectors (dot product clamped to [-1, 1]); when ``|cos| > 0.9995`` SLERP falls back to LERP;
otherwise the coefficients ``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ`` multiply the
*unnormalised* tensors. Computation is in float32 (float64 for float64 inputs); results
come back in the input dtype. At t = 0.5, SLERP equals LERP / cos(θ/2).

Norms, dots and Gram matrices come from :mod:`workbench.numerics` (float64 accumulation), so
the fallback decision and the coefficients are those of float64 truth at any tensor size,
and geometry tables (which call :func:`slerp_geometry`) report the branch the merge takes.

>>> import torch
>>> a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
>>> slerp(0.5, a, b)
tensor([0.7071, 0.7071])
>>> lerp_norm_restore(0.5, a, b)
tensor([0.7071, 0.7071])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from workbench import numerics as nx
from workbench.merge.linear import compute_dtype
from workbench.numerics import gram  # the one accurate Gram kernel; re-exported for the merge engines

__all__ = [
    "DOT_THRESHOLD",
    "SlerpGeometry",
    "chained_slerp",
    "combine",
    "geometry_from_gram",
    "gram",
    "norm_restore_coefficients",
    "slerp_coefficients",
    "karcher",
    "lerp_norm_restore",
    "lerp_norm_restore_batched",
    "multislerp",
    "norm_factor",
    "slerp",
    "slerp_batched",
    "slerp_geometry",
]

DOT_THRESHOLD = 0.9995
EPS = 1e-8


class SlerpGeometry(NamedTuple):
    """Per-row geometry of two stacks (leading axis = rows), all float64 tensors of shape [B]."""

    norm_a: torch.Tensor
    norm_b: torch.Tensor
    cos: torch.Tensor  # clamped cosine of the angle
    fallback: torch.Tensor  # bool: |cos| > threshold, LERP is used


def geometry_from_gram(
    g: torch.Tensor, i: int = 0, j: int = 1, *, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS
) -> SlerpGeometry:
    """SLERP geometry of rows ``i`` and ``j`` from a batch of Gram matrices ``[B, M, M]``."""
    if g.dim() == 2:
        g = g.unsqueeze(0)
    na = g[:, i, i].clamp_min(0).sqrt()
    nb = g[:, j, j].clamp_min(0).sqrt()
    sa = torch.where(na > eps, na, torch.ones_like(na))
    sb = torch.where(nb > eps, nb, torch.ones_like(nb))
    cos = (g[:, i, j] / (sa * sb)).clamp(-1.0, 1.0)
    return SlerpGeometry(na, nb, cos, cos.abs() > dot_threshold)


def _pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stack two ``[B, ...]`` tensors into ``[B, 2, N]`` (compute dtype)."""
    dt = compute_dtype(a)
    return torch.stack([a.reshape(a.shape[0], -1).to(dt), b.reshape(b.shape[0], -1).to(dt)], dim=1)


def slerp_geometry(
    a: torch.Tensor, b: torch.Tensor, *, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS
) -> SlerpGeometry:
    """Norms, cosine and fallback flag for each row pair of two stacks ``a[i], b[i]``.

    >>> import torch
    >>> g = slerp_geometry(torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    >>> round(g.norm_a.item(), 4), round(g.cos.item(), 4), bool(g.fallback.item())
    (3.0, 0.7071, False)
    """
    return geometry_from_gram(gram(_pairs(a, b)), dot_threshold=dot_threshold, eps=eps)


def slerp_coefficients(t: torch.Tensor, g: SlerpGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """SLERP's coefficients ``(sin((1-t)θ)/sin θ, sin(tθ)/sin θ)``, or ``(1-t, t)`` on fallback."""
    t = t.double()
    theta = torch.acos(torch.where(g.fallback, torch.zeros_like(g.cos), g.cos))
    s = torch.sin(theta)
    s = torch.where(g.fallback, torch.ones_like(s), s)
    ca = torch.where(g.fallback, 1.0 - t, torch.sin((1.0 - t) * theta) / s)
    cb = torch.where(g.fallback, t, torch.sin(t * theta) / s)
    return ca, cb


def norm_restore_coefficients(t: torch.Tensor, g: SlerpGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """LERP's coefficients scaled by |SLERP| / |LERP| (the lerp_norm_restore control)."""
    t = t.double()
    f = _norm_factor(t, g)
    return (1.0 - t) * f, t * f


def _as_rows_t(t: float | torch.Tensor, n: int, device) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        t = t.to(device=device, dtype=torch.float64).reshape(-1)
        return t.expand(n) if t.numel() == 1 else t
    return torch.full((n,), float(t), dtype=torch.float64, device=device)


def combine(coef: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise linear combinations ``sum_m coef[b, m] * x[b, m, :]`` as one batched product.

    ``coef`` is ``[B, M]`` (or ``[M]`` with ``x`` ``[M, N]``); the result is ``[B, N]`` (``[N]``).

    >>> import torch
    >>> combine(torch.tensor([0.5, 2.0]), torch.tensor([[2.0, 4.0], [1.0, 0.0]]))
    tensor([3., 2.])
    """
    c = coef.to(x.dtype)
    if x.dim() == 2:
        r = torch.mm(c.reshape(1, -1), x, out=None if out is None else out.reshape(1, -1))
        return r.reshape(-1)
    r = torch.bmm(c.unsqueeze(1), x, out=None if out is None else out.unsqueeze(1))
    return r.squeeze(1)


def _two(coef_a: torch.Tensor, coef_b: torch.Tensor) -> torch.Tensor:
    return torch.stack([coef_a, coef_b], dim=1)


def slerp_batched(
    t: float | torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = EPS,
) -> torch.Tensor:
    """SLERP of each row pair ``a[i], b[i]`` (leading axis = independent tensors), float result.

    ``t`` is a float or one value per row. Returns float32 (float64 for float64 inputs).

    >>> import torch
    >>> slerp_batched(torch.tensor([0.0, 1.0]), torch.eye(2), torch.ones(2, 2))
    tensor([[1., 0.],
            [1., 1.]])
    """
    x = _pairs(a, b)
    g = geometry_from_gram(gram(x), dot_threshold=dot_threshold, eps=eps)
    ca, cb = slerp_coefficients(_as_rows_t(t, a.shape[0], g.cos.device), g)
    return combine(_two(ca, cb), x).reshape(a.shape)


def slerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = EPS,
) -> torch.Tensor:
    """Spherical interpolation of two tensors; t = 0 gives ``v0``, t = 1 gives ``v1``.

    Colinear inputs (``|cos| > dot_threshold``) fall back to LERP.

    >>> import torch
    >>> a = torch.tensor([2.0, 0.0]); b = torch.tensor([0.0, 2.0])
    >>> torch.linalg.vector_norm(slerp(0.3, a, b)).item()
    2.0
    >>> slerp(0.5, a, 2 * a)  # colinear: LERP
    tensor([3., 0.])
    """
    if v0.shape != v1.shape:
        raise ValueError(f"slerp: shapes differ {tuple(v0.shape)} vs {tuple(v1.shape)}")
    out = slerp_batched(t, v0.reshape(1, -1), v1.reshape(1, -1), dot_threshold=dot_threshold, eps=eps)
    return out.reshape(v0.shape).to(v0.dtype)


def _norm_factor(t: torch.Tensor, g: SlerpGeometry) -> torch.Tensor:
    ca, cb = slerp_coefficients(t, g)
    dot = (
        g.cos
        * torch.where(g.norm_a > EPS, g.norm_a, torch.ones_like(g.norm_a))
        * torch.where(g.norm_b > EPS, g.norm_b, torch.ones_like(g.norm_b))
    )
    s2 = ca * ca * g.norm_a**2 + cb * cb * g.norm_b**2 + 2 * ca * cb * dot
    l2 = (1 - t) ** 2 * g.norm_a**2 + t * t * g.norm_b**2 + 2 * (1 - t) * t * dot
    ok = (l2 > 0) & ~g.fallback
    return torch.where(ok, torch.sqrt(s2.clamp_min(0) / torch.where(ok, l2, torch.ones_like(l2))), torch.ones_like(l2))


def norm_factor(t: float | torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|SLERP(t)| / |LERP(t)| for each row pair of two stacks (1 where SLERP falls back).

    >>> import torch
    >>> round(norm_factor(0.5, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item(), 4)
    1.4142
    """
    g = slerp_geometry(a, b)
    return _norm_factor(_as_rows_t(t, a.shape[0], g.cos.device), g)


def lerp_norm_restore_batched(t: float | torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LERP of each row pair, rescaled to the norm SLERP would give (float result)."""
    x = _pairs(a, b)
    g = geometry_from_gram(gram(x))
    ca, cb = norm_restore_coefficients(_as_rows_t(t, a.shape[0], g.cos.device), g)
    return combine(_two(ca, cb), x).reshape(a.shape)


def lerp_norm_restore(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """LERP rescaled to SLERP's norm: same direction as LERP, same length as SLERP.

    The control that separates the spherical path from the norm it preserves. Equals LERP
    where SLERP falls back.

    >>> import torch
    >>> a = torch.tensor([1.0, 0.0]); b = torch.tensor([0.0, 1.0])
    >>> torch.allclose(torch.linalg.vector_norm(lerp_norm_restore(0.3, a, b)), torch.tensor(1.0))
    True
    """
    out = lerp_norm_restore_batched(t, v0.reshape(1, -1), v1.reshape(1, -1))
    return out.reshape(v0.shape).to(v0.dtype)


def chained_slerp(tensors: Sequence[torch.Tensor], ts: Sequence[float]) -> torch.Tensor:
    """Fold SLERP over several tensors: ``x = slerp(ts[i-1], x, tensors[i])`` from ``tensors[0]``.

    With ``ts = [1/2, 1/3, 1/4, ...]`` every input gets equal weight on the LERP fallback.

    >>> import torch
    >>> chained_slerp([torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])], [1/2, 1/3])
    tensor([2.])
    """
    if len(ts) != len(tensors) - 1:
        raise ValueError(f"chained_slerp: {len(tensors)} tensors need {len(tensors) - 1} t values, got {len(ts)}")
    dt = compute_dtype(tensors[0])
    acc = tensors[0].to(dt)
    for t, x in zip(ts, tensors[1:]):
        acc = slerp(t, acc, x.to(dt))
    return acc.to(tensors[0].dtype)


def multislerp(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    base: torch.Tensor | None = None,
    normalize_weights: bool = True,
    eps: float = EPS,
) -> torch.Tensor:
    """Weighted barycentre on the sphere (mergekit's ``multislerp``).

    Inputs (minus ``base`` when given) are normalised, mapped to the tangent space at their
    normalised weighted mean, averaged there, mapped back with the exponential map and scaled
    by the weighted mean norm.

    >>> import torch
    >>> torch.allclose(multislerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [1, 1]),
    ...                torch.tensor([0.7071, 0.7071]), atol=1e-4)
    True
    """
    if len(tensors) != len(weights):
        raise ValueError(f"multislerp: {len(tensors)} tensors but {len(weights)} weights")
    if len(tensors) == 1:
        return tensors[0].clone()
    first = tensors[0]
    dt = compute_dtype(first)
    x = torch.stack([t.to(dt) for t in tensors])
    if base is not None:
        x = x - base.to(dt)
    flat = x.reshape(x.shape[0], -1)
    w = torch.tensor([float(v) for v in weights], dtype=dt, device=flat.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.stack([nx.norm(row) for row in flat]).to(dt).unsqueeze(1)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = nx.norm(mean)
    if mean_norm < eps:
        if len(tensors) == 2:
            res = flat[0] * w[0] + flat[1] * w[1]
            if base is not None:
                res = res + base.to(dt).reshape(-1)
            return res.reshape(first.shape).to(first.dtype)
        raise ValueError("multislerp: the weighted mean direction is zero (antipodal inputs with balancing weights)")
    mean = mean / mean_norm
    dots = torch.stack([nx.dot(u, mean) for u in units]).to(dt)
    tangent = ((units - dots[:, None] * mean) * w[:, None]).sum(0)
    tn = nx.norm(tangent) + eps
    res = mean * torch.cos(tn) + tangent * (torch.sin(tn) / tn)
    res = res * (norms.squeeze(1) * w).sum()
    if base is not None:
        res = res + base.to(dt).reshape(-1)
    return res.reshape(first.shape).to(first.dtype)


def karcher(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Weighted Karcher (Riemannian) mean of the directions, scaled by the weighted mean norm.

    Iterates Riemannian gradient steps from the normalised Euclidean mean; tensors with norm
    <= ``tol`` are left out of the direction (not of the scale). Equal weights by default.

    >>> import torch
    >>> torch.allclose(karcher([torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])]),
    ...                torch.tensor([1.4142, 1.4142]), atol=1e-4)
    True
    """
    n = len(tensors)
    first = tensors[0]
    if n == 1:
        return first.clone()
    alphas = [1.0 / n] * n if weights is None else [float(w) for w in weights]
    dt = compute_dtype(first)
    flats = [t.to(dt).reshape(-1) for t in tensors]
    norms = [nx.norm(f) for f in flats]
    valid = [i for i, nm in enumerate(norms) if nm.item() > tol]
    if not valid:
        return torch.zeros_like(first)
    total = sum(alphas[i] for i in valid)
    va = [alphas[i] / total for i in valid]
    units = [flats[i] / norms[i] for i in valid]
    mean = torch.zeros_like(units[0])
    for a, u in zip(va, units):
        mean.add_(u, alpha=a)
    mn = nx.norm(mean)
    mean = units[0].clone() if mn.item() < tol else mean / mn
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(va, units):
            d = torch.clamp(nx.dot(mean, u), -1.0, 1.0)
            theta = torch.arccos(d)
            if theta.item() < tol:
                continue
            tangent.add_((u - d * mean) * (a * theta / torch.sin(theta)))
        tn = nx.norm(tangent)
        if tn.item() < tol:
            break
        mean = torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)
        un = nx.norm(mean)
        if un.item() > tol:
            mean = mean / un
    scale = sum(a * nm for a, nm in zip(alphas, norms))
    return (scale * mean).reshape(first.shape).to(first.dtype)
