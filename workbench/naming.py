"""Tensor naming: where a tensor sits in the model (layer, expert) and what it is (group).

One table, read by the checkpoint reader (tied embeddings), the merge engine (layer
gradients, per-layer templates, the side of the stack), the geometry tables (groups) and the
explorer (per-group t filters). The table is data: one :class:`Architecture` row per config
``model_type``; supporting a new architecture is a new row, not new code elsewhere.

Every function takes an optional ``model_type`` (a config ``model_type`` string or a config
mapping). Without one, or for a model type the table does not know, the generic rules apply:
the union of every row's rules, which classify the names of every listed architecture exactly
as its own row does, so name-only callers (the merge planner) agree with the geometry tables.

Tensor groups (:data:`GROUPS`, in display order; biases share their weight's group):

==================== =======================================================================
``embed``            token embeddings (``embed_tokens``, GPT-2 ``wte``, NeoX ``embed_in``,
                     BERT ``word_embeddings``)
``pos_embed``        learned position embeddings (GPT-2 ``wpe``, BERT ``position_embeddings``)
``type_embed``       BERT token-type (segment) embeddings
``attn_q/k/v``       separate query / key / value projections
``attn_qkv``         fused query-key-value projections (GPT-2 ``c_attn``, a Conv1D stored
                     (in, out); NeoX ``query_key_value``; Phi-3 ``qkv_proj``)
``attn_o``           attention output projection (``o_proj``, ``attn.c_proj``,
                     ``attention.dense``, BERT ``attention.output.dense``)
``router``           mixture-of-experts router (``block_sparse_moe.gate``, ``mlp.gate``,
                     Qwen-MoE ``shared_expert_gate``)
``mlp_gate/up/down`` gated MLP projections (a Qwen-MoE shared expert included)
``mlp_gate_up``      fused gate+up projection (Phi-3 ``gate_up_proj``)
``mlp_fc``           input projection of an ungated MLP (GPT-2 ``c_fc``, NeoX
                     ``dense_h_to_4h``, BERT ``intermediate.dense``)
``mlp_proj``         output projection of an ungated MLP (GPT-2 ``mlp.c_proj``, NeoX
                     ``dense_4h_to_h``, BERT ``output.dense``)
``mlp_expert_gate``  per-expert gate projection (Mixtral ``w1``, ``experts.E.gate_proj``)
``mlp_expert_up``    per-expert up projection (Mixtral ``w3``, ``experts.E.up_proj``)
``mlp_expert_down``  per-expert down projection (Mixtral ``w2``, ``experts.E.down_proj``)
``mlp_expert_gate_up`` all experts' fused gate+up (transformers v5 layout, ``experts.gate_up_proj``)
``norm``             every normalisation (layer norms, RMS norms, q/k norms)
``head``             task heads before the output (BERT pooler, MLM transform, classifiers)
``lm_head``          the vocabulary projection (``lm_head``, NeoX ``embed_out``, BERT
                     ``cls.predictions.decoder``)
``buffer``           non-trained tensors stored by old checkpoints (causal masks, rotary
                     frequencies, position ids)
``other``            whatever no rule matches: listed by name by the geometry table
==================== =======================================================================

>>> [(layer_index(n), tensor_group(n)) for n in ("model.layers.1.mlp.up_proj.weight", "lm_head.weight")]
[(1, 'mlp_up'), (None, 'lm_head')]
>>> tensor_group("transformer.h.0.attn.c_attn.weight", model_type="gpt2")
'attn_qkv'
>>> expert_index("model.layers.3.block_sparse_moe.experts.5.w1.weight")
5
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ARCHITECTURES",
    "EMBED_CANDIDATES",
    "GENERIC",
    "GROUPS",
    "GROUP_RULES",
    "INPUT_GROUPS",
    "LAYER_PATTERN",
    "LM_HEAD",
    "Architecture",
    "architecture",
    "expert_index",
    "group_t_setting",
    "layer_index",
    "layer_template",
    "stack_position",
    "t_filters",
    "tensor_group",
]

#: The output projection of most causal LMs; absent from the files when tied to the embeddings.
LM_HEAD = "lm_head.weight"

#: Tensor groups, in display order; ``other`` takes whatever no rule matches.
GROUPS = (
    "embed",
    "pos_embed",
    "type_embed",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_o",
    "router",
    "mlp_gate",
    "mlp_up",
    "mlp_gate_up",
    "mlp_down",
    "mlp_fc",
    "mlp_proj",
    "mlp_expert_gate",
    "mlp_expert_up",
    "mlp_expert_gate_up",
    "mlp_expert_down",
    "norm",
    "head",
    "lm_head",
    "buffer",
    "other",
)

#: Groups whose tensors sit before the layer stack (figures put their rows above the layers).
INPUT_GROUPS = ("embed", "pos_embed", "type_embed")

# --- the rules, as data: (regular expression searched in the name, group), first match wins ---

#: Llama-style decoders (model.layers.N.self_attn / mlp), their MoE and fused variants. Order
#: matters: expert and router names before the dense ones they contain (``experts.0.up_proj``
#: holds ``up_proj``), fused names before their parts (``qkv_proj`` holds ``v_proj``).
_DECODER_RULES = (
    (r"embed_tokens", "embed"),
    (r"\.experts\.\d+\.(?:gate_proj|w1)\.", "mlp_expert_gate"),
    (r"\.experts\.\d+\.(?:up_proj|w3)\.", "mlp_expert_up"),
    (r"\.experts\.\d+\.(?:down_proj|w2)\.", "mlp_expert_down"),
    (r"\.experts\.gate_up_proj", "mlp_expert_gate_up"),
    (r"\.experts\.down_proj", "mlp_expert_down"),
    (r"\.(?:block_sparse_moe|mlp)\.gate\.|shared_expert_gate\.", "router"),
    (r"qkv_proj", "attn_qkv"),
    (r"q_proj", "attn_q"),
    (r"k_proj", "attn_k"),
    (r"v_proj", "attn_v"),
    (r"o_proj", "attn_o"),
    (r"gate_up_proj", "mlp_gate_up"),
    (r"gate_proj", "mlp_gate"),
    (r"up_proj", "mlp_up"),
    (r"down_proj", "mlp_down"),
    (r"norm", "norm"),
    (r"lm_head", "lm_head"),
)
#: GPT-2 (transformer.h.N, Conv1D weights stored (in, out)).
_GPT2_RULES = (
    (r"\.attn\.(?:masked_)?bias$", "buffer"),
    (r"(?:^|\.)wte\.", "embed"),
    (r"(?:^|\.)wpe\.", "pos_embed"),
    (r"attn\.c_attn\.", "attn_qkv"),
    (r"attn\.c_proj\.", "attn_o"),
    (r"mlp\.c_fc\.", "mlp_fc"),
    (r"mlp\.c_proj\.", "mlp_proj"),
    (r"(?:^|\.)ln_(?:\d+|f)\.", "norm"),
    (r"lm_head", "lm_head"),
)
#: GPT-NeoX / Pythia (gpt_neox.layers.N; the output projection is ``embed_out``).
_NEOX_RULES = (
    (r"\.attention\.(?:masked_)?bias$|rotary_emb\.inv_freq$", "buffer"),
    (r"embed_in\.", "embed"),
    (r"embed_out\.", "lm_head"),
    (r"query_key_value\.", "attn_qkv"),
    (r"attention\.dense\.", "attn_o"),
    (r"dense_h_to_4h\.", "mlp_fc"),
    (r"dense_4h_to_h\.", "mlp_proj"),
    (r"layernorm|layer_norm", "norm"),
)
#: BERT encoders (encoder.layer.N, with or without the ``bert.`` prefix, MLM/NSP heads).
_BERT_RULES = (
    (r"position_ids$", "buffer"),
    (r"word_embeddings\.", "embed"),
    (r"position_embeddings\.", "pos_embed"),
    (r"token_type_embeddings\.", "type_embed"),
    (r"LayerNorm\.", "norm"),
    (r"attention\.self\.query\.", "attn_q"),
    (r"attention\.self\.key\.", "attn_k"),
    (r"attention\.self\.value\.", "attn_v"),
    (r"attention\.output\.dense\.", "attn_o"),
    (r"intermediate\.dense\.", "mlp_fc"),
    (r"output\.dense\.", "mlp_proj"),
    (r"cls\.predictions\.(?:decoder\.|bias$)", "lm_head"),
    (r"(?:^|\.)pooler\.|cls\.predictions\.transform\.|cls\.seq_relationship\.|(?:^|\.)classifier\.", "head"),
)


def _stack_regex(templates: Sequence[str], placeholder: str) -> re.Pattern[str]:
    """``"layers.N."`` -> a regex matching ``layers.<digits>.`` at a name-component boundary,
    the digits captured (alternatives for several templates)."""
    alts = [re.escape(t).replace(re.escape(placeholder), r"(\d+)", 1) for t in templates]
    return re.compile("(?:^|\\.)(?:" + "|".join(alts) + ")")


@dataclass(frozen=True)
class Architecture:
    """One row of the naming table (see the module docstring).

    ``layer_stack``: the layer container, ``N`` standing for the layer index (searched at a
    name-component boundary, so ``model.layers.N.`` and a base model's ``layers.N.`` both
    match). ``experts``: the expert container, ``E`` for the expert index. ``input_side``: a
    regex of the non-layer tensors that sit before the stack (embeddings). ``embed_candidates``:
    the input embeddings a missing, tied ``lm_head.weight`` aliases (first present wins; empty
    when the architecture's head is not called ``lm_head.weight``). ``attn_filters`` /
    ``mlp_filters``: tensor-name substrings (mergekit filters) that select the attention and
    MLP tensors, in this order. ``causal``: a causal LM (evaluated by log-likelihood).
    ``config_keys``: the config keys two ingredients must agree on, beyond the common ones.
    """

    name: str
    rules: tuple[tuple[str, str], ...]
    layer_stack: tuple[str, ...]
    input_side: str
    embed_candidates: tuple[str, ...]
    attn_filters: tuple[str, ...]
    mlp_filters: tuple[str, ...]
    experts: tuple[str, ...] = ()
    causal: bool = True
    config_keys: tuple[str, ...] = ()
    _compiled: dict = field(default_factory=dict, repr=False, compare=False)

    def _re(self, key: str) -> Any:
        if key not in self._compiled:
            if key == "rules":
                value = tuple((re.compile(p), g) for p, g in self.rules)
            elif key == "layer":
                value = _stack_regex(self.layer_stack, "N")
            elif key == "expert":
                value = _stack_regex(self.experts, "E") if self.experts else None
            else:
                value = re.compile(self.input_side)
            self._compiled[key] = value
        return self._compiled[key]

    def group(self, name: str) -> str:
        """The group of tensor ``name`` under this row's rules (``other`` when none matches)."""
        for pattern, group in self._re("rules"):
            if pattern.search(name):
                return group
        return "other"

    def groups(self) -> tuple[str, ...]:
        """The groups this row's rules can produce, in display order."""
        mine = {g for _, g in self.rules}
        return tuple(g for g in GROUPS if g in mine)


_DECODER = dict(
    rules=_DECODER_RULES,
    layer_stack=("layers.N.",),
    input_side=r"embed_tokens",
    embed_candidates=("model.embed_tokens.weight", "embed_tokens.weight"),
    attn_filters=("self_attn",),
    mlp_filters=("mlp",),
)
_MOE = dict(_DECODER, experts=("experts.E.",))


def _rows() -> dict[str, Architecture]:
    rows = [
        Architecture("llama", **_DECODER),
        Architecture("mistral", **_DECODER),
        Architecture("qwen2", **_DECODER),
        Architecture("qwen3", **_DECODER),
        Architecture("gemma2", **_DECODER),
        Architecture("gemma3_text", **_DECODER),
        Architecture("phi3", **_DECODER),
        Architecture("olmo2", **_DECODER),
        Architecture(
            "mixtral",
            **{**_MOE, "mlp_filters": ("block_sparse_moe", "mlp")},
            config_keys=("num_local_experts",),
        ),
        Architecture("qwen2_moe", **_MOE, config_keys=("num_experts", "moe_intermediate_size")),
        Architecture("qwen3_moe", **_MOE, config_keys=("num_experts", "moe_intermediate_size")),
        Architecture(
            "gpt2",
            rules=_GPT2_RULES,
            layer_stack=("h.N.",),
            input_side=r"(?:^|\.)(?:wte|wpe)\.",
            embed_candidates=("transformer.wte.weight", "wte.weight"),
            attn_filters=(".attn.",),
            mlp_filters=(".mlp.",),
            config_keys=("n_embd", "n_layer", "n_head", "n_inner", "n_positions"),
        ),
        Architecture(
            "gpt_neox",
            rules=_NEOX_RULES,
            layer_stack=("layers.N.",),
            input_side=r"embed_in\.",
            embed_candidates=(),
            attn_filters=(".attention.",),
            mlp_filters=(".mlp.",),
        ),
        Architecture(
            "bert",
            rules=_BERT_RULES,
            layer_stack=("layer.N.",),
            input_side=r"(?:^|\.)embeddings\.",
            embed_candidates=(),
            attn_filters=(".attention.self.", ".attention.output.dense"),
            mlp_filters=(".intermediate.dense", ".output.dense"),
            causal=False,
            config_keys=("type_vocab_size",),
        ),
    ]
    return {a.name: a for a in rows}


#: The table, keyed by config ``model_type``.
ARCHITECTURES: dict[str, Architecture] = _rows()


def _generic() -> Architecture:
    rules: list[tuple[str, str]] = []
    buffers = [r for r in (*_GPT2_RULES, *_NEOX_RULES, *_BERT_RULES) if r[1] == "buffer"]
    for rule in (*buffers, *_DECODER_RULES, *_GPT2_RULES, *_NEOX_RULES, *_BERT_RULES):
        if rule not in rules:
            rules.append(rule)
    candidates: list[str] = []
    for a in ARCHITECTURES.values():
        candidates += [c for c in a.embed_candidates if c not in candidates]
    return Architecture(
        "generic",
        rules=tuple(rules),
        layer_stack=("layers.N.", "h.N.", "blocks.N.", "layer.N."),
        # any embedding but NeoX's output projection ``embed_out``
        input_side=r"embed(?!_out)|(?:^|\.)(?:wte|wpe)\.",
        embed_candidates=tuple(candidates),
        attn_filters=("self_attn",),
        mlp_filters=("mlp",),
        experts=("experts.E.",),
    )


#: The fallback row for names alone or an unknown ``model_type``: every row's rules.
GENERIC = _generic()

#: Input-embedding names a tied ``lm_head.weight`` may alias, over every architecture.
EMBED_CANDIDATES = GENERIC.embed_candidates
#: The generic layer stack (a block container name followed by the layer index).
LAYER_PATTERN = GENERIC._re("layer")
#: The generic (pattern, group) rules, searched in order.
GROUP_RULES: tuple[tuple[re.Pattern[str], str], ...] = GENERIC._re("rules")

#: What every function accepts as ``model_type``: a config ``model_type``, a config mapping, a row, or None.
ArchLike = str | Mapping[str, Any] | Architecture | None


def architecture(model_type: ArchLike = None) -> Architecture:
    """The table row for a ``model_type`` (or a config mapping holding one); :data:`GENERIC`
    when it is None or unknown.

    >>> architecture("gpt_neox").name, architecture({"model_type": "gpt2"}).name, architecture("rwkv").name
    ('gpt_neox', 'gpt2', 'generic')
    """
    if isinstance(model_type, Architecture):
        return model_type
    if isinstance(model_type, Mapping):
        model_type = model_type.get("model_type")
    return ARCHITECTURES.get(str(model_type), GENERIC) if model_type else GENERIC


def layer_index(name: str, *, model_type: ArchLike = None) -> int | None:
    """The transformer-layer index in a tensor name, or None outside the layer stack.

    >>> layer_index("model.layers.3.mlp.up_proj.weight"), layer_index("model.norm.weight")
    (3, None)
    >>> layer_index("bert.encoder.layer.2.output.dense.weight", model_type="bert")
    2
    """
    m = architecture(model_type)._re("layer").search(name)
    return int(next(g for g in m.groups() if g is not None)) if m else None


def expert_index(name: str, *, model_type: ArchLike = None) -> int | None:
    """The expert index of a mixture-of-experts tensor, or None for every other tensor.

    >>> expert_index("model.layers.0.mlp.experts.7.down_proj.weight"), expert_index("model.layers.0.mlp.gate.weight")
    (7, None)
    """
    pattern = architecture(model_type)._re("expert")
    m = pattern.search(name) if pattern is not None else None
    return int(m.group(1)) if m else None


def layer_template(name: str, *, model_type: ArchLike = None) -> str | None:
    """``name`` with its layer index replaced by ``{}``, or None outside the layer stack.

    >>> layer_template("model.layers.3.mlp.up_proj.weight")
    'model.layers.{}.mlp.up_proj.weight'
    >>> layer_template("model.layers.3.block_sparse_moe.experts.1.w1.weight")
    'model.layers.{}.block_sparse_moe.experts.1.w1.weight'
    """
    m = architecture(model_type)._re("layer").search(name)
    if m is None:
        return None
    i = next(i for i, g in enumerate(m.groups(), 1) if g is not None)
    return name[: m.start(i)] + "{}" + name[m.end(i) :]


def tensor_group(name: str, *, model_type: ArchLike = None) -> str:
    """The group of a tensor name (one of :data:`GROUPS`; ``other`` when no rule matches).

    >>> tensor_group("model.layers.0.self_attn.q_proj.weight"), tensor_group("model.norm.weight")
    ('attn_q', 'norm')
    >>> tensor_group("gpt_neox.layers.0.attention.query_key_value.weight", model_type="gpt_neox")
    'attn_qkv'
    """
    return architecture(model_type).group(name)


def stack_position(name: str, *, model_type: ArchLike = None) -> str:
    """Where a tensor sits relative to the layer stack: ``"input"``, ``"layer"`` or ``"output"``.

    >>> [stack_position(n) for n in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
    ...                              "model.norm.weight", "lm_head.weight", "embed_out.weight")]
    ['input', 'layer', 'output', 'output', 'output']
    """
    arch = architecture(model_type)
    if arch._re("layer").search(name):
        return "layer"
    return "input" if arch._re("input").search(name) and name != LM_HEAD else "output"


def t_filters(model_type: ArchLike = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(attention filters, MLP filters): the tensor-name substrings that select an
    architecture's attention and MLP tensors in a mergekit filter list.

    >>> t_filters("gpt2"), t_filters("mixtral")[1]
    ((('.attn.',), ('.mlp.',)), ('block_sparse_moe', 'mlp'))
    """
    arch = architecture(model_type)
    return arch.attn_filters, arch.mlp_filters


def group_t_setting(
    default: Any,
    *,
    attention: Any = None,
    mlp: Any = None,
    model_type: ArchLike = None,
) -> Any:
    """A mergekit parameter value with its own value for the attention and/or MLP tensors.

    Values are scalars or gradients (lists). Returns ``default`` unchanged when neither group
    has its own value, else a filter list: one entry per filter (attention first), then the
    catch-all. Since the first matching filter wins, an attention filter that an MLP filter
    would also match (BERT's ``.attention.output.dense`` holds ``.output.dense``) keeps an
    entry with ``default`` when only the MLP has its own value.

    >>> group_t_setting(0.5, mlp=0.8)
    [{'filter': 'mlp', 'value': 0.8}, {'value': 0.5}]
    >>> group_t_setting(0.5, mlp=0.8, model_type="bert")[:2]
    [{'filter': '.attention.output.dense', 'value': 0.5}, {'filter': '.intermediate.dense', 'value': 0.8}]
    """
    if attention is None and mlp is None:
        return default
    attn_f, mlp_f = t_filters(model_type)
    out: list[dict[str, Any]] = []
    for f in attn_f:
        if attention is not None:
            out.append({"filter": f, "value": attention})
        elif mlp is not None and any(m in f for m in mlp_f):
            out.append({"filter": f, "value": default})
    if mlp is not None:
        out += [{"filter": f, "value": mlp} for f in mlp_f]
    out.append({"value": default})
    return out
