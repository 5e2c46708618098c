"""``passthrough``: one input, copied (times its ``scale`` when given). With ``slices`` it
stacks layer ranges of different models into a new model (a frankenmerge).

>>> import torch
>>> from workbench.merge.methods import MergeCall
>>> passthrough_kernel(MergeCall("w", [torch.tensor([1.0, -2.0])], None, {}, [{"scale": 2.0}]))
tensor([ 2., -4.])
"""

from __future__ import annotations

import torch

from workbench.merge.linear import compute_dtype
from workbench.merge.methods import MergeCall

__all__ = ["passthrough_kernel"]


def passthrough_kernel(call: MergeCall) -> torch.Tensor:
    """The one input, scaled by its ``scale`` unless that is None."""
    (x,) = call.tensors
    scale = call.per_input[0].get("scale")
    x = x.to(compute_dtype(x))
    return x if scale is None else x * scale
