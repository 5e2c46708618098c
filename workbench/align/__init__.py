"""Permutation alignment: move one checkpoint into another's basis before merging them.

Models trained from different initialisations compute the same kind of function with their
hidden units in a different order; merging them unaligned averages unrelated units (the
interpolation barrier of independent runs). Every decoder block has exact symmetries (MLP
units, attention heads, value dimensions, q/k pair rotations, the residual stream) that
reorder units without changing the function; aligning one model to another along them before
merging removes much of that barrier (Git Re-Basin, Ainsworth et al. 2022).

Modules: :mod:`~workbench.align.symmetry` (which axis of which tensor moves with which, per
architecture), :mod:`~workbench.align.transform` (alignments and applying them),
:mod:`~workbench.align.matching` (the assignment steps), :mod:`~workbench.align.weights`
(weight matching, no data), :mod:`~workbench.align.activations` (activation matching, on
text), :mod:`~workbench.align.run` (checkpoints in, aligned checkpoint out; the entry point
merges call).

>>> from workbench.align import SUPPORTED
>>> sorted(SUPPORTED)
['gemma', 'gemma2', 'gemma3_text', 'llama', 'mistral', 'qwen2', 'qwen3']
"""

from __future__ import annotations

from workbench.align.run import (
    ALIGN_FILE,
    METHODS,
    AlignResult,
    align_checkpoints,
    align_options,
    aligned_checkpoint,
    canonical_method,
    find_alignment,
    read_alignment,
    write_aligned,
)
from workbench.align.symmetry import SUPPORTED, AlignSpec, spec_for
from workbench.align.transform import Alignment, LayerAlignment, apply_alignment, identity_alignment, random_alignment

__all__ = [
    "ALIGN_FILE",
    "METHODS",
    "SUPPORTED",
    "AlignResult",
    "AlignSpec",
    "Alignment",
    "LayerAlignment",
    "align_checkpoints",
    "align_options",
    "aligned_checkpoint",
    "apply_alignment",
    "canonical_method",
    "find_alignment",
    "identity_alignment",
    "random_alignment",
    "read_alignment",
    "spec_for",
    "write_aligned",
]
