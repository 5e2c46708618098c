"""Plan a merge: which output tensor comes from which input tensors, with which parameters.

Both engines (:mod:`workbench.merge.disk`, :mod:`workbench.merge.memory`) execute one
:class:`MergePlan`, so every check (architectures, missing tensors, shapes, parameters and
their bounds, the method's input contract) runs before any output is written, and both
engines merge the same tensors alike. The method's parameters, contract and checks come from
the registry (:mod:`workbench.merge.registry`); layer stacking's config edits from
:mod:`workbench.merge.stacking`; tokenizers and vocabulary alignment from
:mod:`workbench.merge.vocab`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.checkpoints import Checkpoint
from workbench.errors import WorkbenchError
from workbench.merge.draws import MaskStream, mergekit_order
from workbench.merge.inputs import check_architectures, open_inputs
from workbench.merge.recipe import (
    DTYPES,
    InputSlice,
    MergeRecipe,
    OutputModule,
    OutputSlice,
    load_recipe,
    map_model_refs,
    resolve_setting,
)
from workbench.merge.registry import MethodSpec, Parameter, method_spec
from workbench.merge.stacking import stacked_config
from workbench.merge.vocab import plan_vocabulary
from workbench.naming import LM_HEAD, layer_template, stack_position

__all__ = ["MergePlan", "TensorJob", "plan_merge", "recipe_fingerprint"]

DTYPE_NAMES = {name: getattr(torch, name) for name in DTYPES}  # the recipe's dtype names, as torch dtypes


@dataclass
class TensorJob:
    """One output tensor: its inputs (model, source tensor), base position and parameters.

    ``stream``/``draw``: mergekit's random stream and this job's place in it (recipes with a
    ``random_seed`` and a random method), else None.
    """

    name: str
    inputs: list[tuple[str, str]]
    base_index: int | None
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    copy: bool = False  # non-float tensor: copied from the base (or first input)
    stream: MaskStream | None = None
    draw: int = -1


@dataclass
class MergePlan:
    """Everything needed to execute a recipe, checked before any output is written.

    ``tokenizer`` is the output tokenizer when the recipe builds one (a tokenizer source or a
    chat template), to be saved with the model; otherwise the tokenizer files of
    ``tokenizer_source`` are copied.
    """

    recipe: MergeRecipe
    checkpoints: dict[str, Checkpoint]
    jobs: list[TensorJob]
    config: dict
    reference: str
    tokenizer_source: str
    in_dtype: torch.dtype | None
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None


def _as_slices(module: OutputModule, base_model: str | None, ckpts: dict[str, Checkpoint]) -> list[OutputSlice]:
    if module.slices:
        return list(module.slices)
    sources = [
        InputSlice(model=m.model, layer_range=(0, ckpts[m.model].num_layers()), parameters=m.parameters)
        for m in module.models or []
    ]
    if base_model and base_model not in [s.model for s in sources]:
        sources.append(InputSlice(model=base_model, layer_range=(0, ckpts[base_model].num_layers())))
    return [OutputSlice(sources=sources)]


def _resolve_params(
    params: tuple[Parameter, ...],
    scopes: list[dict | None],
    tensor_name: str,
    position: float,
    where: str,
    allow_extrapolation: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        value = None
        for scope in scopes:
            if scope and p.name in scope:
                try:
                    value = resolve_setting(tensor_name, scope[p.name], position, p.type)
                except (TypeError, ValueError) as err:
                    raise WorkbenchError(f"recipe: parameter {p.name!r} for {where}: {err}") from None
                if value is not None:
                    break
        if value is None:
            if p.required:
                raise WorkbenchError(f"recipe: missing parameter {p.name!r} for {where}")
            value = p.default
        p.check(value, where, allow_extrapolation=allow_extrapolation)
        out[p.name] = value
    return out


def _split_names(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(tensors before the layer stack, per-layer name templates, tensors after it), in file order."""
    templates: list[str] = []
    pre: list[str] = []
    post: list[str] = []
    for n in names:
        where = stack_position(n)
        if where == "layer":
            tp = layer_template(n)
            if tp not in templates:
                templates.append(tp)
        elif where == "input":
            pre.append(n)
        else:
            post.append(n)
    return pre, templates, post


@dataclass
class _Planner:
    """Builds the plan's jobs one output tensor at a time, checking each as it goes.

    ``sources`` maps (model, tensor name) to the name the engines read (a vocabulary-aligned
    view of an embedding matrix, see :mod:`workbench.merge.vocab`).
    """

    recipe: MergeRecipe
    spec: MethodSpec
    module: OutputModule
    ckpts: dict[str, Checkpoint]
    forced_out: torch.dtype | None
    allow_extrapolation: bool
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    jobs: list[TensorJob] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layers: list[tuple[str, int]] = field(default_factory=list)  # (model, source layer) of each output layer

    def _base_index(self, sl: OutputSlice) -> int | None:
        return self.spec.check_inputs([s.model for s in sl.sources], sl.base_model or self.recipe.base_model)

    def _shape_and_dtypes(self, sl: OutputSlice, src_names: list[str]) -> tuple[tuple[int, ...], list[torch.dtype]]:
        shape = None
        dtypes = []
        for src, sname in zip(sl.sources, src_names):
            ck = self.ckpts[src.model]
            if sname not in ck:
                raise WorkbenchError(f"tensor {sname!r} is missing from {ck.path}")
            read = self.sources.get((src.model, sname), sname)
            shp = ck.shape(read)
            if shape is None:
                shape, first_path = shp, ck.file_of(read)
            elif shp != shape:
                vocab = stack_position(sname) != "layer" and shp[1:] == shape[1:]
                hint = " (different vocabularies: a tokenizer_source aligns them by token)" if vocab else ""
                raise WorkbenchError(
                    f"shape mismatch for tensor {sname!r}: {tuple(shape)} in {first_path} "
                    f"but {tuple(shp)} in {ck.file_of(read)}{hint}"
                )
            dtypes.append(ck.dtype(read))
        return tuple(shape), dtypes

    def _params(
        self, out_name: str, sl: OutputSlice, src_names: list[str], position: float, base_index: int | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        recipe, spec, extra = self.recipe, self.spec, self.allow_extrapolation
        above = [sl.parameters, self.module.parameters, recipe.parameters]
        where = f"tensor {out_name!r}"
        shared = _resolve_params(spec.scoped("shared"), above, out_name, position, where, extra)
        per_input: list[dict[str, Any]] = []
        for i, (src, sname) in enumerate(zip(sl.sources, src_names)):
            params = spec.scoped("input") if i == base_index else spec.scoped("input", "non_base")
            where = f"model {src.model} tensor {sname!r}"
            per_input.append(_resolve_params(params, [src.parameters, *above], sname, position, where, extra))
        check = spec.validate_fn
        reason = check(shared, per_input, [s.model for s in sl.sources]) if check else None
        if reason:
            raise WorkbenchError(f"recipe: {reason} (merge_method {spec.name}, tensor {out_name!r})")
        return shared, per_input

    def add(self, out_name: str, sl: OutputSlice, src_names: list[str], position: float) -> None:
        """Plan output tensor ``out_name`` from the slice's sources' tensors ``src_names``."""
        base_index = self._base_index(sl)
        shape, dtypes = self._shape_and_dtypes(sl, src_names)
        shared, per_input = self._params(out_name, sl, src_names, position, base_index)
        is_float = all(d.is_floating_point for d in dtypes)
        main = base_index if base_index is not None else 0
        if is_float:
            # mergekit's rule without a recipe dtype: the promoted dtype of the inputs (bf16 + f32 -> f32)
            out_dtype = self.forced_out or functools.reduce(torch.promote_types, dtypes)
        else:
            out_dtype = dtypes[main]
            self.notes.append(
                f"tensor {out_name!r} is not floating point ({dtypes[main]}): copied from {sl.sources[main].model}"
            )
        inputs = [(s.model, self.sources.get((s.model, n), n)) for s, n in zip(sl.sources, src_names)]
        self.jobs.append(
            TensorJob(out_name, inputs, base_index, shared, per_input, shape, out_dtype, copy=not is_float)
        )

    def add_layers(self, slices: list[OutputSlice], templates: list[str]) -> int:
        """Plan every slice's layers, renumbered from 0 in slice order; returns the output layer count."""
        out_layer = 0
        for sl in slices:
            n_layers = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
            base_here = sl.base_model or self.recipe.base_model
            ref_src = next((s for s in sl.sources if s.model == base_here), sl.sources[0])
            for j in range(n_layers):
                position = j / (n_layers - 1) if n_layers > 1 else 1.0
                for tp in templates:
                    if tp.format(ref_src.layer_range[0] + j) not in self.ckpts[ref_src.model]:
                        continue  # this layer of the reference has no such tensor
                    self.add(tp.format(out_layer), sl, [tp.format(s.layer_range[0] + j) for s in sl.sources], position)
                self.layers.append((ref_src.model, ref_src.layer_range[0] + j))
                out_layer += 1
        return out_layer


def _check_slices(slices: list[OutputSlice], ckpts: dict[str, Checkpoint]) -> None:
    """Refuse slices whose sources differ in length or reach past their model's layers."""
    for k, sl in enumerate(slices):
        if not sl.sources:
            raise WorkbenchError(f"recipe: slice {k} has no sources")
        if len({s.layer_range[1] - s.layer_range[0] for s in sl.sources}) != 1:
            raise WorkbenchError(f"recipe: all sources of slice {k} must have the same number of layers")
        for s in sl.sources:
            have = ckpts[s.model].num_layers()
            lo, hi = s.layer_range
            if lo < 0 or hi > have or hi < lo:
                raise WorkbenchError(f"recipe: layer_range {[lo, hi]} is outside the {have} layers of {s.model}")


def _module(recipe: MergeRecipe) -> OutputModule:
    modules = recipe.output_modules()
    unknown = [m for m in modules if m != "default"]
    if unknown:
        raise WorkbenchError(
            f"recipe: unknown module {unknown[0]!r}: these architectures have one module, 'default' "
            "(multimodal modules are not supported)"
        )
    return modules["default"]


def _dtype_name(jobs: list[TensorJob]) -> str | None:
    float_jobs = [j for j in jobs if not j.copy] or jobs
    return str(float_jobs[0].out_dtype).removeprefix("torch.") if float_jobs else None


def _order_draws(recipe: MergeRecipe, spec: MethodSpec, jobs: list[TensorJob]) -> list[TensorJob]:
    """With a ``random_seed``: jobs in mergekit's merge order, random ones on one shared stream."""
    if recipe.random_seed is None or not spec.random:
        return jobs
    jobs = sorted(jobs, key=lambda j: mergekit_order(j.name, [n for _, n in j.inputs]))
    drawing = [j for j in jobs if not j.copy]
    stream = MaskStream(recipe.random_seed, drawing)
    for k, job in enumerate(drawing):
        job.stream, job.draw = stream, k
    return jobs


def _align_to(reference: str, options: Mapping[str, Any], ckpts: dict[str, Checkpoint]) -> None:
    """Replace every other ingredient by its alignment to ``reference`` (computed once, cached on disk).

    The aligned checkpoints are real files with their own fingerprints, so both engines, the
    ingredient cache and the results cache treat them like any other checkpoint.
    """
    from workbench.align import align_options, aligned_checkpoint

    opts = align_options(options, "recipe: align")
    for ref in list(ckpts):
        if ref != reference:
            ckpts[ref] = aligned_checkpoint(ckpts[reference], ckpts[ref], **opts)


def plan_merge(
    recipe: MergeRecipe | str | os.PathLike | dict,
    *,
    checkpoints: Mapping[str, Checkpoint] | None = None,
    allow_extrapolation: bool = False,
) -> MergePlan:
    """Open the inputs, check them against each other and resolve every tensor's parameters.

    Raises :class:`WorkbenchError` (naming the file/tensor) on different architectures, a
    tensor missing from a model, mismatched shapes, missing or out-of-bounds parameters, a
    method given the wrong inputs, or t outside [0, 1] without ``allow_extrapolation``.
    """
    recipe = load_recipe(recipe)
    spec = method_spec(recipe.merge_method)
    module = _module(recipe)
    ckpts = open_inputs(recipe, checkpoints)
    slices = _as_slices(module, recipe.base_model, ckpts)
    reference = recipe.base_model or slices[0].sources[0].model
    settings = recipe.tokenizer_settings()
    # with a tokenizer to build, vocabularies may differ: the embedding rows are aligned by token
    check_architectures(_without_vocab(ckpts) if settings else ckpts, reference, layers=module.models is not None)
    _check_slices(slices, ckpts)
    if recipe.align is not None:  # after the cheap checks (an alignment reads both models); shapes are kept
        _align_to(reference, recipe.align, ckpts)
    ref = ckpts[reference]
    in_dtype = DTYPE_NAMES[recipe.dtype] if recipe.dtype else None
    forced_out = DTYPE_NAMES.get(recipe.out_dtype or recipe.dtype or "")

    if module.models is not None:
        for ck in ckpts.values():
            for n in ck.names():
                if n not in ref:
                    raise WorkbenchError(f"tensor {n!r} is in {ck.path} but missing from {ref.path}")
    pre, templates, post = _split_names(ref.names())
    tie_out = all(ck.tied for ck in ckpts.values())  # lm_head absent from every input (ref included): keep it tied
    vocab = plan_vocabulary(recipe, settings, reference, slices, ckpts, pre + post) if settings else None

    planner = _Planner(recipe, spec, module, ckpts, forced_out, allow_extrapolation)
    if vocab is not None:
        planner.sources = vocab.sources
        ckpts.update(vocab.checkpoints)
    for n in pre:
        planner.add(n, slices[0], [n] * len(slices[0].sources), 0.0)
    planner.add_layers(slices, templates)
    for n in post:
        if n == LM_HEAD and tie_out:
            continue
        planner.add(n, slices[-1], [n] * len(slices[-1].sources), 0.0)

    config = stacked_config(ref.config, {m: ckpts[m].config for m, _ in planner.layers}, planner.layers)
    config["tie_word_embeddings"] = tie_out
    name = _dtype_name(planner.jobs)
    if name is not None:
        config["dtype" if "torch_dtype" not in config else "torch_dtype"] = name
    if vocab is not None:
        config["vocab_size"] = vocab.rows
    jobs = _order_draws(recipe, spec, planner.jobs)
    tokenizer = vocab.tokenizer if vocab is not None else None
    if recipe.chat_template:
        from workbench.merge.chat import with_chat_template

        tokenizer = with_chat_template(recipe.chat_template, ckpts, reference, tokenizer, planner.notes)
    if vocab is not None:
        planner.notes += vocab.notes
    return MergePlan(recipe, ckpts, jobs, config, reference, reference, in_dtype, planner.notes, tokenizer)


class _ConfigOnly:
    """A checkpoint's path and config without ``vocab_size`` (for the architecture check)."""

    def __init__(self, ck: Checkpoint):
        self.path = ck.path
        self.config = {k: v for k, v in ck.config.items() if k != "vocab_size"}


def _without_vocab(ckpts: dict[str, Checkpoint]) -> dict[str, Any]:
    return {m: _ConfigOnly(ck) for m, ck in ckpts.items()}


def recipe_fingerprint(
    recipe: MergeRecipe | str | os.PathLike | dict,
    *,
    checkpoints: Mapping[str, Checkpoint] | None = None,
) -> str:
    """sha256 of the canonical recipe with every model reference replaced by its content fingerprint.

    Two recipes that read the same bytes with the same parameters get the same key, wherever
    the files live.
    """
    recipe = load_recipe(recipe)
    ckpts = open_inputs(recipe, checkpoints)
    fps = {ref: ck.fingerprint() for ref, ck in ckpts.items()}

    data = map_model_refs(recipe.model_dump(mode="json", exclude_none=True), lambda ref: fps.get(ref, ref))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
