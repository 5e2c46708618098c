"""Per-tensor geometry of two checkpoints: norms, angle, and how much SLERP inflates the norm.

One row per tensor, as a polars DataFrame, so notebooks can group by layer, by tensor
group or (``expert`` column, mixture-of-experts tensors) by expert. Layers, groups and experts
come from the architecture table of :mod:`workbench.naming`, read with the first model's
config (``model_type``); the groups are :data:`workbench.naming.GROUPS`. A tensor no rule of
that architecture knows gets group ``other``: it keeps its row, and
:func:`unclassified_tensors` lists such names once (``workbench angles`` prints them).
``norm_factor`` is ``|SLERP(t)| / |LERP(t)|``: the rescaling that separates SLERP from LERP
(at t = 0.5 it equals ``1 / cos(theta / 2)``); ``fallback`` marks tensors where SLERP falls
back to LERP (``|cos| > 0.9995``).

>>> import tempfile; from pathlib import Path
>>> from workbench.testing import write_random_llama
>>> d = Path(tempfile.mkdtemp())
>>> a = write_random_llama(d / "a", seed=0, hidden_size=16, num_layers=1, vocab_size=32, tokenizer=False)
>>> b = write_random_llama(d / "b", seed=1, hidden_size=16, num_layers=1, vocab_size=32, tokenizer=False)
>>> df = tensor_angles(a, b)
>>> df.columns[:4], df.height, unclassified_tensors(df)
(['name', 'layer', 'group', 'numel'], 12, [])
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import polars as pl
import torch

from workbench.checkpoints import Checkpoint, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge.spherical import _norm_factor, slerp_geometry
from workbench.naming import GROUPS, LM_HEAD, architecture, expert_index, layer_index, tensor_group

__all__ = ["GROUPS", "pairwise_angles", "tensor_angles", "tensor_group", "unclassified_tensors"]

SCHEMA = {
    "name": pl.Utf8,
    "layer": pl.Int64,
    "group": pl.Utf8,
    "numel": pl.Int64,
    "norm_a": pl.Float64,
    "norm_b": pl.Float64,
    "cosine": pl.Float64,
    "angle_deg": pl.Float64,
    "norm_factor": pl.Float64,
    "fallback": pl.Boolean,
    "expert": pl.Int64,
}


def tensor_angles(
    model_a: "str | os.PathLike | Checkpoint",
    model_b: "str | os.PathLike | Checkpoint",
    *,
    t: float = 0.5,
    progress: bool = False,
) -> pl.DataFrame:
    """One row per floating-point tensor shared by two checkpoints (see the module docstring).

    Raises WorkbenchError when a tensor is missing from one model or shapes differ.
    """
    a, b = open_checkpoint(model_a), open_checkpoint(model_b)
    arch = architecture(a.config)
    names = [n for n in a.names() if not (n == LM_HEAD and a.tied and b.tied)]
    for n in b.names():
        if n not in a and not (n == LM_HEAD and b.tied):
            raise WorkbenchError(f"tensor {n!r} is in {b.path} but missing from {a.path}")
    rows: dict[str, list] = {k: [] for k in SCHEMA}
    from tqdm.auto import tqdm

    tt = torch.tensor([float(t)], dtype=torch.float64)
    for n in tqdm(names, desc="angles", unit="tensor", disable=not progress, leave=False):
        if n not in b:
            raise WorkbenchError(f"tensor {n!r} is in {a.path} but missing from {b.path}")
        if a.shape(n) != b.shape(n):
            raise WorkbenchError(
                f"shape mismatch for tensor {n!r}: {a.shape(n)} in {a.file_of(n)} but {b.shape(n)} in {b.file_of(n)}"
            )
        if not (a.dtype(n).is_floating_point and b.dtype(n).is_floating_point):
            continue
        x = a.get(n).reshape(1, -1)
        y = b.get(n).reshape(1, -1)
        g = slerp_geometry(x, y)
        cos = float(g.cos[0])
        rows["name"].append(n)
        rows["layer"].append(layer_index(n, model_type=arch))
        rows["group"].append(arch.group(n))
        rows["numel"].append(x.shape[1])
        rows["norm_a"].append(float(g.norm_a[0]))
        rows["norm_b"].append(float(g.norm_b[0]))
        rows["cosine"].append(cos)
        rows["angle_deg"].append(math.degrees(math.acos(cos)))
        rows["norm_factor"].append(float(_norm_factor(tt, g)[0]))
        rows["fallback"].append(bool(g.fallback[0]))
        rows["expert"].append(expert_index(n, model_type=arch))
    return pl.DataFrame(rows, schema=SCHEMA)


def pairwise_angles(
    models: Sequence["str | os.PathLike | Checkpoint"],
    *,
    t: float = 0.5,
    progress: bool = False,
) -> pl.DataFrame:
    """:func:`tensor_angles` for every pair of models, with ``model_a`` / ``model_b`` columns."""
    cks = [open_checkpoint(m) for m in models]
    labels = [str(m) if not isinstance(m, Checkpoint) else str(m.path) for m in models]
    frames = []
    for (i, a), (j, b) in itertools.combinations(enumerate(cks), 2):
        df = tensor_angles(a, b, t=t, progress=progress)
        frames.append(df.select(pl.lit(labels[i]).alias("model_a"), pl.lit(labels[j]).alias("model_b"), pl.all()))
    if not frames:
        return pl.DataFrame(schema={"model_a": pl.Utf8, "model_b": pl.Utf8, **SCHEMA})
    return pl.concat(frames)


def unclassified_tensors(angles: pl.DataFrame) -> list[str]:
    """The tensor names of an angles table (:func:`tensor_angles` or :func:`pairwise_angles`)
    that no naming rule classifies (group ``other``), each once, in table order.

    >>> unclassified_tensors(pl.DataFrame({"name": ["x", "w", "x"], "group": ["other", "norm", "other"]}))
    ['x']
    """
    return angles.filter(pl.col("group") == "other")["name"].unique(maintain_order=True).to_list()
