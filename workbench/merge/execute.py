"""What both merge engines share: one tensor's kernel call, the Gram fast path's
coefficients, the random generators, the NaN/Inf rule, and the compute-dtype rules.

The registry (:mod:`workbench.merge.registry`) says which kernel of
:mod:`workbench.merge.methods` computes a method and whether it has the Gram fast path;
this module only maps a :class:`~workbench.merge.plan.TensorJob`'s resolved parameters onto
that kernel.

Random methods draw from the generators of :mod:`workbench.merge.draws` (per tensor, or
mergekit's stream when the recipe has a ``random_seed``).

>>> numel((3, 4, 5))
60
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.checkpoints import Checkpoint
from workbench.devices import resolve_device
from workbench.errors import WorkbenchError
from workbench.merge.draws import tensor_generator
from workbench.merge.methods import MergeCall
from workbench.merge.plan import MergePlan, TensorJob
from workbench.merge.registry import METHODS, method_spec
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
GRAM_METHODS = tuple(name for name, spec in METHODS.items() if spec.gram is not None)


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


def _kernel(method: str, job: TensorJob, xs: list[torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
    call = MergeCall(job.name, xs, job.base_index, job.shared, job.per_input, generator)
    try:
        return method_spec(method).kernel_fn(call)
    except ValueError as err:
        raise WorkbenchError(f"merge_method {method}: tensor {job.name!r}: {err}") from None


def apply_method(method: str, job: TensorJob, xs: list[torch.Tensor]) -> torch.Tensor:
    """Run the method's kernel on one tensor's inputs (float32/64 result, on the inputs' device)."""
    if not method_spec(method).random:
        return _kernel(method, job, xs, None)
    stream = job.stream
    if stream is None:
        gen = tensor_generator(job.shared.get("seed", 0), job.name, xs[0].device)
        return _kernel(method, job, xs, gen)
    # mergekit draws on the CPU generator: the masks are the same whatever the device
    device = xs[0].device
    gen = stream.start(job.draw, lambda j, zeros, g: _kernel(method, j, zeros, g))
    out = _kernel(method, job, [x.cpu() for x in xs], gen)
    stream.done(job.draw)
    return out.to(device)


def gram_coefficients(method: str, jobs: list[TensorJob], g: torch.Tensor) -> torch.Tensor:
    """Combination coefficients ``[B, M]`` (float64) of a GRAM_METHODS method for a batch of
    same-layout jobs, from their Gram matrices ``g`` ``[B, M, M]``."""
    fn: Callable | None = method_spec(method).gram_fn
    if fn is None:
        raise WorkbenchError(f"merge method {method} has no Gram fast path")  # pragma: no cover
    return fn(jobs, g)
