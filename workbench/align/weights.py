"""Weight matching: the alignment that maximises the summed inner product of the two models'
weights, found without data (Git Re-Basin's weight matching, for decoder blocks).

The objective is ``sum over tensors <reference, aligned other>``. It is not solvable at once,
but every symmetry is, holding the others fixed: the residual permutation is one linear
assignment over every tensor with a residual axis; given it, each layer's MLP units are one
assignment and its heads one head matching (:func:`~workbench.align.matching.match_heads`).
Rounds alternate the residual step and the layer steps until nothing moves. The first residual
step uses only the tensors whose other axes need no alignment (embeddings, norms, ``lm_head``):
the token embeddings of two models sharing a vocabulary tie their residual bases together.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workbench.align.matching import HeadBlocks, assign, match_heads, row_products
from workbench.align.symmetry import AlignSpec
from workbench.align.transform import Alignment, LayerAlignment, align_tensor, identity_alignment
from workbench.naming import LM_HEAD
from workbench.numerics import dot, norm

__all__ = ["alignment_similarity", "weight_matching"]


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with axis ``dim`` first and the rest flattened: [size(dim), rest]."""
    return x.movedim(dim, 0).reshape(x.shape[dim], -1)


def _kind_rows(
    state: Mapping[str, torch.Tensor], spec: AlignSpec, names: list[str], kind: str, transform=None
) -> torch.Tensor:
    """The tensors ``names`` as rows along their ``kind`` axis, side by side: [size(kind), total]."""
    parts = []
    for n in names:
        x = _f32(state[n])
        if transform is not None:
            x = transform(n, x)
        parts.append(_rows(x, spec.axes[n].index(kind)))
    return torch.cat(parts, dim=1)


def _residual_step(ref: Mapping, other: Mapping, spec: AlignSpec, al: Alignment, *, first: bool) -> torch.Tensor:
    names = spec.names_with("res")
    if first:  # only tensors whose other axes are not permuted (see the module docstring)
        names = [n for n in names if all(k in (None, "res") for k in spec.axes[n])]
    inner = ("mlp", "q", "k", "v", "o")
    sim = torch.zeros(spec.hidden, spec.hidden, dtype=torch.float64)
    for n in names:
        d = spec.axes[n].index("res")
        r = _rows(_f32(ref[n]), d)
        o = _rows(align_tensor(n, _f32(other[n]), spec, al, kinds=inner), d)
        sim += row_products(r, o)
    return assign(sim)


def _layer_step(ref: Mapping, other: Mapping, spec: AlignSpec, al: Alignment, layer: int, rotations: bool) -> None:
    """Re-solve one layer's MLP units and heads given the residual permutation (in place)."""

    def res_only(n: str, x: torch.Tensor) -> torch.Tensor:
        return align_tensor(n, x, spec, al, kinds=("res",))

    la = al.layers[layer]
    mlp_names = spec.names_with("mlp", layer)
    la.mlp = assign(
        row_products(_kind_rows(ref, spec, mlp_names, "mlp"), _kind_rows(other, spec, mlp_names, "mlp", res_only))
    )
    sims = {}
    for kind in ("q", "k", "v", "o"):
        names = spec.names_with(kind, layer)
        sims[kind] = row_products(_kind_rows(ref, spec, names, kind), _kind_rows(other, spec, names, kind, res_only))
    kv, rep, hd = spec.n_kv, spec.n_rep, spec.head_dim
    blocks = HeadBlocks(
        q=sims["q"].reshape(kv, rep, hd, kv, rep, hd),
        k=sims["k"].reshape(kv, hd, kv, hd),
        v=sims["v"].reshape(kv, hd, kv, hd),
        o=sims["o"].reshape(kv, rep, hd, kv, rep, hd),
    )
    la.kv, la.query, la.vo, la.angles = match_heads(
        blocks, rotations=rotations and spec.rotations, incumbent=(la.kv, la.query, la.vo, la.angles)
    )


def _copy(al: Alignment) -> Alignment:
    return Alignment(
        al.residual.clone(),
        [
            LayerAlignment(la.mlp.clone(), la.kv.clone(), la.query.clone(), la.vo.clone(), la.angles.clone())
            for la in al.layers
        ],
    )


def _same(a: Alignment, b: Alignment) -> bool:
    return torch.equal(a.residual, b.residual) and all(
        torch.equal(x.mlp, y.mlp)
        and torch.equal(x.kv, y.kv)
        and torch.equal(x.query, y.query)
        and torch.equal(x.vo, y.vo)
        and torch.allclose(x.angles, y.angles, rtol=0, atol=1e-9)
        for x, y in zip(a.layers, b.layers)
    )


def weight_matching(
    reference: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    spec: AlignSpec,
    *,
    max_rounds: int = 20,
    rotations: bool = False,
    progress: bool = False,
) -> tuple[Alignment, list[float]]:
    """Find the alignment of ``other`` onto ``reference`` from their weights alone.

    ``reference`` / ``other``: tensor name -> tensor (state dicts, or lazy mappings over
    checkpoints). ``rotations``: also rotate q/k pairs where that is exact. Returns the
    alignment and the similarity (cosine of the whole aligned weight vectors, see
    :func:`alignment_similarity`) after each round; rounds stop when nothing moves.
    """
    from tqdm.auto import tqdm

    al = identity_alignment(spec)
    history = []
    bar = tqdm(total=max_rounds, desc="weight matching", unit="round", disable=not progress, leave=False)
    try:
        for rnd in range(max_rounds):
            before = _copy(al)
            al.residual = _residual_step(reference, other, spec, al, first=rnd == 0)
            for layer in range(spec.n_layers):
                _layer_step(reference, other, spec, al, layer, rotations)
            history.append(alignment_similarity(reference, other, spec, al))
            bar.update(1)
            bar.set_postfix(similarity=f"{history[-1]:.4f}")
            if rnd > 0 and _same(before, al):
                break
    finally:
        bar.close()
    return al, history


def alignment_similarity(
    reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], spec: AlignSpec, al: Alignment
) -> float:
    """Cosine between the two models' whole weight vectors, ``other`` aligned by ``al``
    (a tied ``lm_head`` counted once): 1 when they are the same function up to the alignment's
    symmetries and identical weights."""
    num, na, nb = 0.0, 0.0, 0.0
    for n in spec.axes:
        if n == LM_HEAD and spec.tied:
            continue
        a, b = _f32(reference[n]), align_tensor(n, _f32(other[n]), spec, al)
        num += float(dot(a, b))
        na += float(norm(a)) ** 2
        nb += float(norm(b)) ** 2
    return num / max((na * nb) ** 0.5, 1e-300)
