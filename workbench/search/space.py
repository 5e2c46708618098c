"""The search space: ranges over a base recipe's parameters, checked against the merge registry.

Written like sweep axes, but as ranges (``{low, high}``) or lists of choices:

* ``t: {low: 0, high: 1}``: a shared parameter (the catch-all when filters are given too);
* ``t.self_attn: {low: 0, high: 1}``: the tensors whose name contains the filter (per-group t);
* ``t: {low: 0, high: 1, knots: 3}``: a gradient of 3 values over the layer stack (one dimension
  per knot, named ``t[0]``, ``t[1]``, ``t[2]``), with or without a filter;
* ``weight@early: {low: 0, high: 2}``: a per-model parameter of the ingredient ``early``;
  ``weight@*`` gives every model of the recipe its own dimension (the base model excluded for a
  parameter that only non-base models take);
* ``method: [slerp, lerp]``, ``base_model: [a, b]``, ``normalize: [true, false]``: categorical.

Each parameter must belong to every method the search may use, its range must lie within the
parameter's registry bounds (:attr:`workbench.merge.registry.Parameter.bounds`), and it must be
one mergekit reads (``best.yaml`` is a mergekit recipe).

>>> space = parse_space({"t.self_attn": {"low": 0, "high": 1}, "t": {"low": 0.2, "high": 0.8, "knots": 2}},
...                     base_method="slerp", models=["a", "b"], base_model="a", ingredients=["a", "b"])
>>> [d.name for d in space.dims]
['t.self_attn', 't[0]', 't[1]']
>>> space.decode([0.5, 0.0, 1.0], [])
{'t.self_attn': 0.5, 't[0]': 0.2, 't[1]': 0.8}
>>> space.axes({'t.self_attn': 0.5, 't[0]': 0.2, 't[1]': 0.8})
({'t.self_attn': 0.5, 't': [0.2, 0.8]}, {})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.merge.registry import METHODS, Parameter, method_spec, parameter_names

__all__ = ["Dimension", "Space", "parse_space"]

#: categorical choices that are not merge parameters
STRUCTURAL = ("method", "base_model")
#: decimals a sampled value is rounded to (the recipe written is the recipe evaluated)
DECIMALS = 6


@dataclass(frozen=True)
class Dimension:
    """One coordinate of the space.

    ``key`` is the space entry it comes from (``t.self_attn``, ``weight@early``, ``method``);
    ``name`` the column it gets in the trial table (``t[1]`` for a gradient's second knot).
    Ranges have ``low``/``high`` (``integer`` for int parameters); categorical ones ``choices``.
    """

    name: str
    key: str
    param: str | None
    filter: str | None = None
    model: str | None = None
    knot: int | None = None
    knots: int | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    @property
    def categorical(self) -> bool:
        """Whether the dimension is a list of choices (else a range)."""
        return self.choices is not None

    def value(self, u: float) -> Any:
        """The range's value at ``u`` in [0, 1] (clipped), rounded to :data:`DECIMALS`.

        >>> Dimension("t", "t", "t", low=0.2, high=0.6).value(0.5)
        0.4
        """
        assert self.low is not None and self.high is not None
        u = min(1.0, max(0.0, float(u)))
        v = self.low + u * (self.high - self.low)
        return int(round(v)) if self.integer else round(v, DECIMALS)


@dataclass(frozen=True)
class Space:
    """The parsed space: its dimensions (ranges first, in file order, then choices)."""

    dims: tuple[Dimension, ...]

    @property
    def continuous(self) -> tuple[Dimension, ...]:
        """The ranges (the optimiser's continuous coordinates)."""
        return tuple(d for d in self.dims if not d.categorical)

    @property
    def categorical(self) -> tuple[Dimension, ...]:
        """The lists of choices (the optimiser's categorical coordinates)."""
        return tuple(d for d in self.dims if d.categorical)

    def decode(self, unit: Sequence[float], choice: Sequence[int]) -> dict[str, Any]:
        """Dimension name -> value, from unit coordinates of the ranges and indices of the choices."""
        out = {d.name: d.value(u) for d, u in zip(self.continuous, unit)}
        for d, c in zip(self.categorical, choice):
            assert d.choices is not None
            out[d.name] = d.choices[int(c)]
        return {d.name: out[d.name] for d in self.dims}

    def centre(self) -> dict[str, Any]:
        """Every range at its middle, every choice at its first value (the point checked before a search)."""
        return self.decode([0.5] * len(self.continuous), [0] * len(self.categorical))

    def axes(
        self, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[tuple[str, str], list[tuple[str | None, Any]]]]:
        """A trial's values as (sweep axes, per-model settings).

        Sweep axes (``t``, ``t.self_attn``, ``method``, ``base_model``) go through the sweep's
        expansion; per-model settings map (ingredient, parameter) to ``(filter, value)`` entries.
        Knots are gathered into one gradient list per space entry.
        """
        values: dict[str, Any] = {}
        first: dict[str, Dimension] = {}  # space entry -> its first dimension
        for d in self.dims:
            if d.knot is not None:
                values.setdefault(d.key, [None] * (d.knots or 0))[d.knot] = params[d.name]
            else:
                values[d.key] = params[d.name]
            first.setdefault(d.key, d)
        axes: dict[str, Any] = {}
        per_model: dict[tuple[str, str], list[tuple[str | None, Any]]] = {}
        for key, d in first.items():
            if d.model is None:
                axes[key] = values[key]
            else:
                assert d.param is not None
                per_model.setdefault((d.model, d.param), []).append((d.filter, values[key]))
        return axes, per_model


def _fmt_bounds(bounds: tuple[float | None, float | None]) -> str:
    lo, hi = bounds
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def _split_key(key: str) -> tuple[str, str | None, str | None]:
    """``t.self_attn@early`` -> ("t", "self_attn", "early")."""
    left, at, model = key.partition("@")
    param, dot, filt = left.partition(".")
    if (dot and not filt) or (at and not model):
        raise WorkbenchError(f"space: {key!r}: expected <parameter>[.<filter>][@<ingredient>|@*]")
    return param, filt or None, model or None


def _parameters(key: str, param: str, methods: Sequence[str]) -> list[tuple[str, Parameter]]:
    """The registry's declaration of ``param`` in every method the search may use."""
    if param not in parameter_names():
        known = ", ".join([*parameter_names(), *STRUCTURAL])
        raise WorkbenchError(f"space: unknown parameter {param!r} in {key!r}; known: {known}")
    out = []
    for m in methods:
        spec = method_spec(m)
        found = [p for p in spec.parameters if p.name == param]
        if not found:
            names = ", ".join(p.name for p in spec.parameters) or "none"
            raise WorkbenchError(f"space: {key!r}: method {m} has no parameter {param!r} (its parameters: {names})")
        if not found[0].mergekit:
            raise WorkbenchError(
                f"space: {key!r}: {param} of {m} is a workbench extension mergekit does not read "
                "(best.yaml must be a mergekit recipe)"
            )
        out.append((m, found[0]))
    return out


def _range_dims(
    key: str, param: str, spec: Mapping[str, Any], decls: list[tuple[str, Parameter]], **where: Any
) -> list[Dimension]:
    """The dimensions of a ``{low, high[, knots]}`` entry, its range checked against every method's bounds."""
    extra = set(spec) - {"low", "high", "knots"}
    if extra or not {"low", "high"} <= set(spec):
        raise WorkbenchError(f"space: {key!r}: a range is {{low, high}} (optionally knots), got {dict(spec)!r}")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (TypeError, ValueError):
        raise WorkbenchError(
            f"space: {key!r}: low and high must be numbers, got {spec['low']!r}, {spec['high']!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise WorkbenchError(f"space: {key!r}: need finite low < high, got [{low:g}, {high:g}]")
    for m, p in decls:
        if p.type is bool:
            raise WorkbenchError(f"space: {key!r}: {param} of {m} is true/false: give a list of choices")
        lo, hi = p.bounds
        if (lo is not None and low < lo) or (hi is not None and high > hi):
            raise WorkbenchError(
                f"space: {key!r}: range [{low:g}, {high:g}] lies outside the bounds {_fmt_bounds(p.bounds)} "
                f"of {m}'s {param}"
            )
    integer = all(p.type is int for _, p in decls)
    knots = spec.get("knots")
    if knots is None:
        return [Dimension(key, key, param, low=low, high=high, integer=integer, **where)]
    if isinstance(knots, bool) or not isinstance(knots, int) or knots < 2:
        raise WorkbenchError(f"space: {key!r}: knots must be an integer of at least 2, got {knots!r}")
    return [
        Dimension(f"{key}[{k}]", key, param, knot=k, knots=knots, low=low, high=high, integer=integer, **where)
        for k in range(knots)
    ]


def _choice_dims(
    key: str, param: str | None, values: Sequence[Any], decls: list[tuple[str, Parameter]], **where: Any
) -> list[Dimension]:
    if not values:
        raise WorkbenchError(f"space: {key!r}: empty list of choices")
    if len({repr(v) for v in values}) != len(values):
        raise WorkbenchError(f"space: {key!r}: a choice appears twice in {list(values)!r}")
    for m, p in decls:
        for v in values:
            if p.type is bool and not isinstance(v, bool):
                raise WorkbenchError(f"space: {key!r}: {param} of {m} is true/false, got {v!r}")
            if p.type is not bool and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise WorkbenchError(f"space: {key!r}: {param} of {m} is a number, got {v!r}")
            if not p.in_bounds(v):
                raise WorkbenchError(
                    f"space: {key!r}: choice {v!r} lies outside the bounds {_fmt_bounds(p.bounds)} of {m}'s {param}"
                )
    return [Dimension(key, key, param, choices=tuple(values), **where)]


def _structural(key: str, values: Any, ingredients: Sequence[str]) -> Dimension:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise WorkbenchError(f"space: {key!r}: give a non-empty list of choices, got {values!r}")
    if len(set(map(str, values))) != len(values):
        raise WorkbenchError(f"space: {key!r}: a choice appears twice in {list(values)!r}")
    if key == "method":
        for m in values:
            if not method_spec(str(m)).mergekit:
                raise WorkbenchError(
                    f"space: method {m!r} is a workbench extension mergekit does not know (best.yaml must be a "
                    f"mergekit recipe); mergekit methods: {', '.join(n for n, s in METHODS.items() if s.mergekit)}"
                )
    else:
        unknown = [v for v in values if str(v) not in ingredients]
        if unknown:
            raise WorkbenchError(
                f"space: base_model: {unknown[0]!r} is not an ingredient name (ingredients: {', '.join(ingredients)})"
            )
    return Dimension(key, key, None, choices=tuple(str(v) for v in values))


def parse_space(
    space: Mapping[str, Any],
    *,
    base_method: str,
    models: Sequence[str],
    base_model: str | None,
    ingredients: Sequence[str],
) -> Space:
    """Parse and check a search space against the merge registry (see the module docstring).

    ``base_method``, ``models`` and ``base_model`` describe the base recipe (ingredient names);
    bad input raises one WorkbenchError naming the space entry.
    """
    if not space:
        raise WorkbenchError("space is empty (give at least one parameter range, e.g. t: {low: 0, high: 1})")
    methods = [base_method]
    if "method" in space:
        methods = [str(m) for m in _structural("method", space["method"], ingredients).choices or ()]
    if not method_spec(base_method).mergekit and "method" not in space:
        raise WorkbenchError(
            f"search: the base method {base_method} is a workbench extension mergekit does not know "
            "(best.yaml must be a mergekit recipe)"
        )
    ranges: list[Dimension] = []
    choices: list[Dimension] = []
    for raw_key, value in space.items():
        key = str(raw_key)
        if key in STRUCTURAL:
            choices.append(_structural(key, value, ingredients))
            continue
        param, filt, model = _split_key(key)
        decls = _parameters(key, param, methods)
        targets = _targets(key, param, model, decls, models, base_model)
        for target in targets:
            name = key if model != "*" else key.replace("@*", f"@{target}")
            where = {"filter": filt, "model": target}
            if isinstance(value, Mapping):
                ranges += _range_dims(name, param, value, decls, **where)
            elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
                choices += _choice_dims(name, param, list(value), decls, **where)
            else:
                raise WorkbenchError(f"space: {key!r}: give a range {{low, high}} or a list of choices, got {value!r}")
    return Space(tuple(ranges + choices))


def _targets(
    key: str,
    param: str,
    model: str | None,
    decls: list[tuple[str, Parameter]],
    models: Sequence[str],
    base_model: str | None,
) -> list[str | None]:
    """The models a space entry sets: None (the recipe's parameters), one ingredient, or each one (``@*``)."""
    if model is None:
        return [None]
    shared = [m for m, p in decls if p.scope == "shared"]
    if shared:
        raise WorkbenchError(
            f"space: {key!r}: {param} of {shared[0]} is one value per tensor, not per model: drop '@{model}'"
        )
    non_base = any(p.scope == "non_base" for _, p in decls)
    if model == "*":
        return [m for m in models if not (non_base and m == base_model)]
    if model not in models:
        raise WorkbenchError(
            f"space: {key!r}: {model!r} is not a model of the recipe (its models: {', '.join(models)})"
        )
    if non_base and model == base_model:
        raise WorkbenchError(f"space: {key!r}: {param} is not given to the base model {model!r}")
    return [model]
