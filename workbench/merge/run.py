"""Execute a merge recipe: streaming to disk, or in memory for sliders and sweeps.

Both paths share one plan (which output tensor comes from which input tensors with which
resolved parameters) and one implementation of the math (``workbench.merge.linear``,
``spherical``, ``task_vectors``, ``model_stock``).

* :func:`merge_to_disk` reads one tensor per input at a time from the memory maps, merges
  it and streams it into the output safetensors file, inside an atomic output directory:
  memory stays around one tensor's worth regardless of model size.
* :func:`merge_in_memory` returns a state dict on the chosen device, stacking tensors of
  the same shape so that one batched kernel call merges a whole group; float32 copies of
  the ingredients are cached on the device, so repeated merges (a slider over t) skip I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from workbench.checkpoints import (
    LM_HEAD,
    Checkpoint,
    SafetensorsWriter,
    atomic_output_dir,
    copy_tokenizer_files,
    layer_index,
    model_from_state_dict,
    open_checkpoint,
)
from workbench.errors import WorkbenchError
from workbench.merge import linear as _lin
from workbench.merge import model_stock as _ms
from workbench.merge import spherical as _sph
from workbench.merge import task_vectors as _tv
from workbench.merge.recipe import (
    METHODS,
    REQUIRED,
    T_METHODS,
    InputSlice,
    MergeRecipe,
    OutputSlice,
    load_recipe,
    resolve_setting,
)

__all__ = [
    "MergePlan",
    "TensorJob",
    "merge_in_memory",
    "merge_to_disk",
    "merged_model",
    "plan_merge",
    "recipe_fingerprint",
]

DTYPE_NAMES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "num_hidden_layers",
)
_PRE_RE = re.compile(r"(embed|wte|wpe|word_embeddings)")


@dataclass
class TensorJob:
    """One output tensor: its inputs (model, source tensor), base position and parameters."""

    name: str
    inputs: list[tuple[str, str]]
    base_index: int | None
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    copy: bool = False  # non-float tensor: copied from the base (or first input)


@dataclass
class MergePlan:
    """Everything needed to execute a recipe, checked before any output is written."""

    recipe: MergeRecipe
    checkpoints: dict[str, Checkpoint]
    jobs: list[TensorJob]
    config: dict
    reference: str
    tokenizer_source: str
    in_dtype: torch.dtype | None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------
# planning


def _open_all(recipe: MergeRecipe, checkpoints: Mapping[str, Checkpoint] | None) -> dict[str, Checkpoint]:
    given = dict(checkpoints or {})
    by_path = {str(ck.path): ck for ck in given.values()}
    out: dict[str, Checkpoint] = {}
    for ref in recipe.referenced_models():
        ck = given.get(ref)
        if ck is None and Path(ref).exists():
            ck = by_path.get(str(Path(ref).resolve()))
        if ck is None:
            path, revision = ref, None
            if "@" in ref and not Path(ref).exists():
                path, revision = ref.rsplit("@", 1)
            ck = open_checkpoint(path, revision=revision)
        out[ref] = ck
    return out


def _check_arch(ckpts: dict[str, Checkpoint], reference: str, *, layers: bool) -> None:
    ref = ckpts[reference]
    for name, ck in ckpts.items():
        if ck is ref:
            continue
        for key in ARCH_KEYS:
            if key == "num_hidden_layers" and not layers:
                continue
            a, b = ref.config.get(key), ck.config.get(key)
            if a != b and not (a is None or b is None) or (key == "model_type" and a != b):
                raise WorkbenchError(
                    f"different architectures: {ref.path / 'config.json'} has {key}={a} but "
                    f"{ck.path / 'config.json'} has {key}={b}"
                )


def _as_slices(recipe: MergeRecipe, ckpts: dict[str, Checkpoint]) -> list[OutputSlice]:
    if recipe.slices:
        return list(recipe.slices)
    sources = [
        InputSlice(model=m.model, layer_range=(0, ckpts[m.model].num_layers()), parameters=m.parameters)
        for m in recipe.models or []
    ]
    if recipe.base_model and recipe.base_model not in [s.model for s in sources]:
        sources.append(InputSlice(model=recipe.base_model, layer_range=(0, ckpts[recipe.base_model].num_layers())))
    return [OutputSlice(sources=sources)]


def _template(name: str) -> str | None:
    m = re.search(r"((?:^|\.)(?:layers|h|blocks|layer)\.)(\d+)(\.)", name)
    if not m:
        return None
    return name[: m.start(2)] + "{}" + name[m.end(2) :]


def _resolve_params(
    spec_params: dict[str, Any],
    types: dict[str, type],
    scopes: list[dict | None],
    tensor_name: str,
    position: float,
    where: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pname, default in spec_params.items():
        value = None
        for scope in scopes:
            if scope and pname in scope:
                try:
                    value = resolve_setting(tensor_name, scope[pname], position, types.get(pname, float))
                except (TypeError, ValueError) as err:
                    raise WorkbenchError(f"recipe: parameter {pname!r} for {where}: {err}") from None
                if value is not None:
                    break
        if value is None:
            if default is REQUIRED:
                raise WorkbenchError(f"recipe: missing parameter {pname!r} for {where}")
            value = default
        out[pname] = value
    return out


def plan_merge(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    *,
    checkpoints: Mapping[str, Checkpoint] | None = None,
    allow_extrapolation: bool = False,
) -> MergePlan:
    """Open the inputs, check them against each other and resolve every tensor's parameters.

    Raises :class:`WorkbenchError` (naming the file/tensor) on different architectures, a
    tensor missing from a model, mismatched shapes, missing parameters, or t outside [0, 1]
    without ``allow_extrapolation``.
    """
    recipe = load_recipe(recipe)
    spec = METHODS[recipe.merge_method]
    ckpts = _open_all(recipe, checkpoints)
    slices = _as_slices(recipe, ckpts)
    reference = recipe.base_model or slices[0].sources[0].model
    _check_arch(ckpts, reference, layers=recipe.models is not None)
    ref = ckpts[reference]
    in_dtype = DTYPE_NAMES[recipe.dtype] if recipe.dtype else None
    forced_out = DTYPE_NAMES.get(recipe.out_dtype or recipe.dtype or "")

    ref_names = ref.names()
    if recipe.models is not None:
        for mname, ck in ckpts.items():
            for n in ck.names():
                if n not in ref:
                    raise WorkbenchError(f"tensor {n!r} is in {ck.path} but missing from {ref.path}")
    templates: list[str] = []
    seen_t: set[str] = set()
    pre: list[str] = []
    post: list[str] = []
    for n in ref_names:
        tp = _template(n)
        if tp is not None:
            if tp not in seen_t:
                seen_t.add(tp)
                templates.append(tp)
        elif _PRE_RE.search(n) and n != LM_HEAD:
            pre.append(n)
        else:
            post.append(n)

    all_tied = all(ck.tied for ck in ckpts.values())
    tie_out = bool(ref.config.get("tie_word_embeddings", False)) and all_tied
    if not tie_out and all_tied and ref.tied:
        tie_out = True  # lm_head absent everywhere: keep it tied
    jobs: list[TensorJob] = []
    notes: list[str] = []

    def add_job(out_name: str, sl: OutputSlice, src_names: list[str], position: float) -> None:
        base = sl.base_model or recipe.base_model
        models = [s.model for s in sl.sources]
        if spec.base == "required" and (base is None or base not in models):
            raise WorkbenchError(
                f"recipe: merge_method {recipe.merge_method} needs a base_model among its inputs"
            )
        n_in = len(models)
        if n_in < spec.min_inputs or (spec.max_inputs is not None and n_in > spec.max_inputs):
            want = f"exactly {spec.min_inputs}" if spec.max_inputs == spec.min_inputs else f"at least {spec.min_inputs}"
            raise WorkbenchError(
                f"recipe: merge_method {recipe.merge_method} takes {want} models (base included), got {n_in}"
            )
        base_index = models.index(base) if (base is not None and spec.base != "ignored") else None
        shape = None
        dtypes = []
        for src, sname in zip(sl.sources, src_names):
            ck = ckpts[src.model]
            if sname not in ck:
                raise WorkbenchError(f"tensor {sname!r} is missing from {ck.path}")
            shp = ck.shape(sname)
            if shape is None:
                shape, first_path = shp, ck.file_of(sname)
            elif shp != shape:
                raise WorkbenchError(
                    f"shape mismatch for tensor {sname!r}: {tuple(shape)} in {first_path} "
                    f"but {tuple(shp)} in {ck.file_of(sname)}"
                )
            dtypes.append(ck.dtype(sname))
        shared = _resolve_params(
            spec.shared, spec.types, [sl.parameters, recipe.parameters], out_name, position, f"tensor {out_name!r}"
        )
        per_input = []
        for i, (src, sname) in enumerate(zip(sl.sources, src_names)):
            if spec.scope == "non_base" and i == base_index:
                per_input.append({})
                continue
            per_input.append(
                _resolve_params(
                    spec.per_input, spec.types, [src.parameters, sl.parameters, recipe.parameters], sname,
                    position, f"model {src.model} tensor {sname!r}",
                )
            )
        if recipe.merge_method in T_METHODS and not allow_extrapolation:
            ts = [shared.get("t")] + [p.get("t") for p in per_input]
            for t in ts:
                if t is not None and not (0.0 <= t <= 1.0):
                    raise WorkbenchError(
                        f"recipe: t={t} for tensor {out_name!r} is outside [0, 1] "
                        "(pass --allow-extrapolation / allow_extrapolation=True to extrapolate)"
                    )
        is_float = all(d.is_floating_point for d in dtypes)
        main = base_index if base_index is not None else 0
        if is_float:
            out_dtype = forced_out or dtypes[main]
        else:
            out_dtype = dtypes[main]
            notes.append(
                f"tensor {out_name!r} is not floating point ({dtypes[main]}): copied from {sl.sources[main].model}"
            )
        jobs.append(
            TensorJob(out_name, [(s.model, n) for s, n in zip(sl.sources, src_names)], base_index, shared,
                      per_input, tuple(shape), out_dtype, copy=not is_float)
        )

    for n in pre:
        add_job(n, slices[0], [n] * len(slices[0].sources), 0.0)
    out_layer = 0
    for sl in slices:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
        if len(lengths) != 1:
            raise WorkbenchError("recipe: all sources of a slice must have the same number of layers")
        (n_layers,) = lengths
        for s in sl.sources:
            have = ckpts[s.model].num_layers()
            if s.layer_range[0] < 0 or s.layer_range[1] > have:
                raise WorkbenchError(f"recipe: layer_range {list(s.layer_range)} is outside the {have} layers of {s.model}")
        base_here = sl.base_model or recipe.base_model
        ref_src = next((s for s in sl.sources if s.model == base_here), sl.sources[0])
        for j in range(n_layers):
            position = j / (n_layers - 1) if n_layers > 1 else 1.0
            for tp in templates:
                if tp.format(ref_src.layer_range[0] + j) not in ckpts[ref_src.model]:
                    continue  # this layer of the reference has no such tensor
                add_job(tp.format(out_layer), sl, [tp.format(s.layer_range[0] + j) for s in sl.sources], position)
            out_layer += 1
    for n in post:
        if n == LM_HEAD and tie_out:
            continue
        add_job(n, slices[-1], [n] * len(slices[-1].sources), 0.0)

    config = json.loads(json.dumps(ref.config))
    config["num_hidden_layers"] = out_layer
    config["tie_word_embeddings"] = tie_out
    if jobs:
        float_jobs = [j for j in jobs if not j.copy]
        name = str(float_jobs[0].out_dtype if float_jobs else jobs[0].out_dtype).removeprefix("torch.")
        config["dtype" if "torch_dtype" not in config else "torch_dtype"] = name
    tok = recipe.tokenizer_source
    tok_src = reference if tok in (None, "base") else tok
    if tok_src not in ckpts:
        ckpts[tok_src] = open_checkpoint(tok_src)
    return MergePlan(recipe, ckpts, jobs, config, reference, tok_src, in_dtype, notes)


# ----------------------------------------------------------------------------------------
# executing one tensor


def _check_finite(x: torch.Tensor, ck: Checkpoint, name: str) -> None:
    if not x.is_floating_point() or x.numel() == 0:
        return
    s = torch.sum(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if torch.isfinite(s) or bool(torch.isfinite(x).all()):
        return
    bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
    raise WorkbenchError(
        f"tensor {name!r} in {ck.file_of(name)} contains {bad} values "
        "(pass --allow-nonfinite / allow_nonfinite=True to merge anyway)"
    )


def _dare_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


def _apply(method: str, job: TensorJob, xs: list[torch.Tensor]) -> torch.Tensor:
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
            [xs[i] for i in others], [pi[i]["weight"] for i in others],
            base=xs[bi] if bi is not None else None, normalize_weights=sh["normalize_weights"], eps=sh["eps"],
        )
    if method == "karcher":
        return _sph.karcher(xs, max_iter=sh["max_iter"], tol=sh["tol"])
    if method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
        kw = dict(
            density=[pi[i]["density"] for i in others], normalize=sh["normalize"], rescale=sh["rescale"],
            lambda_=sh["lambda"],
        )
        tensors, weights = [xs[i] for i in others], [pi[i]["weight"] for i in others]
        if method == "task_arithmetic":
            return _tv.generalized_task_arithmetic(xs[bi], tensors, weights, **kw)
        if method == "ties":
            return _tv.generalized_task_arithmetic(xs[bi], tensors, weights, sparsify="magnitude", consensus="sum", **kw)
        gen = _dare_generator(sh["seed"], job.name, xs[bi].device)
        return _tv.generalized_task_arithmetic(
            xs[bi], tensors, weights, sparsify="random", consensus="sum" if method == "dare_ties" else None,
            generator=gen, **kw,
        )
    if method == "model_stock":
        return _ms.model_stock(xs[bi], [xs[i] for i in others], filter_wise=sh["filter_wise"])
    raise WorkbenchError(f"unknown merge method {method!r}")  # pragma: no cover


def _run_job(plan: MergePlan, job: TensorJob, device: torch.device, allow_nonfinite: bool) -> torch.Tensor:
    if job.copy:
        m, n = job.inputs[job.base_index or 0]
        return plan.checkpoints[m].get(n, device)
    xs = []
    for m, n in job.inputs:
        ck = plan.checkpoints[m]
        x = ck.get(n, device)
        if not allow_nonfinite:
            _check_finite(x, ck, n)
        if plan.in_dtype is not None and x.dtype != plan.in_dtype:
            x = x.to(plan.in_dtype)
        xs.append(x)
    return _apply(plan.recipe.merge_method, job, xs).to(job.out_dtype)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {device!r} requested but CUDA is not available")
    return d


# ----------------------------------------------------------------------------------------
# to disk


def _merge_yaml(plan: MergePlan) -> str:
    from workbench import __version__

    head = [f"# written by workbench {__version__}: the recipe this model was merged from"]
    head += [f"# note: {n}" for n in plan.notes]
    return "\n".join(head) + "\n" + plan.recipe.to_yaml()


def merge_to_disk(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    allow_extrapolation: bool = False,
    progress: bool = True,
    checkpoints: Mapping[str, Checkpoint] | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Merge tensor by tensor into a Hugging Face model directory at ``out_dir``.

    Writes (atomically) sharded safetensors (+ index when more than one shard), the base's
    ``config.json`` (layer count and dtype updated), the tokenizer files and
    ``workbench_merge.yaml`` (the recipe). Memory stays bounded by a few tensors.
    Non-float tensors are copied from the base and reported in ``workbench_merge.yaml``.
    """
    dev = _device(device)
    out = Path(out_dir)
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
    target = out.resolve()
    for ck in plan.checkpoints.values():
        if target == ck.path or target in ck.path.parents:
            raise WorkbenchError(f"output directory {out} would overwrite input model {ck.path}")
    from tqdm.auto import tqdm

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(
            tmp, [(j.name, j.out_dtype, j.shape) for j in plan.jobs], max_shard_bytes=max_shard_bytes,
            metadata={"workbench_merge_method": plan.recipe.merge_method},
        )
        # One writer thread overlaps file writes with the next tensor's math.
        q: queue.Queue = queue.Queue(maxsize=2)
        failure: list[BaseException] = []

        def drain() -> None:
            while True:
                item = q.get()
                if item is None:
                    return
                if failure:
                    continue
                try:
                    writer.add(*item)
                except BaseException as err:  # pragma: no cover - disk full etc.
                    failure.append(err)

        th = threading.Thread(target=drain, daemon=True)
        th.start()
        try:
            for job in tqdm(plan.jobs, desc="merge", unit="tensor", disable=not progress, leave=False):
                if failure:
                    break
                q.put((job.name, _run_job(plan, job, dev, allow_nonfinite)))
        finally:
            q.put(None)
            th.join()
        if failure:
            raise WorkbenchError(f"{out}: writing the merged tensors failed ({failure[0]})")
        writer.close()
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer_files(plan.checkpoints[plan.tokenizer_source].path, tmp)
        (tmp / "workbench_merge.yaml").write_text(_merge_yaml(plan))
    if plan.notes and progress:
        for n in plan.notes:
            print(f"note: {n}")
    return out


# ----------------------------------------------------------------------------------------
# in memory


class _Cache:
    """Float32 ingredient tensors on a device, LRU-bounded by bytes."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    @property
    def limit(self) -> int:
        return int(float(os.environ.get("WORKBENCH_MERGE_CACHE_MB", "2048")) * 1024**2)

    def get(self, key: tuple) -> torch.Tensor | None:
        with self.lock:
            t = self.items.get(key)
            if t is not None:
                self.items.move_to_end(key)
            return t

    def put(self, key: tuple, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.limit:
            return
        with self.lock:
            self.items[key] = t
            self.bytes += size
            while self.bytes > self.limit and self.items:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0


_INGREDIENTS = _Cache()


def clear_ingredient_cache() -> None:
    """Drop cached float32 ingredient tensors (they are rebuilt on demand)."""
    _INGREDIENTS.clear()


def _ck_key(ck: Checkpoint) -> tuple:
    from workbench.checkpoints import _stat_key

    return (str(ck.path), _stat_key(ck))


def _stacked(plan: MergePlan, model: str, names: tuple[str, ...], dev: torch.device, dtype: torch.dtype,
             allow_nonfinite: bool) -> torch.Tensor:
    ck = plan.checkpoints[model]
    key = (_ck_key(ck), str(dev), names, dtype)
    hit = _INGREDIENTS.get(key)
    if hit is not None:
        return hit
    first = ck.shape(names[0])
    out = torch.empty((len(names), *first), dtype=dtype, device=dev)
    for i, n in enumerate(names):
        x = ck.get(n)
        if not allow_nonfinite:
            _check_finite(x, ck, n)
        out[i].copy_(x)
    _INGREDIENTS.put(key, out)
    return out


_BATCHED = ("linear", "lerp", "slerp", "lerp_norm_restore")


def merge_in_memory(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    allow_nonfinite: bool = False,
    allow_extrapolation: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge into a state dict on ``device`` (no disk round trip).

    linear/lerp/slerp/lerp_norm_restore stack same-shape tensors and merge each stack with one
    batched call; float32 ingredients are cached on the device (``WORKBENCH_MERGE_CACHE_MB``,
    default 2048) so a slider over t re-reads nothing. A tied ``lm_head.weight`` is left out
    (``model_from_state_dict`` re-ties it). Results equal :func:`merge_to_disk`'s tensors up to
    float32 rounding (batched kernels sum in a different order).
    """
    dev = _device(device)
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
    method = plan.recipe.merge_method
    out: dict[str, torch.Tensor] = {}
    groups: "OrderedDict[tuple, list[TensorJob]]" = OrderedDict()
    singles: list[TensorJob] = []
    for job in plan.jobs:
        if job.copy or method not in _BATCHED:
            singles.append(job)
            continue
        models = tuple(m for m, _ in job.inputs)
        in_dt = tuple(plan.checkpoints[m].dtype(n) for m, n in job.inputs)
        extra = (job.shared.get("normalize"),) if method == "linear" else ()
        key = (job.shape, models, job.base_index, in_dt, job.out_dtype, extra)
        groups.setdefault(key, []).append(job)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
    for key, jobs in groups.items():
        models = key[1]
        cdt = torch.float64 if any(d == torch.float64 for d in key[3]) else torch.float32
        if plan.in_dtype is not None:
            cdt = torch.float64 if plan.in_dtype == torch.float64 else torch.float32
        stacks = [
            _stacked(plan, m, tuple(j.inputs[i][1] for j in jobs), dev, cdt, allow_nonfinite)
            for i, m in enumerate(models)
        ]
        if plan.in_dtype is not None and plan.in_dtype not in (torch.float32, torch.float64):
            stacks = [s.to(plan.in_dtype).to(cdt) for s in stacks]
        if method == "linear":
            w = torch.tensor([[p["weight"] for p in j.per_input] for j in jobs], dtype=cdt, device=dev)
            shape = (len(jobs),) + (1,) * (stacks[0].dim() - 1)
            res = torch.zeros_like(stacks[0])
            for i, s in enumerate(stacks):
                res.add_(s * w[:, i].reshape(shape))
            if jobs[0].shared["normalize"]:
                res.div_(w.sum(1).reshape(shape))
        else:
            bi = key[2]
            a, b = stacks[bi], stacks[1 - bi]
            t = torch.tensor([j.shared["t"] for j in jobs], dtype=torch.float64, device=dev)
            if method == "lerp":
                res = _lin.lerp_batched(t, a, b)
            elif method == "slerp":
                res = _sph.slerp_batched(t, a, b)
            else:
                res = _sph.lerp_norm_restore_batched(t, a, b)
        res = res.to(jobs[0].out_dtype)
        for i, j in enumerate(jobs):
            out[j.name] = res[i]
        bar.update(len(jobs))
    for job in singles:
        if job.copy:
            m, n = job.inputs[job.base_index or 0]
            out[job.name] = plan.checkpoints[m].get(n).clone().to(dev)
        else:
            xs = []
            for m, n in job.inputs:
                x = _stacked(plan, m, (n,), dev, torch.float32 if plan.checkpoints[m].dtype(n) != torch.float64
                             else torch.float64, allow_nonfinite)[0]
                if plan.in_dtype is not None and x.dtype != plan.in_dtype:
                    x = x.to(plan.in_dtype)
                xs.append(x)
            out[job.name] = _apply(method, job, xs).to(job.out_dtype)
        bar.update(1)
    bar.close()
    return {j.name: out[j.name] for j in plan.jobs}


def merged_model(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    **kwargs: Any,
):
    """``merge_in_memory`` wrapped into a transformers model (eval mode) on ``device``."""
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=kwargs.get("allow_extrapolation", False))
    state = merge_in_memory(plan.recipe, device=device, checkpoints=plan.checkpoints, **kwargs)
    return model_from_state_dict(plan.config, state, device=device)


def recipe_fingerprint(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    *,
    checkpoints: Mapping[str, Checkpoint] | None = None,
) -> str:
    """sha256 of the canonical recipe with every model reference replaced by its content fingerprint.

    Two recipes that read the same bytes with the same parameters get the same key, wherever
    the files live.
    """
    recipe = load_recipe(recipe)
    ckpts = _open_all(recipe, checkpoints)
    fps = {ref: ck.fingerprint() for ref, ck in ckpts.items()}

    def sub(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: (fps.get(v, v) if k in ("model", "base_model", "tokenizer_source") and isinstance(v, str)
                        else sub(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [sub(v) for v in obj]
        return obj

    data = sub(recipe.model_dump(mode="json", exclude_none=True))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
