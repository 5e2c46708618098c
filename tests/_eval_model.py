"""A small causal LM made on the spot for the evaluation tests and benchmark.

A byte-level BPE tokenizer (adds BOS) trained with ``tokenizers`` on a slice of the
reference corpus and a 2-layer LlamaForCausalLM trained for a few dozen steps on the
same slice, saved as a Hugging Face model directory. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CORPUS_FILES = ("brown.txt", "webtext.txt")


def corpus_slice(shared_data: Path, n_chars: int = 1_500_000) -> str:
    parts = []
    per = n_chars // len(CORPUS_FILES)
    for name in CORPUS_FILES:
        parts.append((shared_data / "corpus" / name).read_text(encoding="utf-8")[:per])
    return "\n\n".join(parts)


def build_tiny_model(
    out_dir: Path, shared_data: Path, *, vocab_size: int = 2048, max_len: int = 128, steps: int = 40, seed: int = 0
) -> Path:
    """Build (once) and return an HF model dir with a BOS-adding tokenizer."""
    out_dir = Path(out_dir)
    if (out_dir / "done.json").is_file():
        return out_dir
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread, and shared cores stay free
    try:
        return _build(out_dir, shared_data, vocab_size, max_len, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, shared_data: Path, vocab_size: int, max_len: int, steps: int, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = corpus_slice(shared_data)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(text.split("\n\n"), trainer=trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=max_len
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_len,
        bos_token_id=bos,
        eos_token_id=tk.token_to_id("</s>"),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    ids = torch.tensor(tk.encode(text[:400_000]).ids)
    n = (len(ids) // max_len) * max_len
    data = ids[:n].view(-1, max_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(0, data.shape[0], (8,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "done.json").write_text(json.dumps({"final_loss": float(loss.detach())}))
    return out_dir


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: the tiny model gains nothing from more, and shared CI cores stay free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, shared_data) -> Path:
    return build_tiny_model(tmp_path_factory.getbasetemp() / "eval_tiny_model", shared_data)
