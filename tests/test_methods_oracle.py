"""Oracle tests of the methods mergekit 0.1.5 added (nuslerp, breadcrumbs*, della*, sce, nearswap,
arcee_fusion, passthrough, ram, ramplus_tl): each recipe runs through mergekit's ``run_merge``
(offline, CPU) and through workbench on disk and in memory, with per-filter and gradient
parameters; every tensor must agree within 1e-6 of its own scale (float32).

Random methods run with a ``random_seed`` (mergekit's stream): their masks must be mergekit's
``--random-seed`` masks exactly (same entries dropped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mergekit_oracle import fill, relative_error, run_mergekit  # noqa: E402

from workbench.checkpoints import open_checkpoint
from workbench.merge import load_recipe, merge_in_memory, merge_to_disk
from workbench.testing import write_random_llama

pytestmark = pytest.mark.oracle

TOL = 1e-6
DIMS = dict(hidden_size=32, num_layers=3, vocab_size=64, num_heads=4, num_kv_heads=2, intermediate_size=48)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("method_oracle_models")
    base = write_random_llama(root / "base", seed=0, **DIMS)
    out = {"base": str(base)}
    for i, name in enumerate(("ft1", "ft2", "ft3"), start=1):
        out[name] = str(write_random_llama(root / name, like=base, noise=0.02, seed=i))
    return out


W = {"weight": 1.0}
RECIPES: dict[str, dict] = {
    "nuslerp": {
        "merge_method": "nuslerp",
        "models": [
            {"model": "ft1", "parameters": {"weight": [0.2, 0.9]}},
            {"model": "ft2", "parameters": {"weight": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]}},
        ],
    },
    "nuslerp_base_rows": {
        "merge_method": "nuslerp",
        "base_model": "base",
        "models": [{"model": "ft1", "parameters": {"weight": 0.4}}, {"model": "ft2", "parameters": {"weight": 0.6}}],
        "parameters": {
            "nuslerp_flatten": False,
            "nuslerp_row_wise": [{"filter": "mlp", "value": True}, {"value": False}],
        },
    },
    "nearswap": {
        "merge_method": "nearswap",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "ft1"}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0.005, 0.03]}, {"value": 0.01}]},
    },
    "arcee_fusion": {
        "merge_method": "arcee_fusion",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "ft2"}],
    },
    "breadcrumbs": {
        "merge_method": "breadcrumbs",
        "base_model": "base",
        "models": [
            {"model": "ft1", "parameters": {"weight": 0.7, "density": [0.3, 0.8], "gamma": 0.05}},
            {"model": "ft2", "parameters": {"weight": 0.5, "density": 0.6}},
        ],
        "parameters": {"gamma": [{"filter": "mlp", "value": 0.1}, {"value": 0.02}]},
    },
    "breadcrumbs_ties": {
        "merge_method": "breadcrumbs_ties",
        "base_model": "base",
        "models": [
            {"model": "ft1", "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": "ft2", "parameters": {"weight": [0.5, 1.5], "density": 0.7}},
            {"model": "ft3", "parameters": {"weight": 0.8, "density": 0.4}},
        ],
        "parameters": {"gamma": 0.05, "normalize": [{"filter": "self_attn", "value": True}, {"value": False}]},
    },
    "sce": {
        "merge_method": "sce",
        "base_model": "base",
        "models": [{"model": "ft1"}, {"model": "ft2"}, {"model": "ft3"}],
        "parameters": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": [1.0, 0.5]}]},
    },
    "ram": {
        "merge_method": "ram",
        "base_model": "base",
        "models": [{"model": "ft1"}, {"model": "ft2"}, {"model": "ft3"}],
        "parameters": {"epsilon": [{"filter": "norm", "value": 0.01}, {"value": 0.02}]},
    },
    "ramplus_tl": {
        "merge_method": "ramplus_tl",
        "base_model": "base",
        "models": [{"model": "ft1"}, {"model": "ft2"}],
        "parameters": {"epsilon": 0.025, "r": [0.5, 2.0], "alpha": [{"filter": "mlp", "value": 5.0}, {"value": 0.3}]},
    },
    "passthrough_scaled": {
        "merge_method": "passthrough",
        "slices": [
            {
                "sources": [
                    {
                        "model": "ft1",
                        "layer_range": [0, 3],
                        "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": [1.0, 2.0]}]},
                    }
                ]
            }
        ],
    },
    "della_seeded": {
        "merge_method": "della",
        "base_model": "base",
        "random_seed": 11,
        "models": [
            {"model": "ft1", "parameters": {"weight": 0.6, "density": [0.3, 0.7]}},
            {"model": "ft2", "parameters": {"weight": 0.4, "density": 0.5, "epsilon": 0.2}},
        ],
        "parameters": {"epsilon": 0.1, "lambda": 1.2},
    },
    "della_linear_seeded": {
        "merge_method": "della_linear",
        "base_model": "base",
        "random_seed": 3,
        "models": [{"model": "ft1", "parameters": W | {"density": 0.5}}, {"model": "ft3", "parameters": W}],
        "parameters": {"density": 0.4},
    },
    "dare_ties_seeded": {
        "merge_method": "dare_ties",
        "base_model": "base",
        "random_seed": 5,
        "models": [
            {"model": "ft1", "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": "ft2", "parameters": {"weight": 0.4, "density": [0.8, 0.3]}},
        ],
    },
}
for _r in RECIPES.values():
    _r["dtype"] = "float32"


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_matches_mergekit(case, models, tmp_path):
    recipe = fill(RECIPES[case], models)
    ref = open_checkpoint(run_mergekit(recipe, tmp_path / "mergekit", seed=recipe.get("random_seed")))
    ours_disk = open_checkpoint(merge_to_disk(load_recipe(recipe), tmp_path / "workbench", progress=False))
    ours_mem = merge_in_memory(recipe)
    assert set(ours_disk.names()) == set(ref.names()) == set(ours_mem)
    base = open_checkpoint(models["base"]) if "base_model" in recipe else None
    worst = 0.0
    for name in ref.names():
        want = ref.get(name)
        for got in (ours_disk.get(name), ours_mem[name]):
            assert got.shape == want.shape and got.dtype == want.dtype, name
            worst = max(worst, relative_error(got, want))
            if "random_seed" in recipe:  # the same entries dropped: the same entries left at the base
                kept = base.get(name)
                assert torch.equal(got == kept, want == kept), f"{case}: {name}: masks differ"
    assert worst <= TOL, f"{case}: max relative diff {worst:.3g} > {TOL}"
