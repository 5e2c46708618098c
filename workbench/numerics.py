"""Numerics over tensors shared by every module: finiteness checks and the accurate reductions
(Gram products, dots, norms, sums) that the merge engine, geometry and statistics read.

One accumulation rule for every reduction: tensors are read in steps of about :data:`CHUNK`
elements and the steps' results are added in float64, so rounding does not grow with the
tensor (a float32 BLAS dot product over a whole tensor is off by about 1e-4 relative at 10M
elements). Within a step, values are converted to float64, where products of float32, bf16
and fp16 inputs are exact. One exception, the merge engine's hot path: Gram products of
contiguous float32 rows on CPU skip the conversion; one batched matrix product sums their
float32 products over blocks of :data:`BLOCK` elements and only the block sums are added in
float64. That costs about one read of the inputs and adds the rounding of a short float32
sum per block: about 1e-9 relative on real weights, a few 1e-7 at most (constant rows, where
every block rounds alike). Either way results match float64 truth within float32 rounding of
the inputs at any size. Conversions go one step at a time through a reused buffer: nothing
the size of a tensor is allocated, in float64 or otherwise (only a tensor that cannot be
viewed as rows, e.g. a transposed one passed to :func:`dot`, is first copied in its own
dtype). Results are float64 tensors on the input's device, with no host synchronisation;
CPU and CUDA run the same code.

>>> import torch
>>> nonfinite_kind(torch.tensor([1.0, float("nan")])), nonfinite_kind(torch.ones(3))
('NaN', None)
>>> x = torch.full((10**6,), 0.1)  # float32 0.1 is 0.100000001490116...
>>> round(float(sum(x)), 4), round(float(x.sum(dtype=torch.float64)), 4)
(100000.0015, 100000.0015)
>>> round(float(norm(x)), 6), round(float(x.double().norm()), 6)
(100.000001, 100.000001)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from workbench.errors import WorkbenchError

__all__ = ["BLOCK", "CHUNK", "abs_sum", "cross", "dot", "gram", "nonfinite_kind", "norm", "sum"]

#: elements whose float32 products are summed before the float64 accumulation (blocked Gram
#: products): short enough that a block's rounding stays a few float32 roundings, long enough
#: that a step's blocks make one efficient batched matrix product
BLOCK = 128
#: elements read per step: bounds the conversion buffer (bf16/fp16, strided inputs) and the
#: block partial sums; an element count, so it means the same on every device
CHUNK = 1 << 21
#: batch entries smaller than this are gathered several to a step (see ``_steps``)
GROUP = 1 << 16


def nonfinite_kind(x: torch.Tensor) -> str | None:
    """``"NaN"`` or ``"Inf"`` when a floating-point tensor holds such values, else None.

    A single sum answers the common case (all finite) in one pass; only a non-finite sum
    pays for the element-wise scan that tells NaN from Inf (a finite tensor can overflow the
    sum, so the scan, not the sum, decides).

    >>> import torch
    >>> nonfinite_kind(torch.tensor([float("inf"), 1.0])), nonfinite_kind(torch.tensor([3e38, 3e38]))
    ('Inf', None)
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    s = torch.sum(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(s)) or bool(torch.isfinite(x).all()):
        return None
    return "NaN" if bool(torch.isnan(x).any()) else "Inf"


def _blocked(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether Gram products of ``x`` and ``y`` take float32 blocks (see the module docstring):
    float32 rows on CPU that blocks can view without a copy (a step that must convert or
    gather anyway converts to float64 instead, for the same cost), at least two of them (one
    row is a dot product, which torch sums in a sequential loop for short blocks), and float32
    matrix products at full precision (not the TF32/bf16 reduced-precision settings)."""
    ok = all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1 for t in (x, y))
    if not ok or min(x.shape[1], y.shape[1]) < 2:
        return False
    precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", None)
    if precision is None:  # a torch without per-backend settings
        return torch.get_float32_matmul_precision() == "highest"
    return precision in ("none", "ieee")


def _steps(b: int, m: int, n: int) -> Iterator[tuple[int, int, int, int]]:
    """Spans ``(b0, b1, s, e)`` of ``[B, M, N]``: several whole batch entries per step when an
    entry is smaller than GROUP elements (one copy then beats many small products), else
    column ranges (multiples of BLOCK, about CHUNK elements) of one entry (views, no copy)."""
    if m * n < GROUP:
        per = max(1, CHUNK // max(1, m * n))
        for b0 in range(0, b, per):
            yield b0, min(b, b0 + per), 0, n
        return
    cols = max(BLOCK, CHUNK // m // BLOCK * BLOCK)
    for i in range(b):
        for s in range(0, n, cols):
            yield i, i + 1, s, min(n, s + cols)


class _Buffers:
    """Conversion buffers reused across the steps of one call (one per operand)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        f = self.flat.get((key, dtype))
        if f is None or f.numel() < n:
            f = self.flat[(key, dtype)] = torch.empty(n, dtype=dtype, device=self.device)
        return f[:n].view(shape)


def _blocks(v: torch.Tensor) -> torch.Tensor:
    """The float32 ``[1, M, k * BLOCK]`` step ``v`` viewed as ``[k, M, BLOCK]`` (no copy)."""
    return v[0].unflatten(-1, (v.shape[-1] // BLOCK, BLOCK)).transpose(0, 1)


def _as64(v: torch.Tensor, bufs: _Buffers, key: str) -> torch.Tensor:
    if v.dtype == torch.float64:
        return v
    out = bufs.take(key, tuple(v.shape), torch.float64)
    out.copy_(v)
    return out


def cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[B, M, N] x [B, P, N] -> [B, M, P]`` inner products of rows, float64 (see module doc).

    Blocked: each step's whole blocks go through one float32 batched product, the trailing
    partial block through a float64 one; otherwise each step is one float64 product.
    """
    same = x is y
    nb, m, n = x.shape
    p = y.shape[1]
    out = torch.zeros((nb, m, p), dtype=torch.float64, device=x.device)
    if out.numel() == 0 or n == 0:
        return out
    blocked = _blocked(x, y)
    bufs = _Buffers(x.device)
    for b0, b1, s, e in _steps(nb, max(m, p), n):
        acc = out[b0:b1]
        mid = s + ((e - s) // BLOCK * BLOCK if blocked and b1 - b0 == 1 else 0)
        if mid > s:
            xb = _blocks(x[b0:b1, :, s:mid])
            yb = xb if same else _blocks(y[b0:b1, :, s:mid])
            part = torch.bmm(xb, yb.mT)
            acc += part.unflatten(0, (b1 - b0, -1)).sum(1, dtype=torch.float64)
        if mid < e:
            xd = _as64(x[b0:b1, :, mid:e], bufs, "x")
            yd = xd if same else _as64(y[b0:b1, :, mid:e], bufs, "y")
            acc.baddbmm_(xd, yd.mT)
    return out


def gram(x: torch.Tensor) -> torch.Tensor:
    """Inner products of the rows of ``x``: ``[M, N] -> [M, M]`` or ``[B, M, N] -> [B, M, M]``.

    Float64 result, accurate at any N (see the module docstring); any floating dtype and
    strides, any device.

    >>> import torch
    >>> gram(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))
    tensor([[9., 3.],
            [3., 2.]], dtype=torch.float64)
    >>> gram(torch.ones(2, 3, 1000, dtype=torch.bfloat16)).shape
    torch.Size([2, 3, 3])
    """
    if x.dim() == 2:
        u = x.unsqueeze(0)
        return cross(u, u)[0]
    if x.dim() != 3:
        raise WorkbenchError(f"gram: expected a [M, N] or [B, M, N] tensor, got shape {tuple(x.shape)}")
    return cross(x, x)


def _as_row(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, 1, -1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner product of two tensors with the same number of elements (flattened), float64.

    >>> import torch
    >>> dot(torch.tensor([1.0, 2.0]), torch.tensor([[3.0, 4.0]]))
    tensor(11., dtype=torch.float64)
    """
    if a.numel() != b.numel():
        raise WorkbenchError(
            f"dot: a has shape {tuple(a.shape)} but b has shape {tuple(b.shape)} (element counts differ)"
        )
    ra = _as_row(a)
    return cross(ra, ra if b is a else _as_row(b))[0, 0, 0]


def norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of a tensor (flattened), float64.

    >>> import torch
    >>> norm(torch.tensor([3.0, 4.0]))
    tensor(5., dtype=torch.float64)
    """
    r = _as_row(x)
    return cross(r, r)[0, 0, 0].sqrt()


def _fold(x: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Sum (or sum of absolute values) of the flattened ``x``: each step converted to float64,
    so no float32 rounding beyond the inputs' own."""
    flat = x.reshape(-1)
    acc = torch.zeros((), dtype=torch.float64, device=x.device)
    bufs = _Buffers(x.device)
    for s in range(0, flat.numel(), CHUNK):
        v = _as64(flat[s : s + CHUNK], bufs, "x")
        acc += torch.linalg.vector_norm(v, 1) if absolute else v.sum()
    return acc


def sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of all elements, float64.

    >>> import torch
    >>> sum(torch.tensor([[1.0, 2.0], [3.0, 4.5]]))
    tensor(10.5000, dtype=torch.float64)
    """
    return _fold(x, False)


def abs_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of absolute values (the L1 norm) of all elements, float64.

    >>> import torch
    >>> abs_sum(torch.tensor([1.0, -2.0, 3.0]))
    tensor(6., dtype=torch.float64)
    """
    return _fold(x, True)
