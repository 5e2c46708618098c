"""What both merge engines share: one tensor's method dispatch, the Gram fast path's
coefficients, the NaN/Inf rule, and the compute-dtype rules.

The math itself lives in ``workbench.merge.linear``, ``spherical``, ``task_vectors`` and
``model_stock``; this module only maps a :class:`~workbench.merge.plan.TensorJob`'s resolved
parameters onto those pure functions.

>>> numel((3, 4, 5))
60
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from workbench.checkpoints import Checkpoint
from workbench.devices import resolve_device
from workbench.errors import WorkbenchError
from workbench.merge import linear as _lin
from workbench.merge import model_stock as _ms
from workbench.merge import spherical as _sph
from workbench.merge import task_vectors as _tv
from workbench.merge.plan import MergePlan, TensorJob
from workbench.numerics import nonfinite_kind

__all__ = [
    "GRAM_METHODS",
    "apply_method",
    "check_finite",
    "check_gram_finite",
    "compute_dtype",
    "gram_coefficients",
    "numel",
    "round_to",
    "torch_device",
]

#: methods whose result is a per-tensor linear combination of the inputs, with coefficients
#: that depend only on the inputs' Gram matrix: one product gives norms and dots, one more the result
GRAM_METHODS = ("linear", "lerp", "slerp", "lerp_norm_restore")


def check_finite(x: torch.Tensor, ck: Checkpoint, name: str) -> None:
    """Raise the one NaN/Inf error (naming the tensor and its file) when ``x``, the values of
    tensor ``name`` of ``ck``, holds any; every NaN/Inf check of the engines ends here."""
    kind = nonfinite_kind(x)
    if kind is not None:
        raise WorkbenchError(
            f"tensor {name!r} in {ck.file_of(name)} contains {kind} values "
            "(pass --allow-nonfinite / allow_nonfinite=True to merge anyway)"
        )


def check_gram_finite(
    g: torch.Tensor, plan: MergePlan, jobs: list[TensorJob], row: Callable[[int, int], torch.Tensor]
) -> None:
    """Raise on NaN/Inf in the inputs of ``jobs``, read off their Gram matrices ``g``.

    A non-finite input makes its squared norm on the Gram diagonal non-finite, so a finite
    diagonal clears the whole batch at no cost; only a non-finite entry (possibly a finite
    tensor whose squared norm overflowed) pays for a scan of that input, ``row(b, m)``
    (job ``b``, input ``m``), through :func:`check_finite`.
    """
    diag = g.diagonal(dim1=-2, dim2=-1).reshape(len(jobs), -1)
    if bool(torch.isfinite(diag).all()):
        return
    for b, job in enumerate(jobs):
        for m, (model, name) in enumerate(job.inputs):
            if not bool(torch.isfinite(diag[b, m])):
                check_finite(row(b, m), plan.checkpoints[model], name)


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of ``shape``."""
    n = 1
    for s in shape:
        n *= s
    return n


def round_to(x: torch.Tensor, dtype: torch.dtype | None) -> None:
    """Emulate a recipe ``dtype`` narrower than the compute dtype (inputs cast, then computed), in place."""
    if dtype is not None and dtype not in (torch.float32, torch.float64) and x.dtype != dtype:
        x.copy_(x.to(dtype))


def torch_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` the engines run on (``resolve_device``'s rule: cpu, cuda, auto)."""
    return torch.device(resolve_device(device))


def compute_dtype(plan: MergePlan, job: TensorJob) -> torch.dtype:
    """float64 when the recipe's dtype or any input is float64, else float32."""
    if plan.in_dtype is not None:
        return torch.float64 if plan.in_dtype == torch.float64 else torch.float32
    dts = [plan.checkpoints[m].dtype(n) for m, n in job.inputs]
    return torch.float64 if any(d == torch.float64 for d in dts) else torch.float32


def _dare_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    # seeded per tensor name: the same recipe drops the same entries in either engine, in any order
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


def apply_method(method: str, job: TensorJob, xs: list[torch.Tensor]) -> torch.Tensor:
    """Run the method's pure function on one tensor's inputs (float32/64 result)."""
    sh, pi, bi = job.shared, job.per_input, job.base_index
    others = [i for i in range(len(xs)) if i != bi]
    if method == "linear":
        return _lin.linear(xs, [p["weight"] for p in pi], normalize=sh["normalize"])
    if method in ("lerp", "slerp", "lerp_norm_restore"):
        a, b = xs[bi], xs[others[0]]
        fn = {"lerp": _lin.lerp, "slerp": _sph.slerp, "lerp_norm_restore": _sph.lerp_norm_restore}[method]
        return fn(sh["t"], a, b)
    if method == "chained_slerp":
        ts = [pi[i]["t"] if pi[i].get("t") is not None else 1.0 / (k + 2) for k, i in enumerate(others)]
        return _sph.chained_slerp([xs[bi]] + [xs[i] for i in others], ts)
    if method == "multislerp":
        return _sph.multislerp(
            [xs[i] for i in others],
            [pi[i]["weight"] for i in others],
            base=xs[bi] if bi is not None else None,
            normalize_weights=sh["normalize_weights"],
            eps=sh["eps"],
        )
    if method == "karcher":
        return _sph.karcher(xs, max_iter=sh["max_iter"], tol=sh["tol"])
    if method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
        kw = dict(
            density=[pi[i]["density"] for i in others],
            normalize=sh["normalize"],
            rescale=sh["rescale"],
            lambda_=sh["lambda"],
        )
        tensors, weights = [xs[i] for i in others], [pi[i]["weight"] for i in others]
        if method == "task_arithmetic":
            return _tv.generalized_task_arithmetic(xs[bi], tensors, weights, **kw)
        if method == "ties":
            return _tv.generalized_task_arithmetic(
                xs[bi], tensors, weights, sparsify="magnitude", consensus="sum", **kw
            )
        gen = _dare_generator(sh["seed"], job.name, xs[bi].device)
        return _tv.generalized_task_arithmetic(
            xs[bi],
            tensors,
            weights,
            sparsify="random",
            consensus="sum" if method == "dare_ties" else None,
            generator=gen,
            **kw,
        )
    if method == "model_stock":
        return _ms.model_stock(xs[bi], [xs[i] for i in others], filter_wise=sh["filter_wise"])
    raise WorkbenchError(f"unknown merge method {method!r}")  # pragma: no cover


def gram_coefficients(method: str, jobs: list[TensorJob], g: torch.Tensor) -> torch.Tensor:
    """Combination coefficients ``[B, M]`` (float64) of a GRAM_METHODS method for a batch of
    same-layout jobs, from their Gram matrices ``g`` ``[B, M, M]``."""
    dev = g.device
    if method == "linear":
        w = torch.tensor([[p["weight"] for p in j.per_input] for j in jobs], dtype=torch.float64, device=dev)
        if jobs[0].shared["normalize"]:
            w = w / w.sum(1, keepdim=True)
        return w
    bi = jobs[0].base_index
    oi = 1 - bi
    t = torch.tensor([j.shared["t"] for j in jobs], dtype=torch.float64, device=dev)
    if method == "lerp":
        ca, cb = 1.0 - t, t
    else:
        geo = _sph.geometry_from_gram(g, bi, oi)
        fn = _sph.slerp_coefficients if method == "slerp" else _sph.norm_restore_coefficients
        ca, cb = fn(t, geo)
    coef = torch.zeros(len(jobs), 2, dtype=torch.float64, device=dev)
    coef[:, bi] = ca
    coef[:, oi] = cb
    return coef
