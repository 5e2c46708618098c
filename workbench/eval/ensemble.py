"""The output ensemble: several causal LMs scored as one model (the average of their probabilities).

A baseline of the claim check: what N ingredients give at N times the inference cost, without
merging any weights. :class:`EnsembleLM` behaves like a model to the scorer, which reads only
``.logits`` of a forward call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from workbench.errors import WorkbenchError

__all__ = ["EnsembleLM", "LogitsOutput"]


class LogitsOutput:
    """The one attribute the scorer reads: ``.logits``."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class EnsembleLM(torch.nn.Module):
    """Output ensemble: ``logits = log(mean_i softmax(logits_i))`` over N causal LMs.

    Returns an object with ``.logits`` (log-probabilities, which a log-softmax leaves
    unchanged), so the evaluation scorer uses it like any model. Costs N forward passes.

    >>> class Const(torch.nn.Module):
    ...     def __init__(self, v):
    ...         super().__init__(); self.v = torch.nn.Parameter(torch.tensor(v))
    ...     def forward(self, input_ids, attention_mask=None):
    ...         return type("O", (), {"logits": self.v.expand(*input_ids.shape, 2)})()
    >>> ens = EnsembleLM([Const([0.0, 0.0]), Const([0.0, math.log(3.0)])])
    >>> [round(p, 4) for p in ens(input_ids=torch.zeros(1, 1, dtype=torch.long)).logits.exp()[0, 0].tolist()]
    [0.375, 0.625]
    """

    def __init__(self, models: Sequence[torch.nn.Module]):
        super().__init__()
        if not models:
            raise WorkbenchError("EnsembleLM: no models")
        self.members = torch.nn.ModuleList(models)
        cfg = getattr(models[0], "config", None)
        if cfg is not None:
            self.config = cfg

    @property
    def inference_cost(self) -> int:
        """Forward passes per call (the number of members)."""
        return len(self.members)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Log of the members' mean next-token probabilities, as ``.logits`` of the returned object."""
        acc = None
        for m in self.members:
            out = m(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            lp = torch.log_softmax(out.logits.float(), dim=-1)
            acc = lp if acc is None else torch.logaddexp(acc, lp)
        return LogitsOutput(acc - math.log(len(self.members)))
