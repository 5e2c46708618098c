"""The one batched log-likelihood scorer every task uses.

A *request* is a pair of token lists ``(context, continuation)``; its score is the sum
of the float32 log-probabilities of the continuation tokens, each conditioned on
everything before it (lm-evaluation-harness semantics). The scorer

- left-truncates ``context + continuation`` to ``max_length + 1`` tokens (and reports
  which requests were truncated); all but the last token are the model's input;
- scores every distinct token sequence once: identical requests are merged, and a
  request whose token sequence is a prefix of another one's is read off the longer
  sequence's logits (a causal model's logits at a position depend only on the tokens
  up to it);
- **shares prefixes** (``share_prefixes``): short sequences are packed into rows that
  hold a prefix tree of their inputs. A token shared by several sequences (the prefix
  token, an ARC question, the words before a BLiMP pair's first difference) is run once;
  a 4-D attention mask lets every node attend only to its ancestors and ``position_ids``
  give each node its depth, so each sequence sees exactly what it would see alone. This
  needs a model that takes ``position_ids`` and a custom 4-D mask (Hugging Face causal
  LMs do); in the default ``auto`` mode the first packed batch is checked against the
  plain path and sharing is switched off when they disagree;
- runs the remaining sequences sorted by length (longest first), right-padded. No
  attention mask is passed for them: with right padding a causal model's logits at real
  positions never see the padding (lm-eval calls its models the same way);
- calls only ``model(input_ids=..., attention_mask=..., position_ids=...).logits``
  (``position_ids`` only when sharing), so any module returning an object with
  ``.logits`` works (an in-memory merge, an output ensemble), on any device;
- takes a float32 log-softmax over the vocabulary.

>>> import torch
>>> class Uniform(torch.nn.Module):
...     def forward(self, input_ids, attention_mask=None):
...         return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 4)})()
>>> r = score_requests(Uniform(), [([0], [1, 2]), ([0, 1], [2])], max_length=8, progress=False)
>>> [round(float(x), 4) for x in r.loglik], r.n_forward_sequences, r.prefix_sharing
([-2.7726, -1.3863], 1, False)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from workbench.errors import WorkbenchError

#: Upper bound on logits elements (batch x length x vocab) held at once.
MAX_LOGITS_ELEMENTS = 1 << 27
#: Tree nodes (input tokens) in one packed row; longer sequences run on their own.
PACKED_ROW_NODES = 96
#: A packed forward holds about ``batch_size * PACKED_TOKENS_PER_SEQUENCE`` tokens.
PACKED_TOKENS_PER_SEQUENCE = 24
#: Largest per-token log-probability difference between the packed and the plain path
#: that the ``auto`` check accepts (float32 rounding is ~1e-5 here; a model that ignores
#: ``position_ids`` or the custom mask is off by far more).
PACKED_CHECK_TOLERANCE = 1e-3


@dataclass
class ScoreResult:
    """Per-request results of :func:`score_requests` (same order as the requests)."""

    loglik: np.ndarray  # float64 values of float32 sums
    n_tokens: np.ndarray  # continuation tokens scored
    truncated: np.ndarray  # bool: context cut from the left to fit max_length
    n_forward_sequences: int  # distinct sequences scored (packed members that are prefixes of others included)
    prefix_sharing: bool = False  # whether packed prefix trees were used
    n_forward_tokens: int = 0  # input positions the model computed (padding included)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _vocab_size(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    v = getattr(cfg, "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None


def _accepts_position_ids(model: torch.nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "position_ids" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# --- prefix trees ----------------------------------------------------------------------


@dataclass
class PackedRow:
    """One model input row holding a prefix tree of several sequences' inputs.

    ``tokens[i]`` is node ``i``'s token, ``depth[i]`` its position in its sequences;
    nodes come in depth-first order, so a node's ancestors precede it. ``members``
    lists ``(sequence index, node path)``: the path's nodes are that sequence's input
    tokens in order.
    """

    tokens: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    members: list[tuple[int, list[int]]] = field(default_factory=list)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def plan_prefix_trees(inputs: Sequence[tuple[int, ...]], max_nodes: int = PACKED_ROW_NODES) -> list[PackedRow]:
    """Pack input sequences into rows of prefix trees of at most ``max_nodes`` nodes.

    Sequences are visited in lexicographic order, so those sharing a prefix are
    neighbours; each adds only the tokens after its common prefix with the previous
    one. A sequence longer than ``max_nodes`` gets a row of its own.

    >>> rows = plan_prefix_trees([(0, 5, 6), (0, 5, 7), (0, 5)], max_nodes=8)
    >>> rows[0].tokens, rows[0].depth
    ([0, 5, 6, 7], [0, 1, 2, 2])
    >>> sorted(rows[0].members)
    [(0, [0, 1, 2]), (1, [0, 1, 3]), (2, [0, 1])]
    """
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    rows: list[PackedRow] = []
    row = PackedRow()
    path: list[int] = []
    prev: tuple[int, ...] = ()
    for i in order:
        seq = inputs[i]
        shared = _common_prefix(prev, seq) if row.tokens else 0
        if row.tokens and len(row.tokens) + len(seq) - shared > max_nodes:
            rows.append(row)
            row, shared = PackedRow(), 0
        start = len(row.tokens)
        del path[shared:]
        path.extend(range(start, start + len(seq) - shared))
        row.tokens.extend(seq[shared:])
        row.depth.extend(range(shared, len(seq)))
        row.members.append((i, path.copy()))
        prev = seq
    if row.tokens:
        rows.append(row)
    return rows


def ancestor_mask(depth: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` node depths (depth-first order) -> ``[B, L, L]`` bool "j is i or its ancestor".

    In depth-first order, ``j <= i`` is an ancestor of ``i`` exactly when no node
    strictly after ``j`` up to ``i`` is as shallow as ``j``. Padding nodes get a huge
    depth: they never cut a path and only follow the last real node.

    >>> ancestor_mask(torch.tensor([[0, 1, 2, 2, 1]])).int()[0]
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [1, 0, 0, 0, 1]], dtype=torch.int32)
    """
    b, n = depth.shape
    idx = torch.arange(n, device=depth.device)
    later = idx[None, :] > idx[:, None]  # [i, k]: k after i
    big = torch.iinfo(depth.dtype).max
    upto_i = depth[:, None, :].masked_fill(later[None], big)  # [b, i, k] = depth[k] for k <= i
    min_from = torch.flip(torch.cummin(torch.flip(upto_i, [-1]), -1).values, [-1])  # min depth[k..i]
    min_after = torch.cat([min_from[:, :, 1:], torch.full((b, n, 1), big, dtype=depth.dtype, device=depth.device)], -1)
    return ~later[None] & (min_after > depth[:, None, :])


# --- the scorer ------------------------------------------------------------------------


class _Forward:
    """Runs blocks of sequences through the model and returns per-token log-probabilities."""

    def __init__(self, model: torch.nn.Module, dev: torch.device):
        self.model, self.dev = model, dev
        self.vocab_guess = _vocab_size(model)
        self.mask_dtype = _model_dtype(model)
        self.n_tokens = 0

    def _logprobs(self, out) -> torch.Tensor:
        logits = getattr(out, "logits", None)
        if logits is None:
            raise WorkbenchError("the model's output has no .logits")
        self.vocab_guess = logits.shape[-1]
        return torch.log_softmax(logits.float(), dim=-1)

    def plain_batch_size(self, longest: int, batch_size: int) -> int:
        if self.vocab_guess is None:  # unknown vocabulary: learn it from one sequence
            return 1
        return max(1, min(batch_size, MAX_LOGITS_ELEMENTS // max(1, longest * self.vocab_guess)))

    def plain(self, seqs: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Right-padded block of whole sequences -> log-probs of tokens 1.. of each."""
        length = max(len(s) for s in seqs) - 1
        block = np.zeros((len(seqs), length + 1), dtype=np.int64)
        for row, seq in enumerate(seqs):
            block[row, : len(seq)] = seq
        block_t = torch.from_numpy(block)
        ids, tgt = block_t[:, :-1], block_t[:, 1:]
        self.n_tokens += ids.numel()
        lp = self._logprobs(self.model(input_ids=ids.contiguous().to(self.dev), attention_mask=None))
        picked = lp.gather(-1, tgt.to(lp.device).unsqueeze(-1)).squeeze(-1).cpu().numpy()
        return [picked[row, : len(seq) - 1].copy() for row, seq in enumerate(seqs)]

    def packed(self, rows: Sequence[PackedRow], seqs: Sequence[tuple[int, ...]]) -> dict[int, np.ndarray]:
        """A batch of prefix-tree rows -> log-probs of tokens 1.. of each member sequence."""
        length = max(len(r.tokens) for r in rows)
        ids = np.zeros((len(rows), length), dtype=np.int64)
        depth = np.full((len(rows), length), np.iinfo(np.int64).max, dtype=np.int64)
        owners = [(i, len(path)) for row in rows for i, path in row.members]
        total = sum(n for _, n in owners)
        b_idx = np.repeat(np.arange(len(rows)), [sum(len(p) for _, p in row.members) for row in rows])
        n_idx = np.fromiter(chain.from_iterable(p for row in rows for _, p in row.members), np.int64, total)
        t_idx = np.fromiter(chain.from_iterable(seqs[i][1:] for row in rows for i, _ in row.members), np.int64, total)
        for r, row in enumerate(rows):
            ids[r, : len(row.tokens)] = row.tokens
            depth[r, : len(row.depth)] = row.depth
        depth_t = torch.from_numpy(depth)
        allowed = ancestor_mask(depth_t)
        mask = torch.zeros(allowed.shape, dtype=self.mask_dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.mask_dtype).min)
        positions = depth_t.masked_fill(depth_t >= length, 0)  # padding nodes: any valid position
        self.n_tokens += ids.size
        out = self.model(
            input_ids=torch.from_numpy(ids).to(self.dev),
            attention_mask=mask[:, None].to(self.dev),
            position_ids=positions.to(self.dev),
        )
        lp = self._logprobs(out)
        index = [torch.from_numpy(x).to(lp.device) for x in (b_idx, n_idx, t_idx)]
        picked = lp[index[0], index[1], index[2]].cpu().numpy()
        res, at = {}, 0
        for i, n in owners:
            res[i] = picked[at : at + n].copy()
            at += n
        return res


def _plain_plan(keys: Sequence[tuple[int, ...]], subset: Sequence[int]) -> tuple[dict[int, int], list[int]]:
    """Prefix hosts of ``subset`` and the sequences to run, longest first."""
    host = _prefix_hosts(keys, subset)
    return host, sorted(set(host.values()), key=lambda k: (-len(keys[k]), keys[k]))


def _prefix_hosts(keys: Sequence[tuple[int, ...]], subset: Sequence[int]) -> dict[int, int]:
    """For each sequence in ``subset``, a sequence of ``subset`` that it is a prefix of (itself if none)."""
    order = sorted(subset, key=lambda k: keys[k])
    host = {k: k for k in subset}
    for pos in range(len(order) - 2, -1, -1):
        a, b = keys[order[pos]], keys[order[pos + 1]]
        if len(a) <= len(b) and b[: len(a)] == a:
            host[order[pos]] = host[order[pos + 1]]
    return host


def _unique_sequences(
    requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int
) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray, np.ndarray]:
    """Check the requests and left-truncate each to ``max_length + 1`` tokens; identical token
    sequences are run once. Returns (unique sequences, request -> sequence, continuation
    lengths, truncated flags)."""
    n = len(requests)
    cont_len = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    req_seq = np.empty(n, dtype=np.int64)
    uniq: dict[tuple[int, ...], int] = {}
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise WorkbenchError(f"request {i}: empty context or continuation (use the prefix token as context)")
        if len(cont) > max_length:
            raise WorkbenchError(
                f"request {i}: continuation of {len(cont)} tokens exceeds the model's maximum length {max_length}"
            )
        full = tuple(ctx) + tuple(cont)
        if len(full) > max_length + 1:
            full = full[-(max_length + 1) :]
            truncated[i] = True
        cont_len[i] = len(cont)
        req_seq[i] = uniq.setdefault(full, len(uniq))
    return list(uniq), req_seq, cont_len, truncated


def _continuation_loglik(
    keys: Sequence[tuple[int, ...]],
    req_seq: np.ndarray,
    cont_len: np.ndarray,
    token_lp: Mapping[int, np.ndarray],
    host: Mapping[int, int],
) -> np.ndarray:
    """Each request's continuation log-likelihood from the per-sequence token log-probs (a
    sequence that is a prefix of another reads its host's row)."""
    loglik = np.empty(len(req_seq), dtype=np.float64)
    for i in range(len(req_seq)):
        k = int(req_seq[i])
        s_len = len(keys[k])
        lp_row = token_lp[k] if k in token_lp else token_lp[host[k]]
        c = int(cont_len[i])
        # continuation tokens sit at sequence positions s_len-c .. s_len-1,
        # predicted at input positions s_len-c-1 .. s_len-2
        loglik[i] = float(lp_row[s_len - c - 1 : s_len - 1].sum(dtype=np.float32))
    return loglik


def score_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "scoring",
    share_prefixes: bool | None = None,
) -> ScoreResult:
    """Log-likelihood of each ``(context, continuation)`` token request.

    ``context`` must be non-empty (use the prefix token for an empty context) and the
    continuation at most ``max_length`` tokens long. ``batch_size`` is the number of
    sequences per forward pass (a packed pass holds about ``batch_size *
    PACKED_TOKENS_PER_SEQUENCE`` tokens).
    ``share_prefixes``: ``None`` (auto: on for float32/float64 models that take
    ``position_ids``, after a check against the plain path), ``True`` (on; a failed
    check is an error) or ``False``.
    """
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else model_device(model)
    keys, req_seq, cont_len, truncated = _unique_sequences(requests, max_length)

    fwd = _Forward(model, dev)
    sharing = _sharing_wanted(model, share_prefixes)
    rows: list[PackedRow] = []
    if sharing:
        short = [k for k in range(len(keys)) if len(keys[k]) - 1 <= PACKED_ROW_NODES]
        planned = plan_prefix_trees([keys[k][:-1] for k in short], PACKED_ROW_NODES)
        rows = [
            PackedRow(r.tokens, r.depth, [(short[i], p) for i, p in r.members]) for r in planned if len(r.members) > 1
        ]
        sharing = bool(rows)
    in_rows = {i for r in rows for i, _ in r.members}
    host, hosts = _plain_plan(keys, [k for k in range(len(keys)) if k not in in_rows])

    token_lp: dict[int, np.ndarray] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(hosts) + len(in_rows), desc=desc, unit="seq", leave=False)
    tick = bar.update if bar is not None else (lambda _n: None)
    try:
        with torch.inference_mode():
            if rows:
                sharing = _run_packed(fwd, rows, keys, batch_size, share_prefixes, token_lp, tick)
                if not sharing:  # the check failed in auto mode: every sequence goes the plain way
                    host, hosts = _plain_plan(keys, range(len(keys)))
                    if bar is not None:
                        bar.reset(total=len(hosts))
            _run_plain(fwd, hosts, keys, batch_size, token_lp, tick)
    finally:
        if bar is not None:
            bar.close()

    loglik = _continuation_loglik(keys, req_seq, cont_len, token_lp, host)
    n_run = len(hosts) + (len(in_rows) if sharing else 0)
    return ScoreResult(
        loglik=loglik,
        n_tokens=cont_len,
        truncated=truncated,
        n_forward_sequences=n_run,
        prefix_sharing=sharing,
        n_forward_tokens=fwd.n_tokens,
    )


def _sharing_wanted(model: torch.nn.Module, share_prefixes: bool | None) -> bool:
    if share_prefixes is False:
        return False
    if share_prefixes is None:
        return _accepts_position_ids(model) and _model_dtype(model) in (torch.float32, torch.float64)
    if not _accepts_position_ids(model):
        raise WorkbenchError("share_prefixes=True needs a model whose forward takes position_ids")
    return True


def _run_plain(fwd: _Forward, hosts: list[int], keys, batch_size: int, token_lp: dict, tick: Callable) -> None:
    start = 0
    while start < len(hosts):
        chunk = hosts[start : start + fwd.plain_batch_size(len(keys[hosts[start]]) - 1, batch_size)]
        start += len(chunk)
        for k, lp in zip(chunk, fwd.plain([keys[k] for k in chunk])):
            token_lp[k] = lp
        tick(len(chunk))


def _run_packed(
    fwd: _Forward,
    rows: list[PackedRow],
    keys,
    batch_size: int,
    share_prefixes: bool | None,
    token_lp: dict,
    tick: Callable,
) -> bool:
    """Score the packed rows; ``False`` when the first batch disagrees with the plain path (auto mode)."""
    rows = sorted(rows, key=lambda r: -len(r.tokens))
    budget = batch_size * PACKED_TOKENS_PER_SEQUENCE
    start, checked = 0, False
    while start < len(rows):
        width = len(rows[start].tokens)
        batch = rows[start : start + fwd.plain_batch_size(width, max(1, budget // width))]
        start += len(batch)
        got = fwd.packed(batch, keys)
        if not checked:
            checked = True
            sample = [i for i, _ in batch[0].members[:4]]
            ref = fwd.plain([keys[i] for i in sample])
            worst = max(float(np.max(np.abs(got[i] - r))) for i, r in zip(sample, ref))
            if not worst <= PACKED_CHECK_TOLERANCE:
                if share_prefixes:
                    raise WorkbenchError(
                        f"prefix sharing changes this model's log-probabilities by up to {worst:.3g} "
                        "(the model ignores position_ids or custom 4-D attention masks); "
                        "run with prefix sharing off"
                    )
                warnings.warn(
                    f"prefix sharing switched off: it changed this model's log-probabilities by up to "
                    f"{worst:.3g} (the model ignores position_ids or custom 4-D attention masks)",
                    stacklevel=3,
                )
                return False
        token_lp.update(got)
        tick(sum(len(r.members) for r in batch))
    return True
