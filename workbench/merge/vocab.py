"""Tokenizer sources: the output vocabulary, and embedding rows aligned to it by token string.

A recipe with ``tokenizer_source: base | union | <model path>`` (or mergekit's ``tokenizer:``
block: ``source``, per-token ``tokens`` sources, ``pad_to_multiple_of``) gets an output
tokenizer, and every vocabulary tensor (input embeddings, ``lm_head``) of every input is
re-indexed to the output vocabulary before the merge method sees it (mergekit 0.1.5's
``PermutedVocabulary``). For each token of the output vocabulary:

1. a ``tokens:`` entry decides its default row (``{kind: zero}``, a model's own row of the
   token, or ``{kind: model_token, model, token | token_id}``: that model's row of another
   token); ``force: true`` gives that row to every model, not only to those that lack it;
2. else a token only one input has takes that input's row; one no input has, zeros;
3. else the base's row when the base is an input and has it, else the mean of the rows of the
   inputs that have it.

Each input keeps its own row where it has the token, and gets the default row where it lacks
it. With ``pad_to_multiple_of``, the padding rows are each input's mean aligned row.

The ``union`` vocabulary keeps every base id, then appends, in a fixed order, the tokens of
the other models the base lacks: models in recipe order, tokens by id, regular tokens first,
then added (special) tokens. mergekit builds the same set of tokens but appends them in hash
order (a different order each run): the rows follow tokens, not ids, so a merge equals
mergekit's token by token.

The aligned matrices are never held whole: each input's checkpoint is wrapped in a view
(:class:`AlignedCheckpoint`) whose aligned tensor reads the source rows it needs, in runs,
when an engine reads it; only the default rows (tokens some input lacks) are kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.checkpoints import Checkpoint
from workbench.errors import WorkbenchError
from workbench.merge.recipe import (
    MergeRecipe,
    ModelTokenSource,
    OutputSlice,
    TokenEmbedding,
    TokenizerConfig,
    ZeroSource,
)
from workbench.naming import EMBED_CANDIDATES, LM_HEAD

__all__ = ["AlignedCheckpoint", "VocabPlan", "plan_vocabulary", "union_tokenizer"]

_PAD = -1  # the row code of padding rows (see _AlignedTensor)


@dataclass
class VocabPlan:
    """The output tokenizer, its row count, and the aligned views the engines read.

    ``sources`` maps (model, tensor) to the aligned tensor's name in ``checkpoints[model]``.
    """

    tokenizer: Any
    rows: int
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:
        raise WorkbenchError(f"{path}: cannot load tokenizer ({err})") from None


def _vocab_size(ck: Checkpoint, tok: Any) -> int:
    return int(ck.config.get("vocab_size") or len(tok.get_vocab()))


def union_tokenizer(base: Any, others: Sequence[tuple[Any, int]], base_path: str | Path) -> Any:
    """The union of ``base`` (a tokenizer, with every id kept) and ``others`` ((tokenizer,
    vocab size) each, recipe order): tokens the base lacks are appended, per model by id,
    regular tokens first, then added tokens (first definition wins)."""
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, size in [(base, len(base.get_vocab())), *others]:
        specials = {a.content for a in tok.added_tokens_decoder.values()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < size and t not in specials:
                regular.setdefault(t)
        for i, info in sorted(tok.added_tokens_decoder.items()):
            if i < size:
                added.setdefault(info.content, info)
    out = _load_tokenizer(base_path)  # a fresh copy: the base tokenizer itself stays as it is
    have = set(base.get_vocab())
    for t in regular:
        if t not in added and t not in have:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def _output_tokenizer(settings: TokenizerConfig, base: str, toks: dict[str, Any], sizes: dict[str, int], ckpts) -> Any:
    if settings.source == "base":
        out = _load_tokenizer(ckpts[base].path)
    elif settings.source == "union":
        others = [(toks[m], sizes[m]) for m in toks if m != base]
        out = union_tokenizer(toks[base], others, ckpts[base].path)
    else:
        src = ckpts[settings.source].path if settings.source in ckpts else settings.source
        out = _load_tokenizer(src)
    have = set(out.get_vocab())
    for t in settings.tokens or {}:
        if t not in have:
            out.add_tokens(t)
    return out


class _AlignedTensor:
    """One input's vocabulary tensor re-indexed to the output vocabulary.

    ``codes[r]`` says where output row r comes from: ``k >= 0`` the source row k, ``-2 - k``
    the k-th default row, ``_PAD`` (only past the real rows) the mean aligned row.
    """

    def __init__(self, ck: Checkpoint, name: str, codes: list[int], defaults: torch.Tensor, real: int, dtype):
        self.ck, self.name, self.codes, self.defaults, self.real, self.dtype = ck, name, codes, defaults, real, dtype
        self.hidden = ck.shape(name)[1]
        self.pad_row: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.codes), self.hidden)

    def _rows(self, r0: int, r1: int, out: torch.Tensor) -> None:
        """Fill ``out`` ``[r1 - r0, hidden]`` with aligned rows r0..r1-1 (source rows read in runs)."""
        r = r0
        while r < r1:
            code = self.codes[r]
            if code >= 0:
                e = r + 1
                while e < r1 and self.codes[e] == self.codes[e - 1] + 1:
                    e += 1
                self.ck.read_into(self.name, out[r - r0 : e - r0].reshape(-1), code * self.hidden)
                r = e
                continue
            out[r - r0] = self._pad() if code == _PAD else self.defaults[-2 - code]
            r += 1

    def _pad(self) -> torch.Tensor:
        if self.pad_row is None:  # the mean of the real aligned rows, accumulated in float64
            acc = torch.zeros(self.hidden, dtype=torch.float64)
            step = max(1, (1 << 21) // max(1, self.hidden))
            buf = torch.empty((step, self.hidden), dtype=self.dtype)
            for r0 in range(0, self.real, step):
                r1 = min(self.real, r0 + step)
                self._rows(r0, r1, buf[: r1 - r0])
                acc += buf[: r1 - r0].double().sum(0)
            self.pad_row = (acc / max(1, self.real)).to(self.dtype)
        return self.pad_row

    def read_into(self, out: torch.Tensor, start: int) -> torch.Tensor:
        n, h = out.numel(), self.hidden
        r0, r1 = start // h, -(-(start + n) // h)
        if start % h == 0 and n % h == 0 and out.dtype == self.dtype and out.is_contiguous():
            self._rows(r0, r1, out.view(r1 - r0, h))  # whole rows: straight into the caller's buffer
            return out
        tmp = torch.empty((r1 - r0, h), dtype=self.dtype)
        self._rows(r0, r1, tmp)
        flat = tmp.reshape(-1)[start - r0 * h : start - r0 * h + n]
        out.copy_(flat.reshape(out.shape))
        return out


class AlignedCheckpoint:
    """A checkpoint whose vocabulary tensors are also readable re-indexed to the output
    vocabulary, under extra names; everything else is the wrapped checkpoint's."""

    def __init__(self, ck: Checkpoint):
        self._ck = ck
        self._aligned: dict[str, _AlignedTensor] = {}

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._ck, attr)

    def __contains__(self, name: object) -> bool:
        return name in self._aligned or name in self._ck

    def add(self, name: str, tensor: _AlignedTensor) -> None:
        """Make ``tensor`` readable as ``name``."""
        self._aligned[name] = tensor

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` (aligned or stored)."""
        t = self._aligned.get(name)
        return t.shape if t is not None else self._ck.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of tensor ``name`` (aligned or stored)."""
        t = self._aligned.get(name)
        return t.dtype if t is not None else self._ck.dtype(name)

    def numel(self, name: str) -> int:
        """The element count of tensor ``name``."""
        return math.prod(self.shape(name))

    def file_of(self, name: str) -> Path:
        """The file holding tensor ``name`` (for an aligned tensor, its source's)."""
        t = self._aligned.get(name)
        return self._ck.file_of(t.name if t is not None else name)

    def read_into(self, name: str, out: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Copy elements ``start ..`` of the flattened tensor ``name`` into ``out``."""
        t = self._aligned.get(name)
        if t is None:
            return self._ck.read_into(name, out, start)
        if start < 0 or start + out.numel() > self.numel(name):
            raise ValueError(f"read_into: {name} has {self.numel(name)} elements, asked {start}+{out.numel()}")
        return t.read_into(out, start)

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor (aligned tensors are assembled on the CPU, then moved)."""
        t = self._aligned.get(name)
        if t is None:
            return self._ck.get(name, device)
        out = torch.empty(t.shape, dtype=t.dtype)
        return t.read_into(out, 0).to(device)


@dataclass
class _Vocab:
    """The output vocabulary and every model's view of it."""

    tokens: list[str]  # output tokens by id
    perms: dict[str, list[int]]  # model -> its row of each output token, -1 if it lacks it
    original: dict[str, dict[str, int]]  # model -> its own vocabulary
    settings: TokenizerConfig


def _row(ck: Checkpoint, name: str, row: int, dtype: torch.dtype) -> torch.Tensor:
    h = ck.shape(name)[1]
    out = torch.empty(h, dtype=dtype)
    return ck.read_into(name, out, row * h)


def _configured(
    v: _Vocab, cfg: TokenEmbedding, token: str, j: int, name: str, models: list[str], ckpts, dtype
) -> torch.Tensor:
    src = cfg.source
    h = ckpts[models[0]].shape(name)[1]
    if isinstance(src, ZeroSource):
        return torch.zeros(h, dtype=dtype)
    model = src.model if isinstance(src, ModelTokenSource) else src
    if model is None or model not in models:
        raise WorkbenchError(
            f"recipe: tokenizer.tokens[{token!r}] takes its row from {model!r}, which is not an input of {name!r}"
        )
    if isinstance(src, ModelTokenSource):
        row = src.token_id if src.token_id is not None else v.original[model].get(src.token, -1)
        if not 0 <= row < ckpts[model].shape(name)[0]:
            raise WorkbenchError(f"recipe: tokenizer.tokens[{token!r}]: token {src.token or row!r} not in {model}")
    else:
        row = v.perms[model][j]
        if row < 0:
            raise WorkbenchError(f"recipe: tokenizer.tokens[{token!r}]: {model} has no token {token!r}")
    return _row(ckpts[model], name, row, dtype)


def _align(v: _Vocab, name: str, models: list[str], base: str | None, ckpts, rows: int, notes: list[str]) -> dict:
    """Each input's aligned tensor ``name`` (inputs ``models``, base ``base``)."""
    dtype = ckpts[models[0]].dtype(name)
    for m in models:
        dtype = torch.promote_types(dtype, ckpts[m].dtype(name))
    configs = dict(v.settings.tokens or {})
    defaults: list[torch.Tensor] = []
    default_of: dict[int, int] = {}
    forced: set[int] = set()
    missing: list[str] = []
    for j, token in enumerate(v.tokens):
        have = [m for m in models if v.perms[m][j] >= 0]
        cfg = configs.get(token)
        if cfg is not None and cfg.force:
            forced.add(j)
        elif len(have) == len(models):
            continue
        if cfg is not None:
            row = _configured(v, cfg, token, j, name, models, ckpts, dtype)
        elif len(have) == 1:
            row = _row(ckpts[have[0]], name, v.perms[have[0]][j], dtype)
        elif not have:
            row = torch.zeros(ckpts[models[0]].shape(name)[1], dtype=dtype)
            missing.append(token)
        elif base in models and base in have:
            row = _row(ckpts[base], name, v.perms[base][j], dtype)
        else:  # the unweighted mean of the inputs that have it, summed in input order
            row = torch.zeros(ckpts[models[0]].shape(name)[1], dtype=dtype)
            for m in have:
                row = row + _row(ckpts[m], name, v.perms[m][j], dtype)
            row = row / len(have)
        default_of[j] = len(defaults)
        defaults.append(row)
    if missing:
        notes.append(f"{name}: no input has token(s) {', '.join(map(repr, missing[:5]))}: zero rows")
    table = torch.stack(defaults) if defaults else torch.zeros((0, ckpts[models[0]].shape(name)[1]), dtype=dtype)
    out = {}
    for m in models:
        # own row where the model has the token (unless forced), else the token's default row
        codes = [own if own >= 0 and j not in forced else -2 - default_of[j] for j, own in enumerate(v.perms[m])]
        codes += [_PAD] * (rows - len(v.tokens))
        out[m] = _AlignedTensor(ckpts[m], name, codes, table, len(v.tokens), dtype)
    return out


def _vocab_names(ckpts: dict[str, Checkpoint], models: list[str], names: list[str]) -> list[str]:
    """The vocabulary tensors among ``names``: embeddings and ``lm_head``, one row per token."""
    out = []
    for n in names:
        if n not in EMBED_CANDIDATES and n != LM_HEAD:
            continue
        if all(n in ckpts[m] and len(ckpts[m].shape(n)) == 2 for m in models):
            out.append(n)
    return out


def plan_vocabulary(
    recipe: MergeRecipe,
    settings: TokenizerConfig,
    reference: str,
    slices: list[OutputSlice],
    ckpts: dict[str, Checkpoint],
    outside: list[str],
) -> VocabPlan:
    """Build the output tokenizer and the aligned views of every input's vocabulary tensors
    (``outside``: the tensors before and after the layer stack; the first slice's sources feed
    those before it, the last slice's those after it, as in mergekit)."""
    inputs = list(dict.fromkeys(s.model for sl in slices for s in sl.sources))
    models = list(dict.fromkeys([reference, *inputs]))
    notes: list[str] = []
    toks: dict[str, Any] = {}
    for m in models:
        try:
            toks[m] = _load_tokenizer(ckpts[m].path)
        except WorkbenchError:
            toks[m] = toks.get(reference) or _load_tokenizer(ckpts[reference].path)
            notes.append(f"{m}: no loadable tokenizer, taken to be {reference}'s")
    sizes = {m: _vocab_size(ckpts[m], toks[m]) for m in models}
    out_tok = _output_tokenizer(settings, reference, toks, sizes, ckpts)
    vocab_out = out_tok.get_vocab()
    tokens = [""] * len(vocab_out)
    for t, i in vocab_out.items():
        tokens[i] = t
    original = {m: toks[m].get_vocab() for m in models}
    perms = {m: [i if (i := original[m].get(t, -1)) < sizes[m] else -1 for t in tokens] for m in models}
    v = _Vocab(tokens, perms, original, settings)
    pad = settings.pad_to_multiple_of
    rows = -(-len(tokens) // pad) * pad if pad else len(tokens)
    plan = VocabPlan(out_tok, rows, notes=notes)
    sides = [(n, slices[0] if n in EMBED_CANDIDATES else slices[-1]) for n in _vocab_names(ckpts, inputs, outside)]
    for name, sl in sides:
        srcs = list(dict.fromkeys(s.model for s in sl.sources))
        base = sl.base_model or recipe.base_model
        # the aligned tensor's name says what its rows depend on: a cached copy of it (in-memory
        # engine) can only be reused by a merge that aligns the same way
        blob = "\n".join([*tokens, repr(settings.model_dump()), repr(srcs), str(base), str(rows)])
        aligned = f"{name} (aligned to the output vocabulary {hashlib.sha256(blob.encode()).hexdigest()[:12]})"
        for m, tensor in _align(v, name, srcs, base, ckpts, rows, notes).items():
            view = plan.checkpoints.get(m)
            if view is None:
                ck = ckpts[m]
                view = plan.checkpoints[m] = AlignedCheckpoint(ck._ck if isinstance(ck, AlignedCheckpoint) else ck)
            view.add(aligned, tensor)
            plan.sources[(m, name)] = aligned
    return plan
