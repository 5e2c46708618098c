"""Learning-rate schedules and data order: pure functions of the step, so any run can resume
(or branch) at any step and see exactly what an uninterrupted run would.

>>> lr_at(0, lr=1.0, warmup=2), batch_order(0, 0, 2, 4) == batch_order(0, 0, 2, 4)
(0.5, True)
"""

from __future__ import annotations

import math
import random

__all__ = ["batch_order", "lr_at"]


def lr_at(
    step: int,
    *,
    lr: float,
    warmup: int,
    schedule: str = "constant",
    total: int = 1,
    min_ratio: float = 0.0,
    decay_start: int = 0,
    decay_steps: int = 0,
    decay: str = "cosine",
) -> float:
    """Learning rate for the 0-based ``step``: linear warmup, then constant or cosine.

    With ``decay_steps > 0`` (the annealed control) the rate decays from ``lr`` at
    ``decay_start`` to ``lr * min_ratio`` at ``decay_start + decay_steps``.

    >>> [round(lr_at(s, lr=1.0, warmup=2), 2) for s in range(4)]
    [0.5, 1.0, 1.0, 1.0]
    >>> round(lr_at(5, lr=1.0, warmup=0, schedule="cosine", total=10), 3)
    0.5
    >>> [round(lr_at(s, lr=1.0, warmup=0, decay_start=4, decay_steps=4, decay="linear"), 2) for s in (4, 6, 7)]
    [1.0, 0.5, 0.25]
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if decay_steps > 0:
        frac = min(max((step - decay_start) / decay_steps, 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if decay == "cosine" else 1.0 - frac
        return lr * (min_ratio + (1 - min_ratio) * shape)
    if schedule == "cosine":
        span = max(total - warmup, 1)
        frac = min(max((step - warmup) / span, 0.0), 1.0)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    return lr


def batch_order(data_seed: int, step: int, batch_size: int, n_blocks: int) -> list[int]:
    """Block indices of the batch at ``step``: epochs of seeded permutations, a pure function.

    Resuming at any step, or continuing another run with the same ``data_seed``, sees the
    same data as an uninterrupted run.

    >>> batch_order(0, 0, 3, 5) == batch_order(0, 0, 3, 5)
    True
    >>> sorted(batch_order(0, 0, 5, 5))
    [0, 1, 2, 3, 4]
    """
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_blocks)
        perm = _epoch_perm(data_seed, epoch, n_blocks)
        take = min(batch_size - len(out), n_blocks - offset)
        out.extend(perm[offset : offset + take])
        pos += take
    return out


_PERM_CACHE: dict[tuple[int, int, int], list[int]] = {}


def _epoch_perm(data_seed: int, epoch: int, n: int) -> list[int]:
    """The seeded order of the ``n`` blocks in one epoch; cached for recent epochs, so the
    list is shared: callers slice it, never change it."""
    key = (data_seed, epoch, n)
    perm = _PERM_CACHE.get(key)
    if perm is None:
        if len(_PERM_CACHE) > 64:
            _PERM_CACHE.clear()
        perm = list(range(n))
        random.Random(f"{data_seed}/{epoch}").shuffle(perm)
        _PERM_CACHE[key] = perm
    return perm
