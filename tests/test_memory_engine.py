"""The in-memory engine's guarantees: its arithmetic, recycled output memory, and its caches.

Output buffers are recycled, plans and opened checkpoints cached; none of it may change a
result, overwrite a tensor the caller can still read, outlive a file's change, or turn an
error into something else.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.merge import memory, merge_in_memory, merge_to_disk, merged_model, simple_recipe
from workbench.merge import spherical as sph
from workbench.merge.execute import gram_coefficients
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=32, num_layers=2, vocab_size=64, num_heads=4)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_engine")
    out = {}
    for dtype in ("float32", "bfloat16"):
        out[dtype] = [write_random_llama(root / f"{dtype}_{s}", seed=s, dtype=dtype, **DIMS) for s in (0, 1)]
    return out


@pytest.fixture(autouse=True)
def _clean_caches():
    memory.clear_ingredient_cache()
    yield
    memory.clear_ingredient_cache()


def _reference(recipe) -> dict[str, torch.Tensor]:
    """Each layout group combined in one batched product over the whole stack, then cast to the
    output dtype: the engine's arithmetic before results were recycled and rounded in pieces."""
    plan = memory._PLANS.plan(recipe, None, False)
    groups, singles = memory._groups(plan)
    assert not singles
    ck_keys = {m: memory._ck_key(ck) for m, ck in plan.checkpoints.items()}
    out = {}
    for key, jobs in groups.items():
        x, g = memory._group_inputs(plan, jobs, torch.device("cpu"), key[3], False, ck_keys)
        res = sph.combine(gram_coefficients(plan.recipe.merge_method, jobs, g), x).to(key[4])
        out.update((j.name, res[i].reshape(j.shape).clone()) for i, j in enumerate(jobs))
    return out


def _recipes(a, b):
    return [
        simple_recipe("slerp", [a, b], t=0.3),
        simple_recipe("slerp", [a, b], t=[0.1, 0.9], dtype=None),
        simple_recipe("lerp_norm_restore", [a, b], t=0.6, dtype="bfloat16"),
        simple_recipe("linear", [a, b], weights=[0.3, 0.9], dtype="float16"),
    ]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_results_bit_identical_to_one_product(pairs, dtype, monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_PIECE", 7)  # many pieces even on tiny tensors
    a, b = pairs[dtype]
    for recipe in _recipes(a, b):
        want = _reference(recipe)
        got = merge_in_memory(recipe)
        assert got.keys() == want.keys()
        for name, w in want.items():
            assert got[name].dtype == w.dtype and torch.equal(got[name], w), (recipe.merge_method, name)
        into = {n: torch.zeros_like(t) for n, t in want.items()}  # written into existing tensors
        merge_in_memory(recipe, out=into)
        assert all(torch.equal(into[n], w) for n, w in want.items())
    recipe = _recipes(a, b)[0]
    disk = merge_to_disk(recipe, tmp_path / "disk", progress=False)
    from workbench.checkpoints import open_checkpoint

    ck = open_checkpoint(disk)
    for name, t in merge_in_memory(recipe).items():
        scale = float(t.abs().max().float()) or 1.0
        assert float((ck.get(name).float() - t.float()).abs().max()) <= 1e-6 * scale, name


def test_returned_tensors_are_never_overwritten(pairs):
    a, b = pairs["float32"]
    name, norm = "model.layers.1.mlp.up_proj.weight", "model.norm.weight"
    first = merge_in_memory(simple_recipe("slerp", [a, b], t=0.2))
    snap = {n: t.clone() for n, t in first.items()}
    for t in (0.4, 0.5, 0.6):
        merge_in_memory(simple_recipe("slerp", [a, b], t=t))
    assert all(torch.equal(first[n], s) for n, s in snap.items())
    # a view, or a bare storage handle, outlives the dict and the tensor it came from
    view = first[name][:3]
    storage, offset = first[norm].untyped_storage(), first[norm].storage_offset()
    del first
    for t in (0.55, 0.65, 0.75):
        merge_in_memory(simple_recipe("slerp", [a, b], t=t))
    assert torch.equal(view, snap[name][:3])
    n = snap[norm].numel()
    assert torch.equal(torch.empty(0).set_(storage)[offset : offset + n], snap[norm])


def test_results_written_into_a_loaded_model_are_bit_identical(pairs):
    a, b = pairs["float32"]
    model = merged_model(simple_recipe("slerp", [a, b], t=0.3))
    recipe = simple_recipe("slerp", [a, b], t=[0.8, 0.2])
    merge_in_memory(recipe, out=model.state_dict())
    state = model.state_dict()
    assert all(torch.equal(state[n], w) for n, w in _reference(recipe).items())


def test_models_built_from_results_are_left_alone(pairs):
    a, b = pairs["float32"]
    model = merged_model(simple_recipe("slerp", [a, b], t=0.3))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    for t in (0.1, 0.5, 0.9, 0.7):
        merge_in_memory(simple_recipe("slerp", [a, b], t=t))
        merged_model(simple_recipe("slerp", [a, b], t=t))
    assert all(torch.equal(model.state_dict()[n], s) for n, s in before.items())


@pytest.mark.skipif(not memory._TRACKABLE, reason="this torch exposes no storage reference count")
def test_dropped_results_are_recycled(pairs):
    a, b = pairs["float32"]
    name = "model.layers.0.self_attn.q_proj.weight"
    state = merge_in_memory(simple_recipe("slerp", [a, b], t=0.1))
    ptrs = []
    for t in (0.2, 0.3, 0.4, 0.5):
        state = merge_in_memory(simple_recipe("slerp", [a, b], t=t))  # the previous state lives until here
        ptrs.append(state[name].data_ptr())
    assert ptrs[0] == ptrs[2] and ptrs[1] == ptrs[3] and ptrs[0] != ptrs[1]  # two buffers, alternating
    del state
    again = merge_in_memory(simple_recipe("slerp", [a, b], t=0.6))
    assert again[name].data_ptr() in ptrs
    assert torch.equal(again[name], _reference(simple_recipe("slerp", [a, b], t=0.6))[name])


def test_changed_files_invalidate_every_cache(pairs, tmp_path):
    a, _ = pairs["float32"]
    b = tmp_path / "b"
    write_random_llama(b, seed=5, **DIMS)
    recipe = simple_recipe("slerp", [a, b], t=0.4)
    before = merge_in_memory(recipe)
    before = {n: t.clone() for n, t in before.items()}
    write_random_llama(b, seed=6, overwrite=True, **DIMS)
    after = merge_in_memory(recipe)
    assert any(not torch.equal(after[n], before[n]) for n in before)
    fresh = _reference(recipe)
    memory.clear_ingredient_cache()
    assert all(torch.equal(after[n], t) for n, t in merge_in_memory(recipe).items())
    assert all(torch.equal(after[n], t) for n, t in fresh.items())
    # a changed config is read again too: the architectures now disagree
    write_random_llama(b, seed=6, overwrite=True, **{**DIMS, "hidden_size": 48})
    with pytest.raises(WorkbenchError, match="different architectures"):
        merge_in_memory(recipe)


def test_bad_input_raises_the_same_error_every_time(pairs, tmp_path):
    a, b0 = pairs["float32"]
    bad = simple_recipe("slerp", [a, b0], t=1.5)
    messages = []
    for _ in range(2):
        with pytest.raises(WorkbenchError) as err:
            merge_in_memory(bad)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "outside [0, 1]" in messages[0]
    b = tmp_path / "gone"
    shutil.copytree(b0, b)
    recipe = simple_recipe("slerp", [a, b], t=0.5)
    merge_in_memory(recipe)
    shutil.rmtree(b)
    with pytest.raises(WorkbenchError) as cached:
        merge_in_memory(recipe)
    memory.clear_ingredient_cache()
    with pytest.raises(WorkbenchError) as cold:
        merge_in_memory(recipe)
    assert str(cached.value) == str(cold.value) and "no such model directory" in str(cold.value)


def test_plans_and_checkpoints_are_reused_only_while_unchanged(pairs):
    a, b = pairs["float32"]
    p1 = memory._PLANS.plan(simple_recipe("slerp", [a, b], t=0.5), None, False)
    p2 = memory._PLANS.plan(simple_recipe("slerp", [a, b], t=0.5), None, False)
    p3 = memory._PLANS.plan(simple_recipe("slerp", [a, b], t=0.25), None, False)
    assert p2 is p1 and p3 is not p1
    assert all(p3.checkpoints[r] is p1.checkpoints[r] for r in p1.checkpoints)
    assert memory._PLANS.plan(simple_recipe("slerp", [a, b], t=0.5), None, True) is not p1


def test_concurrent_calls_get_their_own_results(pairs):
    a, b = pairs["float32"]
    ts = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2]
    want = {t: _reference(simple_recipe("slerp", [a, b], t=t)) for t in ts}
    got: dict[float, dict] = {}

    def work(t: float) -> None:
        for _ in range(3):
            got[t] = merge_in_memory(simple_recipe("slerp", [a, b], t=t))

    threads = [threading.Thread(target=work, args=(t,)) for t in ts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in ts:
        assert all(torch.equal(got[t][n], w) for n, w in want[t].items()), t


def _zeros(recipe) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(t) for n, t in _reference(recipe).items()}


def test_bad_out_is_refused_before_anything_is_written(pairs):
    a, b = pairs["float32"]
    recipe = simple_recipe("slerp", [a, b], t=0.4)
    name = "model.layers.1.self_attn.k_proj.weight"
    cases = {
        "lacks 1 of the results: 'model.norm.weight'": lambda o: o.pop("model.norm.weight"),
        "expected .* torch.float32": lambda o: o.__setitem__(name, o[name].to(torch.bfloat16)),
        r"is \(8, 32\)": lambda o: o.__setitem__(name, o[name][:8]),
        "share memory": lambda o: o.__setitem__("model.norm.weight", o["model.layers.0.input_layernorm.weight"]),
    }
    for match, spoil in cases.items():
        into = _zeros(recipe)
        spoil(into)
        with pytest.raises(WorkbenchError, match=match) as err:
            merge_in_memory(recipe, out=into)
        assert "\n" not in str(err.value)
        assert all(not t.any() for t in into.values()), match  # nothing written
    # extra entries (a tied lm_head.weight in a model's state dict, say) are ignored
    into = {**_zeros(recipe), "extra.weight": torch.zeros(1)}
    merge_in_memory(recipe, out=into)
    assert not into["extra.weight"].any() and torch.equal(into[name], _reference(recipe)[name])


def test_nonfinite_input_leaves_out_untouched(pairs, tmp_path):
    from safetensors.torch import load_file, save_file

    a, b0 = pairs["float32"]
    b = tmp_path / "nan"
    shutil.copytree(b0, b)
    plan = memory._PLANS.plan(simple_recipe("slerp", [a, b0], t=0.5), None, False)
    groups, _ = memory._groups(plan)
    last = list(groups.values())[-1][0].name  # merged after every other group: the rest could be written first
    sd = load_file(b / "model.safetensors")
    sd[last] = sd[last].clone()
    sd[last].view(-1)[3] = float("nan")
    save_file(sd, b / "model.safetensors", metadata={"format": "pt"})
    into = _zeros(simple_recipe("slerp", [a, b0], t=0.5))  # same shapes and dtypes
    with pytest.raises(WorkbenchError, match=f"{last}.* NaN"):
        merge_in_memory(simple_recipe("slerp", [a, b], t=0.5), out=into)
    assert all(not t.any() for t in into.values())


def test_out_in_the_cached_inputs_is_refused(pairs):
    a, b = pairs["float32"]
    recipe = simple_recipe("slerp", [a, b], t=0.3)
    want = _reference(recipe)
    (x, _), *_ = memory._INGREDIENTS.items.values()  # a stack of inputs the engine keeps
    into = _zeros(recipe)
    victim = next(n for n, t in into.items() if t.numel() <= x[0, 0].numel())
    into[victim] = x[0, 0, : into[victim].numel()].view(into[victim].shape)
    before = x.clone()
    with pytest.raises(WorkbenchError, match=f"out\\['{victim}'\\] is memory of the merge's cached inputs"):
        merge_in_memory(recipe, out=into)
    assert torch.equal(x, before)
    assert all(torch.equal(t, want[n]) for n, t in merge_in_memory(recipe).items())


def test_a_returned_input_is_the_callers_copy(pairs):
    a, _ = pairs["float32"]
    recipe = simple_recipe("passthrough", [a])
    first = merge_in_memory(recipe)
    keep = {n: t.clone() for n, t in first.items()}
    for t in first.values():
        t.fill_(3.0)  # the caller's to change; the engine's cached inputs must not see it
    again = merge_in_memory(recipe, out={n: torch.empty_like(t) for n, t in keep.items()})
    assert all(torch.equal(again[n], t) for n, t in keep.items())


def test_plan_cache_follows_moved_links_and_rewritten_files(pairs, tmp_path):
    a, b = pairs["float32"]
    link = tmp_path / "current"
    link.symlink_to(b)
    recipe = simple_recipe("slerp", [a, link], t=0.5)
    p1 = memory._PLANS.plan(recipe, None, False)
    assert memory._PLANS.plan(recipe, None, False) is p1
    link.unlink()
    link.symlink_to(pairs["bfloat16"][1])
    p2 = memory._PLANS.plan(recipe, None, False)
    assert p2 is not p1 and str(p2.checkpoints[str(link)].path) == str(pairs["bfloat16"][1].resolve())
    # a file rewritten in place, same name and size (a tokenizer, say) is a change too
    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / "notes.txt").write_text("x")
    recipe = simple_recipe("slerp", [c, b], t=0.5)
    p3 = memory._PLANS.plan(recipe, None, False)
    (c / "notes.txt").write_text("y")
    assert memory._PLANS.plan(recipe, None, False) is not p3


def test_plans_reading_files_elsewhere_are_not_cached(pairs):
    a, b = pairs["float32"]
    recipe = simple_recipe("slerp", [a, b], t=0.5)
    recipe = recipe.model_copy(update={"chat_template": "chatml"})
    assert memory._PLANS.plan(recipe, None, False) is not memory._PLANS.plan(recipe, None, False)
