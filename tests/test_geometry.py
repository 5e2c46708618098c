"""Per-tensor geometry tables."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from workbench.checkpoints import open_checkpoint
from workbench.errors import WorkbenchError
from workbench.geometry import pairwise_angles, tensor_angles
from workbench.merge import merge_in_memory, simple_recipe
from workbench.naming import tensor_group
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=16, num_layers=2, vocab_size=40, num_heads=2, tokenizer=False)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    a = write_random_llama(root / "a", seed=0, **DIMS)
    b = write_random_llama(root / "b", seed=1, **DIMS)
    c = write_random_llama(root / "c", like=a, noise=0.0002, seed=2, tokenizer=False)
    return a, b, c


def test_one_row_per_tensor_with_layer_and_group(trio):
    a, b, _ = trio
    df = tensor_angles(a, b)
    ck = open_checkpoint(a)
    assert df["name"].to_list() == ck.names()
    row = df.filter(pl.col("name") == "model.layers.1.mlp.down_proj.weight").row(0, named=True)
    assert row["layer"] == 1 and row["group"] == "mlp_down" and row["numel"] == 16 * 32
    assert df.filter(pl.col("name") == "model.embed_tokens.weight")["layer"].to_list() == [None]
    assert set(df["group"]) == {
        "embed",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_o",
        "mlp_gate",
        "mlp_up",
        "mlp_down",
        "norm",
        "lm_head",
    }


def test_numbers_agree_with_the_merge(trio):
    a, b, _ = trio
    df = tensor_angles(a, b, t=0.5)
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    merged = merge_in_memory(simple_recipe("slerp", [a, b], t=0.5))
    lerped = merge_in_memory(simple_recipe("lerp", [a, b], t=0.5))
    for row in df.filter(~pl.col("fallback")).iter_rows(named=True):
        x, y = ca.get(row["name"]).double(), cb.get(row["name"]).double()
        assert math.isclose(row["norm_a"], float(x.norm()), rel_tol=1e-6)
        cos = float(torch.dot(x.flatten(), y.flatten()) / (x.norm() * y.norm()))
        assert math.isclose(row["cosine"], cos, abs_tol=1e-6)
        assert math.isclose(row["angle_deg"], math.degrees(math.acos(cos)), abs_tol=1e-4)
        assert math.isclose(row["norm_factor"], 1 / math.cos(math.radians(row["angle_deg"]) / 2), rel_tol=1e-5)
        ratio = float(merged[row["name"]].norm() / lerped[row["name"]].norm())
        assert math.isclose(row["norm_factor"], ratio, rel_tol=1e-5)


def test_nearly_identical_models_fall_back_to_lerp(trio):
    a, _, c = trio
    df = tensor_angles(a, c)
    assert df["fallback"].all() and (df["norm_factor"] == 1.0).all()


def test_pairwise_and_errors(trio, tmp_path):
    a, b, c = trio
    df = pairwise_angles([a, b, c])
    assert df.columns[:2] == ["model_a", "model_b"]
    assert df.select("model_a", "model_b").unique().height == 3
    wide = write_random_llama(tmp_path / "wide", seed=3, **{**DIMS, "hidden_size": 32})
    with pytest.raises(WorkbenchError, match="shape mismatch.*model.embed_tokens.weight"):
        tensor_angles(a, wide)
    assert tensor_group("transformer.h.0.attn.c_proj.weight") == "attn_o"
