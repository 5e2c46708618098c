"""In-domain perplexity of a model on a family's held-out text, scored by the evaluation engine.

The documents go through :func:`workbench.eval.evaluate` as a ``text:<file>`` task, so a
family member is scored exactly as ``workbench eval --tasks text:heldout.txt`` scores it.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["heldout_perplexity"]


def heldout_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text_or_path: str | os.PathLike,
    *,
    seq_len: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, float]:
    """Token-level perplexity on held-out text (a file, or a string with newlines; documents
    separated by blank lines).

    Scored by the evaluation engine's ``text:`` task (lm-eval's rolling log-likelihood):
    each document is encoded with the tokenizer's special tokens (BOS + text) and cut into
    non-overlapping windows of ``seq_len`` tokens (default: the model's max positions), the
    first conditioned on the prefix token (BOS), later ones on the tokens before them, so
    every token of every document is scored once. Returns
    ``{"perplexity": .., "nll": .., "tokens": ..}``: nll is the mean negative log-likelihood
    per scored token (nats), perplexity ``exp(nll)``, tokens the number scored.

    >>> fam = load_family("runs/tiny")  # doctest: +SKIP
    >>> from workbench.checkpoints import load_model, load_tokenizer  # doctest: +SKIP
    >>> heldout_perplexity(load_model(fam.trajectory[-1]), load_tokenizer(fam.tokenizer), fam.heldout)  # doctest: +SKIP
    {'perplexity': 239.3, 'nll': 5.478, 'tokens': 5850}
    """
    if isinstance(text_or_path, str) and "\n" in text_or_path:
        if not text_or_path.strip():
            raise WorkbenchError(f"held-out text {text_or_path[:60]!r} is empty")
        with tempfile.TemporaryDirectory(prefix="workbench-heldout-") as tmp:
            path = Path(tmp) / "heldout.txt"
            path.write_text(text_or_path, encoding="utf-8")
            return _score_file(model, tokenizer, path, seq_len, batch_size, device)
    path = Path(text_or_path)
    if not path.is_file():
        raise WorkbenchError(f"held-out text {path} not found")
    return _score_file(model, tokenizer, path, seq_len, batch_size, device)


def _score_file(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    seq_len: int | None,
    batch_size: int,
    device: str | None,
) -> dict[str, float]:
    from workbench.eval import evaluate
    from workbench.eval.tasks import text_task

    # a list, not a comma-separated string: a path may hold commas
    res = evaluate(
        model,
        tokenizer,
        [text_task(path.absolute())],
        max_length=seq_len,
        batch_size=batch_size,
        device=device,
        progress=False,
    )
    tokens = int(sum(res.items["n_tokens"].to_list()))
    # summed in document order as Python floats, as the text task sums its total
    nll = -sum(res.items["loglik"].to_list()) / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens}
