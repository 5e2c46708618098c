"""What the notebooks' parameters become: the checkpoints they name and the recipe they judge."""

from __future__ import annotations

import os
from collections.abc import Sequence

from workbench.errors import WorkbenchError
from workbench.merge.registry import SOUP, method_with

#: Methods the explorer offers (two models, base + t).


def notebook_models(models: Sequence[str] | None, recipe: str | None = None, *, count: int | None = None) -> list[str]:
    """The checkpoints a notebook works on: ``models`` if given, else the models of ``recipe``.

    ``count`` (if given) is how many are needed (extra ones are an error, not dropped).

    >>> notebook_models(["a", "b"], count=2)
    ['a', 'b']
    >>> notebook_models(None, "{merge_method: slerp, base_model: a, models: [{model: a}, {model: b}], parameters: {t: 0.5}}")
    ['a', 'b']
    """
    out = [os.fspath(m) for m in (models or [])]
    if not out and recipe:
        from workbench.merge import load_recipe

        rec = load_recipe(recipe)
        out = [str(m.model) for m in rec.models]
        if rec.base_model and str(rec.base_model) in out:
            out.remove(str(rec.base_model))
            out.insert(0, str(rec.base_model))
    if not out:
        raise WorkbenchError("no models given: set the notebook parameter `models` (or `recipe`)")
    if count is not None and len(out) != count:
        raise WorkbenchError(f"this notebook takes {count} models, got {len(out)}: {out}")
    if len(out) < 2:
        raise WorkbenchError(f"give at least two models, got {out}")
    return out


def soup_recipe(models: Sequence[str], recipe: str | None = None):
    """The merge the soup report judges: ``recipe`` if given, else a uniform linear soup of ``models``.

    >>> soup_recipe(["a", "b"]).merge_method
    'linear'
    """
    from workbench.merge import load_recipe, simple_recipe

    return load_recipe(recipe) if recipe else simple_recipe(method_with(SOUP).name, list(models))
