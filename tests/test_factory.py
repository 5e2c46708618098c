"""Checkpoint factory: the tiny family trains and loads; recipes, resume and bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from workbench.errors import WorkbenchError
from workbench.factory import (
    Family,
    batch_order,
    heldout_perplexity,
    load_family,
    load_train_recipe,
    lr_at,
    train_family,
)

# A recipe small enough to train several times per test (about a second each).
MICRO = {
    "name": "micro",
    "seed": 3,
    "data": {"corpus": ["c.txt"], "heldout_fraction": 0.1},
    "tokenizer": {"vocab_size": 300},
    "model": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "optim": {"seq_len": 16, "batch_size": 4, "warmup_steps": 2},
    "trajectory": {"steps": 12, "checkpoint_every": 3, "keep_last": 3},
    "siblings": {"count": 2},
    "independent": {"count": 1, "steps": 6},
}


@pytest.fixture(scope="module")
def micro_corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~20 kB of real text cut into documents of five lines."""
    lines = (shared_data / "corpus" / "inaugural.txt").read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if ln.strip()][:150]
    docs = ["\n".join(lines[i : i + 5]) for i in range(0, len(lines), 5)]
    path = tmp_path_factory.mktemp("micro") / "c.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def micro(corpus: Path, **changes) -> dict:
    recipe = json.loads(json.dumps(MICRO))
    recipe["data"]["corpus"] = [str(corpus)]
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe[section][field] = value
        else:
            recipe[section] = value
    return recipe


# --- the tiny family (trained once per session by the conftest fixture) --------------------


def test_tiny_family_layout(tiny_family: Family) -> None:
    r = tiny_family.recipe
    assert r.name == "tiny"
    assert len(tiny_family.trajectory) == r.trajectory.keep_last
    assert [p.name for p in tiny_family.trajectory] == [f"step-{s:06d}" for s in r.kept_steps()]
    assert len(tiny_family.siblings) == r.siblings.count
    assert len(tiny_family.independent) == r.independent.count
    assert tiny_family.annealed is not None
    assert tiny_family.heldout.read_text(encoding="utf-8").strip()
    info = yaml.safe_load((tiny_family.root / "family.yaml").read_text())
    assert info["status"] == "complete"
    assert info["annealed"]["from_step"] == r.window_start()
    # the annealed control spans exactly the soup window: same start, same tokens as the last checkpoint
    assert info["annealed"]["tokens"] == info["trajectory"][-1]["tokens"]
    assert load_family(tiny_family.root) == tiny_family
    assert not (tiny_family.root / ".state").exists()


def test_every_checkpoint_loads_with_auto_model(tiny_family: Family) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    ckpts = tiny_family.checkpoints()
    assert len(ckpts) == 4 + 2 + 2 + 1
    weights = []
    for ck in ckpts:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (ck / name).is_file(), f"{ck} lacks {name}"
        with safe_open(str(ck / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()  # tied to the embeddings
        model = AutoModelForCausalLM.from_pretrained(str(ck))
        assert model.config.model_type == "llama"
        assert model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        weights.append(model.model.embed_tokens.weight.detach().clone())
    # distinct checkpoints hold distinct weights
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not torch.equal(weights[i], weights[j]), (ckpts[i], ckpts[j])


def test_tokenizer_round_trips_and_adds_bos(tiny_family: Family) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_family.trajectory[-1]))
    assert tok("hi").input_ids[0] == tok.bos_token_id
    assert tok.eos_token_id is not None and tok.bos_token_id != tok.eos_token_id
    for text in [
        "The jury said it did find that many laws are outmoded.",
        "  two  spaces,\ttabs\nand lines\n",
        "naïve café – ünïcödé ✓ 你好",
    ]:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert len(tok) == tiny_family.info["vocab_size"] == tiny_family.recipe.tokenizer.vocab_size


def test_loss_goes_down(tiny_family: Family) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    curve = tiny_family.losses("trajectory")
    assert curve[0][0] == 10 and curve[-1][0] == tiny_family.recipe.trajectory.steps
    first, last = curve[0][1], curve[-1][1]
    assert last < first - 1.0, curve
    # held-out perplexity: trained checkpoints far below an untrained model (about the vocabulary size)
    tok = AutoTokenizer.from_pretrained(str(tiny_family.tokenizer))
    final = AutoModelForCausalLM.from_pretrained(str(tiny_family.trajectory[-1]))
    untrained = LlamaForCausalLM(final.config)
    ppl_final = heldout_perplexity(final, tok, tiny_family.heldout)["perplexity"]
    ppl_random = heldout_perplexity(untrained, tok, tiny_family.heldout)["perplexity"]
    assert ppl_random > 0.5 * len(tok)
    assert ppl_final < 0.5 * ppl_random
    annealed = AutoModelForCausalLM.from_pretrained(str(tiny_family.annealed))
    assert math.isfinite(heldout_perplexity(annealed, tok, tiny_family.heldout)["perplexity"])


def test_train_again_returns_the_complete_family(tiny_family: Family, shared_data: Path) -> None:
    before = {p: (p / "model.safetensors").stat().st_mtime_ns for p in tiny_family.checkpoints()}
    again = train_family("tiny", tiny_family.root, data_dir=shared_data, progress=False)
    assert again == tiny_family
    assert {p: (p / "model.safetensors").stat().st_mtime_ns for p in again.checkpoints()} == before


# --- recipes and pure pieces -----------------------------------------------------------------


def test_presets_validate_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    tiny, demo = load_train_recipe("tiny"), load_train_recipe("demo")
    assert tiny.trajectory.schedule == demo.trajectory.schedule == "constant"
    assert demo.model.hidden_size >= tiny.model.hidden_size
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrajectory: {steps: 10, checkpoint_every: 5, keep_last: 4}\n")
    with pytest.raises(WorkbenchError, match=r"bad\.yaml.*keep_last|bad\.yaml.*needs more"):
        load_train_recipe(bad)
    bad.write_text("name: x\nmodel: {hidden_sise: 8}\n")
    with pytest.raises(WorkbenchError, match=r"bad\.yaml: model\.hidden_sise: Extra inputs"):
        load_train_recipe(bad)
    with pytest.raises(WorkbenchError, match="no such file"):
        load_train_recipe("huge")
    bad.write_text("- a list\n")
    with pytest.raises(WorkbenchError, match="mapping"):
        load_train_recipe(bad)


def test_schedule_and_data_order_are_pure() -> None:
    assert lr_at(0, lr=1.0, warmup=4) == 0.25
    assert lr_at(100, lr=1.0, warmup=4) == 1.0
    assert lr_at(10, lr=1.0, warmup=0, decay_start=0, decay_steps=10) == 0.0
    # every block exactly once per epoch, different orders for different seeds
    order = [i for s in range(5) for i in batch_order(7, s, 4, 20)]
    assert sorted(order) == list(range(20))
    assert order != [i for s in range(5) for i in batch_order(8, s, 4, 20)]
    # a batch straddling an epoch boundary
    assert len(batch_order(0, 2, 8, 20)) == 8


# --- resume, determinism, refusal -------------------------------------------------------------


def _bytes(fam: Family) -> dict[str, bytes]:
    return {str(p.relative_to(fam.root)): (p / "model.safetensors").read_bytes() for p in fam.checkpoints()}


def test_micro_family_is_deterministic_and_resumes_after_interruption(
    micro_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.factory.trainer as factory

    recipe = micro(micro_corpus)
    ref = train_family(recipe, tmp_path / "ref", progress=False)
    assert len(ref.trajectory) == 3 and len(ref.siblings) == 2 and len(ref.independent) == 1

    # interrupt the second build right after the first sibling is written
    real_save = factory._save_checkpoint

    def save_then_stop(model, tokenizer_dir, out, *, meta):
        real_save(model, tokenizer_dir, out, meta=meta)
        if out.name == "sibling-1":
            raise KeyboardInterrupt

    monkeypatch.setattr(factory, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_family(recipe, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(factory, "_save_checkpoint", real_save)
    with pytest.raises(WorkbenchError, match="not complete"):
        load_family(tmp_path / "resumed")
    assert (tmp_path / "resumed" / ".state").is_dir()

    resumed = train_family(recipe, tmp_path / "resumed", progress=False)
    assert _bytes(resumed) == _bytes(ref)
    assert (resumed.tokenizer / "tokenizer.json").read_bytes() == (ref.tokenizer / "tokenizer.json").read_bytes()
    assert resumed.heldout.read_text() == ref.heldout.read_text()


def test_output_dir_with_another_family_or_other_files_is_refused(micro_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "fam"
    train_family(micro(micro_corpus), out, progress=False)
    snapshot = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(WorkbenchError, match=r"already holds a different family \('micro', other recipe\)"):
        train_family(micro(micro_corpus, seed=4), out, progress=False)
    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text(micro_corpus.read_text() + "\n\nOne more document here.\n")
    with pytest.raises(WorkbenchError, match="other corpus"):
        train_family(micro(micro_corpus), out, corpus=[other_corpus], progress=False)
    assert sorted(str(p) for p in out.rglob("*")) == snapshot

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match="not empty and holds no family.yaml"):
        train_family(micro(micro_corpus), busy, progress=False)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "corpus is empty"),
        ("\n\n   \n\n", "corpus is empty"),
        ("only one document without blank lines\n", "only one document"),
    ],
)
def test_empty_corpus_is_refused(tmp_path: Path, micro_corpus: Path, content: str, match: str) -> None:
    corpus = tmp_path / "empty.txt"
    corpus.write_text(content)
    with pytest.raises(WorkbenchError, match=match):
        train_family(micro(micro_corpus), tmp_path / "out", corpus=[corpus], progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_corpus_is_refused(tmp_path: Path, micro_corpus: Path) -> None:
    with pytest.raises(WorkbenchError, match=r"corpus file .*nope\.txt not found"):
        train_family(micro(micro_corpus), tmp_path / "out", corpus=[tmp_path / "nope.txt"], progress=False)
    with pytest.raises(WorkbenchError, match=r"pattern .*\*\.md matches no files"):
        train_family(micro(micro_corpus), tmp_path / "out", corpus=[str(tmp_path / "*.md")], progress=False)
    assert not (tmp_path / "out").exists()


def test_vocabulary_larger_than_the_corpus_supports_is_refused(tmp_path: Path, micro_corpus: Path) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("a small corpus.\n\nanother small document.\n")
    with pytest.raises(WorkbenchError, match=r"corpus supports only \d+ tokens .*vocab_size=300"):
        train_family(micro(micro_corpus), tmp_path / "out", corpus=[corpus], progress=False)
    assert not (tmp_path / "out").exists()


def test_corpus_too_small_for_one_batch_is_refused(tmp_path: Path, micro_corpus: Path) -> None:
    recipe = micro(micro_corpus, optim={"seq_len": 512, "batch_size": 512})
    with pytest.raises(WorkbenchError, match="corpus too small"):
        train_family(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_train_and_bad_input(tmp_path: Path, micro_corpus: Path) -> None:
    from typer.testing import CliRunner

    from workbench.cli import app

    recipe = tmp_path / "micro.yaml"
    recipe.write_text(yaml.safe_dump(micro(micro_corpus)))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(recipe), str(tmp_path / "fam"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "family 'micro': 3 trajectory, 2 siblings, 1 independent, annealed yes" in res.output
    assert load_family(tmp_path / "fam").recipe.name == "micro"

    res = runner.invoke(app, ["train", str(recipe), str(tmp_path / "x"), "--corpus", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2
    assert "error: corpus file" in res.output and "missing.txt not found" in res.output
    res = runner.invoke(app, ["train", "--preset", "huge", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown preset" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "nope.yaml"), str(tmp_path / "x")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "x").exists()
