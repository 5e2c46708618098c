"""Activation matching: the alignment that pairs each unit of the other model with the unit of
the reference whose activations correlate best with it, on the same token sequences.

Both models run on the same batches; forward hooks record, per layer, the residual stream
(the embedding output and every layer's output: one permutation for all of them, so their
correlations are summed), the MLP hidden units (the input of ``down_proj``), the q, k and v
projections and the attention output per head (the input of ``o_proj``). Units are matched by
the Pearson correlation of their activations; q/k pairs, which may only rotate together, by the
cross-covariance of the pair normalised by both pairs' variance (1 for identical pairs, like a
correlation, and invariant to the rotation being sought). The statistics are accumulated in
float64; groups are recorded in passes over the data sized to a memory budget, so a large model
needs several passes, not memory for all of its cross-correlation matrices at once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.align.matching import HeadBlocks, assign, match_heads, row_products
from workbench.align.symmetry import AlignSpec
from workbench.align.transform import Alignment, LayerAlignment, identity_alignment
from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["activation_matching", "alignment_sequences", "data_files"]

#: bytes of float64 statistics recorded per pass over the data
PASS_BUDGET = 2 * 1024**3


def data_files(
    data: str | os.PathLike | Sequence[str | os.PathLike], data_dir: str | os.PathLike | None = None
) -> list[Path]:
    """The text files ``data`` names: files or glob patterns, or ``"corpus"`` for the data
    directory's ``corpus/*.txt`` (WorkbenchError when nothing matches)."""
    from workbench.factory.corpus import resolve_corpus
    from workbench.io.datadir import resolve_data_dir

    if isinstance(data, (str, os.PathLike)) and str(data) == "corpus":
        return resolve_corpus(["corpus/*.txt"], resolve_data_dir(data_dir))
    return resolve_corpus([data] if isinstance(data, (str, os.PathLike)) else list(data))


def alignment_sequences(
    tokenizer: PreTrainedTokenizerBase,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    n_sequences: int = 256,
    seq_len: int = 128,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """``[n, seq_len]`` token blocks for activation matching, ``n <= n_sequences``.

    ``data``: text files or glob patterns (documents separated by blank lines), or
    ``"corpus"`` for the data directory's ``corpus/*.txt``. Documents are shuffled with
    ``seed``, encoded as the factory's training stream (BOS + text + EOS, concatenated) until
    enough tokens are read, and cut into blocks; fewer blocks than asked are used when the text
    is short, none is an error.
    """
    from workbench.factory.corpus import encode_stream, read_documents

    if n_sequences < 1 or seq_len < 2:
        raise WorkbenchError(
            f"activation matching: n_sequences={n_sequences} and seq_len={seq_len} must be >= 1 and >= 2"
        )
    files = data_files(data, data_dir)
    docs = read_documents(files)
    random.Random(int(seed)).shuffle(docs)
    need = n_sequences * seq_len
    stream: list[int] = []
    for i in range(0, len(docs), 64):
        stream += encode_stream(tokenizer, docs[i : i + 64])
        if len(stream) >= need:
            break
    n = min(n_sequences, len(stream) // seq_len)
    if n == 0:
        raise WorkbenchError(
            f"activation matching: {', '.join(map(str, files))} hold {len(stream)} tokens, "
            f"fewer than one sequence of seq_len={seq_len}"
        )
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


class _Stats:
    """Running sums for the correlation of features ``a`` (reference) and ``b`` (other)."""

    def __init__(self, f: int, device: torch.device):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.n = 0
        self.sa, self.sb, self.qa, self.qb, self.ab = z(f), z(f), z(f), z(f), z(f, f)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        self.n += a.shape[0]
        self.sa += a.sum(0, dtype=torch.float64)
        self.sb += b.sum(0, dtype=torch.float64)
        self.qa += a.double().square().sum(0)
        self.qb += b.double().square().sum(0)
        self.ab += row_products(a.T, b.T)

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cross-covariance [F, F], variance of a [F], variance of b [F])."""
        n = max(self.n, 1)
        ma, mb = self.sa / n, self.sb / n
        va = (self.qa / n - ma.square()).clamp_min(0)
        vb = (self.qb / n - mb.square()).clamp_min(0)
        return self.ab / n - ma[:, None] * mb[None, :], va, vb

    def correlation(self) -> torch.Tensor:
        cov, va, vb = self.covariance()
        return cov / (va[:, None] * vb[None, :]).sqrt().clamp_min(1e-12)

    def pair_normalised(self, head_dim: int) -> torch.Tensor:
        """Cross-covariance divided by the summed variance of each side's RoPE pair."""
        cov, va, vb = self.covariance()

        def pair_var(v: torch.Tensor) -> torch.Tensor:
            h = v.reshape(-1, 2, head_dim // 2)
            return (h[:, 0] + h[:, 1]).unsqueeze(1).expand(-1, 2, -1).reshape(-1)

        return cov / (pair_var(va)[:, None] * pair_var(vb)[None, :]).sqrt().clamp_min(1e-12)


def _groups(spec: AlignSpec) -> list[tuple[str, int | None, int]]:
    """(kind, layer, features) of every statistic to record."""
    out: list[tuple[str, int | None, int]] = [("res", None, spec.hidden)]
    for i in range(spec.n_layers):
        out += [("res", i, spec.hidden), ("mlp", i, spec.intermediate)]
        out += [(k, i, spec.size(k)) for k in ("q", "k", "v", "o")]
    return out


def _passes(groups: list, budget: int) -> list[list]:
    passes, cur, used = [], [], 0
    for g in groups:
        size = 8 * g[2] * (g[2] + 4)
        if cur and used + size > budget:
            passes.append(cur)
            cur, used = [], 0
        cur.append(g)
        used += size
    return passes + ([cur] if cur else [])


def _module_of(spec: AlignSpec, kind: str, layer: int | None) -> tuple[str, bool]:
    """(module name, whether to record its input rather than its output) of one statistic."""
    if layer is None:
        return spec.weight_of(None, "embed").removesuffix(".weight"), False
    if kind == "res":  # the layer's output: the decoder layer module holding its tensors
        name = spec.weight_of(layer, "attn_q")
        return name[: name.index(f".{layer}.") + len(f".{layer}")], False
    group = {"mlp": "mlp_down", "q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_o"}[kind]
    return spec.weight_of(layer, group).removesuffix(".weight"), kind in ("mlp", "o")


def _record(model: PreTrainedModel, spec: AlignSpec, groups: list, store: dict) -> list:
    handles = []
    for key in groups:
        kind, layer, _ = key
        name, pre = _module_of(spec, kind, layer)
        mod = model.get_submodule(name)

        def hook(_m, args, out=None, key=key, pre=pre):
            x = args[0] if pre else (out[0] if isinstance(out, tuple) else out)
            store[key] = x.detach().float()

        handles.append(mod.register_forward_pre_hook(hook) if pre else mod.register_forward_hook(hook))
    return handles


def activation_matching(
    reference: PreTrainedModel,
    other: PreTrainedModel,
    spec: AlignSpec,
    sequences: torch.Tensor,
    *,
    batch_size: int = 16,
    rotations: bool = True,
    progress: bool = False,
    budget: int = PASS_BUDGET,
) -> Alignment:
    """Find the alignment of ``other`` onto ``reference`` from their activations on
    ``sequences`` ([n, seq_len] token ids, e.g. from :func:`alignment_sequences`). Both models
    must be on the same device, in eval mode."""
    from tqdm.auto import tqdm

    device = next(reference.parameters()).device
    # every hook sits in the base model: running it alone skips the lm_head product
    runs = [getattr(m, m.base_model_prefix, m) for m in (reference, other)]
    passes = _passes(_groups(spec), budget)
    stats: dict = {}
    batches = list(torch.split(sequences, batch_size))
    bar = tqdm(
        total=len(passes) * len(batches), desc="activation matching", unit="batch", disable=not progress, leave=False
    )
    try:
        for groups in passes:
            acc = {g: _Stats(g[2], device) for g in groups}
            got_a: dict = {}
            got_b: dict = {}
            handles = _record(reference, spec, groups, got_a) + _record(other, spec, groups, got_b)
            try:
                with torch.no_grad():
                    for ids in batches:
                        ids = ids.to(device)
                        for run in runs:
                            run(input_ids=ids, use_cache=False)
                        for g in groups:
                            acc[g].add(got_a[g], got_b[g])
                        bar.update(1)
            finally:
                for h in handles:
                    h.remove()
            stats.update(acc)
    finally:
        bar.close()
    return _alignment_from(stats, spec, rotations=rotations and spec.rotations)


def _alignment_from(stats: dict, spec: AlignSpec, *, rotations: bool) -> Alignment:
    al = identity_alignment(spec)
    res = sum(stats[("res", i, spec.hidden)].correlation() for i in [None, *range(spec.n_layers)])
    al.residual = assign(res.cpu())
    kv, rep, hd = spec.n_kv, spec.n_rep, spec.head_dim
    for i in range(spec.n_layers):
        st = {k: stats[(k, i, spec.size(k) if k != "mlp" else spec.intermediate)] for k in ("mlp", "q", "k", "v", "o")}
        blocks = HeadBlocks(
            q=st["q"].pair_normalised(hd).cpu().reshape(kv, rep, hd, kv, rep, hd),
            k=st["k"].pair_normalised(hd).cpu().reshape(kv, hd, kv, hd),
            v=st["v"].correlation().cpu().reshape(kv, hd, kv, hd),
            o=st["o"].correlation().cpu().reshape(kv, rep, hd, kv, rep, hd),
        )
        kv_p, query, vo, angles = match_heads(blocks, rotations=rotations)
        al.layers[i] = LayerAlignment(assign(st["mlp"].correlation().cpu()), kv_p, query, vo, angles)
    return al
