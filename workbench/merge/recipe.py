"""Merge recipes in mergekit's YAML schema, and how their parameters resolve per tensor.

A recipe names a ``merge_method``, the inputs (``models:`` or ``slices:``), an optional
``base_model``, ``parameters`` and a ``dtype``. Any mergekit 0.1.5 YAML for the supported
methods reads unchanged.

Parameter values (mergekit's rules):

* a scalar applies everywhere;
* a list of numbers is a **gradient**: piecewise-linear over the layer index within the slice,
  at position ``layer / (n_layers - 1)`` (``1`` for a one-layer slice); tensors outside the
  layer stack (embeddings, final norm, ``lm_head``) sit at position 0, so they take the
  gradient's first value;
* a list of ``{filter, value}`` entries is tried in order: the first entry whose ``filter`` is
  a substring of the tensor name wins; an entry without ``filter`` (or ``"*"``) is the
  catch-all. A ``value`` may itself be a gradient.

Precedence: a model's own ``parameters`` > the slice's > the recipe's. Shared parameters
(``t``, ``normalize``, ...) come from the slice or the recipe; per-model ones (``weight``,
``density``) may also come from the model entry.

>>> r = load_recipe('''
... merge_method: slerp
... base_model: a
... models: [{model: a}, {model: b}]
... parameters:
...   t:
...     - filter: self_attn
...       value: [0.0, 0.5, 1.0]
...     - filter: mlp
...       value: 0.7
...     - value: 0.25
... ''')
>>> [resolve_setting(n, r.parameters["t"], pos) for n, pos in
...  [("model.layers.0.self_attn.q_proj.weight", 0.0), ("model.layers.2.self_attn.q_proj.weight", 0.75),
...   ("model.layers.1.mlp.up_proj.weight", 0.5), ("model.embed_tokens.weight", 0.0)]]
[0.0, 0.75, 0.7, 0.25]
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from workbench.errors import WorkbenchError
from workbench.io.yaml import is_path_like_source, parse_yaml

__all__ = [
    "METHODS",
    "ConditionalParameter",
    "InputModel",
    "InputSlice",
    "MergeRecipe",
    "MethodSpec",
    "OutputSlice",
    "load_recipe",
    "map_model_refs",
    "model_refs",
    "resolve_setting",
    "simple_recipe",
]

Scalar = bool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]


class ConditionalParameter(BaseModel):
    """One ``{filter, value}`` entry; ``filter=None`` is the catch-all."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: str | None = None


ParameterSetting = ConditionalParameter | list[ConditionalParameter] | ScalarOrGradient
Parameters = dict[str, ParameterSetting] | None


class InputModel(BaseModel):
    """An entry of ``models:``."""

    model: str
    parameters: Parameters = None


class InputSlice(BaseModel):
    """A source of an output slice: layers ``layer_range[0] .. layer_range[1]-1`` of ``model``."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = None


class OutputSlice(BaseModel):
    """An entry of ``slices:``: sources with the same number of layers, merged layer by layer."""

    sources: list[InputSlice]
    base_model: str | None = None
    parameters: Parameters = None


def _model_str(v: Any) -> Any:
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict) and "model" in v and isinstance(v["model"], dict):  # mergekit's {model: {path:}}
        inner = v["model"]
        v = {**v, "model": inner.get("path") or inner.get("model")}
    return v


class MergeRecipe(BaseModel):
    """A merge recipe (mergekit YAML schema). Build with :func:`load_recipe` or :func:`simple_recipe`."""

    model_config = ConfigDict(extra="allow")

    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Parameters = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"model": os.fspath(m)} if isinstance(m, (str, os.PathLike)) else _model_str(m) for m in v]
        return v

    @field_validator("base_model", mode="before")
    @classmethod
    def _base(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return v.get("path") or v.get("model")
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @model_validator(mode="after")
    def _check(self) -> "MergeRecipe":
        if getattr(self, "modules", None) is not None:
            raise ValueError("'modules:' recipes are not supported; use 'models:' or 'slices:'")
        if bool(self.models) == bool(self.slices):
            raise ValueError("exactly one of 'models' or 'slices' must be given")
        if self.merge_method not in METHODS:
            raise ValueError(f"unknown merge_method {self.merge_method!r}; known: {', '.join(sorted(METHODS))}")
        for name in (self.dtype, self.out_dtype):
            if name is not None and name not in DTYPES:
                raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
        if self.tokenizer_source == "union":
            raise ValueError("tokenizer_source: union is not supported (use base or a model path)")
        return self

    # -- convenience -----------------------------------------------------------------
    def referenced_models(self) -> list[str]:
        """Every model the recipe reads, in first-mention order (base first)."""
        seen: list[str] = []
        cands = [self.base_model] if self.base_model else []
        if self.models:
            cands += [m.model for m in self.models]
        for s in self.slices or []:
            cands += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
        for c in cands:
            if c not in seen:
                seen.append(c)
        return seen

    def to_yaml(self) -> str:
        """The recipe as mergekit-compatible YAML."""
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)

    def canonical_json(self) -> str:
        """A canonical JSON form (sorted keys), used for fingerprints."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))


DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs: base policy, input counts and its parameters with defaults.

    ``shared`` parameters have one value per tensor; ``per_input`` parameters have one value
    per model (``scope="input"``: every input incl. the base; ``"non_base"``: others only).
    A default of ``REQUIRED`` means the recipe must give it.
    """

    base: Literal["required", "optional", "ignored"] = "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    per_input: dict[str, Any] = field(default_factory=dict)
    scope: Literal["input", "non_base"] = "non_base"
    types: dict[str, type] = field(default_factory=dict)


REQUIRED = object()
_GTA = dict(int8_mask=False, normalize=False, rescale=False, **{"lambda": 1.0})
_GTA_TYPES = dict(
    int8_mask=bool, normalize=bool, rescale=bool, weight=float, density=float, seed=int, **{"lambda": float}
)

METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec(
        shared=dict(normalize=True),
        per_input=dict(weight=REQUIRED),
        scope="input",
        types=dict(normalize=bool, weight=float),
    ),
    "lerp": MethodSpec(base="required", min_inputs=2, max_inputs=2, shared=dict(t=REQUIRED), types=dict(t=float)),
    "slerp": MethodSpec(base="required", min_inputs=2, max_inputs=2, shared=dict(t=REQUIRED), types=dict(t=float)),
    "lerp_norm_restore": MethodSpec(
        base="required", min_inputs=2, max_inputs=2, shared=dict(t=REQUIRED), types=dict(t=float)
    ),
    "chained_slerp": MethodSpec(base="required", min_inputs=2, per_input=dict(t=None), types=dict(t=float)),
    "multislerp": MethodSpec(
        base="optional",
        shared=dict(normalize_weights=True, eps=1e-8),
        per_input=dict(weight=REQUIRED),
        types=dict(normalize_weights=bool, eps=float, weight=float),
    ),
    "karcher": MethodSpec(shared=dict(max_iter=10, tol=1e-5), types=dict(max_iter=int, tol=float)),
    "task_arithmetic": MethodSpec(
        base="required", shared=dict(_GTA), per_input=dict(weight=REQUIRED, density=1.0), types=_GTA_TYPES
    ),
    "ties": MethodSpec(
        base="required",
        shared={**_GTA, "normalize": True},
        per_input=dict(weight=REQUIRED, density=1.0),
        types=_GTA_TYPES,
    ),
    "dare_linear": MethodSpec(
        base="required",
        shared={**_GTA, "rescale": True, "seed": 0},
        per_input=dict(weight=REQUIRED, density=1.0),
        types=_GTA_TYPES,
    ),
    "dare_ties": MethodSpec(
        base="required",
        shared={**_GTA, "rescale": True, "seed": 0},
        per_input=dict(weight=REQUIRED, density=1.0),
        types=_GTA_TYPES,
    ),
    "model_stock": MethodSpec(
        base="required", min_inputs=3, shared=dict(filter_wise=False), types=dict(filter_wise=bool)
    ),
}

#: methods whose ``t`` must lie in [0, 1] unless extrapolation is asked for
T_METHODS = ("lerp", "slerp", "lerp_norm_restore", "chained_slerp")


def _validate(value: Any, typ: type | None) -> Any:
    if typ is None or value is None:
        return value
    if typ is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(value, bool):
        return typ(value)
    return typ(float(value)) if typ is int else typ(value)


def resolve_setting(tensor_name: str, setting: Any, position: float = 0.0, typ: type | None = float) -> Any:
    """Resolve one parameter setting for a tensor at relative layer position ``position``.

    Scalars apply as is; numeric lists interpolate piecewise-linearly at ``position``
    (non-numeric lists pick the element at ``int(position * (len - 1))``); filter lists
    return the first matching entry's value. Returns None when no entry matches.

    >>> resolve_setting("x", [0.0, 1.0], 0.25)
    0.25
    >>> resolve_setting("model.layers.0.mlp.up_proj.weight", [{"filter": "attn", "value": 1}, {"value": 2}])
    2.0
    >>> resolve_setting("model.layers.0.mlp.up_proj.weight", [{"filter": "attn", "value": 1}]) is None
    True
    """
    if isinstance(setting, dict):
        setting = ConditionalParameter.model_validate(setting)
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _validate(setting, typ)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            vals = [_validate(e, typ) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                return vals[int(position * (len(vals) - 1))]
            scaled = position * (len(vals) - 1)
            i0 = int(scaled)
            i1 = min(len(vals) - 1, i0 + 1)
            frac = scaled - i0
            return _validate((1 - frac) * vals[i0] + frac * vals[i1], typ)
        for cond in setting:
            if isinstance(cond, dict):
                cond = ConditionalParameter.model_validate(cond)
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return resolve_setting(tensor_name, cond.value, position, typ)
        return None
    raise WorkbenchError(f"unexpected parameter setting {setting!r}")


#: Recipe keys whose string value names a model (a path, a Hub id or, in sweeps, an ingredient).
MODEL_KEYS = ("model", "base_model", "tokenizer_source")


def map_model_refs(data: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a recipe mapping with ``fn`` applied to every model reference.

    References are the string values of ``model``, ``base_model`` (top level and per
    slice) and ``tokenizer_source`` keys, and bare strings in a ``models`` list (which
    become ``{"model": ...}`` entries).

    >>> map_model_refs({"models": ["a", {"model": "b"}], "slices": [{"base_model": "a", "sources": []}]},
    ...                str.upper)
    {'models': [{'model': 'A'}, {'model': 'B'}], 'slices': [{'base_model': 'A', 'sources': []}]}
    """

    def sub(obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, Mapping):
            return {k: fn(v) if k in MODEL_KEYS and isinstance(v, str) else sub(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [{"model": fn(v)} if key == "models" and isinstance(v, str) else sub(v) for v in obj]
        return copy.deepcopy(obj)

    return sub(data)


def model_refs(data: Any) -> list[str]:
    """Every model a recipe mapping reads (``model`` and ``base_model`` values), first mention first.

    >>> model_refs({"base_model": "a", "slices": [{"base_model": "c", "sources": [{"model": "b"}]}]})
    ['a', 'c', 'b']
    """
    seen: dict[str, None] = {}

    def note(ref: str) -> str:
        seen.setdefault(ref, None)
        return ref

    map_model_refs(
        {k: v for k, v in data.items() if k != "tokenizer_source"} if isinstance(data, Mapping) else data, note
    )
    return list(seen)


def load_recipe(source: "str | os.PathLike | dict | MergeRecipe") -> MergeRecipe:
    """Read a recipe from a YAML file path, a YAML string or a dict.

    >>> load_recipe({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}]}).merge_method
    'linear'
    """
    if isinstance(source, MergeRecipe):
        return source
    where = "recipe"
    if isinstance(source, dict):
        data = source
    else:
        text = None
        if is_path_like_source(source):
            p = Path(source)
            where = str(p)
            if not p.is_file():
                raise WorkbenchError(f"{p}: recipe file not found")
            text = p.read_text(encoding="utf-8")
        else:
            text = str(source)
        data = parse_yaml(text, where)
        if not isinstance(data, dict):
            raise WorkbenchError(f"{where}: expected a YAML mapping with merge_method and models/slices")
    try:
        return MergeRecipe.model_validate(data)
    except ValidationError as err:
        msgs = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'recipe'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()[:3]
        )
        raise WorkbenchError(f"{where}: invalid recipe ({msgs})") from None


def simple_recipe(
    method: str,
    models: "list[str | os.PathLike]",
    *,
    t: Any = None,
    base_model: "str | os.PathLike | None" = None,
    dtype: str = "float32",
    weights: "list[float] | None" = None,
    **parameters: Any,
) -> MergeRecipe:
    """Build a recipe in code.

    ``t`` is a float, a gradient list, or a filter list (``[{"filter": "self_attn", "value": 0.3},
    {"value": 0.5}]``). For lerp/slerp/lerp_norm_restore/chained_slerp the base defaults to
    ``models[0]``. ``weights`` become per-model ``weight`` parameters (methods that need them
    default to equal weights); other keyword arguments become recipe parameters.

    >>> r = simple_recipe("slerp", ["a", "b"], t=0.3)
    >>> r.base_model, r.parameters["t"]
    ('a', 0.3)
    >>> simple_recipe("linear", ["a", "b", "c"]).models[2].parameters
    {'weight': 1.0}
    """
    if method not in METHODS:
        raise WorkbenchError(f"unknown merge method {method!r}; known: {', '.join(sorted(METHODS))}")
    spec = METHODS[method]
    models = [os.fspath(m) for m in models]
    if base_model is None and method in T_METHODS:
        base_model = models[0]
    base = os.fspath(base_model) if base_model is not None else None
    params = dict(parameters)
    if "lambda_" in params:
        params["lambda"] = params.pop("lambda_")
    if t is not None:
        params["t"] = t
    entries = []
    non_base = [m for m in models if m != base]
    if weights is not None:
        wlist = list(weights)
        targets = models if (spec.scope == "input" or len(wlist) == len(models)) else non_base
        if len(wlist) != len(targets):
            raise WorkbenchError(f"simple_recipe: {len(wlist)} weights for {len(targets)} models")
        wmap = dict(zip(targets, wlist))
    elif spec.per_input.get("weight") is REQUIRED:
        wmap = {m: 1.0 for m in (models if spec.scope == "input" else non_base)}
    else:
        wmap = {}
    for m in models:
        p = {"weight": float(wmap[m])} if m in wmap else None
        entries.append({"model": m, "parameters": p})
    data: dict[str, Any] = {"merge_method": method, "models": entries, "dtype": dtype}
    if base is not None:
        data["base_model"] = base
    if params:
        data["parameters"] = params
    return load_recipe(data)
