"""Random draws of the randomised methods (``dare_*``, ``della*``, ``arcee_fusion``).

Two schemes, both deterministic:

* **per tensor** (the default): each tensor draws from its own generator, seeded from the
  recipe's ``seed`` parameter and the tensor's name, on the tensors' device. The same recipe
  gives the same bytes in either engine, in any order.
* **mergekit's stream** (a recipe-level ``random_seed``, ``workbench merge --random-seed``):
  one CPU generator seeded once and drawn tensor by tensor in mergekit's order, one draw per
  model and tensor exactly as mergekit makes them, so the masks are those of ``mergekit-yaml
  --random-seed`` on CPU. The plan orders its jobs that way (:func:`mergekit_order`); the
  stream remembers the generator state at each job, so merging the plan again starts every
  job where mergekit would, and a job reached out of order replays the draws before it.

>>> sorted(["model.layers.2.mlp.up_proj.weight", "model.layers.10.mlp.up_proj.weight", "lm_head.weight"],
...        key=lambda n: mergekit_order(n, [n]))
['lm_head.weight', 'model.layers.10.mlp.up_proj.weight', 'model.layers.2.mlp.up_proj.weight']
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["MaskStream", "mergekit_order", "tensor_generator"]


def tensor_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """The per-tensor generator of tensor ``name`` under ``seed``, on ``device``."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return g


def mergekit_order(out_name: str, source_names: Sequence[str]) -> tuple[str, str]:
    """Sort key of a tensor in mergekit's merge order: the largest source tensor name (Python
    string order), then the output name (mergekit breaks that tie by graph internals, which
    no one can reproduce: slices whose sources are offset can share a largest source name)."""
    return (max(source_names), out_name)


class MaskStream:
    """mergekit's random stream over ``jobs`` (the random jobs, in draw order)."""

    def __init__(self, seed: int, jobs: Sequence[Any]):
        self.seed = int(seed)
        self.jobs = list(jobs)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.states: dict[int, torch.Tensor] = {0: self.generator.get_state()}

    def start(self, k: int, replay: Callable[[Any, list[torch.Tensor], torch.Generator], Any]) -> torch.Generator:
        """The generator positioned at the start of job ``k``'s draws; jobs between the last
        known position and ``k`` are replayed with ``replay(job, zeros, generator)`` (their draws
        depend on shapes and parameters only)."""
        known = max(i for i in self.states if i <= k)
        self.generator.set_state(self.states[known])
        for i in range(known, k):
            job = self.jobs[i]
            replay(job, [torch.zeros(job.shape) for _ in job.inputs], self.generator)
            self.states[i + 1] = self.generator.get_state()
        return self.generator

    def done(self, k: int) -> None:
        """Remember where job ``k``'s draws left the generator."""
        self.states[k + 1] = self.generator.get_state()
