"""The ingredients of a merge: opening every referenced model and checking they fit together.

Planning (:mod:`workbench.merge.plan`) calls these before resolving any tensor, so ingredients
of different architectures or vocabulary sizes are refused with one error naming both config
files and the key that differs, before anything is written. The keys compared are
:data:`ARCH_KEYS` plus the architecture's own (:attr:`workbench.naming.Architecture.config_keys`,
e.g. GPT-2's ``n_embd``, Mixtral's ``num_local_experts``).

A tied and an untied ingredient merge as in mergekit: the tied one's missing
``lm_head.weight`` reads as its input embeddings (:class:`~workbench.checkpoints.Checkpoint`),
so the output has an untied ``lm_head.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from workbench.checkpoints import Checkpoint, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge.recipe import MergeRecipe
from workbench.naming import architecture

__all__ = ["ARCH_KEYS", "check_architectures", "open_inputs"]

#: config keys that must agree between ingredients (None on either side is not a disagreement)
ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "num_hidden_layers",
)


def open_inputs(recipe: MergeRecipe, checkpoints: Mapping[str, Checkpoint] | None = None) -> dict[str, Checkpoint]:
    """Every model the recipe references, opened (or taken from ``checkpoints``), by reference.

    A reference may be a path (matched to a given checkpoint by its resolved path), a Hub id,
    or ``id@revision``.
    """
    given = dict(checkpoints or {})
    by_path = {str(ck.path): ck for ck in given.values()}
    out: dict[str, Checkpoint] = {}
    for ref in recipe.referenced_models():
        ck = given.get(ref)
        if ck is None and Path(ref).exists():
            ck = by_path.get(str(Path(ref).resolve()))
        if ck is None:
            ck = open_checkpoint(ref)  # a local directory, or a Hub id with an optional @revision
        out[ref] = ck
    return out


def check_architectures(ckpts: dict[str, Checkpoint], reference: str, *, layers: bool) -> None:
    """Refuse ingredients whose configs disagree on the architecture or the vocabulary size
    (``layers``: also on the layer count); the error names both config files and the key."""
    ref = ckpts[reference]
    keys = ARCH_KEYS + architecture(ref.config).config_keys
    for ck in ckpts.values():
        if ck is ref:
            continue
        for key in keys:
            if key in _LAYER_KEYS and not layers:
                continue
            a, b = ref.config.get(key), ck.config.get(key)
            if a != b and not (a is None or b is None) or (key == "model_type" and a != b):
                what = "different vocabulary sizes" if key == "vocab_size" else "different architectures"
                raise WorkbenchError(
                    f"{what}: {ref.path / 'config.json'} has {key}={a} but {ck.path / 'config.json'} has {key}={b}"
                )


_LAYER_KEYS = ("num_hidden_layers", "n_layer")  # slices may take fewer layers from deeper models
