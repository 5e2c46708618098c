"""Results cache: evaluation results keyed by model fingerprint, task and settings.

One file per entry, ``<root>/<key[:2]>/<key>.wbres``: a magic line, a JSON header
(summary, settings, payload length and sha256) and the items table as parquet bytes.
Entries are written atomically (temporary file + rename); on read the header and the
payload hash are checked, and anything that does not check out (truncated, corrupt,
foreign) is ignored, so the caller recomputes it and overwrites the entry.

>>> import tempfile
>>> from workbench.eval.result import EvalResult, items_frame
>>> store = ResultStore(tempfile.mkdtemp())
>>> k = store.key("f" * 64, "blimp", {"seed": 0})
>>> store.get(k) is None
True
>>> _ = store.put(k, EvalResult(items_frame({"task": ["blimp"], "correct": [True]}), {"blimp": {"acc,none": 1.0}}, {}))
>>> store.get(k).summary["blimp"]["acc,none"]
1.0
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from workbench.eval.tasks.settings import canonical_json, results_key
from workbench.io.atomic import write_bytes_atomic

_MAGIC = b"WBRES1\n"
DEFAULT_ROOT = Path("data") / "cache" / "results"


class ResultStore:
    """A directory of cached :class:`~workbench.eval.result.EvalResult` entries.

    ``root`` defaults to ``$WORKBENCH_CACHE`` or ``data/cache/results``.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            root = os.environ.get("WORKBENCH_CACHE") or DEFAULT_ROOT
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_fingerprint: str | None, task: str, settings: dict[str, Any]) -> str:
        """sha256 over the model fingerprint, task, settings and workbench version
        (:func:`~workbench.eval.tasks.settings.results_key`). Evaluation builds its keys
        with :meth:`EvalSettings.key <workbench.eval.tasks.settings.EvalSettings.key>`.

        >>> ResultStore.key("abc", "blimp", {"seed": 0}) == ResultStore.key("abc", "blimp", {"seed": 0})
        True
        >>> ResultStore.key("abc", "blimp", {"seed": 0}) == ResultStore.key("abc", "blimp", {"seed": 1})
        False
        """
        return results_key(model_fingerprint, task, settings)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.wbres"

    def get(self, key: str):
        """The cached result, or None when absent or when the entry fails its checks."""
        import polars as pl

        from workbench.eval.result import EvalResult

        p = self.path(key)
        try:
            raw = p.read_bytes()
        except OSError:
            self.misses += 1
            return None
        try:
            if not raw.startswith(_MAGIC):
                raise ValueError("bad magic")
            nl = raw.index(b"\n", len(_MAGIC))
            header = json.loads(raw[len(_MAGIC) : nl])
            payload = raw[nl + 1 :]
            if header.get("key") != key or header.get("payload_bytes") != len(payload):
                raise ValueError("length or key mismatch")
            if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
                raise ValueError("hash mismatch")
            items = pl.read_parquet(io.BytesIO(payload))
            result = EvalResult(items, header["summary"], header["settings"])
        except Exception:
            self.misses += 1
            return None  # corrupt or foreign entry: never trusted, recomputed by the caller
        self.hits += 1
        return result

    def put(self, key: str, result) -> Path:
        """Store ``result`` under ``key`` atomically (replacing any previous entry)."""
        buf = io.BytesIO()
        result.items.write_parquet(buf)
        payload = buf.getvalue()
        header = {
            "key": key,
            "summary": result.summary,
            "settings": result.settings,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        blob = _MAGIC + canonical_json(header).encode() + b"\n" + payload
        p = self.path(key)
        write_bytes_atomic(p, blob)
        return p
