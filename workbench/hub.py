"""Hugging Face Hub ids: how a model reference that is not a local directory is resolved.

``org/name`` and ``org/name@revision`` (a branch, tag or commit hash) are resolved through
``huggingface_hub``'s cache: a snapshot already there is used without any network access when
``HF_HUB_OFFLINE=1`` (or when the Hub cannot be reached); otherwise the files a checkpoint
needs are downloaded into that cache. Only the weights the checkpoint uses are fetched: the
shards its ``model.safetensors.index.json`` names, else ``model.safetensors``, else any
``*.safetensors`` (so a repository that also holds, say, a ``consolidated.safetensors`` copy is
not downloaded twice).

The cache directory and the offline switch are read from the environment at each call
(``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``, with ``huggingface_hub``'s precedence), so a
notebook that sets them after importing ``huggingface_hub`` is honoured too.

>>> split_revision("Qwen/Qwen2.5-0.5B@v1.0"), split_revision("Qwen/Qwen2.5-0.5B")
(('Qwen/Qwen2.5-0.5B', 'v1.0'), ('Qwen/Qwen2.5-0.5B', None))
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["download_snapshot", "hub_cache_dir", "hub_offline", "looks_like_hub_id", "split_revision"]

#: what a model directory needs besides its weights (config, tokenizer, generation config, index)
META_PATTERNS = ["*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's truthy spellings


def looks_like_hub_id(s: str) -> bool:
    """Whether ``s`` is written like a Hub id (``org/name``) rather than a local path.

    >>> looks_like_hub_id("Qwen/Qwen2.5-0.5B"), looks_like_hub_id("./runs/a"), looks_like_hub_id("/abs/path")
    (True, False, False)
    """
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", s)) and not s.startswith((".", "/"))


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (``org/name``, ``revision``); no ``@``: (ref, None).

    The revision may itself hold ``/`` (``refs/pr/1``); the id never holds ``@``.

    >>> split_revision("org/name@refs/pr/1")
    ('org/name', 'refs/pr/1')
    """
    if "@" not in ref:
        return ref, None
    hub_id, revision = ref.split("@", 1)
    return hub_id, revision or None


def hub_cache_dir() -> Path:
    """The Hugging Face cache directory snapshots are read from and downloaded into.

    ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``.

    >>> import os; saved = dict(os.environ); os.environ["HF_HUB_CACHE"] = "/tmp/hf-cache"
    >>> str(hub_cache_dir())
    '/tmp/hf-cache'
    >>> os.environ.clear(); os.environ.update(saved)
    """
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to
    1/ON/YES/TRUE now, or when ``huggingface_hub`` was imported (its own switch)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    constants = sys.modules.get("huggingface_hub.constants")
    return value.upper() in _TRUE or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _weight_patterns(root: Path, allow_bin: bool) -> list[list[str]]:
    """The weight files to fetch into snapshot ``root``, most specific first (fallbacks after)."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            shards = []  # a broken index is reported by open_checkpoint, naming the file
        if shards:
            return [shards]
    rest = ["*.safetensors"] + (["*.bin", "*.bin.index.json"] if allow_bin else [])
    return [["model.safetensors"], rest]


def _has_weights(root: Path, patterns: list[str]) -> bool:
    import fnmatch

    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return any(fnmatch.fnmatch(n, pat) for pat in patterns for n in names if not pat.endswith(".json"))


def _snapshot(hub_id: str, revision: str | None, patterns: list[str], cache: Path, offline: bool) -> Path:
    """One ``snapshot_download`` call, its failures turned into one WorkbenchError naming the id and cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{hub_id}@{revision}" if revision else hub_id
    try:
        return Path(
            snapshot_download(
                hub_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=str(cache),
                local_files_only=offline,
            )
        )
    except IncompleteSnapshotError as err:
        # files the checkpoint does not need may be missing (a partial `hf download`): the
        # snapshot is used as it is and open_checkpoint names any file it lacks
        return Path(err.snapshot_path)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else "the Hub cannot be reached"
        raise WorkbenchError(
            f"Hub model {where} is not in the Hugging Face cache at {cache} and {why} "
            "(download it there first, e.g. `hf download " + hub_id + "`, or give a local directory)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkbenchError(f"Hub model {where}: not found on the Hub ({first})") from None
    except Exception as err:  # network, auth, disk full
        raise WorkbenchError(f"Hub model {where}: download into {cache} failed ({err})") from None


def download_snapshot(hub_id: str, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """The local snapshot directory of a Hub model (weights, config, tokenizer files).

    Read from the Hugging Face cache (:func:`hub_cache_dir`) when it is there; downloaded into
    it otherwise, unless :func:`hub_offline`. A model that is neither cached nor downloadable
    raises one :class:`WorkbenchError` naming the id and the cache directory, and nothing is
    written. The config is fetched first, then only the weight files it calls for, at the
    same commit.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # pragma: no cover - optional dependency
        raise WorkbenchError(
            f"{hub_id}: not a local directory and huggingface_hub is not installed (pip install workbench[hub])"
        ) from None
    cache, offline = hub_cache_dir(), hub_offline()
    root = _snapshot(hub_id, revision, META_PATTERNS, cache, offline)
    # the snapshot folder is named by its commit: later calls read that commit, whatever the branch does now
    for patterns in _weight_patterns(root, allow_bin):
        root = _snapshot(hub_id, root.name, patterns, cache, offline)
        if _has_weights(root, patterns):
            break
    return root
