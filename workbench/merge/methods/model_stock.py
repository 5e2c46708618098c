"""Kernel of ``model_stock`` (the math lives in :mod:`workbench.merge.model_stock`).

>>> import torch
>>> from workbench.merge.methods import MergeCall
>>> xs = [torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
>>> model_stock_kernel(MergeCall("w", xs, 0, {"filter_wise": False}, [{}, {}, {}]))
tensor([1., 0.])
"""

from __future__ import annotations

import torch

from workbench.merge import model_stock as _ms
from workbench.merge.methods import MergeCall

__all__ = ["model_stock_kernel"]


def model_stock_kernel(call: MergeCall) -> torch.Tensor:
    """Model Stock of the fine-tunes around the base."""
    return _ms.model_stock(call.base, call.others, filter_wise=call.shared["filter_wise"])
