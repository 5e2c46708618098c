"""Merging: recipes (mergekit YAML), pure tensor math, in-memory and streaming execution.

``recipe`` reads recipes, ``plan`` resolves them per tensor, ``execute`` maps one tensor's
parameters onto the math (``linear``, ``spherical``, ``task_vectors``, ``model_stock``), and
two engines run a plan: ``disk`` (streaming, bounded memory) and ``memory`` (batched, cached
ingredients, for sliders and sweeps).

>>> from workbench.merge import simple_recipe
>>> simple_recipe("slerp", ["a", "b"], t=0.5).merge_method
'slerp'
"""

from workbench.merge.disk import merge_to_disk
from workbench.merge.memory import merge_in_memory, merged_model
from workbench.merge.plan import plan_merge, recipe_fingerprint
from workbench.merge.recipe import MergeRecipe, load_recipe, simple_recipe

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
