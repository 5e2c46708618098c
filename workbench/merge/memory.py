"""Merge in memory, for sliders and sweeps: the hot path of interactive use.

:func:`merge_in_memory` returns a state dict on the chosen device, stacking tensors of the
same shape so that one batched kernel call merges a whole group; float32 copies of the
ingredients (and their Gram matrices) are cached on the device, so repeated merges (a slider
over t) skip I/O.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from workbench.checkpoints import Checkpoint, model_from_state_dict, stat_key
from workbench.errors import WorkbenchError
from workbench.merge import spherical as _sph
from workbench.merge.execute import (
    GRAM_METHODS,
    apply_method,
    check_gram_finite,
    compute_dtype,
    gram_coefficients,
    numel,
    round_to,
    torch_device,
)
from workbench.merge.plan import MergePlan, TensorJob, plan_merge
from workbench.merge.recipe import MergeRecipe

__all__ = ["clear_ingredient_cache", "merge_in_memory", "merged_model"]


class _Cache:
    """Float32 ingredient stacks (and their Gram matrices) on a device, LRU-bounded by bytes."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, Any] = OrderedDict()
        self.sizes: dict[tuple, int] = {}
        self.bytes = 0
        self.lock = threading.Lock()

    @property
    def limit(self) -> int:
        return int(float(os.environ.get("WORKBENCH_MERGE_CACHE_MB", "2048")) * 1024**2)

    def get(self, key: tuple) -> Any:
        with self.lock:
            v = self.items.get(key)
            if v is not None:
                self.items.move_to_end(key)
            return v

    def put(self, key: tuple, value: Any, size: int) -> None:
        limit = self.limit  # read the environment once per call
        if size > limit:
            return
        with self.lock:
            if key in self.items:
                self.bytes -= self.sizes[key]
            self.items[key] = value
            self.sizes[key] = size
            self.bytes += size
            while self.bytes > limit and self.items:
                old, _ = self.items.popitem(last=False)
                self.bytes -= self.sizes.pop(old)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.sizes.clear()
            self.bytes = 0


_INGREDIENTS = _Cache()


def clear_ingredient_cache() -> None:
    """Drop cached float32 ingredient tensors (they are rebuilt on demand)."""
    _INGREDIENTS.clear()


def _ck_key(ck: Checkpoint) -> tuple:
    return (str(ck.path), stat_key(ck))


def _load_stack(plan: MergePlan, jobs: list[TensorJob], dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[B, M, N]`` stack of the jobs' inputs (job b, input m), read with plain file reads."""
    n = numel(jobs[0].shape)
    m = len(jobs[0].inputs)
    host = torch.empty((len(jobs), m, n), dtype=dtype)
    for b, job in enumerate(jobs):
        for i, (model, name) in enumerate(job.inputs):
            plan.checkpoints[model].read_into(name, host[b, i])
    round_to(host, plan.in_dtype)
    return host if dev.type == "cpu" else host.to(dev)


def _group_inputs(
    plan: MergePlan,
    jobs: list[TensorJob],
    dev: torch.device,
    dtype: torch.dtype,
    allow_nonfinite: bool,
    ck_keys: Mapping[str, tuple],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The jobs' input stack and its Gram matrices, from the cache or read (and checked) now."""
    key = (
        tuple(ck_keys[m] for m, _ in jobs[0].inputs),
        str(dev),
        tuple(tuple(n for _, n in j.inputs) for j in jobs),
        dtype,
        plan.in_dtype,
    )
    hit = _INGREDIENTS.get(key)
    if hit is not None:
        return hit
    x = _load_stack(plan, jobs, dev, dtype)
    g = _sph.gram(x)
    if not allow_nonfinite:
        check_gram_finite(g, plan, jobs, lambda b, m: x[b, m])
    _INGREDIENTS.put(key, (x, g), x.numel() * x.element_size())
    return x, g


def merge_in_memory(
    recipe: MergeRecipe | str | os.PathLike | dict,
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    allow_nonfinite: bool = False,
    allow_extrapolation: bool = False,
    progress: bool = False,
    out: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Merge into a state dict on ``device`` (no disk round trip).

    linear/lerp/slerp/lerp_norm_restore stack same-shape tensors and merge each stack with one
    batched product; the float32 stacks and their Gram matrices are cached on the device
    (``WORKBENCH_MERGE_CACHE_MB``, default 2048), so a slider over t re-reads nothing and
    costs one pass over the weights. A tied ``lm_head.weight`` is left out
    (``model_from_state_dict`` re-ties it). Results equal :func:`merge_to_disk`'s tensors up to
    float32 rounding (batched kernels sum in a different order).

    ``out``: existing tensors (e.g. ``model.state_dict()``) to write the results into, in place,
    instead of allocating new ones; the fastest way to move a loaded model along a slider.
    """
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
    return _merge_plan(plan, torch_device(device), allow_nonfinite=allow_nonfinite, progress=progress, out=out)


def _merge_plan(
    plan: MergePlan,
    dev: torch.device,
    *,
    allow_nonfinite: bool,
    progress: bool,
    out: Mapping[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    method = plan.recipe.merge_method
    into = dict(out) if out is not None else {}
    for j in plan.jobs:
        if j.name in into and (tuple(into[j.name].shape) != j.shape or into[j.name].device != dev):
            raise WorkbenchError(
                f"out[{j.name!r}] has shape {tuple(into[j.name].shape)} on {into[j.name].device}, "
                f"expected {j.shape} on {dev}"
            )
    out = {}
    groups: OrderedDict[tuple, list[TensorJob]] = OrderedDict()
    singles: list[TensorJob] = []
    for job in plan.jobs:
        if job.copy or method not in GRAM_METHODS:
            singles.append(job)
            continue
        models = tuple(m for m, _ in job.inputs)
        key = (job.shape, models, job.base_index, compute_dtype(plan, job), job.out_dtype)
        groups.setdefault(key, []).append(job)

    ck_keys = {m: _ck_key(ck) for m, ck in plan.checkpoints.items()}  # files cannot change during one call
    bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
    for key, jobs in groups.items():
        x, g = _group_inputs(plan, jobs, dev, key[3], allow_nonfinite, ck_keys)
        coef = gram_coefficients(method, jobs, g)
        if all(j.name in into and into[j.name].is_contiguous() and into[j.name].dtype == x.dtype for j in jobs):
            with torch.no_grad():
                for i, j in enumerate(jobs):
                    _sph.combine(coef[i], x[i], out=into[j.name].reshape(-1))
                    out[j.name] = into[j.name]
            bar.update(len(jobs))
            continue
        res = _sph.combine(coef, x)
        res = res.reshape((len(jobs), *key[0]))
        if res.dtype != key[4]:
            res = res.to(key[4])
        for i, j in enumerate(jobs):
            out[j.name] = res[i]
        bar.update(len(jobs))
    for job in singles:
        if job.copy:
            m, n = job.inputs[job.base_index or 0]
            out[job.name] = plan.checkpoints[m].get(n).clone().to(dev)
        else:
            x, _ = _group_inputs(plan, [job], dev, compute_dtype(plan, job), allow_nonfinite, ck_keys)
            xs = list(x[0].reshape(len(job.inputs), *job.shape).unbind(0))
            if plan.in_dtype is not None:
                xs = [t.to(plan.in_dtype) for t in xs]
            out[job.name] = apply_method(method, job, xs).to(job.out_dtype)
        bar.update(1)
    bar.close()
    with torch.no_grad():
        for name, t in into.items():
            if name in out and out[name] is not t:
                t.copy_(out[name])
                out[name] = t
    return {j.name: out[j.name] for j in plan.jobs}


def merged_model(
    recipe: MergeRecipe | str | os.PathLike | dict,
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    **kwargs: Any,
) -> Any:
    """``merge_in_memory`` wrapped into a transformers model (eval mode) on ``device``."""
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=kwargs.pop("allow_extrapolation", False))
    state = _merge_plan(
        plan,
        torch_device(device),
        allow_nonfinite=kwargs.pop("allow_nonfinite", False),
        progress=kwargs.pop("progress", False),
        out=kwargs.pop("out", None),
    )
    if kwargs:
        raise TypeError(f"merged_model() got unexpected keyword arguments {sorted(kwargs)}")
    return model_from_state_dict(plan.config, state, device=device)
