"""Merge recipes in mergekit's YAML schema, and how their parameters resolve per tensor.

A recipe names a ``merge_method`` (one of the registry's, :mod:`workbench.merge.registry`),
the inputs (``models:``, ``slices:`` or ``modules:``), an optional ``base_model``,
``parameters``, a ``dtype``, and optionally a tokenizer (``tokenizer_source:`` or
``tokenizer:``) and a ``chat_template``. Any mergekit 0.1.5 YAML reads unchanged; unknown
keys are kept (mergekit ignores them too). One workbench key: ``random_seed`` draws the
random masks from mergekit's seeded stream (see :mod:`workbench.merge.draws`).

Parameter values (mergekit's rules):

* a scalar applies everywhere;
* a list of numbers is a **gradient**: piecewise-linear over the layer index within the slice,
  at position ``layer / (n_layers - 1)`` (``1`` for a one-layer slice); tensors outside the
  layer stack (embeddings, final norm, ``lm_head``) sit at position 0, so they take the
  gradient's first value;
* a list of ``{filter, value}`` entries is tried in order: the first entry whose ``filter`` is
  a substring of the tensor name wins; an entry without ``filter`` (or ``"*"``) is the
  catch-all. A ``value`` may itself be a gradient.

Precedence: a model's own ``parameters`` > the slice's > the module's > the recipe's. Shared
parameters (``t``, ``normalize``, ...) come from the slice, module or recipe; per-model ones
(``weight``, ``density``) may also come from the model entry.

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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.errors import WorkbenchError
from workbench.io.yaml import is_path_like_source, parse_yaml
from workbench.merge.registry import method_spec

__all__ = [
    "DTYPES",
    "ConditionalParameter",
    "InputModel",
    "InputSlice",
    "MergeRecipe",
    "OutputModule",
    "OutputSlice",
    "TokenEmbedding",
    "TokenizerConfig",
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


def _models_list(v: Any) -> Any:
    if isinstance(v, list):
        return [{"model": os.fspath(m)} if isinstance(m, (str, os.PathLike)) else _model_str(m) for m in v]
    return v


class OutputModule(BaseModel):
    """An entry of ``modules:``: the module's ``slices`` or ``models`` (exactly one), and parameters."""

    slices: list[OutputSlice] | None = None
    models: list[InputModel] | None = None
    parameters: Parameters = None

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        return _models_list(v)

    @model_validator(mode="after")
    def _one(self) -> "OutputModule":
        if bool(self.slices) == bool(self.models):
            raise ValueError("a module needs exactly one of 'slices' or 'models'")
        return self


class ModelTokenSource(BaseModel):
    """A token's embedding taken from one model's row of another token (``token``) or id."""

    kind: Literal["model_token"]
    model: str
    token: str | None = None
    token_id: int | None = None

    @model_validator(mode="after")
    def _one(self) -> "ModelTokenSource":
        if (self.token is None) == (self.token_id is None):
            raise ValueError("a model_token source needs exactly one of 'token' or 'token_id'")
        return self


class ZeroSource(BaseModel):
    """A token embedding of zeros."""

    kind: Literal["zero"]


class TokenEmbedding(BaseModel):
    """Where one token's embedding row comes from: a model (its own row of the token), another
    token's row (``model_token``), zeros; ``force`` applies it to every model, not only to the
    models that lack the token."""

    source: ModelTokenSource | ZeroSource | str | None = None
    force: bool = False


class TokenizerConfig(BaseModel):
    """``tokenizer:``: the output vocabulary (``union``, ``base`` or a model), per-token
    embedding sources, and padding of the vocabulary size."""

    source: str = "union"
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)


class MergeRecipe(BaseModel):
    """A merge recipe (mergekit YAML schema). Build with :func:`load_recipe` or :func:`simple_recipe`."""

    model_config = ConfigDict(extra="allow")

    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    modules: dict[str, OutputModule] | None = None
    base_model: str | None = None
    parameters: Parameters = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None
    random_seed: int | None = None
    #: align every non-base model to the base before merging: ``{method: weight_matching, ...}``
    #: (workbench only; the options of :func:`workbench.align.aligned_checkpoint`)
    align: dict[str, Any] | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        return _models_list(v)

    @field_validator("base_model", mode="before")
    @classmethod
    def _base(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return v.get("path") or v.get("model")
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("tokenizer_source", mode="before")
    @classmethod
    def _tok(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = v.get("path") or v.get("model")
        v = os.fspath(v) if isinstance(v, os.PathLike) else v
        return v.removeprefix("model:") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "MergeRecipe":
        if sum(bool(x) for x in (self.models, self.slices, self.modules)) != 1:
            raise ValueError("exactly one of 'models', 'slices' or 'modules' must be given")
        try:
            method_spec(self.merge_method)
        except WorkbenchError as err:
            raise ValueError(str(err)) from None
        for name in (self.dtype, self.out_dtype):
            if name is not None and name not in DTYPES:
                raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either tokenizer_source or tokenizer, not both")
        if self.align is not None and "method" not in self.align:
            raise ValueError("align: 'method' is required (weight_matching or activation_matching)")
        if self.random_seed is not None and any("seed" in (p or {}) for p in self.parameter_blocks()):
            raise ValueError("give either random_seed (mergekit's random stream) or a seed parameter, not both")
        return self

    def parameter_blocks(self) -> list[Parameters]:
        """Every ``parameters`` mapping of the recipe (global, modules, slices, models, sources)."""
        blocks: list[Parameters] = [self.parameters]
        groups = [(self.models, self.slices)] + [(m.models, m.slices) for m in (self.modules or {}).values()]
        blocks += [m.parameters for m in (self.modules or {}).values()]
        for models, slices in groups:
            blocks += [m.parameters for m in models or []]
            for sl in slices or []:
                blocks += [sl.parameters] + [src.parameters for src in sl.sources]
        return blocks

    def output_modules(self) -> dict[str, OutputModule]:
        """The recipe as ``modules:`` (``models:``/``slices:`` recipes are the module ``default``)."""
        if self.modules:
            return dict(self.modules)
        return {"default": OutputModule(models=self.models, slices=self.slices)}

    def tokenizer_settings(self) -> TokenizerConfig | None:
        """The tokenizer to build (``tokenizer_source:`` read as ``tokenizer: {source: ...}``), or None."""
        if self.tokenizer is not None:
            return self.tokenizer
        return None if self.tokenizer_source is None else TokenizerConfig(source=self.tokenizer_source)

    # -- convenience -----------------------------------------------------------------
    def referenced_models(self) -> list[str]:
        """Every model the recipe reads, in first-mention order (base first)."""
        seen: list[str] = []
        cands = [self.base_model] if self.base_model else []
        for module in self.output_modules().values():
            cands += [m.model for m in module.models or []]
            for s in module.slices or []:
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
MODEL_KEYS = ("model", "base_model", "tokenizer_source", "source")
#: Values of those keys that name no model (tokenizer sources).
NOT_MODELS = ("union", "base")


def map_model_refs(data: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a recipe mapping with ``fn`` applied to every model reference.

    References are the string values of ``model``, ``base_model`` (top level and per
    slice), ``tokenizer_source`` and tokenizer ``source`` keys (except ``union`` and
    ``base``), and bare strings in a ``models`` list (which become ``{"model": ...}`` entries).

    >>> map_model_refs({"models": ["a", {"model": "b"}], "slices": [{"base_model": "a", "sources": []}]},
    ...                str.upper)
    {'models': [{'model': 'A'}, {'model': 'B'}], 'slices': [{'base_model': 'A', 'sources': []}]}
    >>> map_model_refs({"tokenizer": {"source": "union", "tokens": {"x": {"source": "b"}}}}, str.upper)
    {'tokenizer': {'source': 'union', 'tokens': {'x': {'source': 'B'}}}}
    """

    def ref(k: str, v: Any) -> bool:
        return k in MODEL_KEYS and isinstance(v, str) and v not in NOT_MODELS

    def sub(obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, Mapping):
            return {k: fn(v) if ref(k, v) else sub(v, k) for k, v in obj.items()}
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
        {k: v for k, v in data.items() if k not in ("tokenizer_source", "tokenizer")}
        if isinstance(data, Mapping)
        else data,
        note,
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
    {"value": 0.5}]``). For methods that need a base (lerp, slerp, ties, ...) the base defaults
    to ``models[0]``. ``weights`` become per-model ``weight`` parameters (methods that need them
    default to equal weights); other keyword arguments become recipe parameters.

    >>> r = simple_recipe("slerp", ["a", "b"], t=0.3)
    >>> r.base_model, r.parameters["t"]
    ('a', 0.3)
    >>> simple_recipe("linear", ["a", "b", "c"]).models[2].parameters
    {'weight': 1.0}
    """
    spec = method_spec(method)
    models = [os.fspath(m) for m in models]
    if base_model is None and spec.base == "required":
        base_model = models[0]
    base = os.fspath(base_model) if base_model is not None else None
    params = dict(parameters)
    if "lambda_" in params:
        params["lambda"] = params.pop("lambda_")
    if t is not None:
        params["t"] = t
    entries = []
    non_base = [m for m in models if m != base]
    wparam = next((p for p in spec.parameters if p.name == "weight"), None)
    every = wparam is not None and wparam.scope == "input"
    if weights is not None:
        if wparam is None:
            raise WorkbenchError(f"simple_recipe: merge method {method} takes no weights")
        wlist = list(weights)
        targets = models if (every or len(wlist) == len(models)) else non_base
        if len(wlist) != len(targets):
            raise WorkbenchError(f"simple_recipe: {len(wlist)} weights for {len(targets)} models")
        wmap = dict(zip(targets, wlist))
    elif wparam is not None and wparam.required:
        wmap = {m: 1.0 for m in (models if every else non_base)}
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
