"""Permutation alignment (workbench.align): exactness of the symmetries on every supported
architecture, recovery of planted permutations, the ``workbench align`` command and its bad
inputs, the cached in-memory entry point merges use, and the barrier of the tiny family's
independent runs before and after alignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

from workbench.align import (
    ALIGN_FILE,
    SUPPORTED,
    Alignment,
    align_options,
    aligned_checkpoint,
    apply_alignment,
    find_alignment,
    random_alignment,
    read_alignment,
    spec_for,
)
from workbench.align.activations import alignment_sequences
from workbench.align.weights import weight_matching
from workbench.checkpoints import load_tokenizer, open_checkpoint, save_state_dict
from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.naming import LM_HEAD

CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
}
TEXT = "\n\n".join(f"the quick brown fox {i} jumps over the lazy dog, then rests {i % 7} times." for i in range(200))


def _config(arch: str, *, kv: int = 2, tie: bool | None = None, **extra) -> transformers.PretrainedConfig:
    kw = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )
    if tie is not None:
        kw["tie_word_embeddings"] = tie
    return CONFIGS[arch](**kw)


def _model(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.PreTrainedModel:
    """A random model whose every tensor (norms and biases included) is far from its init."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _spec(model: transformers.PreTrainedModel):
    sd = model.state_dict()
    return spec_for(model.config.to_dict(), {n: t.shape for n, t in sd.items()}, tied=model.config.tie_word_embeddings)


def _logits(config, state, ids) -> torch.Tensor:
    m = transformers.AutoModelForCausalLM.from_config(config).eval()
    m.load_state_dict(state)
    with torch.no_grad():
        return m(ids).logits


CASES = [(arch, kv, tie) for arch in SUPPORTED for kv, tie in ((4, False), (2, True), (1, None))]


@pytest.mark.parametrize(("arch", "kv", "tie"), CASES, ids=[f"{a}-kv{k}-tie{t}" for a, k, t in CASES])
def test_random_symmetries_keep_the_logits(arch, kv, tie):
    extra = {"attention_bias": True, "mlp_bias": True} if arch == "llama" and kv == 2 else {}
    config = _config(arch, kv=kv, tie=tie, **extra)
    model = _model(config)
    spec = _spec(model)
    assert spec.rotations == (arch not in ("qwen3", "gemma3_text"))
    state = {n: t.clone() for n, t in model.state_dict().items()}
    al = random_alignment(spec, seed=1)
    moved = apply_alignment(state, spec, al)
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    before, after = _logits(config, state, ids), _logits(config, moved, ids)
    assert (after - before).abs().max() <= 1e-5 * max(1.0, float(before.abs().max()))
    # not vacuous: every permuted tensor really moved
    for n, ax in spec.axes.items():
        if any(k is not None for k in ax):
            assert not torch.equal(moved[n], state[n]), n
    if config.tie_word_embeddings:
        assert torch.equal(moved[LM_HEAD], moved["model.embed_tokens.weight"])


def _rope_pairs(x: torch.Tensor, rows: int, order: torch.Tensor) -> torch.Tensor:
    """Rows of a q/k projection with every head's RoPE pairs reordered by ``order``."""
    hd = 8
    hp = hd // 2
    y = x.reshape(rows // hd, 2, hp, -1)[:, :, order]
    return y.reshape(x.shape)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_what_is_not_a_symmetry_changes_the_logits(arch):
    """The controls: the exactness test above can fail. Moving RoPE pairs to other frequencies
    (the same on q and k) changes the function, and so do pair rotations under a per-head q/k norm."""
    config = _config(arch, kv=2)
    model = _model(config)
    spec = _spec(model)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    ids = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = _logits(config, state, ids)
    order = torch.tensor([1, 0, 2, 3])
    shuffled = dict(state)
    for n in spec.axes:
        if n.endswith(("q_proj.weight", "k_proj.weight")):
            shuffled[n] = _rope_pairs(state[n], state[n].shape[0], order)
    assert (_logits(config, shuffled, ids) - ref).abs().max() > 1e-3
    if not spec.rotations:
        al = random_alignment(spec, seed=0, rotations=False)
        for la in al.layers:  # identity permutations, forced rotations
            la.mlp, la.kv = torch.arange(la.mlp.numel()), torch.arange(la.kv.numel())
            la.query, la.vo = torch.arange(la.query.shape[1]).repeat(la.query.shape[0], 1), torch.arange(8).repeat(2, 1)
            la.angles = torch.full_like(la.angles, 0.7)
        al.residual = torch.arange(al.residual.numel())
        assert (_logits(config, apply_alignment(state, spec, al), ids) - ref).abs().max() > 1e-3


@pytest.mark.parametrize(("arch", "kv", "tie"), [("llama", 2, False), ("qwen3", 2, False), ("gemma", 1, True)])
def test_weight_matching_recovers_a_planted_permutation_exactly(arch, kv, tie):
    model = _model(_config(arch, kv=kv, tie=tie))
    spec = _spec(model)
    ref = {n: t.detach().clone() for n, t in model.state_dict().items()}
    other = apply_alignment(ref, spec, random_alignment(spec, seed=3, rotations=False))
    found, history = weight_matching(ref, other, spec)
    aligned = apply_alignment(other, spec, found)
    assert all(torch.equal(aligned[n], ref[n]) for n in ref)
    assert history[-1] == pytest.approx(1.0, abs=1e-12)


def test_weight_matching_recovers_planted_rotations():
    model = _model(_config("llama", kv=2))
    spec = _spec(model)
    ref = {n: t.detach().clone() for n, t in model.state_dict().items()}
    other = apply_alignment(ref, spec, random_alignment(spec, seed=4, rotations=True))
    found, _ = weight_matching(ref, other, spec, rotations=True)
    aligned = apply_alignment(other, spec, found)
    for n in ref:  # rotations round once to float32
        torch.testing.assert_close(aligned[n], ref[n], rtol=0, atol=1e-6 * float(ref[n].abs().max()))


def _write(tmp: Path, name: str, config, state, tokenizer_from: Path | None = None) -> Path:
    out = tmp / name
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    save_state_dict(out, state, cfg, tokenizer_from=tokenizer_from)
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A random Llama (GQA, with the tiny tokenizer) and a planted permutation of it, on disk."""
    from workbench.testing import write_random_llama

    root = tmp_path_factory.mktemp("planted")
    ref = write_random_llama(
        root / "ref", seed=0, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=96
    )
    ck = open_checkpoint(ref)
    spec = spec_for(ck.config, {n: ck.shape(n) for n in ck.names()}, tied=ck.tied)
    state = {n: ck.get(n).clone() for n in ck.names()}
    other = _write(root, "other", ck.config, apply_alignment(state, spec, random_alignment(spec, seed=5)), ref)
    (root / "text.txt").write_text(TEXT)
    return root, ref, other


def test_align_command_writes_the_reference_exactly(planted, tmp_path):
    root, ref, other = planted
    out = tmp_path / "aligned"
    res = CliRunner().invoke(app, ["align", str(ref), str(other), str(out), "--rotations"])
    assert res.exit_code == 0, res.output
    a, b = open_checkpoint(ref), open_checkpoint(out)
    for n in a.names():
        torch.testing.assert_close(b.get(n), a.get(n), rtol=0, atol=1e-6 * float(a.get(n).abs().max()))
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    al, record = read_alignment(out)
    assert record["method"] == "weight_matching" and record["settings"]["rotations"] is True
    assert record["similarity_after"] == pytest.approx(1.0, abs=1e-9) and record["similarity_before"] < 0.99
    assert record["other"]["fingerprint"] == open_checkpoint(other).fingerprint()
    assert not al.is_identity()


def test_activation_matching_recovers_a_planted_permutation(planted):
    root, ref, other = planted
    result = find_alignment(ref, other, method="activation", data=root / "text.txt", n_sequences=32, seq_len=32)
    assert result.settings["sequences_used"] == 32 and result.settings["rotations"] is True
    a, b = open_checkpoint(ref), open_checkpoint(other)
    aligned = apply_alignment({n: b.get(n) for n in b.names()}, result.spec, result.alignment)
    for n in a.names():
        torch.testing.assert_close(aligned[n], a.get(n), rtol=0, atol=1e-6 * float(a.get(n).abs().max()))


def test_alignment_sequences_are_seeded(planted):
    root, ref, _ = planted
    tok = load_tokenizer(ref)
    x = alignment_sequences(tok, root / "text.txt", n_sequences=8, seq_len=16, seed=1)
    assert x.shape == (8, 16)
    assert torch.equal(x, alignment_sequences(tok, root / "text.txt", n_sequences=8, seq_len=16, seed=1))
    assert not torch.equal(x, alignment_sequences(tok, root / "text.txt", n_sequences=8, seq_len=16, seed=2))


def _bad(tmp_path: Path, args: list[str]) -> str:
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["align", *map(str, args[:2]), str(out), *map(str, args[2:])])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


def test_bad_inputs_are_one_error_and_write_nothing(planted, tmp_path):
    root, ref, other = planted
    from workbench.testing import write_random_llama

    ck = open_checkpoint(ref)
    wide = write_random_llama(
        root / "wide", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=96, intermediate_size=96
    )
    assert "intermediate=64" in _bad(tmp_path, [ref, wide])
    mistral = _write(root, "mistral", {**ck.config, "model_type": "mistral"}, {n: ck.get(n) for n in ck.names()})
    assert "model_type=llama" in _bad(tmp_path, [ref, mistral])
    assert "needs text" in _bad(tmp_path, [ref, other, "--method", "activation"])
    assert "reads no data" in _bad(tmp_path, [ref, other, "--data", root / "text.txt"])
    assert "unknown alignment method" in _bad(tmp_path, [ref, other, "--method", "magic"])
    assert "fewer than one sequence" in _bad(
        tmp_path, [ref, other, "--method", "activation", "--data", root / "text.txt", "--seq-len", "100000"]
    )


def test_unsupported_architectures_name_what_is_missing(tmp_path):
    from workbench.testing import write_random_model

    gpt2 = write_random_model("gpt2", tmp_path / "gpt2", seed=0)
    msg = _bad(tmp_path, [gpt2, gpt2])
    assert "'gpt2'" in msg and "attn_qkv" in msg and "llama" in msg
    mixtral = write_random_model("mixtral", tmp_path / "mixtral", seed=0)
    assert "'mixtral'" in _bad(tmp_path, [mixtral, mixtral])
    with pytest.raises(WorkbenchError, match="partial_rotary_factor"):
        spec_for({**_config("llama").to_dict(), "partial_rotary_factor": 0.5}, {})


def test_align_options_for_recipes():
    assert align_options({"method": "weight_matching"}) == {"method": "weight_matching"}
    assert (
        align_options({"method": "activation", "data": "corpus", "n_sequences": 64})["method"] == "activation_matching"
    )
    for bad, match in (
        ({}, "'method' is required"),
        ({"method": "weight", "step": 1}, "unknown key"),
        ({"method": "weight", "seq_len": -1}, "seq_len"),
        ({"method": "weight", "rotations": "yes"}, "rotations"),
    ):
        with pytest.raises(WorkbenchError, match=match):
            align_options(bad, "recipe.yaml: align")


def test_alignment_record_is_checked(planted):
    _, ref, _ = planted
    ck = open_checkpoint(ref)
    spec = spec_for(ck.config, {n: ck.shape(n) for n in ck.names()}, tied=ck.tied)
    data = random_alignment(spec, seed=0).to_dict()
    assert Alignment.from_dict(json.loads(json.dumps(data)), spec).to_dict() == data
    data["layers"][1]["mlp"][0] = data["layers"][1]["mlp"][1]
    with pytest.raises(WorkbenchError, match="layer 1 mlp is not a permutation"):
        Alignment.from_dict(data, spec, "x.json")


def test_aligned_checkpoint_is_cached_and_merges(planted, tmp_path):
    from workbench.merge import merged_model, simple_recipe

    _, ref, other = planted
    first = aligned_checkpoint(ref, other, method="weight_matching", rotations=True, cache_dir=tmp_path)
    stamp = (first.path / ALIGN_FILE).stat().st_mtime_ns
    again = aligned_checkpoint(ref, other, method="weight", rotations=True, cache_dir=tmp_path)
    assert again.path == first.path and (again.path / ALIGN_FILE).stat().st_mtime_ns == stamp
    assert first.fingerprint() != open_checkpoint(other).fingerprint()
    assert aligned_checkpoint(ref, other, method="weight_matching", cache_dir=tmp_path).path != first.path
    # the merge planner's wiring: the recipe names OTHER, the aligned checkpoint stands in for it
    model = merged_model(simple_recipe("linear", [str(ref), str(other)]), checkpoints={str(other): first})
    a = open_checkpoint(ref)
    for n, t in model.state_dict().items():
        if n in a:
            torch.testing.assert_close(t, a.get(n), rtol=0, atol=1e-6 * float(a.get(n).abs().max()))


@pytest.mark.slow
def test_alignment_lowers_the_barrier_of_independent_runs(tiny_family, tmp_path):
    from workbench.checkpoints import load_model
    from workbench.factory import heldout_perplexity
    from workbench.merge import merged_model, simple_recipe
    from workbench.stats import barrier

    a, b = (str(p) for p in tiny_family.independent[:2])
    tok = load_tokenizer(tiny_family.tokenizer)

    def nll(model) -> float:
        return heldout_perplexity(model, tok, tiny_family.heldout)["nll"]

    ends = [nll(load_model(a)), nll(load_model(b))]
    aligned = aligned_checkpoint(a, b, method="weight_matching", cache_dir=tmp_path)
    mids = [nll(merged_model(simple_recipe("lerp", [a, b], t=0.5), checkpoints=cks)) for cks in ({}, {b: aligned})]
    before, after = (barrier([0.0, 0.5, 1.0], [ends[0], m, ends[1]]) for m in mids)
    assert before > 0.02  # independent runs: a real barrier to remove
    assert after < before / 2


def test_output_overlapping_an_input_is_refused_before_work(planted):
    from workbench.align import align_checkpoints

    _, ref, other = planted
    with pytest.raises(WorkbenchError, match="overlaps input model"):
        align_checkpoints(ref, other, other / "aligned")
    assert not (other / "aligned").exists()


def test_alignment_angles_for_the_notebook(planted, tmp_path):
    from workbench.align.angles import alignment_angle_summary, alignment_angles

    _, ref, other = planted
    df = alignment_angles(ref, other, method="weight_matching", rotations=True, cache_dir=tmp_path)
    moved = df.filter(df["group"] != "norm")
    assert moved["angle_before_deg"].min() > 30 and moved["angle_deg"].max() < 0.1  # a permuted copy: back to 0
    summary = alignment_angle_summary(df)
    assert set(summary["group"]) >= {"attn_q", "mlp_down", "embed"}
    same = alignment_angles(ref, other, method=None)
    assert same["angle_change_deg"].abs().max() == 0.0


def _align_recipe(ref, other, **extra):
    return {
        "merge_method": "linear",
        "models": [
            {"model": str(ref), "parameters": {"weight": 1.0}},
            {"model": str(other), "parameters": {"weight": 1.0}},
        ],
        "base_model": str(ref),
        # the planted alignment rotates q/k pairs too: recover them as well
        "align": {"method": "weight_matching", "rotations": True},
        **extra,
    }


def test_recipe_align_key_aligns_before_merging_in_both_engines(planted, tmp_path, monkeypatch):
    """``align:`` in a recipe: the planted permutation is undone first, so the soup of a model
    and its permuted copy is the model itself (unaligned, it is not)."""
    from workbench.merge import merge_in_memory, merge_to_disk

    monkeypatch.setenv("WORKBENCH_ALIGN_CACHE", str(tmp_path / "cache"))
    _, ref, other = planted
    a = open_checkpoint(ref)
    recipe = _align_recipe(ref, other)
    in_memory = merge_in_memory(recipe)
    on_disk = open_checkpoint(merge_to_disk(recipe, tmp_path / "out", progress=False))
    unaligned = merge_in_memory({k: v for k, v in recipe.items() if k != "align"})
    far = 0.0
    for n in a.names():
        if n == LM_HEAD and a.tied:
            continue
        scale = float(a.get(n).abs().max())
        torch.testing.assert_close(in_memory[n], a.get(n), rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(on_disk.get(n), a.get(n), rtol=0, atol=1e-6 * scale)
        far = max(far, float((unaligned[n] - a.get(n)).abs().max()) / scale)
    assert far > 0.1  # the check above could fail: unaligned, the soup is far from the model


def test_recipe_align_on_an_unsupported_architecture_writes_nothing(tmp_path, monkeypatch):
    from workbench.merge import merge_to_disk
    from workbench.testing import write_random_model

    monkeypatch.setenv("WORKBENCH_ALIGN_CACHE", str(tmp_path / "cache"))
    a = write_random_model("gpt2", tmp_path / "a", seed=0)
    b = write_random_model("gpt2", tmp_path / "b", seed=1)
    with pytest.raises(WorkbenchError, match="gpt2"):
        merge_to_disk(_align_recipe(a, b), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(WorkbenchError, match="'method' is required"):
        merge_to_disk({**_align_recipe(a, b), "align": {"rotations": True}}, tmp_path / "out", progress=False)


def test_claim_check_walks_the_aligned_curve(planted, tmp_path, monkeypatch):
    """The claim check's interpolation curve for an aligning recipe runs between the base and
    the other model aligned to it (here: the planted copy becomes the reference itself)."""
    from workbench.claim.run import _curve_checkpoints
    from workbench.merge import load_recipe

    monkeypatch.setenv("WORKBENCH_ALIGN_CACHE", str(tmp_path / "cache"))
    _, ref, other = planted
    rec = load_recipe(_align_recipe(ref, other))
    cks = _curve_checkpoints(rec, [str(ref), str(other)], {})
    a, b = open_checkpoint(ref), cks[str(other)]
    assert b.path != open_checkpoint(other).path
    for n in a.names():
        torch.testing.assert_close(b.get(n), a.get(n), rtol=0, atol=1e-6 * float(a.get(n).abs().max()))
    plain = load_recipe({k: v for k, v in _align_recipe(ref, other).items() if k != "align"})
    assert _curve_checkpoints(plain, [str(ref), str(other)], {"x": 1}) == {"x": 1}
