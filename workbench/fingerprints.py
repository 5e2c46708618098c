"""Content fingerprints of tensors: one rule for checkpoints on disk and models in memory.

A fingerprint is the sha256 over, for each tensor in name order of the caller's choosing,
``"{name}|{dtype}|{shape}|"`` followed by its raw bytes, then a trailer (e.g. whether the
embeddings are tied, or the model class). Two sources with the same tensors give the same key.

>>> import torch
>>> a = tensor_digest([("w", torch.float32, (2,), torch.ones(2).numpy().tobytes())], trailer="x")
>>> a == tensor_digest([("w", torch.float32, (2,), torch.ones(2).numpy().tobytes())], trailer="x")
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["tensor_bytes", "tensor_digest"]


def tensor_bytes(t: Any) -> bytes:
    """The raw bytes of a torch tensor (moved to the CPU, made contiguous; any dtype, bf16 included)."""
    import torch

    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_digest(entries: Iterable[tuple[str, Any, tuple[int, ...], bytes | memoryview]], *, trailer: str = "") -> str:
    """sha256 over ``(name, dtype, shape, raw bytes)`` entries and a trailer (see the module docstring)."""
    h = hashlib.sha256()
    for name, dtype, shape, data in entries:
        h.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
        h.update(data)
    h.update(trailer.encode())
    return h.hexdigest()
