"""The permutation symmetries of a decoder-only transformer: which axis of which tensor moves with which.

Every axis of every tensor gets a *kind*: ``res`` (the residual stream: one permutation for the
whole model), ``mlp`` (a layer's MLP hidden units), ``q`` / ``k`` / ``v`` (a layer's query,
key and value projection rows), ``o`` (the attention output projection's columns, laid out
like the query heads but with the value dimensions inside each head), or None (an axis no
permutation touches: the vocabulary, the head dimension of a per-head q/k norm). The
functions that find and apply permutations read these kinds and nothing else. The kinds
follow from each tensor's group in the naming table (:func:`workbench.naming.tensor_group`)
through :data:`GROUP_AXES`; :data:`SUPPORTED` lists the model types the rules were checked on.

What is exact, and why (Llama family, ``transformers``' implementations):

- residual: RMSNorm divides by the mean square over the hidden dimension (order-free) and
  multiplies elementwise by its weight (``w`` or Gemma's ``1 + w``), so one permutation of the
  embedding columns, every input projection's columns, every output projection's rows, every
  residual norm weight and the ``lm_head`` columns leaves the logits unchanged; Gemma's
  embedding scale ``sqrt(hidden)`` and logit soft-capping are scalars. Tied embeddings stay
  tied (both sides get the same column permutation).
- MLP: rows of gate/up and columns of down move together.
- attention heads: key/value groups are units (GQA: query head ``j`` reads key/value group
  ``j // (heads / kv_heads)``), and query heads move only within their group.
- within a head: the value dimensions are free (the same permutation on the group's ``v`` rows
  and on the ``o`` columns of every query head of the group). The query/key dimensions are
  not: ``rotate_half`` rotates dimension ``i`` with ``i + head_dim / 2`` at frequency
  ``theta_i``, so moving a pair to another slot changes its frequency (not a symmetry), and
  swapping the two halves of a pair is a reflection, which does not commute with the rotation.
  What does commute is a 2-D *rotation* of each pair, the same on q and k (of every query head
  of the group): exact, and used by the alignment as the q/k counterpart of the value
  permutation. A per-head-dim q/k norm (Qwen3, Gemma 3) multiplies each dimension by its own
  weight, which no rotation commutes with, so those models align q/k by heads only.

>>> spec = spec_for({"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
...                  "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10},
...                 {"model.embed_tokens.weight": (10, 8), "model.norm.weight": (8,),
...                  **{f"model.layers.0.{s}": shp for s, shp in [("self_attn.q_proj.weight", (8, 8)),
...                     ("self_attn.k_proj.weight", (4, 8)), ("self_attn.v_proj.weight", (4, 8)),
...                     ("self_attn.o_proj.weight", (8, 8)), ("mlp.gate_proj.weight", (16, 8)),
...                     ("mlp.up_proj.weight", (16, 8)), ("mlp.down_proj.weight", (8, 16)),
...                     ("input_layernorm.weight", (8,)), ("post_attention_layernorm.weight", (8,))]}},
...                 tied=True)
>>> spec.n_rep, spec.head_dim, spec.rotations, spec.axes["model.layers.0.self_attn.o_proj.weight"]
(2, 4, True, ('res', 'o'))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workbench.errors import WorkbenchError
from workbench.naming import LM_HEAD, layer_index, tensor_group

__all__ = ["AXIS_KINDS", "GROUP_AXES", "SUPPORTED", "AlignSpec", "check_same_model", "spec_for"]

#: The kinds an axis can have (None: untouched).
AXIS_KINDS = ("res", "mlp", "q", "k", "v", "o")

#: Axis kinds of the weight and bias of each tensor group (:func:`workbench.naming.tensor_group`).
#: ``norm`` is a residual norm unless it is a per-head q/k norm (:data:`PER_HEAD_NORMS`);
#: ``buffer`` (rotary frequencies stored by old checkpoints) is a function of the config.
GROUP_AXES: dict[str, dict[str, tuple]] = {
    "embed": {"weight": (None, "res")},
    "lm_head": {"weight": (None, "res")},
    "attn_q": {"weight": ("q", "res"), "bias": ("q",)},
    "attn_k": {"weight": ("k", "res"), "bias": ("k",)},
    "attn_v": {"weight": ("v", "res"), "bias": ("v",)},
    "attn_o": {"weight": ("res", "o"), "bias": ("res",)},
    "mlp_gate": {"weight": ("mlp", "res"), "bias": ("mlp",)},
    "mlp_up": {"weight": ("mlp", "res"), "bias": ("mlp",)},
    "mlp_down": {"weight": ("res", "mlp"), "bias": ("res",)},
    "norm": {"weight": ("res",)},
}
#: Norms over one head's dimensions, shared by every head (Qwen3, Gemma 3): untouched by head
#: permutations, and the reason q/k pairs cannot rotate in these models.
PER_HEAD_NORMS = ("q_norm.weight", "k_norm.weight")
#: Groups every layer must hold for the rules to describe the whole block.
LAYER_GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "norm")

#: The model types whose forward pass the rules were checked against (see the module
#: docstring), each with what sets it apart. Adding one = a row here, after checking its
#: forward pass against the rules and adding it to the exactness test.
SUPPORTED: dict[str, str] = {
    "llama": "RMSNorm before attention and MLP; optional attention and MLP biases",
    "mistral": "as llama (sliding-window attention changes no weight)",
    "qwen2": "as llama, with q/k/v biases",
    "qwen3": "as llama, with per-head q/k norms (no pair rotations)",
    "gemma": "norms scale by 1 + w; embeddings scaled by sqrt(hidden) (a scalar)",
    "gemma2": "as gemma, with norms after attention and MLP outputs too; logit soft-capping (scalar)",
    "gemma3_text": "as gemma2, with per-head q/k norms (no pair rotations)",
}


@dataclass(frozen=True)
class AlignSpec:
    """What can be permuted in one model: its sizes and the axis kinds of every tensor.

    ``axes`` maps each tensor name to one kind per dimension (see :data:`AXIS_KINDS`);
    ``layers`` maps it to its layer index (None outside the stack); ``rotations`` says whether
    q/k pairs may be rotated (no per-head-dim q/k norm).
    """

    model_type: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    tied: bool
    rotations: bool
    axes: Mapping[str, tuple] = field(repr=False)
    layers: Mapping[str, int | None] = field(repr=False)
    shapes: Mapping[str, tuple[int, ...]] = field(repr=False)
    index: Mapping[tuple[int | None, str], str] = field(default_factory=dict, repr=False)  # (layer, group) -> weight

    @property
    def n_rep(self) -> int:
        """Query heads per key/value group."""
        return self.n_heads // self.n_kv

    def size(self, kind: str) -> int:
        """The length of an axis of this kind."""
        return {
            "res": self.hidden,
            "mlp": self.intermediate,
            "q": self.n_heads * self.head_dim,
            "o": self.n_heads * self.head_dim,
            "k": self.n_kv * self.head_dim,
            "v": self.n_kv * self.head_dim,
        }[kind]

    def names_with(self, kind: str, layer: int | None = None) -> list[str]:
        """Tensors with an axis of ``kind`` (in ``layer`` when given), a tied ``lm_head`` left out."""
        return [
            n
            for n, ax in self.axes.items()
            if kind in ax and (layer is None or self.layers[n] == layer) and not (n == LM_HEAD and self.tied)
        ]

    def weight_of(self, layer: int | None, group: str) -> str:
        """The name of the weight of ``group`` in ``layer`` (None: outside the stack); the first
        one for groups a layer holds several of (norms)."""
        return self.index[(layer, group)]


def _config_int(config: Mapping, key: str, source: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise WorkbenchError(f"{source}: config has no {key!r}, which alignment needs")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{source}: config {key!r} is {value!r}, not an integer") from None


def spec_for(
    config: Mapping,
    shapes: Mapping[str, Iterable[int]],
    *,
    tied: bool | None = None,
    source: str = "model",
) -> AlignSpec:
    """The :class:`AlignSpec` of a model from its config and tensor shapes.

    ``tied``: whether ``lm_head`` is the input embedding (default: the config's
    ``tie_word_embeddings``). Raises WorkbenchError naming ``source`` for an unsupported
    ``model_type`` (and which of its tensors have no rule), a tensor no rule covers, a missing
    tensor, a shape that disagrees with the config, or a config feature that breaks the
    symmetries.
    """
    model_type = str(config.get("model_type"))
    if model_type not in SUPPORTED:
        uncovered = sorted({f"{tensor_group(n)} ({n})" for n in shapes if _rule(n) is None})[:3]
        what = f"; no permutation rule for {', '.join(uncovered)}" if uncovered else ""
        raise WorkbenchError(
            f"{source}: alignment does not support model_type {model_type!r} (supported: {', '.join(SUPPORTED)}){what}"
        )
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    partial = config.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise WorkbenchError(
            f"{source}: config partial_rotary_factor={partial} (RoPE on part of the head) is not covered by "
            "the permutation rules, which assume RoPE over the whole head"
        )
    h = _config_int(config, "hidden_size", source)
    heads = _config_int(config, "num_attention_heads", source)
    kv = _config_int(config, "num_key_value_heads", source, heads)
    hd = _config_int(config, "head_dim", source, h // heads if heads else None)
    if kv <= 0 or heads % kv:
        raise WorkbenchError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    if hd % 2:
        raise WorkbenchError(f"{source}: head_dim={hd} is odd; RoPE needs pairs of dimensions")
    dims = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
    spec = AlignSpec(
        model_type=model_type,
        hidden=h,
        intermediate=_config_int(config, "intermediate_size", source),
        n_layers=_config_int(config, "num_hidden_layers", source),
        n_heads=heads,
        n_kv=kv,
        head_dim=hd,
        tied=bool(config.get("tie_word_embeddings", False)) if tied is None else bool(tied),
        rotations=not any(n.endswith(PER_HEAD_NORMS) for n in dims),
        axes={},
        layers={},
        shapes=dims,
    )
    _classify(spec, source)
    return spec


def _rule(name: str, ndim: int = 1) -> tuple | None:
    """The axis kinds of tensor ``name`` (None: no rule covers it)."""
    group = tensor_group(name)
    if group == "buffer":
        return (None,) * ndim
    if group == "norm" and name.endswith(PER_HEAD_NORMS):
        return (None,)
    return GROUP_AXES.get(group, {}).get(name.rsplit(".", 1)[-1])


def _classify(spec: AlignSpec, source: str) -> None:
    """Fill ``spec.axes`` / ``spec.layers``; check coverage, completeness and shapes."""
    axes, layers = {}, {}
    for name, shape in spec.shapes.items():
        i = layer_index(name)
        rule = _rule(name, len(shape))
        if rule is None or (i is not None and not 0 <= i < spec.n_layers):
            raise WorkbenchError(
                f"{source}: tensor {name!r} ({tensor_group(name)}) is not covered by the permutation rules; "
                "aligning it could change the model's function"
            )
        if len(rule) != len(shape):
            raise WorkbenchError(f"{source}: tensor {name!r} has shape {shape}, expected {len(rule)} dimensions")
        for kind, dim in zip(rule, shape):
            want = spec.size(kind) if kind else (spec.head_dim if name.endswith(PER_HEAD_NORMS) else None)
            if want is not None and dim != want:
                raise WorkbenchError(
                    f"{source}: tensor {name!r} has shape {shape}, but the config implies {want} along its "
                    f"{kind or 'head'} axis"
                )
        axes[name], layers[name] = rule, i
    have = {(layers[n], tensor_group(n)) for n in axes if n.endswith(".weight")}
    missing = [g for g in ("embed", "norm") if (None, g) not in have]
    missing += [f"layer {i} {g}" for i in range(spec.n_layers) for g in LAYER_GROUPS if (i, g) not in have]
    if missing:
        raise WorkbenchError(f"{source}: no {', '.join(missing[:3])} weight found, so alignment cannot apply")
    object.__setattr__(spec, "axes", axes)
    object.__setattr__(spec, "layers", layers)
    index: dict[tuple[int | None, str], str] = {}
    for n in axes:
        if n.endswith(".weight"):
            index.setdefault((layers[n], tensor_group(n)), n)
    object.__setattr__(spec, "index", index)


def check_same_model(a: AlignSpec, b: AlignSpec, source_a: str, source_b: str) -> None:
    """Refuse two models that are not the same architecture with the same tensors and shapes."""
    for key in ("model_type", "hidden", "intermediate", "n_layers", "n_heads", "n_kv", "head_dim"):
        va, vb = getattr(a, key), getattr(b, key)
        if va != vb:
            raise WorkbenchError(f"different architectures: {source_a} has {key}={va} but {source_b} has {key}={vb}")
    for n in sorted(set(a.shapes) ^ set(b.shapes)):
        have, lack = (source_a, source_b) if n in a.shapes else (source_b, source_a)
        raise WorkbenchError(f"tensor {n!r} is in {have} but missing from {lack}")
    for n, s in a.shapes.items():
        if b.shapes[n] != s:
            raise WorkbenchError(f"shape mismatch for tensor {n!r}: {s} in {source_a} but {b.shapes[n]} in {source_b}")
