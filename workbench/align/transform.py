"""Alignments (one permutation per symmetry, plus the q/k pair rotations) and applying them to tensors.

Convention: every permutation is a *gather* index. ``residual[i] = j`` means that residual
dimension ``i`` of the aligned model is dimension ``j`` of the model being aligned; likewise
``mlp`` (a layer's hidden units), ``kv`` (key/value groups), ``query[g, r]`` (query head ``r``
of group slot ``g`` is query head ``query[g, r]`` of the source group ``kv[g]``) and
``vo[g, d]`` (value dimension ``d`` of group slot ``g``). After gathering, pair ``p``
(dimensions ``p`` and ``p + head_dim / 2``) of every q and k row block of group slot ``g`` is
rotated by ``angles[g, p]`` radians. Permutations are exact in any dtype; rotated tensors are
computed in float64 and rounded once to their dtype.

>>> import torch
>>> from workbench.align.symmetry import spec_for
>>> cfg = {"model_type": "llama", "hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 1,
...        "num_attention_heads": 2, "head_dim": 2}
>>> names = {"model.embed_tokens.weight": (5, 4), "model.norm.weight": (4,),
...          **{f"model.layers.0.{k}": v for k, v in [("self_attn.q_proj.weight", (4, 4)),
...             ("self_attn.k_proj.weight", (4, 4)), ("self_attn.v_proj.weight", (4, 4)),
...             ("self_attn.o_proj.weight", (4, 4)), ("mlp.gate_proj.weight", (6, 4)), ("mlp.up_proj.weight", (6, 4)),
...             ("mlp.down_proj.weight", (4, 6)), ("input_layernorm.weight", (4,)),
...             ("post_attention_layernorm.weight", (4,))]}}
>>> spec = spec_for(cfg, names, tied=True)
>>> al = random_alignment(spec, seed=0)
>>> w = torch.arange(4.0)
>>> apply_alignment({"model.norm.weight": w}, spec, al)["model.norm.weight"].tolist() == w[al.residual].tolist()
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from workbench.align.symmetry import AlignSpec
from workbench.errors import WorkbenchError

__all__ = [
    "Alignment",
    "LayerAlignment",
    "align_tensor",
    "apply_alignment",
    "axis_index",
    "identity_alignment",
    "random_alignment",
]


@dataclass
class LayerAlignment:
    """The permutations (and q/k pair rotations) of one decoder layer; see the module docstring."""

    mlp: torch.Tensor  # [intermediate]
    kv: torch.Tensor  # [n_kv]
    query: torch.Tensor  # [n_kv, n_rep]
    vo: torch.Tensor  # [n_kv, head_dim]
    angles: torch.Tensor  # [n_kv, head_dim // 2], float64 radians

    def is_identity(self) -> bool:
        """No unit moves and no pair rotates."""
        return all(bool((p == torch.arange(p.shape[-1])).all()) for p in (self.mlp, self.kv, self.query, self.vo)) and (
            not bool(self.angles.any())
        )


@dataclass
class Alignment:
    """Everything that maps one model into another's basis: the residual permutation and one
    :class:`LayerAlignment` per layer."""

    residual: torch.Tensor  # [hidden]
    layers: list[LayerAlignment]

    def is_identity(self) -> bool:
        """Applying it changes nothing."""
        return bool((self.residual == torch.arange(self.residual.numel())).all()) and all(
            la.is_identity() for la in self.layers
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists of ints; angles as floats, which JSON round-trips exactly)."""
        return {
            "residual": self.residual.tolist(),
            "layers": [
                {
                    "mlp": la.mlp.tolist(),
                    "kv": la.kv.tolist(),
                    "query": la.query.tolist(),
                    "vo": la.vo.tolist(),
                    "angles": la.angles.tolist(),
                }
                for la in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping, spec: AlignSpec, source: str = "alignment") -> Alignment:
        """Read :meth:`to_dict`'s output back, checking every permutation against ``spec``."""
        try:
            layers = data["layers"]
            if len(layers) != spec.n_layers:
                raise WorkbenchError(f"{source}: {len(layers)} layers, the model has {spec.n_layers}")
            out = cls(
                _perm(data["residual"], (spec.hidden,), f"{source}: residual"),
                [
                    LayerAlignment(
                        _perm(la["mlp"], (spec.intermediate,), f"{source}: layer {i} mlp"),
                        _perm(la["kv"], (spec.n_kv,), f"{source}: layer {i} kv"),
                        _perm(la["query"], (spec.n_kv, spec.n_rep), f"{source}: layer {i} query"),
                        _perm(la["vo"], (spec.n_kv, spec.head_dim), f"{source}: layer {i} vo"),
                        torch.tensor(la["angles"], dtype=torch.float64).reshape(spec.n_kv, spec.head_dim // 2),
                    )
                    for i, la in enumerate(layers)
                ],
            )
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise WorkbenchError(f"{source}: not a valid alignment ({err})") from None
        return out


def _perm(values: Iterable, shape: tuple[int, ...], what: str) -> torch.Tensor:
    p = torch.as_tensor(values, dtype=torch.long).reshape(shape)
    n = shape[-1]
    if not bool((p.sort(dim=-1).values == torch.arange(n)).all()):
        raise WorkbenchError(f"{what} is not a permutation of 0..{n - 1}")
    return p


def identity_alignment(spec: AlignSpec) -> Alignment:
    """The alignment that moves nothing."""
    return Alignment(
        torch.arange(spec.hidden),
        [
            LayerAlignment(
                torch.arange(spec.intermediate),
                torch.arange(spec.n_kv),
                torch.arange(spec.n_rep).repeat(spec.n_kv, 1),
                torch.arange(spec.head_dim).repeat(spec.n_kv, 1),
                torch.zeros(spec.n_kv, spec.head_dim // 2, dtype=torch.float64),
            )
            for _ in range(spec.n_layers)
        ],
    )


def random_alignment(spec: AlignSpec, *, seed: int = 0, rotations: bool = True) -> Alignment:
    """Random valid permutations of every symmetry (and random pair rotations when the model
    allows them and ``rotations``): applying it to a model must not change its logits."""
    g = torch.Generator().manual_seed(int(seed))

    def perms(rows: int, n: int) -> torch.Tensor:
        return torch.stack([torch.randperm(n, generator=g) for _ in range(rows)])

    layers = []
    for _ in range(spec.n_layers):
        angles = torch.zeros(spec.n_kv, spec.head_dim // 2, dtype=torch.float64)
        if rotations and spec.rotations:
            angles = (torch.rand(angles.shape, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi
        layers.append(
            LayerAlignment(
                perms(1, spec.intermediate)[0],
                perms(1, spec.n_kv)[0],
                perms(spec.n_kv, spec.n_rep),
                perms(spec.n_kv, spec.head_dim),
                angles,
            )
        )
    return Alignment(perms(1, spec.hidden)[0], layers)


def axis_index(spec: AlignSpec, alignment: Alignment, layer: int | None, kind: str) -> torch.Tensor:
    """The gather index of an axis of ``kind`` in ``layer`` (see the module docstring)."""
    if kind == "res":
        return alignment.residual
    la = alignment.layers[layer]
    hd, rep = spec.head_dim, spec.n_rep
    dims = torch.arange(hd)
    if kind == "mlp":
        return la.mlp
    if kind == "k":
        return (la.kv[:, None] * hd + dims[None, :]).reshape(-1)
    if kind == "v":
        return (la.kv[:, None] * hd + la.vo).reshape(-1)
    heads = la.kv[:, None] * rep + la.query  # [n_kv, n_rep] source query head of each slot
    if kind == "q":
        return (heads[:, :, None] * hd + dims).reshape(-1)
    if kind == "o":
        return (heads[:, :, None] * hd + la.vo[:, None, :]).reshape(-1)
    raise WorkbenchError(f"unknown axis kind {kind!r}")


def _rotate(x: torch.Tensor, dim: int, angles: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
    """Rotate the RoPE pairs along ``dim`` (laid out as ``groups + (2, head_dim / 2)``)."""
    y = x.movedim(dim, 0).to(torch.float64)
    rest = y.shape[1:]
    hp = angles.shape[-1]
    y = y.reshape(*groups, 2, hp, *rest)
    shape = (angles.shape[0],) + (1,) * (len(groups) - 1) + (hp,) + (1,) * len(rest)
    c, s = angles.cos().reshape(shape), angles.sin().reshape(shape)
    a, b = y.select(len(groups), 0), y.select(len(groups), 1)
    out = torch.stack((c * a - s * b, s * a + c * b), dim=len(groups))
    return out.reshape(-1, *rest).movedim(0, dim).to(x.dtype)


def align_tensor(
    name: str,
    x: torch.Tensor,
    spec: AlignSpec,
    alignment: Alignment,
    *,
    kinds: Iterable[str] | None = None,
) -> torch.Tensor:
    """``x`` (tensor ``name``) moved into the aligned basis: every axis gathered by its index,
    then the q/k pairs rotated. ``kinds`` restricts which axis kinds move (default: all)."""
    if name not in spec.axes:
        raise WorkbenchError(f"tensor {name!r} has no permutation rule")
    which = set(kinds) if kinds is not None else None
    layer = spec.layers[name]
    out = x
    for d, kind in enumerate(spec.axes[name]):
        if kind is None or (which is not None and kind not in which):
            continue
        out = out.index_select(d, axis_index(spec, alignment, layer, kind).to(out.device))
    for d, kind in enumerate(spec.axes[name]):
        if kind in ("q", "k") and (which is None or kind in which):
            angles = alignment.layers[layer].angles.to(out.device)
            if bool(angles.any()):
                groups = (spec.n_kv, spec.n_rep) if kind == "q" else (spec.n_kv,)
                out = _rotate(out, d, angles, groups)
    return out


def apply_alignment(
    state: Mapping[str, torch.Tensor], spec: AlignSpec, alignment: Alignment
) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` moved into the aligned basis (a new dict; ``state`` is untouched)."""
    return {name: align_tensor(name, x, spec, alignment) for name, x in state.items()}
