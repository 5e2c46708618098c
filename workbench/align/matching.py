"""The assignment steps both ways of finding an alignment share: linear assignment of units and
the matching of attention heads (key/value groups, query heads within them, value dimensions,
q/k pair rotations) from similarity blocks.

A similarity is "how alike unit ``i`` of the reference and unit ``j`` of the other model are":
inner products of weights for weight matching, correlations of activations for activation
matching. Everything here maximises a sum of similarities.

>>> import torch
>>> assign(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).tolist()
[1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.numerics import cross

__all__ = ["HeadBlocks", "assign", "match_heads", "row_products"]


def row_products(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Inner products of the rows of ``x`` [M, N] with the rows of ``y`` [P, N], float64 [M, P],
    accurate at any N (the numerics kernel)."""
    return cross(x.contiguous().unsqueeze(0), y.contiguous().unsqueeze(0))[0]


def assign(similarity: torch.Tensor) -> torch.Tensor:
    """The permutation maximising ``sum_i similarity[i, perm[i]]`` (a gather index: slot ``i``
    takes unit ``perm[i]``), by ``scipy.optimize.linear_sum_assignment``."""
    from scipy.optimize import linear_sum_assignment

    s = similarity.detach().to(torch.float64).cpu().numpy()
    _, cols = linear_sum_assignment(np.nan_to_num(s, nan=0.0), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


@dataclass
class HeadBlocks:
    """Similarities between one layer's head dimensions in the reference (first indices) and the
    other model (last indices), for :func:`match_heads`.

    ``q`` / ``o``: [n_kv, n_rep, head_dim, n_kv, n_rep, head_dim] (query rows, output-projection
    columns); ``k`` / ``v``: [n_kv, head_dim, n_kv, head_dim].
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor


@dataclass
class _Heads:
    """One candidate matching of reference group ``a`` to other group ``b``."""

    score: float
    query: torch.Tensor
    vo: torch.Tensor
    angles: torch.Tensor


def _q_pairs(x: torch.Tensor, hp: int) -> torch.Tensor:
    """``[a, r, hd, b, r', hd]`` similarities -> RoPE-pair blocks ``[a, r, b, r', hp, 2, 2]``
    (dimension ``i * hp + p`` is half ``i`` of pair ``p``)."""
    a, r = x.shape[:2]
    y = x.reshape(a, r, 2, hp, a, r, 2, hp).diagonal(dim1=3, dim2=7)  # [a, r, i, b, r', j, p]
    return y.permute(0, 1, 3, 4, 6, 2, 5)


def _k_pairs(x: torch.Tensor, hp: int) -> torch.Tensor:
    """``[a, hd, b, hd]`` similarities -> RoPE-pair blocks ``[a, b, hp, 2, 2]``."""
    a = x.shape[0]
    y = x.reshape(a, 2, hp, a, 2, hp).diagonal(dim1=2, dim2=5)  # [a, i, b, j, p]
    return y.permute(0, 2, 4, 1, 3)


def _rotation_value(a: torch.Tensor, rotations: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Best angle and value of ``sum <ref_pair, R(theta) other_pair>`` from summed [hp, 2, 2] blocks."""
    cos_part = a[:, 0, 0] + a[:, 1, 1]
    sin_part = a[:, 1, 0] - a[:, 0, 1]
    if not rotations:
        return torch.zeros_like(cos_part), cos_part
    theta = torch.atan2(sin_part, cos_part)
    value = torch.hypot(cos_part, sin_part)
    # a rotation whose gain is below float64 noise of the pair's similarity is no rotation
    # (keeps an exact copy exactly aligned instead of turned by 1e-9 rad)
    tiny = (value - cos_part) <= 1e-12 * value.abs().clamp_min(1e-300)
    return torch.where(tiny, torch.zeros_like(theta), theta), torch.where(tiny, cos_part, value)


def _solve_pair(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, rotations: bool) -> _Heads:
    """Match one reference group to one other group: query heads, value dims, pair rotations.

    ``q``: [n_rep, n_rep, hp, 2, 2] pair blocks; ``k``: [hp, 2, 2]; ``v``: [hd, hd];
    ``o``: [n_rep, hd, n_rep, hd]. Alternates the three sub-problems (each solved exactly given
    the others) a few rounds; they couple only through the query-head choice.
    """
    n_rep, hp = q.shape[0], q.shape[2]
    r = torch.arange(n_rep)
    angles = torch.zeros(hp, dtype=torch.float64)
    vo = assign(v)
    query = torch.arange(n_rep)
    for _ in range(3 if n_rep > 1 else 1):
        if n_rep > 1:
            c, s = angles.cos(), angles.sin()
            qs = (c * (q[..., 0, 0] + q[..., 1, 1]) + s * (q[..., 1, 0] - q[..., 0, 1])).sum(-1)
            os_ = o[:, :, :, vo].diagonal(dim1=1, dim2=3).sum(-1)  # [r, r']: sum_d o[r, d, r', vo[d]]
            query = assign(qs + os_)
        vo = assign(v + o[r, :, query, :].sum(0))
        angles, _ = _rotation_value(q[r, query].sum(0) + k, rotations)
    return _score(q, k, v, o, query, vo, angles)


def _score(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    query: torch.Tensor,
    vo: torch.Tensor,
    angles: torch.Tensor,
) -> _Heads:
    """The summed similarity of one group pair under a fixed (query, vo, angles)."""
    r, d = torch.arange(query.numel()), torch.arange(vo.numel())
    blk = q[r, query].sum(0) + k
    c, s = angles.cos(), angles.sin()
    qk = (c * (blk[:, 0, 0] + blk[:, 1, 1]) + s * (blk[:, 1, 0] - blk[:, 0, 1])).sum()
    score = qk + v[d, vo].sum() + o[r, :, query, :][:, d, vo].sum()
    return _Heads(float(score), query.clone(), vo.clone(), angles.clone())


def match_heads(blocks: HeadBlocks, *, rotations: bool, incumbent: tuple | None = None) -> tuple:
    """The head matching of one layer: ``(kv, query, vo, angles)`` as in
    :class:`~workbench.align.transform.LayerAlignment`, maximising the summed similarity.

    Every (reference group, other group) pair is matched on its own (:func:`_solve_pair`), then
    the groups are assigned by those scores. ``incumbent`` (the layer's current
    ``(kv, query, vo, angles)``) is kept for a pair whenever it scores at least as well, so
    repeated rounds never lower the objective.
    """
    n_kv, n_rep, hd = blocks.q.shape[:3]
    hp = hd // 2
    qb = _q_pairs(blocks.q, hp)  # [a, r, b, r', hp, 2, 2]
    kb = _k_pairs(blocks.k, hp)  # [a, b, hp, 2, 2]
    sols: dict[tuple[int, int], _Heads] = {}
    scores = torch.empty(n_kv, n_kv, dtype=torch.float64)
    for a in range(n_kv):
        for b in range(n_kv):
            args = (qb[a, :, b], kb[a, b], blocks.v[a, :, b], blocks.o[a, :, :, b])
            sol = _solve_pair(*args, rotations)
            if incumbent is not None and int(incumbent[0][a]) == b:
                old = _score(*args, incumbent[1][a], incumbent[2][a], incumbent[3][a])
                if old.score >= sol.score:
                    sol = old
            sols[(a, b)] = sol
            scores[a, b] = sol.score
    kv = assign(scores)
    chosen = [sols[(a, int(kv[a]))] for a in range(n_kv)]
    return (
        kv,
        torch.stack([c.query for c in chosen]),
        torch.stack([c.vo for c in chosen]),
        torch.stack([c.angles for c in chosen]),
    )
