"""Every architecture of the naming table, on tiny random models made by transformers itself.

For each architecture of :data:`workbench.testing.RANDOM_ARCHS`: two models (transformers'
config and model classes, ``save_pretrained``), a per-group gradient SLERP (the
architecture's attention and MLP filters, gradients over the layers), checked against

- mergekit 0.1.5 run on disk (``run_merge``) where it handles the architecture as
  transformers 5 saves it; elsewhere against its kernel per tensor (``merge_state_dicts``
  with ``PerGroupValues``, the filters and gradients resolved by mergekit's own
  ``evaluate_setting``). mergekit 0.1.5 cannot run GPT-NeoX (its JSON requires the
  ``attention.bias`` buffers transformers 5 no longer saves) or BERT (a TypeError in its
  planner), and it fuses MoE experts into one tensor per layer before merging (the
  transformers 5 layout), so SLERP there sees one angle per layer, not per expert; a linear
  merge, where the layout does not matter, is compared on disk;
- transformers: the output loads with ``AutoModelForCausalLM`` (``AutoModel`` for encoders)
  and its logits equal those of the in-memory merge;
- the naming table: every tensor classified (no ``other``), generic rules agreeing with
  the architecture's own, the attention / MLP filters selecting exactly those groups;
- evaluation: a BLiMP paradigm and WikiText run on every causal architecture.

Then the bad inputs: different architectures or vocabulary sizes (one error naming both
config files, nothing written), a tied and an untied model, bf16 + float32 ingredients, and
an unknown architecture (merges by names; its unclassified tensors are listed once).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.geometry import tensor_angles, unclassified_tensors
from workbench.io.safetensors import write_safetensors
from workbench.merge import load_recipe, merge_to_disk, merged_model
from workbench.naming import (
    GENERIC,
    GROUPS,
    architecture,
    expert_index,
    group_t_setting,
    layer_index,
    stack_position,
    t_filters,
)
from workbench.plots.geometry import angles_heatmap
from workbench.testing import RANDOM_ARCHS, write_random_model

pytestmark = pytest.mark.oracle

NUM_LAYERS = 2
#: relative to each tensor's scale (max |x|)
TOL = 1e-6
CAUSAL = [a for a in RANDOM_ARCHS if architecture(a).causal]
#: architectures mergekit 0.1.5 merges on disk as transformers 5 saves them, tensor for tensor
MERGEKIT_ON_DISK = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt2"}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")

#: a short WikiText-2 test document (1,318 characters), to keep the evaluation quick
SHORT_WIKITEXT_DOC = "29"

ATTN_GROUPS = {"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o"}
MLP_GROUPS = {g for g in GROUPS if g.startswith("mlp_")} | {"router"}
_DECODER = {"embed", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "norm", "lm_head"}
_EXPERTS = {"router", "mlp_expert_gate", "mlp_expert_up", "mlp_expert_down"}
#: the groups each architecture's tensors fall in (the README lists these)
EXPECTED_GROUPS = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
    "phi3": {"embed", "attn_qkv", "attn_o", "mlp_gate_up", "mlp_down", "norm", "lm_head"},
    "olmo2": _DECODER,
    "mixtral": (_DECODER - {"mlp_gate", "mlp_up", "mlp_down"}) | _EXPERTS,
    "qwen2_moe": _DECODER | _EXPERTS,
    "qwen3_moe": (_DECODER - {"mlp_gate", "mlp_up", "mlp_down"}) | _EXPERTS,
    "gpt2": {"embed", "pos_embed", "attn_qkv", "attn_o", "mlp_fc", "mlp_proj", "norm", "lm_head"},
    "gpt_neox": {"embed", "attn_qkv", "attn_o", "mlp_fc", "mlp_proj", "norm", "lm_head"},
    "bert": {
        "embed",
        "pos_embed",
        "type_embed",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_o",
        "mlp_fc",
        "mlp_proj",
        "norm",
        "head",
    },
}


def _recipe(a: Path, b: Path, arch: str | None, **extra) -> dict:
    t = group_t_setting([0.3, 0.6], attention=[0.1, 0.7], mlp=[0.9, 0.2], model_type=arch)
    return {
        "merge_method": "slerp",
        "base_model": str(a),
        "models": [{"model": str(a)}, {"model": str(b)}],
        "parameters": {"t": t},
        **extra,
    }


def _mergekit(recipe: dict, out: Path) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    opts = MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False, lazy_unpickle=False)
    run_merge(MergeConfiguration.model_validate(recipe), str(out), opts)
    return out


_ORACLE_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")  # independent of workbench.naming


def _mergekit_per_tensor(recipe: dict, a: Path, b: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """mergekit's SLERP kernel on each tensor, t resolved by mergekit's evaluate_setting at the
    layer's position (t = 0 outside the stack), in mergekit's lexicographic order."""
    from mergekit.config import MergeConfiguration, evaluate_setting
    from mergekit.merge_methods import PerGroupValues, merge_state_dicts

    setting = MergeConfiguration.model_validate(recipe).parameters["t"]
    names = sorted(names)
    ts = []
    for n in names:
        m = _ORACLE_LAYER.search(n)
        pos = int(m.group(1)) / (NUM_LAYERS - 1) if m else 0.0
        ts.append(evaluate_setting(n, setting, pos, validate=float))
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    sds = {"a": {n: ca.get(n) for n in names}, "b": {n: cb.get(n) for n in names}}
    return merge_state_dicts(sds, "slerp", base="a", parameters={"t": PerGroupValues(ts)})


def _assert_tensors_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tol: float = TOL) -> None:
    assert set(ours) == set(ref)
    for n, r in ref.items():
        x, r = ours[n].double(), r.double()
        assert x.shape == r.shape, n
        err = float((x - r).abs().max()) / max(float(r.abs().max()), 1e-30)
        assert err <= tol, f"{n}: max error {err:.2e} of the tensor's scale"


def _stored(ck_dir: Path) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(ck_dir)
    return {n: ck.get(n) for n in ck.names() if not (ck.tied and n == "lm_head.weight")}


def _auto(arch: str):
    import transformers

    return transformers.AutoModelForCausalLM if architecture(arch).causal else transformers.AutoModel


def _outputs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _nothing_written(root: Path, before: set[str]) -> None:
    assert {p.name for p in root.iterdir()} == before, "bad input left output or partial directories behind"


class _Models:
    """Per architecture: two random models and their merge, each made once per module."""

    def __init__(self, root: Path):
        self.root = root

    def pair(self, arch: str) -> tuple[Path, Path]:
        a, b = self.root / arch / "a", self.root / arch / "b"
        if not b.exists():
            write_random_model(arch, a, seed=0, num_layers=NUM_LAYERS, overwrite=True)
            write_random_model(arch, b, seed=1, num_layers=NUM_LAYERS)
        return a, b

    def merged(self, arch: str) -> Path:
        """The per-group gradient SLERP of the pair, merged to disk."""
        a, b = self.pair(arch)
        out = self.root / arch / "merged"
        if not out.exists():
            merge_to_disk(load_recipe(_recipe(a, b, arch)), out)
        return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> _Models:
    return _Models(tmp_path_factory.mktemp("architectures"))


# --- the naming table ------------------------------------------------------------------


@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_every_tensor_is_classified(models, arch):
    a, b = models.pair(arch)
    ck = open_checkpoint(a)
    names = ck.names()
    groups = {n: architecture(arch).group(n) for n in names}
    assert set(groups.values()) == EXPECTED_GROUPS[arch] <= set(architecture(arch).groups())
    # name-only callers (the merge planner) see what the architecture's own row says
    assert {n: GENERIC.group(n) for n in names} == groups
    attn_f, mlp_f = t_filters(arch)
    entries = [(f, "attn") for f in attn_f] + [(f, "mlp") for f in mlp_f]
    for n, g in groups.items():
        layer = layer_index(n, model_type=arch)
        assert layer == layer_index(n)
        oracle = _ORACLE_LAYER.search(n)
        assert layer == (int(oracle.group(1)) if oracle else None), n
        assert (expert_index(n, model_type=arch) is not None) == g.startswith("mlp_expert_"), n
        # mergekit semantics: the first filter found in the name decides
        role = next((r for f, r in entries if f in n), None)
        if g in ATTN_GROUPS:
            assert role == "attn", n
        elif g in MLP_GROUPS:
            assert role == "mlp", n
        else:
            assert role is None or g == "norm", n

    df = tensor_angles(a, b)
    assert unclassified_tensors(df) == [] and "other" not in set(df["group"])
    assert set(df["group"]) == EXPECTED_GROUPS[arch] - ({"lm_head"} if ck.tied else set())
    assert set(angles_heatmap(df).data[0].x) == set(df["group"])  # new groups get their column
    experts = df.filter(df["group"].str.starts_with("mlp_expert_"))["expert"]
    assert experts.null_count() == 0 and (experts.n_unique() == 4 if arch in MOE else experts.len() == 0)


@pytest.mark.parametrize(
    ("name", "arch", "group", "layer", "expert", "side"),
    [
        # names of Hub checkpoints the builder does not produce: older layouts, prefixes, heads, buffers
        ("h.3.attn.c_attn.weight", "gpt2", "attn_qkv", 3, None, "layer"),
        ("h.3.attn.bias", "gpt2", "buffer", 3, None, "layer"),
        ("wpe.weight", "gpt2", "pos_embed", None, None, "input"),
        ("gpt_neox.layers.5.attention.rotary_emb.inv_freq", "gpt_neox", "buffer", 5, None, "layer"),
        ("gpt_neox.layers.5.attention.masked_bias", "gpt_neox", "buffer", 5, None, "layer"),
        ("embed_out.weight", "gpt_neox", "lm_head", None, None, "output"),
        ("bert.encoder.layer.11.output.dense.weight", "bert", "mlp_proj", 11, None, "layer"),
        ("bert.embeddings.position_ids", "bert", "buffer", None, None, "input"),
        ("cls.predictions.transform.dense.weight", "bert", "head", None, None, "output"),
        ("cls.predictions.bias", "bert", "lm_head", None, None, "output"),
        ("model.layers.7.mlp.experts.gate_up_proj", "mixtral", "mlp_expert_gate_up", 7, None, "layer"),
        ("model.layers.7.mlp.gate.weight", "mixtral", "router", 7, None, "layer"),
        ("model.layers.2.mlp.experts.63.down_proj.weight", "qwen3_moe", "mlp_expert_down", 2, 63, "layer"),
        ("layers.0.self_attn.qkv_proj.weight", "phi3", "attn_qkv", 0, None, "layer"),
    ],
)
def test_hub_names_resolve_per_architecture_and_by_name_alone(name, arch, group, layer, expert, side):
    for model_type in (arch, None):
        got = (
            architecture(model_type).group(name),
            layer_index(name, model_type=model_type),
            expert_index(name, model_type=model_type),
            stack_position(name, model_type=model_type),
        )
        assert got == (group, layer, expert, side), (model_type, got)


# --- merges against mergekit and transformers ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_gradient_slerp_matches_mergekit(models, arch, tmp_path):
    a, b = models.pair(arch)
    ours = _stored(models.merged(arch))
    recipe = _recipe(a, b, arch)
    if arch in MERGEKIT_ON_DISK:
        ref = _stored(_mergekit(recipe, tmp_path / "mergekit"))
    else:
        ref = _mergekit_per_tensor(recipe, a, b, list(ours))
    _assert_tensors_close(ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("arch", RANDOM_ARCHS)
def test_output_loads_with_transformers_and_equals_the_in_memory_merge(models, arch):
    a, b = models.pair(arch)
    model = _auto(arch).from_pretrained(str(models.merged(arch)))
    ids = torch.tensor([[1, 5, 9, 20, 33, 7, 64, 3]])
    disk = _outputs(model, ids)
    assert torch.isfinite(disk).all()
    mem = _outputs(merged_model(_recipe(a, b, arch)), ids)
    torch.testing.assert_close(mem, disk, rtol=0, atol=1e-5 * float(disk.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_linear_merge_matches_mergekit_in_model_layout(models, arch, tmp_path):
    """mergekit writes the fused transformers-5 expert layout, workbench the per-expert files:
    loaded into the model, a linear merge (layout-independent) must agree tensor for tensor."""
    a, b = models.pair(arch)
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(a), "parameters": {"weight": 0.3}}, {"model": str(b), "parameters": {"weight": 0.7}}],
    }
    ours = merge_to_disk(load_recipe(recipe), tmp_path / "ours")
    ref = _mergekit(recipe, tmp_path / "mergekit")
    assert any("block_sparse_moe" in n or ".experts.0." in n for n in open_checkpoint(ours).names())
    auto = _auto(arch)
    mo, mr = auto.from_pretrained(str(ours)).state_dict(), auto.from_pretrained(str(ref)).state_dict()
    _assert_tensors_close(mo, mr)


@pytest.mark.slow
@pytest.mark.parametrize("arch", CAUSAL)
def test_merged_model_evaluates(models, arch, shared_data):
    from workbench.eval import evaluate

    out = models.merged(arch)
    model, tok = load_model(out), load_tokenizer(models.pair(arch)[0])
    paradigm = "blimp_anaphor_gender_agreement"
    res = evaluate(
        model,
        tok,
        [paradigm, "wikitext"],
        data_dir=shared_data,
        limit={paradigm: 4},
        item_ids={"wikitext": [SHORT_WIKITEXT_DOC]},
        progress=False,
    )
    blimp = res.items.filter(res.items["task"] == paradigm)
    assert blimp.height == 4 and 0.0 <= res.summary[paradigm]["acc,none"] <= 1.0
    assert res.items.filter(res.items["task"] == "wikitext")["item_id"].to_list() == [SHORT_WIKITEXT_DOC]
    # a random model is close to uniform over the vocabulary: about log2(128) = 7 bits per character
    bpb = res.summary["wikitext"]["bits_per_byte,none"]
    assert math.isfinite(bpb) and 3.0 < bpb < 12.0, bpb


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch_a", "kw_a", "arch_b", "kw_b", "message"),
    [
        ("llama", {}, "mistral", {}, r"different architectures: .*/a/config.json has model_type=llama but "
         r".*/b/config.json has model_type=mistral"),
        ("gpt2", {}, "gpt2", {"hidden_size": 48}, r"different architectures: .*/a/config.json has n_embd=32 but "
         r".*/b/config.json has n_embd=48"),
        ("qwen3", {}, "qwen3", {"vocab_size": 96}, r"different vocabulary sizes: .*/a/config.json has "
         r"vocab_size=128 but .*/b/config.json has vocab_size=96"),
    ],
)  # fmt: skip
def test_ingredients_that_do_not_fit_are_refused_before_writing(tmp_path, arch_a, kw_a, arch_b, kw_b, message):
    a = write_random_model(arch_a, tmp_path / "a", seed=0, num_layers=NUM_LAYERS, **kw_a)
    b = write_random_model(arch_b, tmp_path / "b", seed=1, num_layers=NUM_LAYERS, **kw_b)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(WorkbenchError, match=message):
        merge_to_disk(load_recipe(_recipe(a, b, arch_a)), tmp_path / "out")
    _nothing_written(tmp_path, before)
    res = CliRunner().invoke(app, ["merge", str(_write_recipe(tmp_path, _recipe(a, b, arch_a))), str(tmp_path / "out")])
    assert res.exit_code != 0 and re.search(message, " ".join(res.output.split()))
    _nothing_written(tmp_path, before | {"recipe.yaml"})


def _write_recipe(root: Path, recipe: dict) -> Path:
    p = root / "recipe.yaml"
    p.write_text(json.dumps(recipe))  # JSON is YAML
    return p


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tied_and_untied_ingredients_merge_as_mergekit_does(tmp_path, arch):
    """The tied model's lm_head is its embedding matrix: lm_head = SLERP(embed of the tied one,
    lm_head of the untied one), written untied."""
    a = write_random_model(arch, tmp_path / "tied", seed=0, num_layers=NUM_LAYERS, tie=True)
    b = write_random_model(arch, tmp_path / "untied", seed=1, num_layers=NUM_LAYERS, tie=False)
    assert open_checkpoint(a).tied and not open_checkpoint(b).tied
    recipe = _recipe(a, b, arch)
    out = merge_to_disk(load_recipe(recipe), tmp_path / "out")
    ours = _stored(out)
    assert "lm_head.weight" in ours and json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    _assert_tensors_close(ours, _stored(_mergekit(recipe, tmp_path / "mergekit")))
    model = _auto(arch).from_pretrained(str(out))
    assert not torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    disk = _outputs(model, ids)
    torch.testing.assert_close(_outputs(merged_model(recipe), ids), disk, rtol=0, atol=1e-5 * float(disk.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype",
    [
        "bfloat16",
        "float32",
        None,
    ],
)
def test_bf16_and_float32_ingredients_follow_mergekit(tmp_path, dtype):
    """GPT-2 (Conv1D weights, tied head) with a bf16 base and a float32 other model: cast to the
    recipe's dtype, or torch.promote_types of the inputs without one, as mergekit does."""
    a = write_random_model("gpt2", tmp_path / "a16", seed=0, num_layers=NUM_LAYERS, dtype="bfloat16")
    b = write_random_model("gpt2", tmp_path / "b32", seed=1, num_layers=NUM_LAYERS)
    recipe = _recipe(a, b, "gpt2", **({"dtype": dtype} if dtype else {}))
    ours = _stored(merge_to_disk(load_recipe(recipe), tmp_path / "out"))
    ref = _stored(_mergekit(recipe, tmp_path / "mergekit"))
    want = torch.float32 if dtype is None else getattr(torch, dtype)
    assert {t.dtype for t in ref.values()} == {want}
    assert {t.dtype for t in ours.values()} == {want}
    # bf16 outputs: float32 math may round to the neighbouring bf16 value
    _assert_tensors_close(ours, ref, tol=TOL if want == torch.float32 else 2**-7)


def _write_unknown(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    h, v = 16, 32
    tensors = {"tok_emb.weight": torch.randn(v, h, generator=g)}
    for i in range(NUM_LAYERS):
        tensors[f"blocks.{i}.attn.wq.weight"] = torch.randn(h, h, generator=g)
        tensors[f"blocks.{i}.ffn.fc_in.weight"] = torch.randn(2 * h, h, generator=g)
        tensors[f"blocks.{i}.norm1.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    tensors["head.weight"] = torch.randn(v, h, generator=g)
    path.mkdir()
    write_safetensors(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps({"model_type": "toy_unknown", "num_hidden_layers": NUM_LAYERS}))
    return path


def test_unknown_architecture_merges_and_lists_unclassified_tensors(tmp_path):
    a, b = _write_unknown(tmp_path / "a", 0), _write_unknown(tmp_path / "b", 1)
    recipe = _recipe(a, b, None)
    ours = _stored(merge_to_disk(load_recipe(recipe), tmp_path / "out"))
    _assert_tensors_close(ours, _mergekit_per_tensor(recipe, a, b, list(ours)))

    unknown = ["tok_emb.weight", "blocks.0.attn.wq.weight", "blocks.0.ffn.fc_in.weight"]
    unknown += ["blocks.1.attn.wq.weight", "blocks.1.ffn.fc_in.weight", "head.weight"]
    df = tensor_angles(a, b)
    assert df.height == len(ours)  # kept, in group "other"
    assert sorted(unclassified_tensors(df)) == sorted(unknown)
    assert df.filter(df["name"] == "blocks.1.norm1.weight")["layer"].to_list() == [1]

    res = CliRunner().invoke(app, ["angles", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "unclassified tensors (group 'other', 6)" in res.output
    for n in unknown:
        assert res.output.count(n) == 1, n
