"""Unit tests of the merge math and of how recipe parameters resolve per tensor."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.merge import load_recipe, simple_recipe
from workbench.merge.linear import lerp, linear
from workbench.merge.model_stock import model_stock
from workbench.merge.plan import plan_merge
from workbench.merge.recipe import resolve_setting
from workbench.merge.spherical import (
    chained_slerp,
    karcher,
    lerp_norm_restore,
    multislerp,
    norm_factor,
    slerp,
    slerp_batched,
)
from workbench.merge.task_vectors import dare, magnitude_prune, task_arithmetic, ties
from workbench.testing import write_random_llama


def _pair(seed=0, shape=(8, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _angle(a, b):
    c = torch.dot(a.flatten().double(), b.flatten().double()) / (a.double().norm() * b.double().norm())
    return math.acos(float(c.clamp(-1, 1)))


@pytest.mark.parametrize("fn", [slerp, lerp, lerp_norm_restore])
def test_endpoints_are_exact(fn):
    a, b = _pair()
    assert torch.equal(fn(0.0, a, b), a)
    assert torch.equal(fn(1.0, a, b), b)


def test_colinear_inputs_fall_back_to_lerp():
    a, _ = _pair()
    b = 2.5 * a + 1e-6 * torch.ones_like(a)
    for t in (0.2, 0.5, 0.9):
        assert torch.allclose(slerp(t, a, b), lerp(t, a, b), atol=1e-6, rtol=0)
    assert torch.allclose(slerp(0.3, a, -a), lerp(0.3, a, -a))  # antipodal: LERP too


def test_slerp_keeps_the_norm_of_equal_norm_inputs():
    a, b = _pair(1)
    b = b * (a.norm() / b.norm())
    for t in (0.1, 0.37, 0.5, 0.8):
        assert torch.isclose(slerp(t, a, b).norm(), a.norm(), rtol=1e-6)


def test_slerp_half_equals_lerp_over_cos_half_angle():
    a, b = _pair(2)
    theta = _angle(a, b)
    assert torch.allclose(slerp(0.5, a, b), lerp(0.5, a, b) / math.cos(theta / 2), atol=1e-6, rtol=0)
    # the norm factor reported for geometry is the same number
    assert math.isclose(
        float(norm_factor(0.5, a.reshape(1, -1), b.reshape(1, -1))), 1 / math.cos(theta / 2), rel_tol=1e-6
    )


def test_slerp_follows_the_great_circle_for_equal_norms():
    a, b = _pair(3)
    b = b * (a.norm() / b.norm())
    theta = _angle(a, b)
    for t in (0.25, 0.75):
        s = slerp(t, a, b)
        assert math.isclose(_angle(a, s), t * theta, abs_tol=1e-4)
        assert math.isclose(_angle(s, b), (1 - t) * theta, abs_tol=1e-4)


def test_lerp_norm_restore_has_lerp_direction_and_slerp_norm():
    a, b = _pair(4)
    for t in (0.3, 0.5):
        c = lerp_norm_restore(t, a, b)
        assert torch.isclose(c.norm(), slerp(t, a, b).norm(), rtol=1e-5)
        assert _angle(c, lerp(t, a, b)) < 1e-3


def test_batched_slerp_equals_per_tensor_slerp():
    a, b = _pair(5, (4, 6, 5))
    t = torch.tensor([0.0, 0.3, 0.6, 1.0])
    out = slerp_batched(t, a, b)
    for i in range(4):
        assert torch.allclose(out[i], slerp(float(t[i]), a[i], b[i]), atol=1e-6, rtol=0)


def test_dtype_in_dtype_out():
    a, b = _pair(6)
    assert slerp(0.5, a.bfloat16(), b.bfloat16()).dtype == torch.bfloat16
    assert linear([a.half(), b.half()], [1, 1]).dtype == torch.float16
    assert slerp(0.5, a.double(), b.double()).dtype == torch.float64


def test_multislerp_and_karcher_of_two_equal_norm_tensors_is_slerp_half():
    a, b = _pair(7)
    b = b * (a.norm() / b.norm())
    mid = slerp(0.5, a, b)
    assert torch.allclose(multislerp([a, b], [1.0, 1.0]), mid, atol=1e-5)
    assert torch.allclose(karcher([a, b]), mid, atol=1e-5)


def test_chained_slerp_first_stage_is_slerp():
    a, b = _pair(8)
    c = torch.randn_like(a)
    assert torch.allclose(chained_slerp([a, b], [0.3]), slerp(0.3, a, b))
    assert torch.allclose(chained_slerp([a, b, c], [0.5, 0.25]), slerp(0.25, slerp(0.5, a, b), c))


def test_linear_weights_and_normalisation():
    a, b = _pair(9)
    assert torch.allclose(linear([a, b], [1.0, 3.0]), 0.25 * a + 0.75 * b, atol=1e-6)
    assert torch.allclose(linear([a, b], [1.0, 3.0], normalize=False), a + 3 * b, atol=1e-6)


def test_task_vector_methods():
    base, a = _pair(10)
    b = base + 0.1 * torch.randn_like(base)
    assert torch.allclose(
        task_arithmetic(base, [a, b], [0.5, 2.0]), base + 0.5 * (a - base) + 2 * (b - base), atol=1e-5
    )
    # TIES with one input and full density is the input itself
    assert torch.allclose(ties(base, [a], [1.0]), a, atol=1e-6)
    kept = magnitude_prune(a - base, 0.25)
    assert int((kept != 0).sum()) == int(0.25 * a.numel())
    d1 = dare(base, [a, b], [1, 1], density=0.5, seed=3)
    assert torch.equal(d1, dare(base, [a, b], [1, 1], density=0.5, seed=3))
    assert not torch.equal(d1, dare(base, [a, b], [1, 1], density=0.5, seed=4))


def test_model_stock_ratio():
    base = torch.zeros(2)
    x1, x2 = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])  # orthogonal offsets: cos = 0 -> base
    assert torch.equal(model_stock(base, [x1, x2]), base)
    x2 = torch.tensor([1.0, 1.0])  # identical: cos = 1 -> t = 1, the average
    assert torch.allclose(model_stock(base, [x1, x2]), x1)


# --------------------------------------------------------------------------- parameters


def test_resolve_setting_rules():
    # gradient: piecewise-linear at the layer position
    assert resolve_setting("x", [0.0, 1.0, 0.0], 0.25) == pytest.approx(0.5)
    assert resolve_setting("x", [0.0, 1.0, 0.0], 1.0) == 0.0
    # filters: substring, first match wins, unfiltered entry catches the rest
    setting = [{"filter": "attn", "value": 0.1}, {"filter": "self_attn.q", "value": 0.9}, {"value": 0.5}]
    assert resolve_setting("model.layers.0.self_attn.q_proj.weight", setting) == 0.1
    assert resolve_setting("model.layers.0.mlp.up_proj.weight", setting) == 0.5
    assert resolve_setting("model.norm.weight", [{"filter": "mlp", "value": 1}]) is None


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradients")
    kw = dict(hidden_size=16, num_layers=5, vocab_size=32, tokenizer=False)
    return str(write_random_llama(root / "a", seed=0, **kw)), str(write_random_llama(root / "b", seed=1, **kw))


def test_gradients_and_filters_resolve_per_tensor(two_models):
    a, b = two_models
    recipe = load_recipe(
        {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.0, 1.0]},
                    {"filter": "mlp", "value": 0.7},
                    {"value": [0.2, 0.6, 1.0]},
                ]
            },
        }
    )
    t = {j.name: j.shared["t"] for j in plan_merge(recipe).jobs}
    # 5 layers: layer i sits at position i/4
    assert [t[f"model.layers.{i}.self_attn.q_proj.weight"] for i in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert t["model.layers.3.mlp.down_proj.weight"] == 0.7
    assert t["model.layers.2.input_layernorm.weight"] == pytest.approx(0.6)
    assert t["model.layers.4.input_layernorm.weight"] == pytest.approx(1.0)
    # outside the layer stack: the gradient's first value
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert t[name] == pytest.approx(0.2)


def test_model_parameters_take_precedence(two_models):
    a, b = two_models
    recipe = load_recipe(
        {
            "merge_method": "linear",
            "models": [{"model": a, "parameters": {"weight": 3.0}}, {"model": b}],
            "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]},
        }
    )
    jobs = {j.name: j for j in plan_merge(recipe).jobs}
    assert [p["weight"] for p in jobs["model.layers.0.mlp.up_proj.weight"].per_input] == [3.0, 0.5]
    assert [p["weight"] for p in jobs["model.layers.0.self_attn.k_proj.weight"].per_input] == [3.0, 1.0]


def test_simple_recipe_defaults(two_models):
    a, b = two_models
    r = simple_recipe("slerp", [a, b], t=[{"filter": "self_attn", "value": 0.3}, {"value": 0.5}])
    assert r.base_model == a
    t = {j.name: j.shared["t"] for j in plan_merge(r).jobs}
    assert t["model.layers.1.self_attn.v_proj.weight"] == 0.3 and t["model.norm.weight"] == 0.5
    r = simple_recipe("ties", [a, b], base_model=a, density=0.4)
    assert r.models[1].parameters == {"weight": 1.0} and r.parameters == {"density": 0.4}


def test_chained_slerp_and_lerp_norm_restore_recipes(two_models, tmp_path):
    from workbench.checkpoints import open_checkpoint
    from workbench.merge import merge_in_memory

    a, b = two_models
    c = str(write_random_llama(tmp_path / "c", seed=2, hidden_size=16, num_layers=5, vocab_size=32, tokenizer=False))
    cks = [open_checkpoint(p) for p in (a, b, c)]
    name = "model.layers.2.mlp.up_proj.weight"
    chained = merge_in_memory(simple_recipe("chained_slerp", [a, b, c]))
    want = chained_slerp([ck.get(name) for ck in cks], [1 / 2, 1 / 3])
    assert torch.allclose(chained[name], want, atol=1e-6)
    lnr = merge_in_memory(simple_recipe("lerp_norm_restore", [a, b], t=0.3))
    assert torch.allclose(lnr[name], lerp_norm_restore(0.3, cks[0].get(name), cks[1].get(name)), atol=1e-6)
