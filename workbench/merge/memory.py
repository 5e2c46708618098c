"""Merge in memory, for sliders and sweeps: the hot path of interactive use.

:func:`merge_in_memory` returns a state dict on the chosen device, stacking tensors of the
same shape so that one batched kernel call merges a whole group; float32 copies of the
ingredients (and their Gram matrices) are cached on the device, so repeated merges (a slider
over t) skip I/O and cost one pass over the weights.

On the CPU, output memory is recycled: a result buffer whose tensors the caller has dropped
(no tensor, view or storage handle anywhere still refers to it) is written again by a later
call instead of being freed and allocated anew, because the first touch of fresh memory costs
more than the merge itself (page faults). Returned tensors are therefore never overwritten
while anything can still read them. Results narrower than the compute dtype (bf16, fp16) are
combined in cache-sized float32 pieces and rounded straight into the output.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
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
from workbench.merge.recipe import MergeRecipe, load_recipe

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


def _handles(buf: torch.Tensor) -> tuple[int, int]:
    """(tensors sharing ``buf``'s storage, Python references to that storage object)."""
    st = buf.untyped_storage()
    return torch._C._storage_Use_Count(st._cdata), sys.getrefcount(st)


# torch offers no public storage reference count; without it nothing is ever recycled
_TRACKABLE = hasattr(torch._C, "_storage_Use_Count")
_ALONE = _handles(torch.empty(1)) if _TRACKABLE else None  # the counts of a buffer nothing else refers to


class _Outputs:
    """Result buffers recycled between calls on the CPU, where a fresh allocation's page faults
    cost more than the merge; each CUDA allocation is already served from torch's cache.

    A buffer is lent again only when :func:`_handles` shows that no tensor (a returned view, a
    view of it, a parameter built on it) and no storage handle outside this pool refers to its
    memory: the caller has dropped every result in it. Between :meth:`take` and :meth:`give`
    it is out of the pool, so concurrent calls never share one. Per shape the pool keeps the
    buffer just returned and the one before it (what ``state = merge_in_memory(...)`` in a loop
    alternates between), within a budget of ``WORKBENCH_MERGE_CACHE_MB`` of its own (apart
    from the ingredient cache's), oldest shapes dropped first;
    so the memory held beyond the caller's own is at most the results it last dropped.
    """

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _idle(buf: torch.Tensor) -> bool:
        return _handles(buf) == _ALONE

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
        """An idle buffer of this shape and dtype, else a new one."""
        key = (shape, dtype, str(dev))
        if dev.type == "cpu" and _TRACKABLE:
            with self.lock:
                bufs = self.items.get(key, [])
                for i, buf in enumerate(bufs):
                    if self._idle(buf):
                        return bufs.pop(i)
        return torch.empty(shape, dtype=dtype, device=dev)

    def give(self, buf: torch.Tensor) -> None:
        """Take ``buf`` (whose views were just returned) back for a later call."""
        if buf.device.type != "cpu" or not _TRACKABLE:
            return
        key = (tuple(buf.shape), buf.dtype, str(buf.device))
        limit = _INGREDIENTS.limit
        with self.lock:
            busy = [b for b in self.items.pop(key, []) if not self._idle(b)]
            self.items[key] = busy[-1:] + [buf]  # the previous result: the next one the caller drops
            size = lambda b: b.numel() * b.element_size()  # noqa: E731
            total = sum(size(b) for v in self.items.values() for b in v)
            while total > limit and self.items:
                _, dropped = self.items.popitem(last=False)
                total -= sum(size(b) for b in dropped)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_OUTPUTS = _Outputs()


def _files_key(ck: Checkpoint) -> tuple | None:
    """What opening ``ck`` read, as stats: every entry of its directory (config, index, tokenizer
    and weight files: one added, removed, renamed or rewritten) and every weight file wherever it
    lies; None when one is gone."""
    try:
        with os.scandir(ck.path) as it:
            entries = sorted((e.name, e.inode(), (st := e.stat()).st_size, st.st_mtime_ns) for e in it)
        return _stat(ck.path), tuple(entries), stat_key(ck)
    except OSError:
        return None


def _stat(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _cacheable(recipe: MergeRecipe) -> bool:
    """Whether a plan reads only the referenced models' directories: alignment, a tokenizer to
    build or a chat template read files elsewhere, which the plan cache would not watch."""
    return recipe.align is None and not recipe.tokenizer_settings() and not recipe.chat_template


class _Plans:
    """Recent plans, and the local checkpoints they opened, reused while no file behind them changed.

    Planning opens every checkpoint (config, safetensors headers) and resolves every tensor's
    parameters: about a tenth of a warm merge. An unchanged recipe (same text, same working
    directory) reuses its plan; a new one (a slider's next t) reuses the opened checkpoints. A
    checkpoint counts as unchanged while :func:`_files_key` does and its reference still
    resolves to it (a moved symlink). Hub references, caller-given checkpoints and recipes that
    read files elsewhere (:func:`_cacheable`) are left to :func:`plan_merge` every time, and only
    successful plans are kept, so bad input raises the same error on every call.
    """

    def __init__(self, size: int = 8) -> None:
        self.plans: OrderedDict[tuple, MergePlan] = OrderedDict()
        self.opened: OrderedDict[str, tuple[Checkpoint, tuple]] = OrderedDict()
        self.size = size
        self.lock = threading.Lock()

    def _fresh(self, path: str) -> Checkpoint | None:
        with self.lock:
            hit = self.opened.get(path)
        return hit[0] if hit is not None and _files_key(hit[0]) == hit[1] else None

    def plan(
        self,
        recipe: MergeRecipe | str | os.PathLike | dict,
        checkpoints: Mapping[str, Checkpoint] | None,
        allow_extrapolation: bool,
    ) -> MergePlan:
        """:func:`plan_merge`'s plan for these arguments, reused or made now."""
        if checkpoints is not None:
            return plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
        recipe = load_recipe(recipe)
        if not _cacheable(recipe):
            return plan_merge(recipe, allow_extrapolation=allow_extrapolation)
        key = (json.dumps(recipe.model_dump(mode="json", exclude_none=True), sort_keys=True), os.getcwd())
        key += (allow_extrapolation,)
        local = {ref: str(Path(ref).resolve()) for ref in recipe.referenced_models() if Path(ref).is_dir()}
        with self.lock:
            plan = self.plans.get(key)
        # each reference must still resolve to the directory the plan opened (a moved symlink)
        if plan is not None and all(
            local.get(ref) == str(ck.path) and self._fresh(str(ck.path)) is ck for ref, ck in plan.checkpoints.items()
        ):
            return plan
        given = {ref: ck for ref, path in local.items() if (ck := self._fresh(path)) is not None}
        plan = plan_merge(recipe, checkpoints=given or None, allow_extrapolation=allow_extrapolation)
        keys = {ref: _files_key(ck) for ref, ck in plan.checkpoints.items() if local.get(ref) == str(ck.path)}
        with self.lock:
            for ref, fk in keys.items():
                if fk is not None:
                    self.opened[str(plan.checkpoints[ref].path)] = (plan.checkpoints[ref], fk)
                    self.opened.move_to_end(str(plan.checkpoints[ref].path))
            if len(keys) == len(plan.checkpoints) and None not in keys.values():
                self.plans[key] = plan
                self.plans.move_to_end(key)
            for cache in (self.plans, self.opened):
                while len(cache) > self.size:
                    cache.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self.lock:
            self.plans.clear()
            self.opened.clear()


_PLANS = _Plans()


def clear_ingredient_cache() -> None:
    """Drop cached float32 ingredient tensors (they are rebuilt on demand), recycled output
    buffers (results already returned stay valid: they are only no longer reused) and cached
    plans and opened checkpoints."""
    _INGREDIENTS.clear()
    _OUTPUTS.clear()
    _PLANS.clear()


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

    The returned tensors are the caller's: no later call writes into them while any tensor,
    view or storage handle still refers to them (on the CPU the memory of results the caller
    has dropped is recycled; see the module docstring).

    ``out``: existing tensors (e.g. ``model.state_dict()``) to write the results into, in place,
    instead of allocating new ones; the fastest way to move a loaded model along a slider. It
    needs one tensor per result, of the result's shape, dtype and device, no two sharing memory
    (extra entries are ignored); anything else, and any input error, raises before the first
    write, so ``out`` is either fully merged or untouched.
    """
    plan = _PLANS.plan(recipe, checkpoints, allow_extrapolation)
    return _merge_plan(plan, torch_device(device), allow_nonfinite=allow_nonfinite, progress=progress, out=out)


#: float32 elements per piece when a result is rounded to a narrower dtype: cache-resident
_PIECE = 1 << 20


def _check_out(plan: MergePlan, dev: torch.device, out: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The caller's ``out`` tensors for the plan's results, refused (before anything is written)
    unless each result has one of the right shape, dtype and device and no two share memory.
    Extra entries (a tied ``lm_head.weight``) are ignored."""
    if out is None:
        return {}
    missing = [j.name for j in plan.jobs if j.name not in out]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise WorkbenchError(f"out= lacks {len(missing)} of the results: {', '.join(map(repr, missing[:3]))}{more}")
    into = {j.name: out[j.name] for j in plan.jobs}
    for j in plan.jobs:
        t = into[j.name]
        if tuple(t.shape) != j.shape or t.dtype != j.out_dtype or t.device != dev:
            raise WorkbenchError(
                f"out[{j.name!r}] is {tuple(t.shape)} {t.dtype} on {t.device}, expected {j.shape} {j.out_dtype} on {dev}"
            )
    spans = sorted((_span(t), n) for n, t in into.items() if t.numel())
    for ((p0, _, e0), n0), ((p1, s1, _), n1) in zip(spans, spans[1:]):
        if p0 == p1 and s1 < e0:
            raise WorkbenchError(f"out[{n0!r}] and out[{n1!r}] share memory: each result needs a tensor of its own")
    return into


def _span(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage address, first byte, one past the last byte) that ``t`` can touch."""
    size = t.element_size()
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    start = t.storage_offset() * size
    return t.untyped_storage().data_ptr(), start, start + (last + 1) * size


def _refuse_aliases(into: dict[str, torch.Tensor]) -> None:
    """Refuse ``out`` tensors in cached input stacks (a view a caller got hold of): writing them
    would change the inputs of this call and of every later one."""
    with _INGREDIENTS.lock:
        held = {x.untyped_storage().data_ptr() for x, _ in _INGREDIENTS.items.values()}
    for name, t in into.items():
        if t.untyped_storage().data_ptr() in held:
            raise WorkbenchError(f"out[{name!r}] is memory of the merge's cached inputs: pass tensors of your own")


def _groups(plan: MergePlan) -> tuple[OrderedDict[tuple, list[TensorJob]], list[TensorJob]]:
    """Jobs of the batched fast path grouped by layout (shape, inputs, base, dtypes), and the rest."""
    method = plan.recipe.merge_method
    groups: OrderedDict[tuple, list[TensorJob]] = OrderedDict()
    singles: list[TensorJob] = []
    for job in plan.jobs:
        if job.copy or method not in GRAM_METHODS:
            singles.append(job)
            continue
        models = tuple(m for m, _ in job.inputs)
        key = (job.shape, models, job.base_index, compute_dtype(plan, job), job.out_dtype)
        groups.setdefault(key, []).append(job)
    return groups, singles


def _combine_rounded(coef: torch.Tensor, x: torch.Tensor, dest: torch.Tensor) -> None:
    """``dest[b] = combine(coef, x)[b]`` rounded to ``dest``'s dtype, one cache-sized piece at a
    time: the same products and the same rounding as combining everything first, without a
    full-size float32 intermediate (``x``: ``[B, M, N]`` or ``[M, N]``; ``dest``: ``[B, N]`` / ``[N]``)."""
    n = x.shape[-1]
    rows = x.shape[0] if x.dim() == 3 else 1
    width = max(1, min(n, _PIECE // rows))
    scratch = torch.empty(rows * width, dtype=x.dtype, device=x.device)
    for s in range(0, n, width):
        w = min(width, n - s)
        part = scratch[: rows * w].view((rows, w) if x.dim() == 3 else (w,))
        _sph.combine(coef, x[..., s : s + w], out=part)
        dest[..., s : s + w].copy_(part)


def _as_block(targets: list[torch.Tensor]) -> torch.Tensor | None:
    """The contiguous tensors ``targets`` as one ``[B, N]`` tensor, when they are consecutive
    rows of one storage (as a model built from one of our results holds them), else None."""
    first, n = targets[0], targets[0].numel()
    where = first.untyped_storage().data_ptr()
    for i, t in enumerate(targets):
        if t.untyped_storage().data_ptr() != where or t.storage_offset() != first.storage_offset() + i * n:
            return None
    return first.as_strided((len(targets), n), (n, 1))


def _into_group(coef: torch.Tensor, x: torch.Tensor, jobs: list[TensorJob], into: dict[str, torch.Tensor]) -> bool:
    """Write the group's results straight into the caller's tensors (checked by :func:`_check_out`)
    when every one of them is contiguous; False leaves them untouched."""
    targets = [into.get(j.name) for j in jobs]
    if not all(t is not None and t.is_contiguous() for t in targets):
        return False
    if all(t.dtype == x.dtype for t in targets):
        block = _as_block(targets)
        if block is not None:  # e.g. a model built from an earlier result: one product for all
            _sph.combine(coef, x, out=block)
            return True
        for i, t in enumerate(targets):
            _sph.combine(coef[i], x[i], out=t.view(-1))
        return True
    if all(t.dtype == j.out_dtype for t, j in zip(targets, jobs)):
        for i, t in enumerate(targets):
            _combine_rounded(coef[i], x[i], t.view(-1))
        return True
    return False


def _fresh_group(coef: torch.Tensor, x: torch.Tensor, jobs: list[TensorJob], out_dtype: torch.dtype) -> torch.Tensor:
    """The group's results ``[B, *shape]`` in ``out_dtype``, in a recycled or new buffer."""
    res = _OUTPUTS.take((len(jobs), *jobs[0].shape), out_dtype, x.device)
    flat = res.view(len(jobs), -1)
    if out_dtype == x.dtype:
        _sph.combine(coef, x, out=flat)
    else:
        _combine_rounded(coef, x, flat)
    return res


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
    into = _check_out(plan, dev, out)
    groups, singles = _groups(plan)
    res: dict[str, torch.Tensor] = {}
    ck_keys = {m: _ck_key(ck) for m, ck in plan.checkpoints.items()}  # files cannot change during one call
    bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
    lent: list[torch.Tensor] = []
    with torch.no_grad():
        # everything that can fail (reads, checks, coefficients) before the first write into `out`
        for job in singles:
            res[job.name] = _single(plan, job, dev, allow_nonfinite, ck_keys)
            bar.update(1)
        coefs = []  # with `out`, all checked first; else each as its group comes (no second read)
        for key, jobs in groups.items() if into else ():
            x, g = _group_inputs(plan, jobs, dev, key[3], allow_nonfinite, ck_keys)
            coefs.append(gram_coefficients(method, jobs, g).to(x.dtype))  # what combine multiplies by
        _refuse_aliases(into)
        for i, (key, jobs) in enumerate(groups.items()):
            # with `out`: a cache hit unless the cache cannot hold the model (then read and checked again)
            x, g = _group_inputs(plan, jobs, dev, key[3], allow_nonfinite, ck_keys)
            coef = coefs[i] if coefs else gram_coefficients(method, jobs, g).to(x.dtype)
            if _into_group(coef, x, jobs, into):
                res.update((j.name, into[j.name]) for j in jobs)
            else:
                buf = _fresh_group(coef, x, jobs, key[4])
                lent.append(buf)
                res.update(zip((j.name for j in jobs), buf.unbind(0)))
            bar.update(len(jobs))
        bar.close()
        for name, t in into.items():
            if res[name] is not t:
                t.copy_(res[name])
                res[name] = t
    for buf in lent:  # after the views exist, so the buffers stay busy while they live
        _OUTPUTS.give(buf)
    return {j.name: res[j.name] for j in plan.jobs}


def _single(
    plan: MergePlan, job: TensorJob, dev: torch.device, allow_nonfinite: bool, ck_keys: Mapping[str, tuple]
) -> torch.Tensor:
    """One tensor outside the batched fast path: copied (non-float) or merged by its method."""
    if job.copy:
        m, n = job.inputs[job.base_index or 0]
        return plan.checkpoints[m].get(n).clone().to(dev)
    x, _ = _group_inputs(plan, [job], dev, compute_dtype(plan, job), allow_nonfinite, ck_keys)
    xs = list(x[0].reshape(len(job.inputs), *job.shape).unbind(0))
    if plan.in_dtype is not None:
        xs = [t.to(plan.in_dtype) for t in xs]
    r = apply_method(plan.recipe.merge_method, job, xs).to(job.out_dtype)
    # a method may hand an input back (passthrough): never give the caller the cached stack
    return r.clone() if r.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() else r


def merged_model(
    recipe: MergeRecipe | str | os.PathLike | dict,
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    **kwargs: Any,
) -> Any:
    """``merge_in_memory`` wrapped into a transformers model (eval mode) on ``device``."""
    plan = _PLANS.plan(recipe, checkpoints, kwargs.pop("allow_extrapolation", False))
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
