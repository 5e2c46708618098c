"""Tasks (BLiMP, ARC-Easy, WikiText, plain-text perplexity) and :func:`evaluate`.

Conventions follow lm-evaluation-harness 0.4.13 (see the design notes, "Scoring
conventions"):

- BLiMP: the ``field`` column spells the data's two variants of the syntax-semantics
  field ("syntax/semantics", "syntax_semantics") one way, giving BLiMP's 4 fields, and
  the ``term`` column files the two "s-selection" paradigms under "argument_structure"
  as the published BLiMP summary does, giving its 12 phenomena; empty context, so the context is the prefix token (BOS, else EOS) and the
  continuation is ``" " + sentence`` encoded without special tokens; a pair is correct
  when ll(good) >= ll(bad) (an exact tie counts as correct, as lm-eval's argmax takes
  the first choice); the tie rate is reported.
- ARC-Easy: context ``"Question: {q}\\nAnswer:"``, continuations ``" " + choice``,
  context+continuation encoded jointly with the tokenizer's default special tokens and
  the continuation's tokens taken from the end; ``acc`` and ``acc_norm`` (ll divided
  by the choice's character count).
- WikiText / text files: per document, rolling non-overlapping windows of the model's
  maximum length, the first conditioned on the prefix token.

``limit`` subsamples each stratum (BLiMP paradigm; ARC; WikiText documents) to at most
``limit`` items (or a fraction when ``0 < limit < 1``), chosen at random with ``seed``
and kept in data order.

>>> sorted(KNOWN_TASKS)
['arc_easy', 'blimp', 'text', 'wikitext']
>>> wikitext_detokenize("It 's a test @-@ case , ok .")
"It's a test-case, ok ."
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
import polars as pl
import torch

from workbench.errors import WorkbenchError
from workbench.io.datadir import resolve_data_dir
from workbench.fingerprints import tensor_bytes, tensor_digest
from workbench.eval import data as D
from workbench.eval.result import EvalResult, items_frame
from workbench.eval.scoring import model_device, score_requests

KNOWN_TASKS: tuple[str, ...] = ("blimp", "arc_easy", "wikitext", "text")
#: linguistics_term spellings mapped to the 12 phenomena of the BLiMP paper's summary
BLIMP_TERM_ALIASES = {"s-selection": "argument_structure"}
_TOKENIZER_INFINITY = 1000000000000000019884624838656
DEFAULT_MAX_LENGTH = 2048
DEFAULT_BATCH_SIZE = 64


def _task_help() -> str:
    return ("known tasks: blimp, blimp_<paradigm> (one of the 67 BLiMP paradigms), arc_easy, wikitext, "
            "text:<path to a UTF-8 text file>")


def parse_tasks(tasks: str | Iterable[str]) -> list[str]:
    """Normalise a comma-separated string or list of task names; unknown names raise.

    >>> parse_tasks("blimp, arc_easy")
    ['blimp', 'arc_easy']
    >>> parse_tasks(["blimp_adjunct_island"])
    ['blimp_adjunct_island']
    """
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    out: list[str] = []
    for t in tasks:
        t = t.strip()
        if not t:
            continue
        ok = (
            t in ("blimp", "arc_easy", "wikitext")
            or (t.startswith("blimp_") and t[len("blimp_"):] in D.BLIMP_PARADIGMS)
            or (t.startswith("text:") and len(t) > len("text:"))
        )
        if not ok:
            raise WorkbenchError(f"unknown task {t!r}; {_task_help()}")
        if t not in out:
            out.append(t)
    if not out:
        raise WorkbenchError(f"no task given; {_task_help()}")
    return out


# --- tokenizer conventions -------------------------------------------------------------


#: Encodings kept per process (see :meth:`_Tok.encode`); the oldest go past this many strings.
_ENCODED: dict[tuple, list[tuple[int, ...]]] = {}
_ENCODED_MAX_STRINGS = 1_000_000


class _Tok:
    """The tokenizer calls lm-eval's HF model makes, batched."""

    def __init__(self, tokenizer: Any):
        self.tk = tokenizer
        bos = getattr(tokenizer, "bos_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        if bos is not None:
            self.prefix_id, self.prefix_kind = int(bos), "bos"
        elif eos is not None:
            self.prefix_id, self.prefix_kind = int(eos), "eos"
        else:
            raise WorkbenchError(
                "the tokenizer has neither a BOS nor an EOS token, so there is no prefix token to "
                "condition the first token on; set tokenizer.bos_token (or eos_token)"
            )
        self.prefix_str = tokenizer.decode([self.prefix_id])

    def encode(self, strings: Sequence[str], add_special_tokens: bool | None) -> list[list[int]]:
        """Encode many strings. ``None`` means the tokenizer's default, except that a
        string already starting with the prefix token's text gets no special tokens.

        Encodings are kept for the process, keyed by the tokenizer's fingerprint, the flag
        and the strings, so evaluating many models with one tokenizer (sweeps, panels,
        widgets) tokenises each data set once.
        """
        if not strings:
            return []
        digest = hashlib.sha256("\x1f".join(strings).encode("utf-8", "surrogatepass")).hexdigest()
        key = (self.fingerprint(), add_special_tokens, len(strings), digest)
        hit = _ENCODED.get(key)
        if hit is None:
            # long documents are split into windows later: silence the "longer than the
            # maximum sequence length" warning while encoding
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                hit = [tuple(e) for e in self._encode(strings, add_special_tokens)]
            finally:
                hf_logging.set_verbosity(level)
            _ENCODED[key] = hit
            while sum(len(v) for v in _ENCODED.values()) > _ENCODED_MAX_STRINGS and len(_ENCODED) > 1:
                _ENCODED.pop(next(iter(_ENCODED)))
        return [list(e) for e in hit]

    def _encode(self, strings: Sequence[str], add_special_tokens: bool | None) -> list[list[int]]:
        if not strings:
            return []
        if add_special_tokens is not None:
            return self._encode_batch(strings, add_special_tokens)
        starts = [bool(self.prefix_str) and s.startswith(self.prefix_str) for s in strings]
        out: list[list[int] | None] = [None] * len(strings)
        for flag in (True, False):  # tokenizer default (adds special tokens) / text starts with the prefix
            idx = [i for i, f in enumerate(starts) if f != flag]
            if idx:
                for i, e in zip(idx, self._encode_batch([strings[i] for i in idx], flag)):
                    out[i] = e
        return out  # type: ignore[return-value]

    def _encode_batch(self, strings: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        """The tokenizer's ``input_ids`` for each string.

        A fast tokenizer's Rust backend is called directly (it skips building a
        BatchEncoding, about 1.5x faster), after checking that it gives the tokenizer's
        own ids on a sample of the strings; otherwise the tokenizer is called as usual.
        """
        strings = list(strings)
        ref_call = lambda xs: [list(x) for x in self.tk(xs, add_special_tokens=add_special_tokens)["input_ids"]]
        backend = getattr(self.tk, "_tokenizer", None)
        fast = getattr(backend, "encode_batch_fast", None)
        if fast is None:
            return ref_call(strings)
        sample = strings[:: max(1, len(strings) // 16)]
        # the tokenizer's own call first: it sets the backend's truncation, padding and
        # special-token handling, which are checked after it
        expected = ref_call(sample)
        if (getattr(backend, "truncation", None) or getattr(backend, "padding", None)
                or [e.ids for e in fast(sample, add_special_tokens=add_special_tokens)] != expected):
            return ref_call(strings)
        return [e.ids for e in fast(strings, add_special_tokens=add_special_tokens)]

    def adds_bos(self) -> bool:
        ids = self.tk("a")["input_ids"]
        return len(ids) > 0 and ids[0] == getattr(self.tk, "bos_token_id", None)

    def fingerprint(self) -> str:
        """sha256 of the tokenizer's serialised form (vocabulary, merges, special tokens)."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        backend = getattr(self.tk, "backend_tokenizer", None) or getattr(self.tk, "_tokenizer", None)
        if backend is not None and hasattr(backend, "to_str"):
            h.update(backend.to_str().encode())
        else:
            h.update(json.dumps(sorted(self.tk.get_vocab().items())).encode())
        h.update(repr((self.prefix_id, self.adds_bos())).encode())
        return h.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """The ``tokenizer_sha256`` that evaluation records and keys results by: sha256 of the
    tokenizer's serialised form, its prefix token and whether it adds BOS."""
    return _Tok(tokenizer).fingerprint()


def resolve_max_length(model: Any, tokenizer: Any) -> int:
    """The context length lm-eval uses: the model config's ``n_positions``,
    ``max_position_embeddings`` or ``n_ctx``; else the tokenizer's ``model_max_length``;
    else 2048."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if v is not None:
            return int(v)
    v = getattr(tokenizer, "model_max_length", None)
    if v is not None and v != _TOKENIZER_INFINITY:
        return int(v)
    return DEFAULT_MAX_LENGTH


# --- subsampling -----------------------------------------------------------------------


def stratified_subsample(strata: Sequence[str], limit: float | None, seed: int) -> np.ndarray:
    """Indices to keep: at most ``limit`` per stratum (a fraction if 0 < limit < 1),
    drawn with ``seed``, returned in ascending order.

    >>> stratified_subsample(["a", "a", "a", "b"], 2, 0).tolist()
    [1, 2, 3]
    >>> stratified_subsample(["a", "a"], None, 0).tolist()
    [0, 1]
    """
    n = len(strata)
    if limit is None:
        return np.arange(n)
    if limit <= 0:
        raise WorkbenchError(f"limit must be positive, got {limit}")
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by.setdefault(s, []).append(i)
    keep: list[int] = []
    for s in sorted(by):
        idx = np.array(by[s])
        k = math.ceil(limit * len(idx)) if limit < 1 else int(limit)
        if k >= len(idx):
            keep.extend(idx.tolist())
        else:
            keep.extend(np.sort(rng.choice(idx, size=k, replace=False)).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def _filter_ids(ids: list[str], wanted: Collection[str] | None) -> np.ndarray:
    if wanted is None:
        return np.arange(len(ids))
    w = set(wanted)
    return np.array([i for i, x in enumerate(ids) if x in w], dtype=np.int64)


# --- metric helpers --------------------------------------------------------------------


def mean_stderr(x: np.ndarray) -> float:
    """Standard error of the mean with the n-1 sample deviation (lm-eval's ``mean_stderr``).

    >>> round(mean_stderr(np.array([1.0, 0.0, 1.0, 0.0])), 4)
    0.2887
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """Group standard error from subtask standard errors (pooled variance), as lm-eval
    reports for groups such as ``blimp``.

    >>> round(pooled_stderr([0.1, 0.1], [100, 100]), 4)
    0.0707
    """
    n = sum(sizes)
    k = len(sizes)
    if n - k <= 0:
        return float("nan")
    var = sum((m - 1) * se**2 * m for m, se in zip(sizes, stderrs)) / (n - k)
    return math.sqrt(var / n)


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
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
)
_DETOK_BRACKETS = (
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (r"{\s*([^}]*?)\s*}", r"{\1}"),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (r"'\s*([^']*?)\s*'", r"'\1'"),
)
_DETOK_PLAIN_3 = (
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
    (" \u00b0 ", "\u00b0"), (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"),
)


def word_count(doc: str) -> int:
    """Words as lm-eval counts them for perplexity: ``len(re.split(r"\\s+", doc))``."""
    return len(re.split(r"\s+", doc))


# --- tasks -----------------------------------------------------------------------------


class _Ctx:
    """What every task needs: model, tokenizer conventions, scorer settings."""

    def __init__(self, model, tok: _Tok, max_length: int, batch_size: int, device, progress: bool,
                 share_prefixes: bool | None = None):
        self.model, self.tok, self.max_length = model, tok, max_length
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.share_prefixes = share_prefixes
        self.shared_prefixes = False  # whether a scoring call since the last reset packed prefix trees

    def score(self, requests, desc):
        res = score_requests(self.model, requests, max_length=self.max_length, batch_size=self.batch_size,
                             device=self.device, progress=self.progress, desc=desc, share_prefixes=self.share_prefixes)
        self.shared_prefixes = self.shared_prefixes or res.prefix_sharing
        return res


def _blimp_requests(ctx: _Ctx, sentences: list[str]) -> list[tuple[list[int], list[int]]]:
    enc = ctx.tok.encode([" " + s for s in sentences], add_special_tokens=False)
    reqs = []
    for s, e in zip(sentences, enc):
        if not e:
            raise WorkbenchError(f"BLiMP sentence {s!r} encodes to no tokens")
        if e[0] == ctx.tok.prefix_id:  # the text itself starts with the prefix token
            reqs.append((e[:1], e[1:]))
        else:
            reqs.append(([ctx.tok.prefix_id], e))
    return reqs


def run_blimp(ctx: _Ctx, task: str, data_dir, limit, seed, item_ids) -> EvalResult:
    paradigms = D.BLIMP_PARADIGMS if task == "blimp" else (task[len("blimp_"):],)
    pairs = D.load_blimp(data_dir, paradigms)
    ids = [f"{p['UID']}/{p['pairID']}" for p in pairs]
    keep = _filter_ids(ids, item_ids)
    sub = stratified_subsample([pairs[i]["UID"] for i in keep], limit, seed)
    keep = keep[sub]
    pairs = [pairs[i] for i in keep]
    ids = [ids[i] for i in keep]
    reqs = _blimp_requests(ctx, [p["sentence_good"] for p in pairs] + [p["sentence_bad"] for p in pairs])
    res = ctx.score(reqs, desc=task)
    n = len(pairs)
    good, bad = res.loglik[:n], res.loglik[n:]
    correct = good >= bad  # argmax over (good, bad) takes the first on a tie
    tie = good == bad
    items = items_frame({
        "task": [task] * n, "item_id": ids, "group": [p["UID"] for p in pairs],
        "field": [p["field"].replace("/", "_") for p in pairs],
        "term": [BLIMP_TERM_ALIASES.get(p["linguistics_term"], p["linguistics_term"]) for p in pairs],
        "correct": correct.tolist(), "tie": tie.tolist(), "margin": (good - bad).tolist(),
        "loglik": good.tolist(), "loglik_alt": bad.tolist(), "n_tokens": res.n_tokens[:n].tolist(),
    })
    summary: dict[str, dict[str, float]] = {}
    accs, ses, sizes = [], [], []
    uids = np.array([p["UID"] for p in pairs], dtype=object)
    for uid in paradigms:
        m = uids == uid
        if not m.any():
            continue
        c = correct[m].astype(np.float64)
        accs.append(float(c.mean()))
        ses.append(mean_stderr(c))
        sizes.append(int(m.sum()))
        if task == "blimp":
            summary[f"blimp_{uid}"] = {"acc,none": accs[-1], "acc_stderr,none": ses[-1],
                                       "tie_rate,none": float(tie[m].mean()), "n_items": float(sizes[-1])}
    if not sizes:
        raise WorkbenchError(f"{task}: no items selected")
    top = {
        "acc,none": float(np.mean(accs)),  # macro mean over paradigms (lm-eval: weight_by_size False)
        "acc_stderr,none": pooled_stderr(ses, sizes) if len(sizes) > 1 else ses[0],
        "acc_micro,none": float(correct.mean()),
        "tie_rate,none": float(tie.mean()),
        "n_items": float(n),
        "n_truncated": float(res.truncated.sum()),
    }
    summary = {task: top, **summary}
    if task == "blimp":
        for col in ("field", "term"):
            agg = items.group_by(col).agg(pl.col("correct").mean().alias("acc"), pl.col("tie").mean().alias("tie"),
                                          pl.len().alias("n")).sort(col)
            for row in agg.iter_rows(named=True):
                summary[f"blimp_{col}_{row[col]}"] = {"acc,none": float(row["acc"]), "tie_rate,none": float(row["tie"]),
                                                      "n_items": float(row["n"])}
    return EvalResult(items, summary, {})


def run_arc_easy(ctx: _Ctx, task: str, data_dir, limit, seed, item_ids, split: str) -> EvalResult:
    qs = D.load_arc_easy(data_dir, split)
    ids = [q["id"] for q in qs]
    keep = _filter_ids(ids, item_ids)
    keep = keep[stratified_subsample(["arc_easy"] * len(keep), limit, seed)]
    qs = [qs[i] for i in keep]
    contexts, wholes, owner, choice_len = [], [], [], []
    for qi, q in enumerate(qs):
        c = f"Question: {q['question']}\nAnswer:"  # ends in "Answer:": no trailing space to move (lm-eval _encode_pair)
        contexts.append(c)
        for text in q["choices"]["text"]:
            wholes.append(c + " " + text)
            owner.append(qi)
            choice_len.append(len(text))
    ctx_enc = ctx.tok.encode(contexts, add_special_tokens=None)
    whole_enc = ctx.tok.encode(wholes, add_special_tokens=None)
    reqs = []
    for w, qi in zip(whole_enc, owner):
        ce = ctx_enc[qi]
        reqs.append((ce, w[len(ce):]))
    res = ctx.score(reqs, desc=task)
    owner_a = np.array(owner)
    rows: dict[str, list] = {k: [] for k in ("task", "item_id", "group", "correct", "correct_norm", "tie",
                                             "margin", "loglik", "n_tokens")}
    acc, acc_norm = [], []
    for qi, q in enumerate(qs):
        m = np.flatnonzero(owner_a == qi)
        lls = res.loglik[m]
        lens = np.array([float(choice_len[j]) for j in m])
        gold = D.arc_gold_index(q["choices"]["label"], q["answerKey"])
        pred = int(np.argmax(lls))
        with np.errstate(divide="ignore", invalid="ignore"):
            pred_norm = int(np.argmax(lls / lens))
        others = np.delete(lls, gold)
        rows["task"].append(task)
        rows["item_id"].append(q["id"])
        rows["group"].append("arc_easy")
        rows["correct"].append(pred == gold)
        rows["correct_norm"].append(pred_norm == gold)
        rows["tie"].append(bool((lls == lls.max()).sum() > 1))
        rows["margin"].append(float(lls[gold] - others.max()) if len(others) else None)
        rows["loglik"].append(float(lls[gold]))
        rows["n_tokens"].append(int(res.n_tokens[m[gold]]))
        acc.append(pred == gold)
        acc_norm.append(pred_norm == gold)
    if not qs:
        raise WorkbenchError(f"{task}: no items selected")
    a, an = np.array(acc, dtype=np.float64), np.array(acc_norm, dtype=np.float64)
    summary = {task: {"acc,none": float(a.mean()), "acc_stderr,none": mean_stderr(a),
                      "acc_norm,none": float(an.mean()), "acc_norm_stderr,none": mean_stderr(an),
                      "tie_rate,none": float(np.mean(rows["tie"])), "n_items": float(len(qs)),
                      "n_truncated": float(res.truncated.sum())}}
    return EvalResult(items_frame(rows), summary, {})


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


def _perplexity_task(ctx: _Ctx, task: str, docs_orig: list[str], docs_scored: list[str], ids: list[str],
                     groups: list[str]) -> EvalResult:
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
    items = items_frame({"task": [task] * len(docs_orig), "item_id": ids, "group": groups,
                         "tie": [False] * len(docs_orig), "loglik": ll, "n_tokens": ntok,
                         "n_words": words, "n_bytes": nbytes})
    if not docs_orig:
        raise WorkbenchError(f"{task}: no documents selected")
    tot = float(sum(ll))
    sw, sb, st = sum(words), sum(nbytes), sum(ntok)
    summary = {task: {
        "word_perplexity,none": math.exp(-tot / sw),
        "byte_perplexity,none": math.exp(-tot / sb),
        "bits_per_byte,none": -tot / sb / math.log(2),
        "token_perplexity,none": math.exp(-tot / st) if st else float("nan"),
        "n_items": float(len(docs_orig)), "n_tokens": float(st), "n_windows": float(len(reqs)),
        "n_truncated": float(res.truncated.sum()) if res is not None else 0.0,
    }}
    return EvalResult(items, summary, {})


def run_wikitext(ctx: _Ctx, task: str, data_dir, limit, seed, item_ids, split: str) -> EvalResult:
    docs, _ = D.load_wikitext(data_dir, split)
    ids = [str(i) for i in range(len(docs))]
    keep = _filter_ids(ids, item_ids)
    keep = keep[stratified_subsample(["wikitext"] * len(keep), limit, seed)]
    docs = [docs[i] for i in keep]
    ids = [ids[i] for i in keep]
    return _perplexity_task(ctx, task, docs, [wikitext_detokenize(d) for d in docs], ids, ids)


def run_text(ctx: _Ctx, task: str, limit, seed, item_ids) -> EvalResult:
    path = Path(task[len("text:"):])
    docs = D.load_text_documents(path)
    ids = [str(i) for i in range(len(docs))]
    keep = _filter_ids(ids, item_ids)
    keep = keep[stratified_subsample(["text"] * len(keep), limit, seed)]
    docs = [docs[i] for i in keep]
    ids = [ids[i] for i in keep]
    return _perplexity_task(ctx, task, docs, docs, ids, ids)


# --- evaluate --------------------------------------------------------------------------


def model_fingerprint_of(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's parameters and buffers."""
    return tensor_digest(
        ((name, t.dtype, tuple(t.shape), tensor_bytes(t)) for name, t in model.state_dict().items()),
        trailer=type(model).__name__,
    )


def _item_ids_for(item_ids, task: str) -> Collection[str] | None:
    if item_ids is None:
        return None
    if isinstance(item_ids, Mapping):
        return item_ids.get(task)
    return item_ids


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | Iterable[str],
    *,
    data_dir: str | Path | None = None,
    limit: float | Mapping[str, float | None] | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = True,
    store: Any = None,
    model_fingerprint: str | None = None,
    item_ids: Collection[str] | Mapping[str, Collection[str]] | None = None,
    max_length: int | None = None,
    arc_split: str = "validation",
    wikitext_split: str = "test",
    share_prefixes: bool | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``tasks`` with lm-eval 0.4.13 conventions; per-item results.

    ``model`` is any module whose ``model(input_ids=..., attention_mask=..., [position_ids=...])`` returns
    an object with ``.logits``; ``tokenizer`` a Hugging Face tokenizer. Data comes from
    ``data_dir`` (or ``$WORKBENCH_DATA_DIR``, else the Hub). With a ``store``
    (:class:`workbench.store.ResultStore`) each task's result is cached under the model
    fingerprint (computed from the weights when not given), the task and the settings.
    ``item_ids`` restricts the items (a collection, or a mapping task -> collection).
    ``limit`` is one subsample size for every task, or a mapping task -> size (a task
    missing from the mapping is evaluated on all its items).
    ``share_prefixes`` is the scorer's prefix sharing (see
    :func:`workbench.eval.scoring.score_requests`; ``None`` = auto); whether it was
    used is recorded per task in ``settings["per_task"][task]["prefix_sharing"]``.

    Example (a data directory laid out like the reference data)::

        res = evaluate(model, tok, "blimp,arc_easy", data_dir="../shared/data", limit=100)
        res.summary["blimp"]["acc,none"], res.items.head()
    """
    task_list = parse_tasks(tasks)
    ddir = resolve_data_dir(data_dir)
    if tokenizer is None:
        raise WorkbenchError("no tokenizer given: the model directory has no tokenizer files")
    tok = _Tok(tokenizer)
    mlen = int(max_length) if max_length is not None else resolve_max_length(model, tokenizer)
    if device is not None:
        device = torch.device(device)
        if any(True for _ in model.parameters()) and model_device(model) != device:
            model.to(device)
    dev = device if device is not None else model_device(model)
    if hasattr(model, "eval"):
        model.eval()
    from workbench import __version__

    base = {
        "workbench_version": __version__,
        "data_source": str(ddir) if ddir is not None else "hub",
        "limit": limit, "seed": seed, "max_length": mlen,
        "prefix_token_id": tok.prefix_id, "prefix_token": tok.prefix_kind,
        "tokenizer_adds_bos": tok.adds_bos(), "tokenizer_sha256": tok.fingerprint(),
        "model_dtype": str(next((p.dtype for p in model.parameters()), "none")),
        "logsoftmax_dtype": "float32",
    }
    fp = model_fingerprint
    if store is not None and fp is None:
        fp = model_fingerprint_of(model)
    ctx = _Ctx(model, tok, mlen, batch_size, dev, progress, share_prefixes)
    results = []
    for task in task_list:
        task_limit = limit.get(task) if isinstance(limit, Mapping) else limit
        settings = {**base, "limit": task_limit}
        if task == "arc_easy":
            settings["arc_split"] = arc_split
        if task == "wikitext":
            settings["wikitext_split"] = wikitext_split
            settings["wikitext_variant"] = D.wikitext_variant(ddir)
        if task.startswith("text:") or ddir is not None:
            settings["data_sha256"] = D.task_data_sha256(ddir, task, arc_split=arc_split,
                                                         wikitext_split=wikitext_split)
        wanted = _item_ids_for(item_ids, task)
        settings["item_ids_sha256"] = (hashlib.sha256("\n".join(sorted(map(str, wanted))).encode()).hexdigest()
                                       if wanted is not None else None)
        key = store.key(fp, task, settings) if store is not None else None
        cached = store.get(key) if store is not None else None
        if cached is not None:
            results.append(cached)
            continue
        ctx.shared_prefixes = False
        if task == "blimp" or task.startswith("blimp_"):
            r = run_blimp(ctx, task, ddir, task_limit, seed, wanted)
        elif task == "arc_easy":
            r = run_arc_easy(ctx, task, ddir, task_limit, seed, wanted, arc_split)
        elif task == "wikitext":
            r = run_wikitext(ctx, task, ddir, task_limit, seed, wanted, wikitext_split)
        else:
            r = run_text(ctx, task, task_limit, seed, wanted)
        per_task = {k: v for k, v in settings.items() if k not in base}
        per_task["prefix_sharing"] = ctx.shared_prefixes  # float rounding only; recorded next to the numbers
        r.settings = {**{k: v for k, v in settings.items() if k in base}, "tasks": [task],
                      "per_task": {task: per_task},
                      "model_fingerprint": fp, "device": str(dev), "batch_size": batch_size}
        if store is not None:
            store.put(key, r)
        results.append(r)
    out = EvalResult.concat(results)
    out.settings["tasks"] = task_list
    return out
