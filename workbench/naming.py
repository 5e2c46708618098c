"""Tensor naming: where a tensor sits in the model (layer index) and what it is (group).

One table, read by the checkpoint reader (tied embeddings), the merge engine (layer
gradients, per-layer templates) and the geometry tables (groups). The rules are data: a
new architecture's names are new rows here, not new code elsewhere.

>>> [(layer_index(n), tensor_group(n)) for n in ("model.layers.1.mlp.up_proj.weight", "lm_head.weight")]
[(1, 'mlp_up'), (None, 'lm_head')]
"""

from __future__ import annotations

import re

__all__ = [
    "EMBED_CANDIDATES",
    "GROUPS",
    "GROUP_RULES",
    "LAYER_PATTERN",
    "LM_HEAD",
    "layer_index",
    "layer_template",
    "stack_position",
    "tensor_group",
]

#: The output projection; absent from the files when it is tied to the input embeddings.
LM_HEAD = "lm_head.weight"
#: Input-embedding names a tied ``lm_head.weight`` aliases, first present wins.
EMBED_CANDIDATES = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")

#: The layer stack: a block container name followed by the layer index.
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

#: Tensors outside the layer stack that sit before it (embeddings); the others sit after it
#: (final norm, ``lm_head``). With ``slices:``, the first slice's sources give the former,
#: the last slice's the latter.
INPUT_SIDE_PATTERN = re.compile(r"(embed|wte|wpe|word_embeddings)")

#: Tensor groups, in display order; ``other`` takes whatever no rule matches.
GROUPS = ("embed", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "norm", "lm_head", "other")

#: (pattern, group), searched in order: the first pattern found anywhere in the name wins, so
#: order matters (BLOOM's ``word_embeddings_layernorm.weight`` is ``embed``, not ``norm``).
GROUP_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), group)
    for pattern, group in (
        (r"embed_tokens|\.wte\.|word_embeddings", "embed"),
        (r"q_proj", "attn_q"),
        (r"k_proj", "attn_k"),
        (r"v_proj", "attn_v"),
        (r"o_proj|attn\.c_proj|out_proj", "attn_o"),
        (r"gate_proj", "mlp_gate"),
        (r"up_proj", "mlp_up"),
        (r"down_proj", "mlp_down"),
        (r"norm", "norm"),
        (r"lm_head", "lm_head"),
    )
)


def layer_index(name: str) -> int | None:
    """The transformer-layer index in a tensor name, or None outside the layer stack.

    >>> layer_index("model.layers.3.mlp.up_proj.weight"), layer_index("model.norm.weight")
    (3, None)
    """
    m = LAYER_PATTERN.search(name)
    return int(m.group(1)) if m else None


def layer_template(name: str) -> str | None:
    """``name`` with its layer index replaced by ``{}``, or None outside the layer stack.

    >>> layer_template("model.layers.3.mlp.up_proj.weight")
    'model.layers.{}.mlp.up_proj.weight'
    """
    m = LAYER_PATTERN.search(name)
    return None if m is None else name[: m.start(1)] + "{}" + name[m.end(1) :]


def tensor_group(name: str) -> str:
    """The group of a tensor name (one of :data:`GROUPS`).

    >>> tensor_group("model.layers.0.self_attn.q_proj.weight"), tensor_group("model.norm.weight")
    ('attn_q', 'norm')
    """
    for pattern, group in GROUP_RULES:
        if pattern.search(name):
            return group
    return "other"


def stack_position(name: str) -> str:
    """Where a tensor sits relative to the layer stack: ``"input"``, ``"layer"`` or ``"output"``.

    >>> [stack_position(n) for n in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
    ...                              "model.norm.weight", "lm_head.weight")]
    ['input', 'layer', 'output', 'output']
    """
    if LAYER_PATTERN.search(name):
        return "layer"
    return "input" if INPUT_SIDE_PATTERN.search(name) and name != LM_HEAD else "output"
