"""Kernels of the generalized task arithmetic family: ``task_arithmetic``, ``ties``,
``dare_linear``, ``dare_ties``, ``breadcrumbs``, ``breadcrumbs_ties``, ``della``,
``della_linear``.

Each is one sparsification rule (none, magnitude, random, magnitude outliers, DELLA's
magnitude-ranked random) and one consensus rule (none, or TIES' sign election) over the
math of :mod:`workbench.merge.task_vectors`; normalize/rescale defaults are the registry's.

>>> import torch
>>> from workbench.merge.methods import MergeCall
>>> p = {"weight": 1.0, "density": 1.0}
>>> sh = {"normalize": True, "rescale": False, "lambda": 1.0}
>>> ties_kernel(MergeCall("w", [torch.zeros(2), torch.tensor([1.0, -1.0]), torch.tensor([3.0, 2.0])], 0, sh,
...                       [{}, p, p]))
tensor([2., 2.])
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.merge import task_vectors as _tv
from workbench.merge.methods import MergeCall

__all__ = [
    "breadcrumbs_kernel",
    "breadcrumbs_ties_kernel",
    "check_della",
    "dare_linear_kernel",
    "dare_ties_kernel",
    "della_kernel",
    "della_linear_kernel",
    "task_arithmetic_kernel",
    "ties_kernel",
]


def _gta(call: MergeCall, sparsify: _tv.Sparsify | None, consensus: str | None) -> torch.Tensor:
    sh = call.shared
    others = call.other_indices
    first = call.per_input[others[0]] if others else {}
    extra = {k: call.of_others(k) for k in ("gamma", "epsilon") if k in first}
    return _tv.generalized_task_arithmetic(
        call.base,
        call.others,
        call.of_others("weight"),
        density=call.of_others("density"),
        sparsify=sparsify,
        consensus=consensus,
        normalize=sh["normalize"],
        rescale=sh["rescale"],
        lambda_=sh["lambda"],
        generator=call.generator,
        **extra,
    )


def task_arithmetic_kernel(call: MergeCall) -> torch.Tensor:
    """``base + lambda * sum w_i (x_i - base)``."""
    return _gta(call, None, None)


def ties_kernel(call: MergeCall) -> torch.Tensor:
    """Magnitude trimming + sign election."""
    return _gta(call, "magnitude", "sum")


def dare_linear_kernel(call: MergeCall) -> torch.Tensor:
    """Random drops (rescaled), no sign election."""
    return _gta(call, "random", None)


def dare_ties_kernel(call: MergeCall) -> torch.Tensor:
    """Random drops (rescaled) + sign election."""
    return _gta(call, "random", "sum")


def breadcrumbs_kernel(call: MergeCall) -> torch.Tensor:
    """Outlier and small-magnitude drops, no sign election."""
    return _gta(call, "magnitude_outliers", None)


def breadcrumbs_ties_kernel(call: MergeCall) -> torch.Tensor:
    """Outlier and small-magnitude drops + sign election."""
    return _gta(call, "magnitude_outliers", "sum")


def della_kernel(call: MergeCall) -> torch.Tensor:
    """Magnitude-ranked random drops (rescaled) + sign election."""
    return _gta(call, "della_magprune", "sum")


def della_linear_kernel(call: MergeCall) -> torch.Tensor:
    """Magnitude-ranked random drops (rescaled), no sign election."""
    return _gta(call, "della_magprune", None)


def check_della(shared: dict[str, Any], per_input: list[dict[str, Any]], models: list[str]) -> str | None:
    """Why a DELLA tensor's parameters cannot work (density +/- epsilon outside (0, 1)), or None.

    >>> check_della({}, [{"density": 0.9, "epsilon": 0.15}], ["m"])
    'density 0.9 +/- epsilon 0.15 of model m must stay inside (0, 1)'
    """
    for model, p in zip(models, per_input):
        d, e = p.get("density"), p.get("epsilon")
        if d is None or e is None or d >= 1 or d <= 0:
            continue
        if not (d - e > 0 and d + e < 1):
            return f"density {d:g} +/- epsilon {e:g} of model {model} must stay inside (0, 1)"
    return None
