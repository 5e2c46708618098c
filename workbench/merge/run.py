"""Execute a merge recipe: streaming to disk, or in memory for sliders and sweeps.

Both paths share one plan (which output tensor comes from which input tensors with which
resolved parameters) and one implementation of the math (``workbench.merge.linear``,
``spherical``, ``task_vectors``, ``model_stock``).

* :func:`merge_to_disk` reads each input tensor with plain file reads (in chunks for large
  tensors, one unit ahead of the math), merges it and streams it into the output safetensors
  file, inside an atomic output directory: memory stays around one tensor's worth regardless
  of model size.
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
    layer_template,
    model_from_state_dict,
    open_checkpoint,
    resolve_device,
    stat_key,
)
from workbench.errors import WorkbenchError
from workbench.merge import linear as _lin
from workbench.merge import model_stock as _ms
from workbench.merge import spherical as _sph
from workbench.merge import task_vectors as _tv
from workbench.merge.recipe import (
    DTYPES,
    METHODS,
    REQUIRED,
    T_METHODS,
    InputSlice,
    MergeRecipe,
    OutputSlice,
    load_recipe,
    map_model_refs,
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

DTYPE_NAMES = {name: getattr(torch, name) for name in DTYPES}  # the recipe's dtype names, as torch dtypes
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
        tp = layer_template(n)
        if tp is not None:
            if tp not in seen_t:
                seen_t.add(tp)
                templates.append(tp)
        elif _PRE_RE.search(n) and n != LM_HEAD:
            pre.append(n)
        else:
            post.append(n)

    tie_out = all(ck.tied for ck in ckpts.values())  # lm_head absent from every input (ref included): keep it tied
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
    _raise_nonfinite(x, ck, name)


def _raise_nonfinite(x: torch.Tensor, ck: Checkpoint, name: str) -> None:
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


#: methods whose result is a per-tensor linear combination of the inputs, with coefficients
#: that depend only on the inputs' Gram matrix: one product gives norms and dots, one more the result
GRAM_METHODS = ("linear", "lerp", "slerp", "lerp_norm_restore")


def _gram_coefficients(method: str, jobs: list[TensorJob], g: torch.Tensor) -> torch.Tensor:
    """Combination coefficients ``[B, M]`` (float64) for a batch of same-layout jobs."""
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


def _finite_gram(g: torch.Tensor, x: torch.Tensor, plan: MergePlan, jobs: list[TensorJob]) -> None:
    """Raise on NaN/Inf: a non-finite input makes its squared norm on the Gram diagonal non-finite."""
    diag = g.diagonal(dim1=-2, dim2=-1).reshape(len(jobs), -1)
    if bool(torch.isfinite(diag).all()):
        return
    xb = x.reshape(len(jobs), diag.shape[1], -1)
    for b, job in enumerate(jobs):
        for m, (model, name) in enumerate(job.inputs):
            if not bool(torch.isfinite(diag[b, m])):
                row = xb[b, m, : _numel(job.shape)]
                if not bool(torch.isfinite(row).all()):
                    _raise_nonfinite(row, plan.checkpoints[model], name)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _round_to(x: torch.Tensor, dtype: torch.dtype | None) -> None:
    """Emulate a recipe ``dtype`` narrower than the compute dtype (inputs cast, then computed)."""
    if dtype is not None and dtype not in (torch.float32, torch.float64) and x.dtype != dtype:
        x.copy_(x.to(dtype))


def _read_inputs(plan: MergePlan, job: TensorJob, allow_nonfinite: bool) -> list[torch.Tensor]:
    """Read one job's inputs with plain file reads (no memory map), in their stored dtype."""
    xs = []
    for m, n in job.inputs:
        ck = plan.checkpoints[m]
        x = torch.empty(ck.shape(n), dtype=ck.dtype(n))
        ck.read_into(n, x.reshape(-1))
        if not allow_nonfinite:
            _check_finite(x, ck, n)
        xs.append(x)
    return xs


def _run_job(plan: MergePlan, job: TensorJob, device: torch.device, allow_nonfinite: bool) -> torch.Tensor:
    xs = _read_inputs(plan, job, allow_nonfinite)
    if job.copy:
        return xs[job.base_index or 0].to(device)
    xs = [x.to(device) for x in xs]
    if plan.in_dtype is not None:
        xs = [x.to(plan.in_dtype) for x in xs]
    return _apply(plan.recipe.merge_method, job, xs).to(job.out_dtype)


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(resolve_device(device))


def _compute_dtype(plan: MergePlan, job: TensorJob) -> torch.dtype:
    dts = [plan.checkpoints[m].dtype(n) for m, n in job.inputs]
    if plan.in_dtype is not None:
        return torch.float64 if plan.in_dtype == torch.float64 else torch.float32
    return torch.float64 if any(d == torch.float64 for d in dts) else torch.float32


# ----------------------------------------------------------------------------------------
# to disk


def _merge_yaml(plan: MergePlan) -> str:
    from workbench import __version__

    head = [f"# written by workbench {__version__}: the recipe this model was merged from"]
    head += [f"# note: {n}" for n in plan.notes]
    return "\n".join(head) + "\n" + plan.recipe.to_yaml()


#: elements per input row held in the disk path's buffers; larger tensors are streamed in
#: chunks (one pass for the Gram matrix, one for the result), so memory does not grow with them
CHUNK_ELEMENTS = 1 << 21


class _GramStream:
    """Disk-path executor for GRAM_METHODS with bounded, reusable buffers.

    Each unit reads the M inputs' elements ``start:stop`` with ``preadv`` straight into the
    rows of a float32 buffer (two buffers: the next unit is read while this one computes).
    A tensor that fits one chunk is merged at once: ``X X^T`` gives norms and dots (and the
    NaN/Inf check), ``coef @ X`` the result. Larger tensors take two passes over chunks.
    """

    def __init__(self, plan: MergePlan, jobs: list[TensorJob], device: torch.device, allow_nonfinite: bool):
        self.plan, self.device, self.allow_nonfinite = plan, device, allow_nonfinite
        self.method = plan.recipe.merge_method
        m = max(len(j.inputs) for j in jobs)
        self.chunk = max(1, min(max(_numel(j.shape) for j in jobs), CHUNK_ELEMENTS))
        dt = torch.float64 if any(_compute_dtype(plan, j) == torch.float64 for j in jobs) else torch.float32
        self.x = [torch.empty((m, self.chunk), dtype=dt) for _ in range(2)]
        if device.type != "cpu":
            self.xd = [torch.empty_like(self.x[0], device=device) for _ in range(2)]
        self.out = [torch.empty(self.chunk, dtype=dt) for _ in range(3)]
        self.g: torch.Tensor | None = None
        self.coef: torch.Tensor | None = None

    def units(self, job: TensorJob) -> list[tuple[str, int, int]]:
        n = _numel(job.shape)
        if n <= self.chunk:
            return [("full", 0, n)]
        spans = [(s, min(n, s + self.chunk)) for s in range(0, n, self.chunk)]
        return [("gram", a, b) for a, b in spans] + [("emit", a, b) for a, b in spans]

    def read(self, job: TensorJob, start: int, stop: int, slot: int) -> torch.Tensor:
        n = stop - start
        x = self.x[slot][: len(job.inputs)]
        for i, (m, name) in enumerate(job.inputs):
            self.plan.checkpoints[m].read_into(name, x[i, :n], start)
        xv = x[:, :n]
        _round_to(xv, self.plan.in_dtype)
        if self.device.type != "cpu":
            xd = self.xd[slot][: xv.shape[0], :n]
            xd.copy_(xv)
            if xd.is_cuda:
                torch.cuda.current_stream().synchronize()
            xv = xd
        return xv

    def _finish_gram(self, job: TensorJob, g: torch.Tensor) -> None:
        if not self.allow_nonfinite:
            diag = g.diagonal()
            for i, (m, name) in enumerate(job.inputs):
                if not bool(torch.isfinite(diag[i])):
                    ck = self.plan.checkpoints[m]
                    x = ck.get(name)
                    if not bool(torch.isfinite(x).all()):
                        _raise_nonfinite(x, ck, name)
        self.coef = _gram_coefficients(self.method, [job], g.unsqueeze(0))[0]

    def process(self, job: TensorJob, kind: str, start: int, xv: torch.Tensor, slot: int) -> torch.Tensor | None:
        """Handle one unit; returns the result part to write, or None (Gram pass)."""
        if kind in ("full", "gram"):
            g = _sph.gram(xv)
            self.g = g if (kind == "full" or start == 0) else self.g + g
            if kind == "gram":
                return None
            self._finish_gram(job, self.g)
        elif start == 0:
            self._finish_gram(job, self.g)
        n = xv.shape[1]
        if self.device.type != "cpu":
            res = _sph.combine(self.coef, xv).to("cpu")
        else:
            res = _sph.combine(self.coef, xv, out=self.out[slot][:n])
        if kind == "full":
            res = res.reshape(job.shape)
        return res if job.out_dtype == res.dtype else res.to(job.out_dtype)


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
    ``workbench_merge.yaml`` (the recipe). Inputs are read with plain file reads into a few
    reusable buffers (no memory maps), one tensor ahead of the math, and results are written
    by a second thread: memory stays bounded by a few of the largest tensor, whatever the
    model size. Non-float tensors are copied from the base and reported in
    ``workbench_merge.yaml``.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    dev = _device(device)
    out = Path(out_dir)
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
    target = out.resolve()
    for ck in plan.checkpoints.values():
        if target == ck.path or target in ck.path.parents:
            raise WorkbenchError(f"output directory {out} would overwrite input model {ck.path}")
    method = plan.recipe.merge_method
    fast = [j for j in plan.jobs if method in GRAM_METHODS and not j.copy]
    stream = _GramStream(plan, fast, dev, allow_nonfinite) if fast else None

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(
            tmp, [(j.name, j.out_dtype, j.shape) for j in plan.jobs], max_shard_bytes=max_shard_bytes,
            metadata={"workbench_merge_method": method},
        )
        q: queue.Queue = queue.Queue(maxsize=1)
        failure: list[BaseException] = []

        def drain() -> None:
            while True:
                item = q.get()
                if item is None:
                    return
                if failure:
                    continue
                try:
                    writer.add_part(*item)
                except BaseException as err:  # pragma: no cover - disk full etc.
                    failure.append(err)

        # work units: a whole tensor, or chunks of a large one (Gram pass, then result pass)
        units: list[tuple[TensorJob, str, int, int]] = []
        for job in plan.jobs:
            if stream is not None and not job.copy:
                units += [(job, kind, a, b) for kind, a, b in stream.units(job)]
            else:
                units.append((job, "generic", 0, 0))

        def load(k: int):
            job, kind, a, b = units[k]
            return None if kind == "generic" else stream.read(job, a, b, k % 2)

        th = threading.Thread(target=drain, daemon=True)
        th.start()
        pool = ThreadPoolExecutor(max_workers=1)
        bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
        try:
            pending = pool.submit(load, 0) if units else None
            emitted = 0  # result buffers rotate over emitted parts: 3 buffers, at most 2 with the writer
            for k, (job, kind, a, b) in enumerate(units):
                if failure:
                    break
                xv = pending.result()
                # read the next unit into the other buffer (slot (k+1) % 2) while this one computes
                if k + 1 < len(units):
                    pending = pool.submit(load, k + 1)
                if kind == "generic":
                    res = _run_job(plan, job, dev, allow_nonfinite)
                else:
                    res = stream.process(job, kind, a, xv, emitted % 3)
                if res is not None:
                    q.put((job.name, res))
                    emitted += 1
                if kind in ("generic", "full") or (kind == "emit" and b == _numel(job.shape)):
                    bar.update(1)
        finally:
            pool.shutdown(wait=True)
            q.put(None)
            th.join()
            bar.close()
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
    n = _numel(jobs[0].shape)
    m = len(jobs[0].inputs)
    host = torch.empty((len(jobs), m, n), dtype=dtype)
    for b, job in enumerate(jobs):
        for i, (model, name) in enumerate(job.inputs):
            plan.checkpoints[model].read_into(name, host[b, i])
    _round_to(host, plan.in_dtype)
    return host if dev.type == "cpu" else host.to(dev)


def _group_inputs(plan: MergePlan, jobs: list[TensorJob], dev: torch.device, dtype: torch.dtype,
                  allow_nonfinite: bool, ck_keys: Mapping[str, tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    key = (
        tuple(ck_keys[m] for m, _ in jobs[0].inputs),
        str(dev), tuple(tuple(n for _, n in j.inputs) for j in jobs), dtype, plan.in_dtype,
    )
    hit = _INGREDIENTS.get(key)
    if hit is not None:
        return hit
    x = _load_stack(plan, jobs, dev, dtype)
    g = _sph.gram(x)
    if not allow_nonfinite:
        _finite_gram(g, x, plan, jobs)
    _INGREDIENTS.put(key, (x, g), x.numel() * x.element_size())
    return x, g


def merge_in_memory(
    recipe: "MergeRecipe | str | os.PathLike | dict",
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
    return _merge_plan_in_memory(plan, _device(device), allow_nonfinite=allow_nonfinite, progress=progress, out=out)


def _merge_plan_in_memory(plan: MergePlan, dev: torch.device, *, allow_nonfinite: bool, progress: bool,
                          out: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    method = plan.recipe.merge_method
    into = dict(out) if out is not None else {}
    for j in plan.jobs:
        if j.name in into and (tuple(into[j.name].shape) != j.shape or into[j.name].device != dev):
            raise WorkbenchError(f"out[{j.name!r}] has shape {tuple(into[j.name].shape)} on {into[j.name].device}, "
                                 f"expected {j.shape} on {dev}")
    out = {}
    groups: "OrderedDict[tuple, list[TensorJob]]" = OrderedDict()
    singles: list[TensorJob] = []
    for job in plan.jobs:
        if job.copy or method not in GRAM_METHODS:
            singles.append(job)
            continue
        models = tuple(m for m, _ in job.inputs)
        key = (job.shape, models, job.base_index, _compute_dtype(plan, job), job.out_dtype)
        groups.setdefault(key, []).append(job)

    ck_keys = {m: _ck_key(ck) for m, ck in plan.checkpoints.items()}  # files cannot change during one call
    bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
    for key, jobs in groups.items():
        x, g = _group_inputs(plan, jobs, dev, key[3], allow_nonfinite, ck_keys)
        coef = _gram_coefficients(method, jobs, g)
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
            x, _ = _group_inputs(plan, [job], dev, _compute_dtype(plan, job), allow_nonfinite, ck_keys)
            xs = list(x[0].reshape(len(job.inputs), *job.shape).unbind(0))
            if plan.in_dtype is not None:
                xs = [t.to(plan.in_dtype) for t in xs]
            out[job.name] = _apply(method, job, xs).to(job.out_dtype)
        bar.update(1)
    bar.close()
    with torch.no_grad():
        for name, t in into.items():
            if name in out and out[name] is not t:
                t.copy_(out[name])
                out[name] = t
    return {j.name: out[j.name] for j in plan.jobs}


def merged_model(
    recipe: "MergeRecipe | str | os.PathLike | dict",
    *,
    device: str | torch.device = "cpu",
    checkpoints: Mapping[str, Checkpoint] | None = None,
    **kwargs: Any,
):
    """``merge_in_memory`` wrapped into a transformers model (eval mode) on ``device``."""
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=kwargs.pop("allow_extrapolation", False))
    state = _merge_plan_in_memory(plan, _device(device), allow_nonfinite=kwargs.pop("allow_nonfinite", False),
                                  progress=kwargs.pop("progress", False), out=kwargs.pop("out", None))
    if kwargs:
        raise TypeError(f"merged_model() got unexpected keyword arguments {sorted(kwargs)}")
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

    data = map_model_refs(recipe.model_dump(mode="json", exclude_none=True), lambda ref: fps.get(ref, ref))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
