"""Merge-method kernels: one module per method family, each declared once in the registry.

A kernel computes one output tensor from a :class:`MergeCall` (the inputs in recipe order, the
base's index, the parameters resolved for this tensor, a random generator for methods that
draw) and returns a float tensor; the engines cast it to the output dtype. Kernels are pure
and device-agnostic: same inputs, parameters and generator state, same result. Methods whose
result is a linear combination of the inputs with coefficients that depend only on their Gram
matrix also give those coefficients (the engines' batched fast path).

Modules: ``averages`` (linear, lerp), ``sphere`` (slerp, lerp_norm_restore, chained_slerp,
multislerp, karcher), ``task_arithmetic`` (the generalized task arithmetic family: task
arithmetic, TIES, DARE, breadcrumbs, DELLA), ``model_stock``, ``nuslerp``, ``nearswap``,
``arcee_fusion``, ``passthrough``, ``sce``, ``ram`` (ram, ramplus_tl).

>>> import torch
>>> call = MergeCall("w", [torch.zeros(2), torch.ones(2)], 0, {"t": 0.5}, [{}, {}])
>>> call.base.tolist(), [x.tolist() for x in call.others]
([0.0, 0.0], [[1.0, 1.0]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MergeCall"]


@dataclass
class MergeCall:
    """One output tensor's kernel inputs.

    ``tensors`` are the inputs in recipe order (compute dtype, same shape); ``base_index``
    the base's position (None when the method uses no base); ``shared`` the shared
    parameters; ``per_input`` one dict per input (empty for the base when the method's
    per-model parameters skip it); ``generator`` the random generator of methods that draw.
    """

    name: str
    tensors: list[torch.Tensor]
    base_index: int | None
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]
    generator: torch.Generator | None = None

    @property
    def base(self) -> torch.Tensor | None:
        """The base tensor (None without one)."""
        return None if self.base_index is None else self.tensors[self.base_index]

    @property
    def other_indices(self) -> list[int]:
        """Positions of the inputs other than the base, in recipe order."""
        return [i for i in range(len(self.tensors)) if i != self.base_index]

    @property
    def others(self) -> list[torch.Tensor]:
        """The inputs other than the base, in recipe order."""
        return [self.tensors[i] for i in self.other_indices]

    def of_others(self, name: str) -> list[Any]:
        """Per-model parameter ``name`` of each input other than the base."""
        return [self.per_input[i][name] for i in self.other_indices]
