"""Tokenizer sources: vocabularies of different sizes merged as mergekit 0.1.5 merges them
(embedding and lm_head rows aligned by token string), the ``tokenizer:`` block's per-token
sources and padding, output tokenizers that round-trip, and chat templates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mergekit_oracle import relative_error, run_mergekit  # noqa: E402

from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge import merge_in_memory, merge_to_disk, merged_model
from workbench.merge.chat import TEMPLATES
from workbench.merge.plan import plan_merge
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=32)
SPECIALS = ["<pad>", "<s>", "</s>"]
TEXTS = ["hello world", "zebra quiz", "<|x|> jumps", "ab ba"]
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _with_vocab(model_dir: Path, tokens: list[str], added: list[str] = ()) -> Path:
    """Give ``model_dir`` (written with ``vocab_size == len(tokens) + len(added)``) a word-level
    tokenizer over single characters ``tokens`` (specials first) plus special ``added`` tokens."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    extra = [
        {"id": len(tokens) + k, "content": t, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for k, t in enumerate(added)
    ]
    tok["added_tokens"] = tok["added_tokens"][:3] + extra
    (model_dir / "tokenizer.json").write_text(json.dumps(tok))
    return model_dir


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vocab_models")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    ta = SPECIALS + [" "] + letters[:20]  # a..t
    tb = SPECIALS + letters[25:5:-1] + ["é", " "]  # z..g (reversed), é, space: other ids
    a = write_random_llama(root / "ta", seed=0, vocab_size=len(ta), **DIMS)
    b = write_random_llama(root / "tb", seed=1, vocab_size=len(tb) + 1, **DIMS)
    c = write_random_llama(root / "tc", seed=2, vocab_size=len(ta), **DIMS)
    return {
        "ta": str(_with_vocab(a, ta)),
        "tb": str(_with_vocab(b, tb, added=["<|x|>"])),
        "tc": str(_with_vocab(c, ta[:-4] + ["ü", "ö", "ä", "ß"])),
    }


def _rows(model_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Per vocabulary tensor: token -> its row, read through the model directory's own tokenizer."""
    ck, vocab = open_checkpoint(model_dir), load_tokenizer(model_dir).get_vocab()
    return {n: {t: ck.get(n)[i] for t, i in vocab.items()} for n in VOCAB_TENSORS}


def _same_by_token(ours: Path, ref: Path) -> None:
    mine, theirs = _rows(ours), _rows(ref)
    for name in VOCAB_TENSORS:
        assert set(mine[name]) == set(theirs[name]), name
        for token, want in theirs[name].items():
            assert relative_error(mine[name][token], want) <= 1e-6, (name, token)
    other = open_checkpoint(ours)
    for n in open_checkpoint(ref).names():
        if n not in VOCAB_TENSORS:
            assert relative_error(other.get(n), open_checkpoint(ref).get(n)) <= 1e-6, n


def _linear(models: list[str], **top) -> dict:
    weights = [0.5, 0.3, 0.2][: len(models)]
    entries = [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, weights)]
    return {"merge_method": "linear", "models": entries, "dtype": "float32", **top}


@pytest.mark.oracle
def test_union_of_different_vocabularies_matches_mergekit_token_by_token(vocab_models, tmp_path):
    m = vocab_models
    recipe = _linear([m["ta"], m["tb"], m["tc"]], base_model=m["ta"], tokenizer_source="union")
    ref = run_mergekit(recipe, tmp_path / "mergekit")
    out = merge_to_disk(recipe, tmp_path / "ours", progress=False)
    _same_by_token(out, ref)
    vocab = load_tokenizer(out).get_vocab()
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) == json.loads((ref / "config.json").read_text())["vocab_size"]
    # the base's ids are kept; the others' tokens come after them
    base_vocab = load_tokenizer(m["ta"]).get_vocab()
    assert all(vocab[t] == i for t, i in base_vocab.items())
    assert {"é", "<|x|>", "ü", "z"} <= set(vocab) and min(vocab[t] for t in ("é", "z", "ü")) >= len(base_vocab)
    # in memory: the same tensors, and a model that runs
    mem = merge_in_memory(recipe)
    disk = open_checkpoint(out)
    assert all(torch.equal(mem[n], disk.get(n)) for n in mem)
    ids = load_tokenizer(out)("zebra <|x|>", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(load_model(out)(input_ids=ids).logits, merged_model(recipe)(input_ids=ids).logits)


@pytest.mark.oracle
def test_tokenizer_block_tokens_and_padding_match_mergekit(vocab_models, tmp_path):
    m = vocab_models
    tokens = {
        "a": {"source": m["ta"], "force": True},  # ta's row of "a" for every model
        "d": {"source": {"kind": "zero"}},
        "<|new|>": {"source": {"kind": "model_token", "model": m["tb"], "token_id": 5}},
        "z": {"source": {"kind": "model_token", "model": m["ta"], "token": "<s>"}, "force": True},
    }
    recipe = _linear(
        [m["ta"], m["tb"]], base_model=m["ta"], tokenizer={"source": "union", "tokens": tokens, "pad_to_multiple_of": 8}
    )
    ref = run_mergekit(recipe, tmp_path / "mergekit")
    out = merge_to_disk(recipe, tmp_path / "ours", progress=False)
    _same_by_token(out, ref)
    n = len(load_tokenizer(out).get_vocab())
    ours, theirs = open_checkpoint(out), open_checkpoint(ref)
    rows = ours.get("model.embed_tokens.weight")
    assert rows.shape[0] == theirs.get("model.embed_tokens.weight").shape[0] == -(-n // 8) * 8
    assert relative_error(rows[n:], theirs.get("model.embed_tokens.weight")[n:]) <= 1e-6  # padding: mean rows


@pytest.mark.oracle
def test_tokenizer_from_a_model_and_base_match_mergekit(vocab_models, tmp_path):
    m = vocab_models
    for i, source in enumerate((m["tc"], "base")):
        recipe = _linear([m["ta"], m["tc"]], base_model=m["ta"], tokenizer_source=source)
        ref = run_mergekit(recipe, tmp_path / f"mergekit{i}")
        _same_by_token(merge_to_disk(recipe, tmp_path / f"ours{i}", progress=False), ref)


def test_output_tokenizer_round_trips(vocab_models, tmp_path):
    m = vocab_models
    recipe = _linear([m["ta"], m["tb"]], base_model=m["ta"], tokenizer_source="union", chat_template="chatml")
    built = plan_merge(recipe).tokenizer
    out = merge_to_disk(recipe, tmp_path / "ours", progress=False)
    again = load_tokenizer(out)
    assert again.get_vocab() == built.get_vocab()
    assert [again(t).input_ids for t in TEXTS] == [built(t).input_ids for t in TEXTS]
    assert again("é<|x|>").input_ids[-2:] == [built.get_vocab()["é"], built.get_vocab()["<|x|>"]]
    assert again.chat_template == TEMPLATES["chatml"]
    twice = merge_to_disk(recipe, tmp_path / "twice", progress=False)  # deterministic order of the union
    assert load_tokenizer(twice).get_vocab() == again.get_vocab()


def test_different_vocabularies_without_a_tokenizer_source_are_refused(vocab_models, tmp_path):
    m = vocab_models
    with pytest.raises(WorkbenchError, match="vocab_size|a tokenizer_source aligns them by token"):
        merge_to_disk(_linear([m["ta"], m["tb"]]), tmp_path / "x", progress=False)
    with pytest.raises(WorkbenchError, match="either tokenizer_source or tokenizer"):
        merge_to_disk(_linear([m["ta"]], tokenizer_source="union", tokenizer={"source": "base"}), tmp_path / "x")
    bad = _linear([m["ta"], m["tb"]], tokenizer={"tokens": {"b": {"source": m["tc"]}}})
    with pytest.raises(WorkbenchError, match="not an input"):
        merge_to_disk(bad, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.oracle
def test_named_chat_templates_render_as_mergekit_s(vocab_models):
    import importlib.resources

    from mergekit._data import chat_templates
    from transformers.utils.chat_template_utils import render_jinja_template

    chats = [
        [{"role": "user", "content": "hi "}, {"role": "assistant", "content": " yo"}, {"role": "user", "content": "q"}],
        [{"role": "system", "content": " be brief "}, {"role": "user", "content": "hi"}],
    ]
    for name in ("alpaca", "chatml", "llama3", "mistral"):
        theirs = importlib.resources.files(chat_templates).joinpath(f"{name}.jinja").read_text()
        for chat in chats:
            for prompt in (False, True):
                kw = dict(conversations=[chat], add_generation_prompt=prompt, bos_token="<s>", eos_token="</s>")
                want = render_jinja_template(chat_template=theirs, **kw)[0][0]
                assert render_jinja_template(chat_template=TEMPLATES[name], **kw)[0][0] == want, (name, chat, prompt)
    exaone = render_jinja_template(conversations=[chats[0]], chat_template=TEMPLATES["exaone"])[0][0]
    assert exaone == "[|system|][|endofturn|]\n[|user|]hi \n[|assistant|] yo[|endofturn|]\n[|user|]q\n"
    with pytest.raises(WorkbenchError, match="neither auto, a template name"):
        plan_merge(_linear([vocab_models["ta"]], chat_template="chatmll"))
