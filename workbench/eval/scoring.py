"""The one batched log-likelihood scorer every task uses.

A *request* is a pair of token lists ``(context, continuation)``; its score is the sum
of the float32 log-probabilities of the continuation tokens, each conditioned on
everything before it (lm-evaluation-harness semantics). The scorer

- left-truncates ``context + continuation`` to ``max_length + 1`` tokens (and reports
  which requests were truncated), feeds all but the last token to the model;
- scores every distinct token sequence once: identical requests are merged, and a
  request whose token sequence is a prefix of another one's is read off the longer
  sequence's logits (a causal model's logits at a position depend only on the tokens
  up to it), so a context shared by several requests is run once whenever it can be;
- sorts sequences by length (longest first), right-pads them, passes an attention
  mask, and calls only ``model(input_ids=..., attention_mask=...).logits``, so any
  module returning an object with ``.logits`` works (an in-memory merge, an
  output ensemble), on any device;
- takes a float32 log-softmax over the vocabulary.

>>> import torch
>>> class Uniform(torch.nn.Module):
...     def forward(self, input_ids, attention_mask):
...         return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 4)})()
>>> r = score_requests(Uniform(), [([0], [1, 2]), ([0, 1], [2])], max_length=8, progress=False)
>>> [round(float(x), 4) for x in r.loglik], r.n_forward_sequences
([-2.7726, -1.3863], 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from workbench.errors import WorkbenchError

#: Upper bound on logits elements (batch x length x vocab) held at once.
MAX_LOGITS_ELEMENTS = 1 << 27


@dataclass
class ScoreResult:
    """Per-request results of :func:`score_requests` (same order as the requests)."""

    loglik: np.ndarray  # float64 values of float32 sums
    n_tokens: np.ndarray  # continuation tokens scored
    truncated: np.ndarray  # bool: context cut from the left to fit max_length
    n_forward_sequences: int  # distinct sequences actually run through the model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _vocab_size(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    v = getattr(cfg, "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None


def score_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "scoring",
) -> ScoreResult:
    """Log-likelihood of each ``(context, continuation)`` token request.

    ``context`` must be non-empty (use the prefix token for an empty context) and the
    continuation at most ``max_length`` tokens long.
    """
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be >= 1, got {batch_size}")
    n = len(requests)
    dev = torch.device(device) if device is not None else model_device(model)
    seqs: list[tuple[int, ...]] = []
    cont_len = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise WorkbenchError(f"request {i}: empty context or continuation (use the prefix token as context)")
        if len(cont) > max_length:
            raise WorkbenchError(
                f"request {i}: continuation of {len(cont)} tokens exceeds the model's maximum length {max_length}"
            )
        full = tuple(ctx) + tuple(cont)
        if len(full) > max_length + 1:
            full = full[-(max_length + 1):]
            truncated[i] = True
        seqs.append(full)
        cont_len[i] = len(cont)

    # distinct sequences; a sequence that is a prefix of another is served by it
    uniq: dict[tuple[int, ...], int] = {}
    req_seq = np.empty(n, dtype=np.int64)
    for i, s in enumerate(seqs):
        req_seq[i] = uniq.setdefault(s, len(uniq))
    keys = list(uniq)
    order = sorted(range(len(keys)), key=lambda k: keys[k])
    host = list(range(len(keys)))
    for pos in range(len(order) - 2, -1, -1):
        a, b = keys[order[pos]], keys[order[pos + 1]]
        if len(a) <= len(b) and b[: len(a)] == a:
            host[order[pos]] = host[order[pos + 1]]
    hosts = sorted({host[k] for k in range(len(keys))}, key=lambda k: (-len(keys[k]), keys[k]))

    token_lp: dict[int, np.ndarray] = {}
    vocab_guess = _vocab_size(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(hosts), desc=desc, unit="seq", leave=False)
    try:
        with torch.inference_mode():
            start = 0
            while start < len(hosts):
                longest = len(keys[hosts[start]]) - 1
                if vocab_guess is None:  # unknown vocabulary: learn it from one sequence
                    cap = 1
                else:
                    cap = max(1, MAX_LOGITS_ELEMENTS // max(1, longest * vocab_guess))
                chunk = hosts[start : start + min(batch_size, cap)]
                start += len(chunk)
                length = longest
                # one padded (rows, length + 1) token block: inputs are [:, :-1], targets [:, 1:]
                block = np.zeros((len(chunk), length + 1), dtype=np.int64)
                mask_np = np.zeros((len(chunk), length), dtype=np.int64)
                for row, k in enumerate(chunk):
                    seq = keys[k]
                    block[row, : len(seq)] = seq
                    mask_np[row, : len(seq) - 1] = 1
                block_t = torch.from_numpy(block)
                ids, tgt = block_t[:, :-1], block_t[:, 1:]
                mask = torch.from_numpy(mask_np)
                out = model(input_ids=ids.contiguous().to(dev), attention_mask=mask.to(dev))
                logits = getattr(out, "logits", None)
                if logits is None:
                    raise WorkbenchError("the model's output has no .logits")
                vocab_guess = logits.shape[-1]
                lp = torch.log_softmax(logits.float(), dim=-1)
                picked = lp.gather(-1, tgt.to(lp.device).unsqueeze(-1)).squeeze(-1).cpu().numpy()
                for row, k in enumerate(chunk):
                    token_lp[k] = picked[row, : len(keys[k]) - 1].copy()
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()

    loglik = np.empty(n, dtype=np.float64)
    for i in range(n):
        k = int(req_seq[i])
        s_len = len(keys[k])
        lp_row = token_lp[host[k]]
        c = int(cont_len[i])
        # continuation tokens sit at sequence positions s_len-c .. s_len-1,
        # predicted at input positions s_len-c-1 .. s_len-2
        loglik[i] = float(lp_row[s_len - c - 1 : s_len - 1].sum(dtype=np.float32))
    return ScoreResult(loglik=loglik, n_tokens=cont_len, truncated=truncated, n_forward_sequences=len(hosts))
