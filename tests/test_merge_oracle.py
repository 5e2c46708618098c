"""Oracle tests: workbench's merges equal mergekit 0.1.5's on small random Llama models.

Each recipe is run by mergekit in-process (offline, CPU) and by workbench on disk and in
memory; every tensor must agree to 1e-6 (float32).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from workbench.checkpoints import load_model, open_checkpoint
from workbench.merge import load_recipe, merge_in_memory, merge_to_disk, merged_model
from workbench.testing import write_random_llama

pytestmark = pytest.mark.oracle

TOL = 1e-6
DIMS = dict(hidden_size=48, num_layers=3, vocab_size=96, num_heads=4, num_kv_heads=2, intermediate_size=80)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("oracle_models")
    base = write_random_llama(root / "base", seed=0, **DIMS)
    out = {"base": str(base)}
    out["ft1"] = str(write_random_llama(root / "ft1", like=base, noise=0.02, seed=1))
    out["ft2"] = str(write_random_llama(root / "ft2", like=base, noise=0.02, seed=2))
    out["ind"] = str(write_random_llama(root / "ind", seed=3, **DIMS))
    out["tied_a"] = str(write_random_llama(root / "tied_a", seed=4, tie=True, **DIMS))
    out["tied_b"] = str(write_random_llama(root / "tied_b", seed=5, tie=True, **DIMS))
    return out


def _fill(obj, models):
    if isinstance(obj, str):
        return models.get(obj, obj)
    if isinstance(obj, list):
        return [_fill(x, models) for x in obj]
    if isinstance(obj, dict):
        return {
            k: (_fill(v, models) if k in ("model", "base_model", "models", "slices", "sources") else v)
            for k, v in obj.items()
        }
    return obj


def _mergekit(recipe: dict, out: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(copy.deepcopy(recipe)),
        str(out),
        MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False, lazy_unpickle=False),
    )
    return out


RECIPES = {
    "linear": {
        "merge_method": "linear",
        "models": [
            {"model": "ft1", "parameters": {"weight": 0.3}},
            {"model": "ft2", "parameters": {"weight": 0.7}},
            {"model": "ind", "parameters": {"weight": 0.5}},
        ],
    },
    "slerp": {
        "merge_method": "slerp",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "ind"}],
        "parameters": {"t": 0.35},
    },
    "slerp_gradient_groups": {
        "merge_method": "slerp",
        "base_model": "ind",
        "models": [{"model": "base"}, {"model": "ind"}],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0.0, 0.5, 1.0]},
                {"filter": "mlp", "value": [1.0, 0.2]},
                {"value": 0.6},
            ]
        },
    },
    "slerp_slices": {
        "merge_method": "slerp",
        "base_model": "base",
        "slices": [
            {
                "sources": [{"model": "base", "layer_range": [0, 2]}, {"model": "ind", "layer_range": [1, 3]}],
                "parameters": {"t": [0.1, 0.9]},
            },
            {
                "sources": [{"model": "base", "layer_range": [2, 3]}, {"model": "ind", "layer_range": [0, 1]}],
                "parameters": {"t": [0.3, 0.7]},
            },
        ],
    },
    "slerp_tied": {
        "merge_method": "slerp",
        "base_model": "tied_a",
        "models": [{"model": "tied_a"}, {"model": "tied_b"}],
        "parameters": {"t": 0.5},
    },
    "multislerp": {
        "merge_method": "multislerp",
        "models": [
            {"model": "ft1", "parameters": {"weight": 1.0}},
            {"model": "ft2", "parameters": {"weight": 2.0}},
            {"model": "ind", "parameters": {"weight": 0.5}},
        ],
    },
    "multislerp_base": {
        "merge_method": "multislerp",
        "base_model": "base",
        "models": [{"model": "ft1", "parameters": {"weight": 0.4}}, {"model": "ft2", "parameters": {"weight": 0.6}}],
    },
    "karcher": {
        "merge_method": "karcher",
        "models": [{"model": "ft1"}, {"model": "ft2"}, {"model": "ind"}],
    },
    "task_arithmetic": {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "models": [{"model": "ft1", "parameters": {"weight": 0.7}}, {"model": "ft2", "parameters": {"weight": 0.5}}],
        "parameters": {"lambda": 1.3},
    },
    "ties": {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            {"model": "ft1", "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": "ft2", "parameters": {"weight": 0.8, "density": [0.3, 0.7]}},
        ],
    },
    "dare_linear_density1": {
        "merge_method": "dare_linear",
        "base_model": "base",
        "models": [{"model": "ft1", "parameters": {"weight": 0.6}}, {"model": "ft2", "parameters": {"weight": 0.4}}],
    },
    "model_stock": {
        "merge_method": "model_stock",
        "base_model": "base",
        "models": [{"model": "ft1"}, {"model": "ft2"}],
    },
}
for _r in RECIPES.values():
    _r["dtype"] = "float32"


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_matches_mergekit(case, models, tmp_path):
    recipe = _fill(RECIPES[case], models)
    ref = open_checkpoint(_mergekit(recipe, tmp_path / "mergekit"))
    ours_disk = open_checkpoint(merge_to_disk(load_recipe(recipe), tmp_path / "workbench", progress=False))
    ours_mem = merge_in_memory(recipe)
    assert set(ours_disk.names()) == set(ref.names())
    # in memory a tied lm_head is left for the model to re-tie
    assert set(ours_mem) | ({"lm_head.weight"} if ref.tied else set()) == set(ref.names())
    worst = 0.0
    for name in ref.names():
        want = ref.get(name)
        got = ours_disk.get(name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        worst = max(worst, (got - want).abs().max().item())
        if name in ours_mem:
            worst = max(worst, (ours_mem[name] - want).abs().max().item())
    assert worst <= TOL, f"{case}: max abs diff {worst:.3g} > {TOL}"


def test_dare_is_seeded_and_deterministic(models):
    recipe = _fill(
        {
            "merge_method": "dare_ties",
            "base_model": "base",
            "models": [
                {"model": "ft1", "parameters": {"weight": 1.0, "density": 0.5}},
                {"model": "ft2", "parameters": {"weight": 1.0, "density": 0.5}},
            ],
            "parameters": {"seed": 7},
        },
        models,
    )
    a, b = merge_in_memory(recipe), merge_in_memory(recipe)
    assert all(torch.equal(a[n], b[n]) for n in a)
    other = copy.deepcopy(recipe)
    other["parameters"]["seed"] = 8
    c = merge_in_memory(other)
    assert any(not torch.equal(a[n], c[n]) for n in a if n.endswith("proj.weight"))
    base = open_checkpoint(models["base"])
    name = "model.layers.1.mlp.up_proj.weight"
    dropped = (a[name] == base.get(name)).float().mean().item()
    assert 0.1 < dropped < 0.5  # about a quarter of entries: both deltas dropped


def test_output_dir_loads_and_matches_in_memory_logits(models, tmp_path):
    recipe = _fill(RECIPES["slerp_gradient_groups"], models)
    out = merge_to_disk(recipe, tmp_path / "merged", progress=False)
    assert (out / "workbench_merge.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert load_recipe(out / "workbench_merge.yaml").parameters == load_recipe(recipe).parameters
    from_disk = load_model(out)
    in_memory = merged_model(recipe)
    ids = torch.tensor([[1, 5, 9, 33, 60, 2]])
    with torch.no_grad():
        a, b = from_disk(input_ids=ids).logits, in_memory(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_sharded_output_loads_in_transformers(models, tmp_path):
    recipe = _fill(RECIPES["linear"], models)
    out = merge_to_disk(recipe, tmp_path / "sharded", progress=False, max_shard_bytes=60_000)
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
    ours = merge_in_memory(recipe)
    model = load_model(out)
    sd = model.state_dict()
    assert all(torch.allclose(sd[n], ours[n], atol=TOL, rtol=0) for n in ours)


def test_merge_in_memory_into_a_loaded_model(models):
    recipe = _fill(RECIPES["slerp"], models)
    model = merged_model(recipe)
    ids = torch.tensor([[1, 7, 30, 2]])
    with torch.no_grad():
        at_035 = model(input_ids=ids).logits
    moved = {**recipe, "parameters": {"t": 0.8}}
    merge_in_memory(moved, out=model.state_dict())
    with torch.no_grad():
        at_08 = model(input_ids=ids).logits
        fresh = merged_model(moved)(input_ids=ids).logits
    assert not torch.allclose(at_035, at_08)
    assert torch.allclose(at_08, fresh, atol=1e-6, rtol=0)
