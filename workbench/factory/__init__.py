"""Checkpoint factory: train small Llama models and whole checkpoint families to merge.

A *family* is one directory of Hugging Face checkpoints that share a tokenizer, plus a
``family.yaml`` describing them:

- ``trajectory``: one run at the recipe's learning-rate schedule (constant by default); the last ``keep_last`` checkpoints,
  ``checkpoint_every`` steps apart, are kept (averaging them is a known positive control).
- ``siblings``: runs branched from a late shared trajectory checkpoint (by default the first
  kept one), continued with different data orders.
- ``independent``: runs from different random initialisations (for barrier studies).
- ``annealed``: the trajectory continued from the same branch checkpoint with the learning
  rate decayed to zero over the same tokens the soup window spans: the fair control for a
  uniform soup of the trajectory checkpoints (same start, same data, same tokens).
- ``heldout.txt``: documents of the corpus kept out of tokenizer and model training.

Recipes are YAML files validated by :class:`TrainRecipe`; the presets ``tiny`` (seconds,
for tests) and ``demo`` (minutes, for the demo) live in ``workbench/presets/``.

Modules: :mod:`~workbench.factory.recipe` (schema, presets, identity),
:mod:`~workbench.factory.corpus` (documents, held-out split, tokenizer, token stream),
:mod:`~workbench.factory.schedule` (learning rate, data order), :mod:`~workbench.factory.trainer`
(the training loop), :mod:`~workbench.factory.family` (building and opening families),
:mod:`~workbench.factory.heldout` (held-out perplexity through the evaluation engine).

>>> r = load_train_recipe("tiny")
>>> r.name, r.trajectory.schedule
('tiny', 'constant')
"""

from __future__ import annotations

from workbench.factory.corpus import read_documents
from workbench.factory.family import Family, family_id, load_family, train_family
from workbench.factory.heldout import heldout_perplexity
from workbench.factory.recipe import PRESETS, TrainRecipe, load_train_recipe, recipe_hash
from workbench.factory.schedule import batch_order, lr_at

__all__ = [
    "PRESETS",
    "Family",
    "TrainRecipe",
    "load_train_recipe",
    "train_family",
    "load_family",
    "recipe_hash",
    "family_id",
    "heldout_perplexity",
    "read_documents",
    "lr_at",
    "batch_order",
]
