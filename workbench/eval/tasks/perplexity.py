"""Perplexity tasks: WikiText-2 (``wikitext``) and plain UTF-8 text files (``text:<file>``).

Both share one runner (lm-eval 0.4.13's rolling log-likelihood): per document, rolling
non-overlapping windows of the model's maximum length, the first conditioned on the prefix
token; the document is encoded with the tokenizer's default special tokens. Words and bytes
are counted on the document as the data has it (WikiText is scored detokenised, as lm-eval's
``wikitext`` task does). A family only says where its documents come from.

>>> wikitext_detokenize("It 's a test @-@ case , ok .")
"It's a test-case, ok ."
>>> text_task("held.txt"), text_path("text:held.txt")
('text:held.txt', PosixPath('held.txt'))
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.eval import data as D
from workbench.eval.result import EvalResult, items_frame
from workbench.eval.tasks.common import TaskContext, select_items
from workbench.eval.tasks.spec import TaskSpec

WIKITEXT = "wikitext"
TEXT = "text"
_TEXT_PREFIX = TEXT + ":"
WIKITEXT_DEFAULT_SPLIT = "test"
#: what a perplexity task reports, lm-eval style
METRICS = ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none", "token_perplexity,none")


@dataclass(frozen=True)
class Documents:
    """A perplexity task's documents: ``texts`` as the data has them (words and bytes are
    counted on these) and ``prepare``, what turns one into the text that is scored."""

    texts: list[str]
    prepare: Callable[[str], str] = lambda text: text


# --- the shared runner -----------------------------------------------------------------


def rolling_windows(tokens: list[int], prefix_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint rolling windows (context, continuation) over ``tokens``: every token is
    predicted once; the first window is conditioned on the prefix token, each later
    window on as many preceding tokens as fit in ``max_length``.

    >>> rolling_windows([1, 2, 3, 4, 5], 0, 2)
    [([0], [1, 2]), ([2], [3, 4]), ([3, 4], [5])]
    """
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    first = min(max_length, len(tokens))
    out.append(([prefix_id] + tokens[: first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        n_pred = min(len(tokens) - done, max_length)
        end = done + n_pred
        ctx_tokens = tokens[max(0, end - max_length - 1) : end - 1]
        out.append((ctx_tokens, tokens[end - n_pred : end]))
        done = end
    # keep only the part of each context that is not predicted in the same window
    return [(c[: len(c) - (len(p) - 1)], p) for c, p in out]


def word_count(doc: str) -> int:
    """Words as lm-eval counts them for perplexity: ``len(re.split(r"\\s+", doc))``."""
    return len(re.split(r"\s+", doc))


def run(
    ctx: TaskContext, task: str, docs: Documents, limit: float | None, seed: int, item_ids: Collection[str] | None
) -> EvalResult:
    """Score the selected documents; per-document rows and the perplexity summary."""
    ids = [str(i) for i in range(len(docs.texts))]
    keep = select_items(ids, [task] * len(ids), item_ids, limit, seed)
    texts = [docs.texts[i] for i in keep]
    ids = [ids[i] for i in keep]
    return _score_documents(ctx, task, texts, [docs.prepare(d) for d in texts], ids)


def _score_documents(
    ctx: TaskContext, task: str, docs_orig: list[str], docs_scored: list[str], ids: list[str]
) -> EvalResult:
    enc = ctx.tok.encode(docs_scored, add_special_tokens=None)
    reqs, owner = [], []
    for di, toks in enumerate(enc):
        for w in rolling_windows(toks, ctx.tok.prefix_id, ctx.max_length):
            reqs.append(w)
            owner.append(di)
    res = ctx.score(reqs, desc=task) if reqs else None
    # document totals are Python-float sums of window values, as lm-eval adds them
    ll = [0.0] * len(docs_orig)
    if res is not None:
        for o, v in zip(owner, res.loglik.tolist()):
            ll[o] += v
    words = [word_count(d) for d in docs_orig]
    nbytes = [len(d.encode("utf-8")) for d in docs_orig]
    ntok = [len(t) for t in enc]
    items = items_frame(
        {
            "task": [task] * len(docs_orig),
            "item_id": ids,
            "group": ids,
            "tie": [False] * len(docs_orig),
            "loglik": ll,
            "n_tokens": ntok,
            "n_words": words,
            "n_bytes": nbytes,
        }
    )
    if not docs_orig:
        raise WorkbenchError(f"{task}: no documents selected")
    tot = float(sum(ll))
    sw, sb, st = sum(words), sum(nbytes), sum(ntok)
    summary = {
        task: {
            "word_perplexity,none": math.exp(-tot / sw),
            "byte_perplexity,none": math.exp(-tot / sb),
            "bits_per_byte,none": -tot / sb / math.log(2),
            "token_perplexity,none": math.exp(-tot / st) if st else float("nan"),
            "n_items": float(len(docs_orig)),
            "n_tokens": float(st),
            "n_windows": float(len(reqs)),
            "n_truncated": float(res.truncated.sum()) if res is not None else 0.0,
        }
    }
    return EvalResult(items, summary, {})


# --- WikiText ----------------------------------------------------------------------------


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation the way lm-eval's ``wikitext`` task does before scoring."""
    for old, new in _DETOK_PLAIN_1:
        text = text.replace(old, new)
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for old, new in _DETOK_PLAIN_2:
        text = text.replace(old, new)
    for pattern, repl in _DETOK_BRACKETS:
        text = re.sub(pattern, repl, text)
    for old, new in _DETOK_PLAIN_3:
        text = text.replace(old, new)
    return text


_DETOK_PLAIN_1 = (("s '", "s'"),)
_DETOK_PLAIN_2 = (
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
)
_DETOK_BRACKETS = (
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (r"{\s*([^}]*?)\s*}", r"{\1}"),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (r"'\s*([^']*?)\s*'", r"'\1'"),
)
_DETOK_PLAIN_3 = (
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \u00b0 ", "\u00b0"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
)


def load_wikitext(task: str, data_dir: Path | None, split: str | None) -> Documents:
    """WikiText-2 articles of ``split``, scored detokenised."""
    docs, _ = D.load_wikitext(data_dir, split or WIKITEXT_DEFAULT_SPLIT)
    return Documents(docs, wikitext_detokenize)


def wikitext_files(task: str, data_dir: Path | None, split: str | None) -> list[Path] | None:
    """The split's file when it exists in ``data_dir`` (None: read from the Hub)."""
    if data_dir is None:
        return None
    f = D.wikitext_file(data_dir, split or WIKITEXT_DEFAULT_SPLIT)
    return [f] if f.is_file() else []


WIKITEXT_SPEC = TaskSpec(
    name=WIKITEXT,
    usage=WIKITEXT,
    match=lambda name: name == WIKITEXT,
    load=load_wikitext,
    run=run,
    data_files=wikitext_files,
    metrics=METRICS,
    primary_metric="word_perplexity,none",
    higher_is_better=False,
    item_metrics=("bits_per_byte",),
    perplexity=True,
    split_setting="wikitext_split",
    default_split=WIKITEXT_DEFAULT_SPLIT,
    extra_settings=lambda data_dir: {"wikitext_variant": D.wikitext_variant(data_dir)},
)


# --- text files ----------------------------------------------------------------------------


def text_task(path: str | os.PathLike) -> str:
    """The task name that scores a text file: ``text:<path>``."""
    return f"{_TEXT_PREFIX}{path}"


def text_path(task: str) -> Path:
    """The file a ``text:<path>`` task scores."""
    return Path(task[len(_TEXT_PREFIX) :])


def is_text_task(name: str) -> bool:
    """Whether ``name`` is ``text:<path>`` (with a path)."""
    return name.startswith(_TEXT_PREFIX) and len(name) > len(_TEXT_PREFIX)


def load_text(task: str, data_dir: Path | None, split: str | None) -> Documents:
    """The blank-line separated documents of the task's file (the data directory plays no part)."""
    return Documents(D.load_text_documents(text_path(task)))


def text_files(task: str, data_dir: Path | None, split: str | None) -> list[Path]:
    """The task's file when it exists: never the Hub, so always hashed."""
    p = text_path(task)
    return [p] if p.is_file() else []


TEXT_SPEC = TaskSpec(
    name=TEXT,
    usage="text:<path to a UTF-8 text file>",
    match=is_text_task,
    load=load_text,
    run=run,
    data_files=text_files,
    metrics=METRICS,
    primary_metric="word_perplexity,none",
    higher_is_better=False,
    item_metrics=("bits_per_byte",),
    perplexity=True,
)
