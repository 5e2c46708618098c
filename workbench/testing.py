"""Small random models for tests, benchmarks and examples.

:func:`write_random_llama` writes a Llama model directory (config, safetensors, a tiny
character-level tokenizer) directly, without transformers; ``like=DIR`` makes a noisy
"fine-tune" of another one. :func:`llama_config` and :func:`llama_shapes` describe it.

:func:`write_random_model` makes a tiny model of any architecture in :data:`RANDOM_ARCHS`
with transformers' own config and model classes (so tensor names, shapes, fused and
transposed layouts and tied weights are the real ones) and saves it with
``save_pretrained`` plus the same tiny tokenizer, so it can be merged and evaluated.

>>> import tempfile
>>> d = write_random_llama(Path(tempfile.mkdtemp()) / "m", hidden_size=16, num_layers=1, vocab_size=32)
>>> sorted(p.name for p in d.iterdir())
['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from workbench.checkpoints import copy_tokenizer_files, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.io.atomic import atomic_output_dir
from workbench.io.safetensors import SafetensorsWriter
from workbench.naming import LM_HEAD

__all__ = [
    "RANDOM_ARCHS",
    "llama_config",
    "llama_shapes",
    "random_model_config",
    "write_random_llama",
    "write_random_model",
]


def llama_config(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 256,
    intermediate_size: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    tie: bool = False,
    dtype: str = "float32",
    max_position_embeddings: int = 256,
) -> dict:
    """A Llama ``config.json`` dict for :func:`write_random_llama`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads or num_heads,
        "head_dim": hidden_size // num_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "dtype": dtype,
    }


def llama_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a ``LlamaForCausalLM`` with this config, in HF order."""
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings"):
        out.append((LM_HEAD, (v, h)))
    return out


def write_random_llama(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    like: str | os.PathLike | None = None,
    noise: float = 0.0,
    tokenizer: bool = True,
    max_shard_bytes: int = 5 * 1024**3,
    overwrite: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Write a random Llama model directory (config, safetensors, tokenizer) that transformers loads.

    Weights are N(0, 0.02), norms 1 + N(0, 0.02). With ``like=DIR`` the tensors are those of
    ``DIR`` plus ``noise`` * N(0, 1) (a "fine-tune" of it). Tensors are generated and written
    one at a time, so large models need little memory.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> ck = open_checkpoint(write_random_llama(d / "m", hidden_size=16, num_layers=1, vocab_size=32))
    >>> ck.shape("model.layers.0.mlp.up_proj.weight")
    (32, 16)
    """
    g = torch.Generator().manual_seed(int(seed))
    src = open_checkpoint(like) if like is not None else None
    config = dict(src.config) if src is not None else llama_config(**config_kwargs)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        str(config.get("dtype") or config.get("torch_dtype") or "float32")
    ]
    shapes = llama_shapes(config)
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        w = SafetensorsWriter(tmp, [(n, dtype, s) for n, s in shapes], max_shard_bytes=max_shard_bytes)
        for name, shape in shapes:
            if src is not None:
                x = src.get(name).to(torch.float32)
                x = x + noise * torch.randn(shape, generator=g)
            elif name.endswith("norm.weight"):
                x = 1.0 + 0.02 * torch.randn(shape, generator=g)
            else:
                x = 0.02 * torch.randn(shape, generator=g)
            w.add(name, x.to(dtype))
        w.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer:
            if src is not None and (src.path / "tokenizer.json").is_file():
                copy_tokenizer_files(src.path, tmp)
            else:
                _write_tiny_tokenizer(tmp, config["vocab_size"])
    return out


#: Per config ``model_type``: the transformers config class and the size keywords it takes
#: beyond the common ones (h = hidden size, L = layers, V = vocabulary, P = positions).
_ARCH_CONFIGS: dict[str, tuple[str, Any]] = {
    "llama": ("LlamaConfig", lambda h: {}),
    "mistral": ("MistralConfig", lambda h: {}),
    "qwen2": ("Qwen2Config", lambda h: {}),
    "qwen3": ("Qwen3Config", lambda h: {"head_dim": h // 4}),
    "gemma2": ("Gemma2Config", lambda h: {"head_dim": h // 4, "sliding_window": 16}),
    "gemma3_text": ("Gemma3TextConfig", lambda h: {"head_dim": h // 4, "sliding_window": 16}),
    "phi3": ("Phi3Config", lambda h: {}),
    "olmo2": ("Olmo2Config", lambda h: {}),
    "mixtral": ("MixtralConfig", lambda h: {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        lambda h: {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": h,
            "shared_expert_intermediate_size": 2 * h,
        },
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        lambda h: {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": h, "head_dim": h // 4},
    ),
    "gpt2": ("GPT2Config", None),
    "gpt_neox": ("GPTNeoXConfig", lambda h: {}),
    "bert": ("BertConfig", lambda h: {}),
}
#: The architectures :func:`write_random_model` builds (config ``model_type`` names).
RANDOM_ARCHS = tuple(_ARCH_CONFIGS)


def random_model_config(
    arch: str,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 128,
    max_positions: int = 128,
    tie: bool | None = None,
    **overrides: Any,
) -> Any:
    """A tiny transformers config of architecture ``arch`` (one of :data:`RANDOM_ARCHS`).

    4 attention heads (2 key-value heads where the architecture has them), an MLP twice as
    wide as ``hidden_size``, special tokens 0-2 as the tiny tokenizer has them. ``tie``:
    tie the output projection to the embeddings (None: the architecture's default).
    """
    import transformers

    if arch not in _ARCH_CONFIGS:
        raise WorkbenchError(f"write_random_model: unknown architecture {arch!r}; use one of {', '.join(RANDOM_ARCHS)}")
    cls_name, extra = _ARCH_CONFIGS[arch]
    h = hidden_size
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if extra is None:  # GPT-2 spells its sizes n_*
        kw = {"n_embd": h, "n_layer": num_layers, "n_head": 4, "n_inner": 2 * h, "n_positions": max_positions}
        special.pop("pad_token_id")
    else:
        kw = {
            "hidden_size": h,
            "intermediate_size": 2 * h,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": max_positions,
            **({} if arch in ("gpt_neox", "bert") else {"num_key_value_heads": 2}),
            **extra(h),
        }
    kw.update(vocab_size=vocab_size, **special)
    if tie is not None:
        kw["tie_word_embeddings"] = bool(tie)
    kw.update(overrides)
    return getattr(transformers, cls_name)(**kw)


def write_random_model(
    arch: str,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: str = "float32",
    tokenizer: bool = True,
    overwrite: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Write a tiny random model of architecture ``arch`` (see :func:`random_model_config`
    for the sizes and ``config_kwargs``) with ``save_pretrained`` and a tiny tokenizer.

    Same ``arch``, sizes and ``seed`` give the same tensors. transformers' initialisation
    leaves norms at 1 and biases at 0 in every model; each parameter then gets N(0, 0.02)
    noise from ``seed``, so two seeds differ in every tensor. ``dtype``: float32, bfloat16
    or float16. Encoders (``bert``) are saved as the base model (``AutoModel``).
    """
    import transformers

    config = random_model_config(arch, **config_kwargs)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    auto = transformers.AutoModel if arch == "bert" else transformers.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = auto.from_config(config)
    g = torch.Generator().manual_seed(int(seed) + 1)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters appear once
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    model = model.to(torch_dtype)
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer:
            _write_tiny_tokenizer(tmp, config.vocab_size)
    return out


def _write_tiny_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level word-piece-free tokenizer: ids 0-2 specials, then single characters."""
    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + max(0, vocab_size - 98))]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in chars:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(ch, len(vocab))
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for c, i in (("<pad>", 0), ("<s>", 1), ("</s>", 2))
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": ""}, "behavior": "Isolated", "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "</s>"},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "</s>",
                "model_max_length": 256,
            }
        )
    )
