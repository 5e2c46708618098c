"""Task-vector methods: task arithmetic, TIES, DARE, breadcrumbs, DELLA (mergekit 0.1.5 semantics).

Each input contributes its delta from the base ``d_i = x_i - base``. Deltas are optionally
sparsified (TIES: keep the ``density`` fraction of largest magnitudes; DARE: keep each entry
with probability ``density``, seeded; breadcrumbs: drop the ``gamma`` fraction of largest
magnitudes and the smallest ones down to ``density``; DELLA: keep each entry with a
probability that grows with its magnitude rank within its row, from ``density - epsilon``
to ``density + epsilon``, seeded), then weighted. TIES/DARE-TIES keep, per entry, only the
deltas whose sign agrees with the sign of the weighted sum ("sum" consensus). With
``normalize`` the mixed delta is divided by the sum of the (kept) weights; ``lambda_`` scales
it. ``rescale`` multiplies a sparsified delta so its L1 norm is unchanged (mergekit's DARE
rescaling; the L1 sums accumulate in float64). Compute in float32, return the base dtype.

>>> import torch
>>> base = torch.zeros(4); a = torch.tensor([1.0, -1.0, 2.0, 0.0]); b = torch.tensor([1.0, 1.0, -1.0, 0.0])
>>> task_arithmetic(base, [a, b], [0.5, 0.5])
tensor([1.0000, 0.0000, 0.5000, 0.0000])
>>> ties(base, [a, b], [1.0, 1.0], density=1.0)
tensor([1., 1., 2., 0.])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from workbench.merge.linear import compute_dtype
from workbench.numerics import abs_sum

__all__ = [
    "SPARSIFIERS",
    "consensus_mask",
    "dare",
    "della_prune",
    "generalized_task_arithmetic",
    "magnitude_prune",
    "outlier_prune",
    "random_prune",
    "task_arithmetic",
    "ties",
]

Floats = float | Sequence[float]
Sparsify = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]
#: the sparsification rules (mergekit's names)
SPARSIFIERS: tuple[str, ...] = ("magnitude", "random", "magnitude_outliers", "della_magprune")


def _per_model(v: Floats, n: int, what: str) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)] * n
    vals = [float(x) for x in v]
    if len(vals) != n:
        raise ValueError(f"{what}: expected {n} values, got {len(vals)}")
    return vals


def _rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    before = abs_sum(delta)
    after = abs_sum(kept)
    if before < eps or after < eps:
        return kept
    return kept * (before / after).to(kept.dtype)


def magnitude_prune(delta: torch.Tensor, density: float, *, rescale: bool = False) -> torch.Tensor:
    """Keep the ``max(1, int(density * numel))`` entries of largest magnitude, zero the rest.

    >>> import torch
    >>> magnitude_prune(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
    tensor([ 0., -3.,  2.,  0.])
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    order = torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[order] = 1
    kept = delta * mask.reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


def random_prune(
    delta: torch.Tensor, density: float, *, rescale: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Keep each entry with probability ``density`` (Bernoulli mask from ``generator``).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> (random_prune(torch.ones(1000), 0.3, rescale=False, generator=g) != 0).float().mean().item() < 0.4
    True
    """
    if density >= 1:
        return delta
    # one draw per entry even at density <= 0 (probability 0): the stream stays mergekit's
    mask = torch.bernoulli(
        torch.full(delta.shape, max(0.0, float(density)), dtype=torch.float32, device=delta.device), generator=generator
    )
    kept = delta * mask.to(delta.dtype)
    return _rescale_l1(delta, kept) if rescale else kept


def outlier_prune(delta: torch.Tensor, density: float, *, gamma: float = 0.01, rescale: bool = False) -> torch.Tensor:
    """Breadcrumbs: drop the ``int(gamma * numel)`` largest magnitudes, then the smallest ones,
    keeping ``int(density * numel)`` entries (the smallest ones when too few are left).

    ``density >= 1`` returns ``delta`` unchanged (``gamma`` is then ignored, as in mergekit).

    >>> import torch
    >>> outlier_prune(torch.tensor([0.1, -3.0, 2.0, 0.5, -1.0]), 0.4, gamma=0.2).abs()
    tensor([0., 0., 2., 0., 1.])
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    # float32 magnitudes and torch's sort, as mergekit: the same order among equal magnitudes
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom : bottom + target]] = 1
    kept = delta * mask.reshape(delta.shape)
    return _rescale_l1(delta, kept) if rescale else kept


def della_prune(
    delta: torch.Tensor,
    density: float,
    *,
    epsilon: float = 0.15,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DELLA's MAGPRUNE: keep each entry with probability ``density - epsilon`` (smallest
    magnitude of its row) rising linearly with the magnitude rank to ``density + epsilon``
    (largest); a 1-D tensor is one row. One Bernoulli draw per entry from ``generator``.

    A row of one entry keeps it with probability ``density`` (mergekit fails there: 0/0).

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> kept = della_prune(torch.randn(200, 50, generator=g), 0.5, epsilon=0.2, rescale=False, generator=g)
    >>> 0.45 < (kept != 0).float().mean().item() < 0.55
    True
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if not (density - epsilon > 0 and density + epsilon < 1):
        raise ValueError(f"density {density:g} +/- epsilon {epsilon:g} must stay inside (0, 1)")
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    # ranks as mergekit computes them (1 = smallest magnitude of the row), so the probabilities
    # and hence the Bernoulli draws are bit for bit those of its CPU path
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, descending=False), dim=1).to(torch.float32) + 1
    # each row's ranks are 1 .. ncols (a permutation), so min and max are known exactly
    ncols = rows.shape[1]
    norm = ((ranks - 1.0) / (ncols - 1.0)).clamp(0, 1) if ncols > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + norm * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(delta.dtype)
    kept = rows * mask
    kept = _rescale_l1(rows, kept) if rescale else kept
    return kept.reshape(delta.shape)


def consensus_mask(weighted_deltas: torch.Tensor, method: Literal["sum", "count"] = "sum") -> torch.Tensor:
    """Boolean mask: entries whose sign matches the elected sign (ties elect +).

    ``weighted_deltas`` is stacked along dim 0. "sum" elects the sign of the sum, "count"
    the majority of signs.

    >>> import torch
    >>> consensus_mask(torch.tensor([[1.0, -2.0], [-0.5, 1.0]]))
    tensor([[ True,  True],
            [False, False]])
    """
    sign = weighted_deltas.sign()
    if method == "sum":
        elected = torch.where(weighted_deltas.sum(0) >= 0, 1.0, -1.0).to(sign.dtype)
    elif method == "count":
        elected = torch.where(sign.sum(0) >= 0, 1.0, -1.0).to(sign.dtype)
    else:
        raise ValueError(f"unknown consensus method {method!r}")
    return sign == elected


def generalized_task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Floats,
    *,
    density: Floats = 1.0,
    sparsify: Sparsify | None = None,
    consensus: Literal["sum", "count"] | None = None,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
    generator: torch.Generator | None = None,
    gamma: Floats = 0.01,
    epsilon: Floats = 0.15,
) -> torch.Tensor:
    """The common core of task arithmetic, TIES, DARE, breadcrumbs and DELLA (see the module
    docstring). Random sparsifiers draw from ``generator`` model by model, in input order.

    >>> import torch
    >>> base = torch.zeros(5); x = torch.tensor([0.1, -3.0, 2.0, 0.5, -1.0])
    >>> generalized_task_arithmetic(base, [x], [1.0], density=0.4, sparsify="magnitude_outliers", gamma=0.2)
    tensor([ 0.,  0.,  2.,  0., -1.])
    """
    n = len(tensors)
    if n == 0:
        return base.clone()
    w = _per_model(weights, n, "weight")
    dens = _per_model(density, n, "density")
    gammas, epsilons = _per_model(gamma, n, "gamma"), _per_model(epsilon, n, "epsilon")
    dt = compute_dtype(base)
    b = base.to(dt)
    deltas = torch.empty((n, *base.shape), dtype=dt, device=base.device)
    for i, x in enumerate(tensors):
        d = x.to(dt) - b
        if sparsify == "magnitude":
            d = magnitude_prune(d, dens[i], rescale=rescale)
        elif sparsify == "random":
            d = random_prune(d, dens[i], rescale=rescale, generator=generator)
        elif sparsify == "magnitude_outliers":
            d = outlier_prune(d, dens[i], gamma=gammas[i], rescale=rescale)
        elif sparsify == "della_magprune":
            d = della_prune(d, dens[i], epsilon=epsilons[i], rescale=rescale, generator=generator)
        elif sparsify is not None:
            raise ValueError(f"unknown sparsification {sparsify!r}")
        deltas[i] = d
    wt = torch.tensor(w, dtype=dt, device=base.device).reshape((n,) + (1,) * base.dim())
    deltas.mul_(wt)
    mask = consensus_mask(deltas, consensus).to(dt) if consensus else None
    mixed = (deltas * mask).sum(0) if mask is not None else deltas.sum(0)
    if normalize:  # the divisor is a full-size tensor with a consensus mask: only build it when used
        if mask is not None:
            divisor = (wt * mask).sum(0)
            divisor[divisor == 0] = 1
        else:
            divisor = wt.sum(0)
            divisor[divisor.abs() < 1e-8] = 1
        mixed = mixed / divisor
    if lambda_ != 1:
        mixed = mixed * lambda_
    return (b + mixed).to(base.dtype)


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Floats,
    *,
    normalize: bool = False,
    lambda_: float = 1.0,
) -> torch.Tensor:
    """``base + lambda * sum_i w_i (x_i - base)`` (divided by ``sum w`` when ``normalize``).

    >>> import torch
    >>> task_arithmetic(torch.zeros(1), [torch.ones(1)], [2.0])
    tensor([2.])
    """
    return generalized_task_arithmetic(base, tensors, weights, normalize=normalize, lambda_=lambda_)


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Floats,
    *,
    density: Floats = 1.0,
    normalize: bool = True,
    rescale: bool = False,
    lambda_: float = 1.0,
    consensus: Literal["sum", "count"] = "sum",
) -> torch.Tensor:
    """TIES: trim deltas to ``density`` by magnitude, elect signs, average the agreeing ones.

    >>> import torch
    >>> ties(torch.zeros(2), [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 2.0])], [1, 1])
    tensor([2., 2.])
    """
    return generalized_task_arithmetic(
        base,
        tensors,
        weights,
        density=density,
        sparsify="magnitude",
        consensus=consensus,
        normalize=normalize,
        rescale=rescale,
        lambda_=lambda_,
    )


def dare(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Floats,
    *,
    density: Floats = 1.0,
    consensus: Literal["sum", "count"] | None = None,
    normalize: bool = False,
    rescale: bool = True,
    lambda_: float = 1.0,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE: drop delta entries at random (keep prob. ``density``), rescale, then mix.

    ``consensus=None`` is ``dare_linear``; ``"sum"`` is ``dare_ties``. Seeded: the same seed
    gives the same bytes.

    >>> import torch
    >>> x = [torch.randn(50, generator=torch.Generator().manual_seed(1))]
    >>> torch.equal(dare(torch.zeros(50), x, [1.0], density=0.5, seed=3),
    ...             dare(torch.zeros(50), x, [1.0], density=0.5, seed=3))
    True
    """
    if generator is None:
        generator = torch.Generator(device=base.device).manual_seed(int(seed))
    return generalized_task_arithmetic(
        base,
        tensors,
        weights,
        density=density,
        sparsify="random",
        consensus=consensus,
        normalize=normalize,
        rescale=rescale,
        lambda_=lambda_,
        generator=generator,
    )
