"""Accurate reductions (workbench.numerics) against float64 truth, at real-checkpoint sizes.

Truth is computed here with NumPy in float64 over slices (an independent code path); the
tensors are float32 (or bf16/fp16), so truth is of the rounded inputs. Sizes are 10M elements
and, for the SLERP decision at the 0.9995 threshold, 50M elements in checkpoints on disk.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench import numerics as nx
from workbench.checkpoints import open_checkpoint
from workbench.errors import WorkbenchError
from workbench.geometry import tensor_angles
from workbench.io.safetensors import write_safetensors
from workbench.merge import merge_to_disk, simple_recipe
from workbench.merge import spherical as sph

SLICE = 1 << 21


def _slices(n: int):
    return ((s, min(n, s + SLICE)) for s in range(0, n, SLICE))


def truth_gram(x) -> tuple[np.ndarray, np.ndarray]:
    """float64 Gram matrix of the rows of ``x`` (``[M, N]`` or a list of 1-D tensors, read a
    slice at a time) and the same of ``|x|``: the scale that bounds any summation error."""
    rows = [r.reshape(-1) for r in x]
    m, n = len(rows), rows[0].numel()
    g, scale = np.zeros((m, m)), np.zeros((m, m))
    for s, e in _slices(n):
        c = np.stack([r[s:e].double().numpy() for r in rows])
        g += c @ c.T
        scale += np.abs(c) @ np.abs(c).T
    return g, scale


def cosines(g: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(g))
    return g / d[:, None] / d[None, :]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_gram_close(x: torch.Tensor, rel: float = 2e-8, cos_tol: float = 2e-8) -> None:
    g = nx.gram(x)
    assert g.dtype == torch.float64
    tg, scale = truth_gram(x)
    assert np.abs(g.numpy() - tg).max() <= rel * scale.max()
    assert (np.abs(g.numpy() - tg) <= rel * scale).all()
    assert np.abs(cosines(g.numpy()) - cosines(tg)).max() <= cos_tol


N10 = 10_000_037  # not a multiple of the block length: the trailing partial block counts too


@pytest.fixture(scope="module")
def base10():
    return torch.randn(N10, generator=gen(0))


def test_gram_at_10m_large_mean_and_nearly_parallel(base10):
    noise = torch.randn(N10, generator=gen(1))
    # large common mean, rows within 1e-3 of each other: every product has the same sign and
    # the cosine is 0.99999..., where float32 BLAS sums lose the most
    x = torch.stack([base10 + 30.0, base10 + 30.0 + 1e-3 * noise, base10])
    assert_gram_close(x)
    # a float32 BLAS dot product of the same rows misses by far more than float32 rounding
    tg, scale = truth_gram(x[:2])
    assert abs(float(x[0] @ x[1]) - tg[0, 1]) > 100 * 2e-8 * scale[0, 1]


def test_gram_of_constant_rows_stays_within_a_few_roundings():
    # identical blocks make every block's float32 rounding the same: the adversarial case
    for c1, c2 in [(1.1, 1.3), (0.7, 3.3), (2.9, 0.51)]:
        x = torch.stack([torch.full((1_000_003,), c1), torch.full((1_000_003,), c2)])
        tg, scale = truth_gram(x)
        assert np.abs(nx.gram(x).numpy() - tg).max() <= 1e-6 * scale.max()
        assert abs(float(nx.dot(x[0], x[1])) / tg[0, 1] - 1) <= 1e-10
        assert abs(float(nx.norm(x[0])) ** 2 / tg[0, 0] - 1) <= 1e-10


def test_half_precision_and_float64_inputs():
    base = torch.randn(2, 3_000_001, generator=gen(2)) + 0.5
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        x = base.to(dt)
        g = nx.gram(x)
        tg, scale = truth_gram(x)  # truth of the rounded inputs: conversion is exact
        assert np.abs(g.numpy() - tg).max() <= 1e-12 * scale.max()


def test_batched_stacks_match_per_entry_truth():
    small = torch.randn(300, 3, 4099, generator=gen(3)) + 2.0  # many short entries: gathered steps
    large = torch.randn(3, 2, 1_500_000, generator=gen(4)) + 2.0  # long entries: column steps
    for x in (small, large):
        g = nx.gram(x)
        assert g.shape == (x.shape[0], x.shape[1], x.shape[1])
        for b in (0, 1, x.shape[0] - 1):
            tg, scale = truth_gram(x[b])
            assert np.abs(g[b].numpy() - tg).max() <= 2e-8 * scale.max()
    assert nx.gram(torch.zeros(0, 2, 5)).shape == (0, 2, 2)
    assert torch.equal(nx.gram(torch.zeros(4, 2, 0)), torch.zeros(4, 2, 2, dtype=torch.float64))


def test_strided_inputs_are_read_in_place(base10):
    x = base10[: 2 * 4_000_000].view(4_000_000, 2).T  # rows with element stride 2
    assert not x.is_contiguous()
    assert_gram_close(x)
    stack = torch.randn(3, 200, 5000, generator=gen(5)).transpose(0, 1)  # [200, 3, 5000] view
    g = nx.gram(stack)
    tg, scale = truth_gram(stack[7])
    assert np.abs(g[7].numpy() - tg).max() <= 2e-8 * scale.max()


def test_dot_norm_and_sums_at_10m(base10):
    x = base10 + 5.0
    y = -base10 + 3.0
    x64, y64 = x.double().numpy(), y.double().numpy()
    assert math.isclose(float(nx.dot(x, y)), float(np.dot(x64, y64)), rel_tol=1e-10)
    assert math.isclose(float(nx.norm(x)), float(np.linalg.norm(x64)), rel_tol=1e-10)
    assert math.isclose(float(nx.sum(x)), math.fsum(x64.tolist()), rel_tol=1e-10)
    assert math.isclose(float(nx.abs_sum(y)), float(np.abs(y64).sum()), rel_tol=1e-10)
    xb = x[:10_000_000].bfloat16().reshape(1000, -1)  # any shape: reductions run over all elements
    assert math.isclose(float(nx.norm(xb)), float(np.linalg.norm(xb.double().numpy())), rel_tol=1e-10)
    assert nx.dot(x, y).dtype == torch.float64 and nx.dot(x, y).shape == ()


def test_reduced_precision_matmul_settings_do_not_reach_the_result(base10):
    x = torch.stack([base10[:2_000_000] + 30.0, base10[1:2_000_001] + 30.0])
    expected = nx.gram(x)
    backend = torch.backends.mkldnn.matmul
    if not hasattr(backend, "fp32_precision"):
        pytest.skip("this torch has no per-backend fp32 matmul precision")
    saved = backend.fp32_precision
    try:
        backend.fp32_precision = "bf16"
        assert not nx._blocked(x, x)  # falls back to exact float64 steps
        assert torch.allclose(nx.gram(x), expected, rtol=1e-7, atol=0)
    finally:
        backend.fp32_precision = saved


def test_shape_errors_name_the_parameter():
    with pytest.raises(WorkbenchError, match="gram: expected"):
        nx.gram(torch.ones(3))
    with pytest.raises(WorkbenchError, match="dot: a has shape"):
        nx.dot(torch.ones(3), torch.ones(4))


# ---------------------------------------------------------------------------------------------
# the SLERP decision at 50M elements: geometry table and merge agree with float64 truth

SHAPE = (6251, 8001)  # 50,014,251 elements (not a multiple of the block length)
PLANTED = {"model.layers.0.mlp.up_proj.weight": 0.9990, "model.layers.0.mlp.down_proj.weight": 0.9997}


def _planted(a: torch.Tensor, u: torch.Tensor, cos: float, ratio: float) -> torch.Tensor:
    """float32 ``b`` with float64 cosine ``cos`` to ``a`` and norm ``ratio * |a|`` (then rounded)."""
    g, _ = truth_gram([a, u])
    na = math.sqrt(g[0, 0])
    proj = g[0, 1] / g[0, 0]
    nw = math.sqrt(g[1, 1] - proj * g[0, 1])  # |u - proj a|
    ca, cw = ratio * cos, ratio * math.sqrt(1 - cos * cos) * na / nw
    b = torch.empty_like(a)
    bf, af, uf = b.view(-1), a.view(-1), u.view(-1)
    for s, e in _slices(af.numel()):
        x, w = af[s:e].double(), uf[s:e].double()
        bf[s:e] = ca * x + cw * (w - proj * x)
    return b


def _write(path, tensors):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    write_safetensors(path / "model.safetensors", tensors)
    return path


@pytest.fixture(scope="module")
def planted_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    a = 0.02 * torch.randn(SHAPE, generator=gen(10))
    u = 0.02 * torch.randn(SHAPE, generator=gen(11))
    bs = {name: _planted(a, u, cos, 1.25) for name, cos in PLANTED.items()}
    del u
    pa = _write(root / "a", {name: a for name in PLANTED})
    pb = _write(root / "b", bs)
    return pa, pb


def _slerp64_error(t: float, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> tuple[bool, float]:
    """Float64 SLERP of float32 ``a``, ``b`` (LERP when |cos| > 0.9995) against ``out``:
    returns (fallback, max |out - slerp| / max |slerp|)."""
    g, _ = truth_gram([a, b])
    cos = g[0, 1] / math.sqrt(g[0, 0] * g[1, 1])
    fallback = abs(cos) > sph.DOT_THRESHOLD
    if fallback:
        ca, cb = 1 - t, t
    else:
        th = math.acos(cos)
        ca, cb = math.sin((1 - t) * th) / math.sin(th), math.sin(t * th) / math.sin(th)
    err = scale = 0.0
    af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for s, e in _slices(af.numel()):
        ref = ca * af[s:e].double() + cb * bf[s:e].double()
        err = max(err, float((of[s:e].double() - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return fallback, err / scale


def test_slerp_decision_and_merge_at_50m(planted_pair, tmp_path):
    pa, pb = planted_pair
    ca, cb = open_checkpoint(pa), open_checkpoint(pb)
    df = tensor_angles(pa, pb, t=0.5)
    rows = {r["name"]: r for r in df.iter_rows(named=True)}
    merged = open_checkpoint(merge_to_disk(simple_recipe("slerp", [pa, pb], t=0.5), tmp_path / "m", progress=False))
    for name, planted in PLANTED.items():
        a, b = ca.get(name), cb.get(name)
        assert a.numel() >= 50_000_000
        g, _ = truth_gram([a, b])
        cos = g[0, 1] / math.sqrt(g[0, 0] * g[1, 1])
        assert abs(cos - planted) < 1e-6  # the planted value survives rounding to float32
        row = rows[name]
        assert abs(row["cosine"] - cos) <= 1e-6
        assert math.isclose(row["norm_a"], math.sqrt(g[0, 0]), rel_tol=1e-7)
        assert row["fallback"] == (planted > sph.DOT_THRESHOLD)
        fallback, err = _slerp64_error(0.5, a, b, merged.get(name))
        assert fallback == row["fallback"]  # the table's flag is the branch the merge took
        assert err <= 2e-6
        # the in-memory path (one Gram product of the whole tensor) agrees as well
        fallback, err = _slerp64_error(0.3, a, b, sph.slerp(0.3, a, b))
        assert fallback == row["fallback"] and err <= 2e-6
