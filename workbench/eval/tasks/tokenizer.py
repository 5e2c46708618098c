"""Tokenizer conventions of lm-eval's HF model: the prefix token, batched encodings, the
tokenizer's fingerprint, and the context length a model is scored with.

>>> context_length({"max_position_embeddings": 128}, None)
128
>>> context_length({"text_config": {"n_positions": 64}}, None)
64
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError

#: a tokenizer's ``model_max_length`` when it has none (transformers' VERY_LARGE_INTEGER)
_TOKENIZER_INFINITY = 1000000000000000019884624838656
DEFAULT_MAX_LENGTH = 2048

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

        def ref_call(xs: list[str]) -> list[list[int]]:
            return [list(x) for x in self.tk(xs, add_special_tokens=add_special_tokens)["input_ids"]]

        backend = getattr(self.tk, "_tokenizer", None)
        fast = getattr(backend, "encode_batch_fast", None)
        if fast is None:
            return ref_call(strings)
        sample = strings[:: max(1, len(strings) // 16)]
        # the tokenizer's own call first: it sets the backend's truncation, padding and
        # special-token handling, which are checked after it
        expected = ref_call(sample)
        if (
            getattr(backend, "truncation", None)
            or getattr(backend, "padding", None)
            or [e.ids for e in fast(sample, add_special_tokens=add_special_tokens)] != expected
        ):
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


@dataclass(frozen=True)
class TokenizerFacts:
    """What of a tokenizer changes an evaluation's numbers (and is recorded with them)."""

    prefix_token_id: int
    prefix_token: str  # "bos" or "eos": the token the first token is conditioned on
    adds_bos: bool
    sha256: str

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerFacts:
        """The facts of a Hugging Face tokenizer (or of a :class:`_Tok`, or facts as they are)."""
        if isinstance(tokenizer, TokenizerFacts):
            return tokenizer
        tok = tokenizer if isinstance(tokenizer, _Tok) else _Tok(tokenizer)
        return cls(tok.prefix_id, tok.prefix_kind, tok.adds_bos(), tok.fingerprint())


def tokenizer_sha256(tokenizer: Any) -> str:
    """The ``tokenizer_sha256`` that evaluation records and keys results by: sha256 of the
    tokenizer's serialised form, its prefix token and whether it adds BOS."""
    return _Tok(tokenizer).fingerprint()


def context_length(config: Any, tokenizer: Any) -> int:
    """The context length lm-eval uses for a model with this config (object or dict): its
    ``n_positions``, ``max_position_embeddings`` or ``n_ctx`` (a multimodal config's
    ``text_config`` first); else the tokenizer's ``model_max_length``; else 2048."""

    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)

    cfg = get(config, "text_config") or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = get(cfg, attr)
        if v is not None:
            return int(v)
    v = getattr(tokenizer, "model_max_length", None)
    if v is not None and v != _TOKENIZER_INFINITY:
        return int(v)
    return DEFAULT_MAX_LENGTH


def resolve_max_length(model: Any, tokenizer: Any) -> int:
    """The context length lm-eval uses for ``model`` (see :func:`context_length`)."""
    return context_length(getattr(model, "config", None), tokenizer)
