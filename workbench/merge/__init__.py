"""Merging: recipes (mergekit YAML), the method registry, pure tensor math, two engines.

``registry`` declares every merge method once; ``recipe`` reads recipes, ``plan`` resolves
them per tensor (slices, ``modules:``, tokenizer sources), ``execute`` runs one tensor's
kernel (``methods``: one module per method family, over the math of ``linear``,
``spherical``, ``task_vectors``, ``model_stock``), and two engines run a plan: ``disk``
(streaming, bounded memory) and ``memory`` (batched, cached ingredients, for sliders and
sweeps). The engines are imported on first use, so reading recipes and the registry needs
no torch.

>>> from workbench.merge import simple_recipe
>>> simple_recipe("slerp", ["a", "b"], t=0.5).merge_method
'slerp'
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "MergeRecipe",
    "load_recipe",
    "merge_in_memory",
    "merge_to_disk",
    "merged_model",
    "plan_merge",
    "recipe_fingerprint",
    "simple_recipe",
]

_OWNERS = {
    "MergeRecipe": "recipe",
    "load_recipe": "recipe",
    "simple_recipe": "recipe",
    "merge_to_disk": "disk",
    "merge_in_memory": "memory",
    "merged_model": "memory",
    "plan_merge": "plan",
    "recipe_fingerprint": "plan",
}


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'workbench.merge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"workbench.merge.{owner}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
