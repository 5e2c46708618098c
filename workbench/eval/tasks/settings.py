"""Evaluation settings: everything besides the weights that changes a number, and the
results-cache key they make.

:class:`EvalSettings` is the one place a key is built: :func:`~workbench.eval.evaluate`,
sweeps and searches all call :meth:`EvalSettings.key`, so a result cached by one is found by
the others. The key is sha256 over the model fingerprint, the task, these settings (the data's
source and content hash, subsample limit and seed, context length, tokenizer, model dtype,
split, item ids) and the workbench version.

>>> from workbench.eval.tasks.tokenizer import TokenizerFacts
>>> tok = TokenizerFacts(prefix_token_id=0, prefix_token="bos", adds_bos=True, sha256="t" * 64)
>>> s = EvalSettings(data_dir=None, max_length=128, tokenizer=tok, model_dtype="torch.float32", limit=5)
>>> s.for_task("arc_easy")["arc_split"], s.key("f" * 64, "arc_easy") == s.key("f" * 64, "arc_easy")
('validation', True)
>>> from dataclasses import replace
>>> s.key("f" * 64, "arc_easy") == replace(s, seed=1).key("f" * 64, "arc_easy")
False
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.eval import data as D
from workbench.eval.tasks.registry import task_spec
from workbench.eval.tasks.tokenizer import TokenizerFacts
from workbench.io.datadir import resolve_data_dir

__all__ = ["SHARED_SETTINGS", "EvalSettings", "canonical_json", "results_key"]

#: the settings every task records at the top of ``EvalResult.settings``; the rest go under
#: ``settings["per_task"][task]``
SHARED_SETTINGS = (
    "workbench_version",
    "data_source",
    "limit",
    "seed",
    "max_length",
    "prefix_token_id",
    "prefix_token",
    "tokenizer_adds_bos",
    "tokenizer_sha256",
    "model_dtype",
    "logsoftmax_dtype",
)


def canonical_json(obj: Any) -> str:
    """The JSON text keys and cache headers are made from: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def results_key(model_fingerprint: str | None, task: str, settings: Mapping[str, Any]) -> str:
    """sha256 over the model fingerprint, task, settings and workbench version.

    >>> results_key("abc", "blimp", {"seed": 0}) == results_key("abc", "blimp", {"seed": 1})
    False
    """
    from workbench import __version__

    if not model_fingerprint:
        raise ValueError("a model fingerprint is needed to key cached results")
    blob = canonical_json({"model": model_fingerprint, "task": task, "settings": settings, "version": __version__})
    return hashlib.sha256(blob.encode()).hexdigest()


def _for_task(value: Any, task: str) -> Any:
    """A per-task setting given once for all tasks, or as a mapping task -> value (missing: None)."""
    return value.get(task) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation's numbers depend on besides the weights.

    ``data_dir`` is the resolved data directory (None: the Hub); ``limit`` and ``item_ids``
    are one value for every task or a mapping task -> value (a task missing from the mapping
    is evaluated on all its items); ``splits`` maps a family's split setting (``"arc_split"``,
    ``"wikitext_split"``) to the split, each family's default otherwise.
    """

    data_dir: Path | None
    max_length: int
    tokenizer: TokenizerFacts
    model_dtype: str
    limit: float | Mapping[str, float | None] | None = None
    seed: int = 0
    item_ids: Collection[str] | Mapping[str, Collection[str]] | None = None
    splits: Mapping[str, str] = field(default_factory=dict)
    logsoftmax_dtype: str = "float32"

    @classmethod
    def create(
        cls,
        *,
        tokenizer: Any,
        max_length: int,
        model_dtype: str,
        data_dir: str | os.PathLike | None = None,
        limit: float | Mapping[str, float | None] | None = None,
        seed: int = 0,
        item_ids: Collection[str] | Mapping[str, Collection[str]] | None = None,
        arc_split: str = "validation",
        wikitext_split: str = "test",
    ) -> EvalSettings:
        """Settings with the data directory resolved (:func:`~workbench.io.datadir.resolve_data_dir`)
        and the tokenizer's facts taken (a Hugging Face tokenizer or :class:`TokenizerFacts`)."""
        return cls(
            data_dir=resolve_data_dir(data_dir),
            max_length=int(max_length),
            tokenizer=TokenizerFacts.of(tokenizer),
            model_dtype=str(model_dtype),
            limit=limit,
            seed=seed,
            item_ids=item_ids,
            splits={"arc_split": arc_split, "wikitext_split": wikitext_split},
        )

    @property
    def data_source(self) -> str:
        """The data directory as recorded, or ``"hub"``."""
        return str(self.data_dir) if self.data_dir is not None else "hub"

    def limit_for(self, task: str) -> float | None:
        """The subsample size of ``task`` (None: all its items)."""
        return _for_task(self.limit, task)

    def item_ids_for(self, task: str) -> Collection[str] | None:
        """The item ids ``task`` is restricted to (None: no restriction)."""
        return _for_task(self.item_ids, task)

    def split_for(self, task: str) -> str | None:
        """The data split ``task`` reads (None for a family without splits)."""
        spec = task_spec(task)
        if spec.split_setting is None:
            return None
        return self.splits.get(spec.split_setting, spec.default_split)

    def for_task(self, task: str) -> dict[str, Any]:
        """The settings that key ``task``'s results (and are recorded with them)."""
        from workbench import __version__

        spec = task_spec(task)
        t = self.tokenizer
        out: dict[str, Any] = {
            "workbench_version": __version__,
            "data_source": self.data_source,
            "limit": self.limit_for(task),
            "seed": self.seed,
            "max_length": self.max_length,
            "prefix_token_id": t.prefix_token_id,
            "prefix_token": t.prefix_token,
            "tokenizer_adds_bos": t.adds_bos,
            "tokenizer_sha256": t.sha256,
            "model_dtype": self.model_dtype,
            "logsoftmax_dtype": self.logsoftmax_dtype,
        }
        split = self.split_for(task)
        if spec.split_setting is not None:
            out[spec.split_setting] = split
        out.update(spec.extra_settings(self.data_dir))
        files = spec.data_files(task, self.data_dir, split)
        if files is not None:  # results follow the data's content, wherever it lives
            out["data_sha256"] = D.files_fingerprint(files)
        wanted = self.item_ids_for(task)
        out["item_ids_sha256"] = (
            hashlib.sha256("\n".join(sorted(map(str, wanted))).encode()).hexdigest() if wanted is not None else None
        )
        return out

    def key(self, model_fingerprint: str | None, task: str) -> str:
        """The results-cache key of ``task`` evaluated on the model with this fingerprint."""
        return results_key(model_fingerprint, task, self.for_task(task))

    def record(self, task: str) -> dict[str, Any]:
        """``EvalResult.settings`` of one task: the shared settings at the top, the task's own
        under ``per_task``."""
        s = self.for_task(task)
        return {
            **{k: v for k, v in s.items() if k in SHARED_SETTINGS},
            "tasks": [task],
            "per_task": {task: {k: v for k, v in s.items() if k not in SHARED_SETTINGS}},
        }
