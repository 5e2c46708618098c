"""The one rule for choosing the torch device every command and notebook runs on.

>>> resolve_device(None) in ("cpu", "cuda")
True
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> str:
    """The device to run on: ``None`` / ``"auto"`` is CUDA when present, else the CPU; a CUDA
    device on a machine without CUDA is one clear error.

    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return str(device)
