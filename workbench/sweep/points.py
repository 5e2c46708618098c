"""Expansion: a sweep file's axes turned into :class:`Point` s, each one merge recipe."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.io.yaml import parse_yaml
from workbench.merge.registry import DEFAULT, INTERPOLATION, method_with, methods_with
from workbench.sweep.spec import MERGE_PARAMETERS, SweepSpec, axis_kind, axis_values

#: Methods whose base model is one of exactly two models (t = 0 gives the base).
_TWO_MODEL_METHODS = tuple(m.name for m in methods_with(INTERPOLATION))


@dataclass(frozen=True)
class Point:
    """One sweep point: its index, the axis values that define it and its merge recipe.

    ``recipe`` is a mergekit-style dict whose model references are resolved paths.
    """

    index: int
    params: dict[str, Any]
    recipe: dict[str, Any]

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``t=0.3 method=slerp``."""
        return " ".join(f"{k}={_format_value(v)}" for k, v in self.params.items())


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _resolve_path(value: str, root: Path) -> str:
    """An ingredient reference as given: an existing relative path becomes absolute."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = root / p
    if candidate.exists():
        return str(candidate.resolve())
    return value  # a Hub id, or a path that does not exist (the merge engine will say so)


def base_recipe_dict(spec: SweepSpec) -> dict[str, Any]:
    """The base recipe as a mergekit-style dict (model references still ingredient names)."""
    root = Path(spec.root or ".")
    if spec.recipe is not None:
        if spec.method is not None or spec.models is not None or spec.base_model is not None:
            raise WorkbenchError("sweep file: give either recipe or method/models/base_model, not both")
        if isinstance(spec.recipe, str):
            path = Path(spec.recipe)
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise WorkbenchError(f"{path}: recipe file not found")
            recipe = parse_yaml(path.read_text(encoding="utf-8"), str(path))
            if not isinstance(recipe, dict):
                raise WorkbenchError(f"{path}: a recipe must be a mapping")
        else:
            recipe = copy.deepcopy(spec.recipe)
        if spec.parameters:
            recipe.setdefault("parameters", {}).update(copy.deepcopy(spec.parameters))
        return recipe
    method = spec.method or method_with(DEFAULT).name
    models = list(spec.models) if spec.models is not None else list(spec.ingredients)
    recipe = {"merge_method": method, "models": [{"model": m} for m in models], "dtype": spec.dtype}
    base = spec.base_model
    if base is None and method in _TWO_MODEL_METHODS and models:
        base = models[0]
    if base is not None:
        recipe["base_model"] = base
    if spec.parameters:
        recipe["parameters"] = copy.deepcopy(spec.parameters)
    return recipe


def _apply_axes(base: dict[str, Any], values: Mapping[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """One point's recipe (names, not paths): the base recipe with the axis values applied."""
    recipe = copy.deepcopy(base)
    if "method" in values:
        recipe["merge_method"] = str(values["method"])
    if "models" in values:
        subset = values["models"]
        if isinstance(subset, str):
            subset = [s for s in subset.replace(",", "+").split("+") if s]
        if not isinstance(subset, (list, tuple)) or not subset:
            raise WorkbenchError(
                f"axis 'models': each value must be a non-empty list of ingredient names, got {values['models']!r}"
            )
        old = {str(e["model"]): e for e in recipe.get("models") or [] if isinstance(e, dict)}
        recipe["models"] = [copy.deepcopy(old.get(str(m), {"model": m})) for m in subset]
        if recipe.get("merge_method") in _TWO_MODEL_METHODS and recipe.get("base_model") not in subset:
            recipe["base_model"] = subset[0]
    if "base_model" in values:
        recipe["base_model"] = values["base_model"]
    if recipe.get("merge_method") in _TWO_MODEL_METHODS and not recipe.get("base_model") and recipe.get("models"):
        recipe["base_model"] = recipe["models"][0]["model"]

    if not any(axis_kind(a)[0] in MERGE_PARAMETERS for a in values):
        return recipe
    params = recipe.setdefault("parameters", {})
    for param in MERGE_PARAMETERS:
        filters = [(a, axis_kind(a)[1]) for a in values if axis_kind(a)[0] == param and axis_kind(a)[1]]
        if param in values:
            params[param] = values[param]
        if not filters:
            continue
        current = params.get(param)
        entries = [{"filter": f, "value": values[a]} for a, f in filters]
        if isinstance(current, list) and current and all(isinstance(e, Mapping) for e in current):
            rest = [e for e in current if e.get("filter") not in {f for _, f in filters}]
            params[param] = entries + copy.deepcopy(rest)
        elif current is None:
            raise WorkbenchError(
                f"axis {filters[0][0]!r}: the other tensors need a default {param}: "
                f"set parameters.{param} in the recipe or add a {param!r} axis"
            )
        else:
            params[param] = entries + [{"value": current}]
    return recipe


def expand(spec: SweepSpec) -> list[Point]:
    """All points of a sweep, in order (the last axis varies fastest in ``grid`` mode).

    >>> spec = SweepSpec(ingredients={"a": "/m/a", "b": "/m/b"}, method="slerp", models=["a", "b"],
    ...                  axes={"t.self_attn": [0.2, 0.8], "t.mlp": [0.3, 0.7]}, parameters={"t": 0.5},
    ...                  tasks=["blimp"])
    >>> [p.label for p in expand(spec)]
    ['t.self_attn=0.2 t.mlp=0.3', 't.self_attn=0.2 t.mlp=0.7', 't.self_attn=0.8 t.mlp=0.3', 't.self_attn=0.8 t.mlp=0.7']
    >>> expand(spec)[1].recipe["parameters"]["t"]
    [{'filter': 'self_attn', 'value': 0.2}, {'filter': 'mlp', 'value': 0.7}, {'value': 0.5}]
    >>> expand(spec)[0].recipe["base_model"]
    '/m/a'
    """
    if not isinstance(spec.axes, Mapping) or not spec.axes:
        raise WorkbenchError("sweep file: empty grid (axes is empty; give at least one axis)")
    for name in spec.axes:
        axis_kind(str(name))
    grid = {str(name): axis_values(str(name), values) for name, values in spec.axes.items()}
    root = Path(spec.root or ".")
    paths = {name: _resolve_path(p, root) for name, p in spec.ingredients.items()}
    for name in ("models", "base_model"):
        for v in grid.get(name, []):
            refs = (
                [v]
                if name == "base_model"
                else (v if isinstance(v, (list, tuple)) else str(v).replace(",", "+").split("+"))
            )
            unknown = [r for r in refs if str(r) not in paths]
            if unknown:
                raise WorkbenchError(
                    f"axis {name!r}: {unknown[0]!r} is not an ingredient name (ingredients: {', '.join(paths)})"
                )

    names = list(grid)
    if spec.mode == "zip":
        lengths = {len(v) for v in grid.values()}
        if len(lengths) != 1:
            raise WorkbenchError(
                "sweep file: mode zip needs axes of equal length, got "
                + ", ".join(f"{n}: {len(v)}" for n, v in grid.items())
            )
        combos = list(zip(*grid.values()))
    else:
        combos = list(itertools.product(*grid.values()))

    from workbench.merge.recipe import map_model_refs, model_refs  # the merge package imports torch

    base = base_recipe_dict(spec)
    points = []
    for i, combo in enumerate(combos):
        values = dict(zip(names, combo))
        recipe = _apply_axes(base, values, spec)
        unknown = [r for r in model_refs(recipe) if r not in paths and r not in paths.values()]
        if unknown:
            raise WorkbenchError(
                f"point {i} ({Point(i, values, {}).label}): model {unknown[0]!r} is not an ingredient name (ingredients: {', '.join(paths)})"
            )
        recipe = map_model_refs(recipe, lambda ref: paths.get(ref, ref))
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        points.append(Point(i, params, recipe))
    return points
