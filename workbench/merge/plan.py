"""Plan a merge: which output tensor comes from which input tensors, with which parameters.

Both engines (:mod:`workbench.merge.disk`, :mod:`workbench.merge.memory`) execute one
:class:`MergePlan`, so every check (architectures, missing tensors, shapes, parameters, t
range) runs before any output is written, and both engines merge the same tensors alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.checkpoints import Checkpoint, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge.inputs import check_architectures, open_inputs
from workbench.merge.recipe import (
    DTYPES,
    METHODS,
    REQUIRED,
    T_METHODS,
    InputSlice,
    MergeRecipe,
    MethodSpec,
    OutputSlice,
    load_recipe,
    map_model_refs,
    resolve_setting,
)
from workbench.naming import LM_HEAD, layer_template, stack_position

__all__ = ["MergePlan", "TensorJob", "plan_merge", "recipe_fingerprint"]

DTYPE_NAMES = {name: getattr(torch, name) for name in DTYPES}  # the recipe's dtype names, as torch dtypes


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
    """Builds the plan's jobs one output tensor at a time, checking each as it goes."""

    recipe: MergeRecipe
    spec: MethodSpec
    ckpts: dict[str, Checkpoint]
    forced_out: torch.dtype | None
    allow_extrapolation: bool
    jobs: list[TensorJob] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _base_index(self, sl: OutputSlice) -> int | None:
        recipe, spec = self.recipe, self.spec
        base = sl.base_model or recipe.base_model
        models = [s.model for s in sl.sources]
        if spec.base == "required" and (base is None or base not in models):
            raise WorkbenchError(f"recipe: merge_method {recipe.merge_method} needs a base_model among its inputs")
        n_in = len(models)
        if n_in < spec.min_inputs or (spec.max_inputs is not None and n_in > spec.max_inputs):
            want = f"exactly {spec.min_inputs}" if spec.max_inputs == spec.min_inputs else f"at least {spec.min_inputs}"
            raise WorkbenchError(
                f"recipe: merge_method {recipe.merge_method} takes {want} models (base included), got {n_in}"
            )
        return models.index(base) if (base is not None and spec.base != "ignored") else None

    def _shape_and_dtypes(self, sl: OutputSlice, src_names: list[str]) -> tuple[tuple[int, ...], list[torch.dtype]]:
        shape = None
        dtypes = []
        for src, sname in zip(sl.sources, src_names):
            ck = self.ckpts[src.model]
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
        return tuple(shape), dtypes

    def _params(
        self, out_name: str, sl: OutputSlice, src_names: list[str], position: float, base_index: int | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        recipe, spec = self.recipe, self.spec
        shared = _resolve_params(
            spec.shared, spec.types, [sl.parameters, recipe.parameters], out_name, position, f"tensor {out_name!r}"
        )
        per_input: list[dict[str, Any]] = []
        for i, (src, sname) in enumerate(zip(sl.sources, src_names)):
            if spec.scope == "non_base" and i == base_index:
                per_input.append({})
                continue
            scopes = [src.parameters, sl.parameters, recipe.parameters]
            where = f"model {src.model} tensor {sname!r}"
            per_input.append(_resolve_params(spec.per_input, spec.types, scopes, sname, position, where))
        if recipe.merge_method in T_METHODS and not self.allow_extrapolation:
            for t in [shared.get("t")] + [p.get("t") for p in per_input]:
                if t is not None and not (0.0 <= t <= 1.0):
                    raise WorkbenchError(
                        f"recipe: t={t} for tensor {out_name!r} is outside [0, 1] "
                        "(pass --allow-extrapolation / allow_extrapolation=True to extrapolate)"
                    )
        return shared, per_input

    def add(self, out_name: str, sl: OutputSlice, src_names: list[str], position: float) -> None:
        """Plan output tensor ``out_name`` from the slice's sources' tensors ``src_names``."""
        base_index = self._base_index(sl)
        shape, dtypes = self._shape_and_dtypes(sl, src_names)
        shared, per_input = self._params(out_name, sl, src_names, position, base_index)
        is_float = all(d.is_floating_point for d in dtypes)
        main = base_index if base_index is not None else 0
        if is_float:
            out_dtype = self.forced_out or dtypes[main]
        else:
            out_dtype = dtypes[main]
            self.notes.append(
                f"tensor {out_name!r} is not floating point ({dtypes[main]}): copied from {sl.sources[main].model}"
            )
        inputs = [(s.model, n) for s, n in zip(sl.sources, src_names)]
        self.jobs.append(
            TensorJob(out_name, inputs, base_index, shared, per_input, shape, out_dtype, copy=not is_float)
        )

    def add_layers(self, slices: list[OutputSlice], templates: list[str]) -> int:
        """Plan every slice's layers, renumbered from 0 in slice order; returns the output layer count."""
        out_layer = 0
        for sl in slices:
            lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
            if len(lengths) != 1:
                raise WorkbenchError("recipe: all sources of a slice must have the same number of layers")
            (n_layers,) = lengths
            for s in sl.sources:
                have = self.ckpts[s.model].num_layers()
                if s.layer_range[0] < 0 or s.layer_range[1] > have:
                    raise WorkbenchError(
                        f"recipe: layer_range {list(s.layer_range)} is outside the {have} layers of {s.model}"
                    )
            base_here = sl.base_model or self.recipe.base_model
            ref_src = next((s for s in sl.sources if s.model == base_here), sl.sources[0])
            for j in range(n_layers):
                position = j / (n_layers - 1) if n_layers > 1 else 1.0
                for tp in templates:
                    if tp.format(ref_src.layer_range[0] + j) not in self.ckpts[ref_src.model]:
                        continue  # this layer of the reference has no such tensor
                    self.add(tp.format(out_layer), sl, [tp.format(s.layer_range[0] + j) for s in sl.sources], position)
                out_layer += 1
        return out_layer


def _merged_config(ref: Checkpoint, jobs: list[TensorJob], n_layers: int, tied: bool) -> dict:
    config = json.loads(json.dumps(ref.config))
    config["num_hidden_layers"] = n_layers
    config["tie_word_embeddings"] = tied
    if jobs:
        float_jobs = [j for j in jobs if not j.copy]
        name = str(float_jobs[0].out_dtype if float_jobs else jobs[0].out_dtype).removeprefix("torch.")
        config["dtype" if "torch_dtype" not in config else "torch_dtype"] = name
    return config


def plan_merge(
    recipe: MergeRecipe | str | os.PathLike | dict,
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
    ckpts = open_inputs(recipe, checkpoints)
    slices = _as_slices(recipe, ckpts)
    reference = recipe.base_model or slices[0].sources[0].model
    check_architectures(ckpts, reference, layers=recipe.models is not None)
    ref = ckpts[reference]
    in_dtype = DTYPE_NAMES[recipe.dtype] if recipe.dtype else None
    forced_out = DTYPE_NAMES.get(recipe.out_dtype or recipe.dtype or "")

    if recipe.models is not None:
        for ck in ckpts.values():
            for n in ck.names():
                if n not in ref:
                    raise WorkbenchError(f"tensor {n!r} is in {ck.path} but missing from {ref.path}")
    pre, templates, post = _split_names(ref.names())
    tie_out = all(ck.tied for ck in ckpts.values())  # lm_head absent from every input (ref included): keep it tied

    planner = _Planner(recipe, METHODS[recipe.merge_method], ckpts, forced_out, allow_extrapolation)
    for n in pre:
        planner.add(n, slices[0], [n] * len(slices[0].sources), 0.0)
    n_layers = planner.add_layers(slices, templates)
    for n in post:
        if n == LM_HEAD and tie_out:
            continue
        planner.add(n, slices[-1], [n] * len(slices[-1].sources), 0.0)

    config = _merged_config(ref, planner.jobs, n_layers, tie_out)
    tok = recipe.tokenizer_source
    tok_src = reference if tok in (None, "base") else tok
    if tok_src not in ckpts:
        ckpts[tok_src] = open_checkpoint(tok_src)
    return MergePlan(recipe, ckpts, planner.jobs, config, reference, tok_src, in_dtype, planner.notes)


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
