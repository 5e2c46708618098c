"""Layer stacking (``slices`` of different lengths with passthrough), per-layer config metadata,
and ``modules:`` recipes: against mergekit 0.1.5 where it runs them, and loaded by transformers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mergekit_oracle import relative_error, run_mergekit  # noqa: E402

from workbench.checkpoints import load_model, open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge import merge_in_memory, merge_to_disk, merged_model
from workbench.testing import write_random_llama, write_random_model

DIMS = dict(hidden_size=32, vocab_size=64, num_heads=4, num_kv_heads=2, intermediate_size=48)
IDS = torch.tensor([[1, 5, 9, 33, 60, 2]])


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stack_models")
    a = write_random_llama(root / "a", seed=0, num_layers=4, **DIMS)
    return {
        "a": str(a),
        "b": str(write_random_llama(root / "b", like=a, noise=0.02, seed=1)),
        "six": str(write_random_llama(root / "six", seed=2, num_layers=6, **DIMS)),
    }


def _compare(ref_dir, ours_dir, in_memory) -> None:
    ref, ours = open_checkpoint(ref_dir), open_checkpoint(ours_dir)
    assert set(ours.names()) == set(ref.names()) == set(in_memory)
    for name in ref.names():
        want = ref.get(name)
        assert relative_error(ours.get(name), want) <= 1e-6, name
        assert relative_error(in_memory[name], want) <= 1e-6, name


@pytest.mark.oracle
def test_frankenmerge_of_different_depths_matches_mergekit_loads_and_runs(llamas, tmp_path):
    # layers 0-2 of a (4 layers) then 2-5 of six (6 layers): a 7-layer model
    recipe = {
        "merge_method": "passthrough",
        "base_model": llamas["six"],
        "slices": [
            {"sources": [{"model": llamas["a"], "layer_range": [0, 3]}]},
            {"sources": [{"model": llamas["six"], "layer_range": [2, 6]}]},
        ],
        "dtype": "float32",
    }
    ref = run_mergekit(recipe, tmp_path / "mergekit")
    out = merge_to_disk(recipe, tmp_path / "ours", progress=False)
    _compare(ref, out, merge_in_memory(recipe))
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == json.loads((ref / "config.json").read_text())["num_hidden_layers"] == 7
    a, six = open_checkpoint(llamas["a"]), open_checkpoint(llamas["six"])
    got = open_checkpoint(out)
    assert torch.equal(got.get("model.embed_tokens.weight"), a.get("model.embed_tokens.weight"))  # first slice's
    assert torch.equal(got.get("lm_head.weight"), six.get("lm_head.weight"))  # last slice's
    assert torch.equal(got.get("model.layers.3.mlp.up_proj.weight"), six.get("model.layers.2.mlp.up_proj.weight"))
    with torch.no_grad():
        logits = load_model(out)(input_ids=IDS).logits
        assert torch.allclose(logits, load_model(ref)(input_ids=IDS).logits, atol=1e-5, rtol=0)
        assert torch.allclose(logits, merged_model(recipe)(input_ids=IDS).logits, atol=1e-5, rtol=0)


@pytest.mark.oracle
def test_modules_recipe_matches_mergekit(llamas, tmp_path):
    recipe = {
        "modules": {
            "default": {
                "slices": [
                    {
                        "sources": [
                            {"model": llamas["a"], "layer_range": [0, 2]},
                            {"model": llamas["b"], "layer_range": [2, 4], "parameters": {"t": 0.25}},  # ignored: shared
                        ]
                    },
                    {
                        "sources": [
                            {"model": llamas["a"], "layer_range": [2, 4]},
                            {"model": llamas["b"], "layer_range": [0, 2]},
                        ],
                        "parameters": {"t": [0.9, 0.3]},
                    },
                ],
                "parameters": {"t": [{"filter": "mlp", "value": 0.7}, {"value": 0.5}]},
            }
        },
        "merge_method": "slerp",
        "base_model": llamas["a"],
        "dtype": "float32",
    }
    ref = run_mergekit(recipe, tmp_path / "mergekit")
    out = merge_to_disk(recipe, tmp_path / "ours", progress=False)
    _compare(ref, out, merge_in_memory(recipe))
    models_form = {
        "modules": {
            "default": {"models": [{"model": llamas["a"], "parameters": {"weight": 0.3}}, {"model": llamas["b"]}]}
        },
        "merge_method": "linear",
        "parameters": {"weight": 0.7},
        "dtype": "float32",
    }
    ref = run_mergekit(models_form, tmp_path / "mergekit_models")
    _compare(ref, merge_to_disk(models_form, tmp_path / "ours_models", progress=False), merge_in_memory(models_form))
    with pytest.raises(WorkbenchError, match="unknown module 'vision_tower'"):
        merge_in_memory({**recipe, "modules": {"vision_tower": recipe["modules"]["default"]}})


def test_stacking_remaps_layer_types_and_the_output_loads(tmp_path):
    # mergekit keeps the donor's 4 layer types for 6 layers; transformers then refuses the config
    full, sliding = "full_attention", "sliding_attention"
    kw = dict(num_layers=4, sliding_window=8, use_sliding_window=True)
    qa = write_random_model("qwen3", tmp_path / "qa", seed=0, layer_types=[full, sliding, full, sliding], **kw)
    qb = write_random_model("qwen3", tmp_path / "qb", seed=1, layer_types=[sliding, full, full, full], **kw)
    recipe = {
        "merge_method": "passthrough",
        "base_model": str(qa),
        "slices": [
            {"sources": [{"model": str(qa), "layer_range": [0, 3]}]},
            {"sources": [{"model": str(qb), "layer_range": [1, 4]}]},
        ],
    }
    out = merge_to_disk(recipe, tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["layer_types"] == [full, sliding, full, full, full, full]
    with torch.no_grad():
        logits = load_model(out)(input_ids=IDS).logits
        assert logits.shape == (1, IDS.shape[1], 128) and torch.isfinite(logits).all()
        assert torch.allclose(logits, merged_model(recipe)(input_ids=IDS).logits, atol=1e-5, rtol=0)


def test_stacking_derives_implicit_layer_types(tmp_path):
    # a Qwen2 config that leaves layer types to max_window_layers: each source layer keeps its kind
    q = write_random_model("qwen2", tmp_path / "q", seed=0, num_layers=4, use_sliding_window=True, sliding_window=8)
    cfg = json.loads((q / "config.json").read_text())
    cfg.pop("layer_types", None)
    cfg["max_window_layers"] = 2  # layers 2, 3 slide
    (q / "config.json").write_text(json.dumps(cfg))
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(q), "layer_range": [2, 4]}]},
            {"sources": [{"model": str(q), "layer_range": [0, 3]}]},
        ],
    }
    out = merge_to_disk(recipe, tmp_path / "out", progress=False)
    types = json.loads((out / "config.json").read_text())["layer_types"]
    assert types == ["sliding_attention"] * 2 + ["full_attention"] * 2 + ["sliding_attention"]
    load_model(out)


def test_bad_stacks_are_refused(llamas, tmp_path):
    two = {"sources": [{"model": llamas["a"], "layer_range": [0, 2]}, {"model": llamas["b"], "layer_range": [0, 3]}]}
    with pytest.raises(WorkbenchError, match="same number of layers"):
        merge_to_disk({"merge_method": "linear", "slices": [two]}, tmp_path / "x", progress=False)
    too_far = {"sources": [{"model": llamas["a"], "layer_range": [2, 5]}]}
    with pytest.raises(WorkbenchError, match=r"layer_range \[2, 5\] is outside the 4 layers"):
        merge_to_disk({"merge_method": "passthrough", "slices": [too_far]}, tmp_path / "x", progress=False)
    both = {"sources": [{"model": llamas["a"], "layer_range": [0, 2]}, {"model": llamas["b"], "layer_range": [0, 2]}]}
    with pytest.raises(WorkbenchError, match="passthrough takes exactly 1 model, got 2"):
        merge_to_disk({"merge_method": "passthrough", "slices": [both]}, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
