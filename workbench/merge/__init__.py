"""Merging: recipes (mergekit YAML), pure tensor math, in-memory and streaming execution.

>>> from workbench.merge import simple_recipe
>>> simple_recipe("slerp", ["a", "b"], t=0.5).merge_method
'slerp'
"""

from workbench.merge.recipe import MergeRecipe, load_recipe, simple_recipe
from workbench.merge.run import (
    merge_in_memory,
    merge_to_disk,
    merged_model,
    plan_merge,
    recipe_fingerprint,
)

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
