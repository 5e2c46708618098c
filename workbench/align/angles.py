"""Angles between two checkpoints before and after aligning the second to the first.

For the ``layer_angles`` notebook: the geometry table of :func:`workbench.geometry.tensor_angles`
between the reference and the *aligned* other model, with the unaligned angle alongside, so the
figures of the geometry tables draw either (``value="angle_deg"``, ``"angle_before_deg"``,
``"angle_change_deg"``). Independent runs sit near 90 degrees everywhere; alignment brings
every permuted tensor closer, and leaves a permutation-free tensor (a norm of a model whose
residual stream did not move) where it was.
"""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from workbench.checkpoints import Checkpoint

__all__ = ["alignment_angle_summary", "alignment_angles"]


def alignment_angles(
    reference: str | os.PathLike | Checkpoint,
    other: str | os.PathLike | Checkpoint,
    *,
    method: str | None = "weight_matching",
    t: float = 0.5,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    **settings: Any,
) -> pl.DataFrame:
    """``tensor_angles(reference, aligned other)`` plus ``angle_before_deg`` (unaligned) and
    ``angle_change_deg`` (after minus before), one row per tensor.

    ``method``: as :func:`~workbench.align.run.aligned_checkpoint` (the aligned model is cached);
    None compares the models as they are (before = after), so a notebook can switch alignment
    off with a parameter.
    """
    from workbench.align.run import aligned_checkpoint
    from workbench.geometry import tensor_angles

    before = tensor_angles(reference, other, t=t, progress=progress)
    if method is None:
        after = before
    else:
        aligned = aligned_checkpoint(
            reference, other, method=method, cache_dir=cache_dir, progress=progress, **settings
        )
        after = tensor_angles(reference, aligned, t=t, progress=progress)
    return after.join(before.select("name", pl.col("angle_deg").alias("angle_before_deg")), on="name").with_columns(
        (pl.col("angle_deg") - pl.col("angle_before_deg")).alias("angle_change_deg")
    )


def alignment_angle_summary(angles: pl.DataFrame) -> pl.DataFrame:
    """Per tensor group: tensors, and the numel-weighted mean angle before and after alignment.

    >>> df = pl.DataFrame({"group": ["mlp_up", "mlp_up"], "numel": [1, 3], "angle_before_deg": [90.0, 86.0],
    ...                    "angle_deg": [60.0, 40.0]})
    >>> alignment_angle_summary(df).row(0)
    ('mlp_up', 2, 87.0, 45.0)
    """
    w = pl.col("numel") / pl.col("numel").sum()
    return (
        angles.group_by("group", maintain_order=True)
        .agg(
            pl.len().alias("tensors"),
            (pl.col("angle_before_deg") * w).sum().alias("angle_before_deg"),
            (pl.col("angle_deg") * w).sum().alias("angle_after_deg"),
        )
        .sort("group")
    )
