"""Hugging Face Hub ids: how a model reference that is not a local directory is resolved.

``org/name`` (optionally at a revision) is resolved through ``huggingface_hub``'s cache, so a
pre-populated cache works with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["download_snapshot", "looks_like_hub_id"]


def looks_like_hub_id(s: str) -> bool:
    """Whether ``s`` is written like a Hub id (``org/name``) rather than a local path.

    >>> looks_like_hub_id("Qwen/Qwen2.5-0.5B"), looks_like_hub_id("./runs/a"), looks_like_hub_id("/abs/path")
    (True, False, False)
    """
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", s)) and not s.startswith((".", "/"))


def download_snapshot(hub_id: str, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """The local snapshot directory of a Hub model (weights, config, tokenizer files), downloaded when needed."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - optional dependency
        raise WorkbenchError(
            f"{hub_id}: not a local directory and huggingface_hub is not installed (pip install workbench[hub])"
        ) from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    if allow_bin:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network, auth, unknown repo
        raise WorkbenchError(f"{hub_id}: not a local directory and Hub download failed ({err})") from None
