"""Helpers of the mergekit oracle tests: run mergekit 0.1.5 itself on a recipe, offline, and
compare tensors relative to their own scale."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

#: keys of a recipe whose values name models (``fill`` replaces short names by paths there)
MODEL_KEYS = ("model", "base_model", "models", "slices", "sources")


def fill(obj, models: dict[str, str]):
    """``obj`` (a recipe) with short model names replaced by their paths."""
    if isinstance(obj, str):
        return models.get(obj, obj)
    if isinstance(obj, list):
        return [fill(x, models) for x in obj]
    if isinstance(obj, dict):
        return {k: (fill(v, models) if k in MODEL_KEYS else v) for k, v in obj.items()}
    return obj


def run_mergekit(recipe: dict, out: Path, seed: int | None = None, *, copy_tokenizer: bool = False) -> Path:
    """mergekit's own merge of ``recipe`` into ``out`` (the workbench-only ``random_seed`` key removed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe = {k: v for k, v in copy.deepcopy(recipe).items() if k != "random_seed"}
    options = MergeOptions(
        quiet=True, write_model_card=False, copy_tokenizer=copy_tokenizer, lazy_unpickle=False, random_seed=seed
    )
    run_merge(MergeConfiguration.model_validate(recipe), str(out), options)
    return out


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| relative to the tensor's own scale (max |want|)."""
    scale = want.abs().max().item() or 1.0
    return (got.float() - want.float()).abs().max().item() / scale
