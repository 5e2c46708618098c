"""The randomised methods (dare_*, della*, arcee_fusion): seeded determinism in both schemes,
the statistics of the default per-tensor masks, mergekit's stream replayed out of order, and
arcee_fusion's quantile sampling against mergekit."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.merge import merge_in_memory, merge_to_disk
from workbench.merge.execute import apply_method
from workbench.merge.methods.arcee_fusion import fuse
from workbench.merge.plan import plan_merge
from workbench.merge.task_vectors import della_prune, generalized_task_arithmetic, random_prune
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=32, num_layers=2, vocab_size=48, num_heads=4, num_kv_heads=2, intermediate_size=48)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("random_models")
    base = write_random_llama(root / "base", seed=0, **DIMS)
    return {
        "base": str(base),
        "a": str(write_random_llama(root / "a", like=base, noise=0.02, seed=1)),
        "b": str(write_random_llama(root / "b", like=base, noise=0.02, seed=2)),
    }


def _recipe(models, method, **top):
    per = {"weight": 1.0, "density": 0.5}
    return {
        "merge_method": method,
        "base_model": models["base"],
        "models": [{"model": models["a"], "parameters": per}, {"model": models["b"], "parameters": per}],
        "dtype": "float32",
        **top,
    }


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
@pytest.mark.parametrize("scheme", [{"parameters": {"seed": 7}}, {"random_seed": 7}])
def test_same_seed_same_bytes_other_seed_other_masks(models, method, scheme, tmp_path):
    recipe = _recipe(models, method, **scheme)
    a = merge_in_memory(recipe)
    b = merge_in_memory(recipe)
    disk = merge_to_disk(recipe, tmp_path / "m", progress=False)
    from workbench.checkpoints import open_checkpoint

    on_disk = open_checkpoint(disk)
    assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], on_disk.get(n)) for n in a)
    other = _recipe(models, method, **{k: ({"seed": 8} if k == "parameters" else 8) for k in scheme})
    c = merge_in_memory(other)
    assert any(not torch.equal(a[n], c[n]) for n in a if n.endswith("proj.weight"))


def test_the_two_schemes_differ_and_cannot_be_mixed(models):
    stream = merge_in_memory(_recipe(models, "dare_ties", random_seed=0))
    per_tensor = merge_in_memory(_recipe(models, "dare_ties"))
    assert any(not torch.equal(stream[n], per_tensor[n]) for n in stream if n.endswith("proj.weight"))
    with pytest.raises(WorkbenchError, match="either random_seed .* or a seed parameter"):
        merge_in_memory(_recipe(models, "dare_ties", random_seed=0, parameters={"seed": 1}))


def test_mergekit_stream_is_the_same_whatever_order_the_jobs_run_in(models):
    plan = plan_merge(_recipe(models, "della", random_seed=3))
    names = [j.name for j in plan.jobs]
    assert names == sorted(names)  # mergekit's order: lexicographic by tensor name

    def inputs(job):
        return [plan.checkpoints[m].get(n).float() for m, n in job.inputs]

    forward = {j.name: apply_method("della", j, inputs(j)) for j in plan.jobs}
    fresh = plan_merge(_recipe(models, "della", random_seed=3))
    backward = {j.name: apply_method("della", j, inputs(j)) for j in reversed(fresh.jobs)}  # replays
    assert all(torch.equal(forward[n], backward[n]) for n in forward)


def test_dare_masks_keep_density_rescale_l1_and_average_to_the_unmasked_merge():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(400, 300, generator=g)
    kept = random_prune(delta, 0.3, rescale=False, generator=torch.Generator().manual_seed(1))
    assert abs((kept != 0).float().mean().item() - 0.3) < 0.005  # 120k Bernoulli(0.3) draws: sd 0.0013
    rescaled = random_prune(delta, 0.3, rescale=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rescaled != 0, kept != 0)
    assert abs(rescaled.abs().sum().item() / delta.abs().sum().item() - 1) < 1e-6  # L1 norm restored
    # expectation over masks: the task-arithmetic merge (the L1 rescale is 1/p in expectation);
    # 1000 runs: the mean's error is about 3% of the entries' scale
    base, xs = torch.zeros(50, 40), [torch.randn(50, 40, generator=g) for _ in range(2)]
    runs = [
        generalized_task_arithmetic(
            base,
            xs,
            [0.6, 0.4],
            density=0.5,
            sparsify="random",
            rescale=True,
            generator=torch.Generator().manual_seed(s),
        )
        for s in range(1000)
    ]
    mean = torch.stack(runs).mean(0)
    want = 0.6 * xs[0] + 0.4 * xs[1]
    assert (mean - want).abs().mean().item() < 0.05 * want.abs().mean().item()


def test_della_keeps_larger_magnitudes_more_often_at_the_same_overall_density():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(2000, 64, generator=g)
    kept = della_prune(delta, 0.5, epsilon=0.3, rescale=False, generator=torch.Generator().manual_seed(2))
    assert abs((kept != 0).float().mean().item() - 0.5) < 0.01
    ranks = delta.abs().argsort(1).argsort(1)
    small = (kept != 0)[ranks < 16].float().mean().item()  # keep probability 0.2 .. 0.34
    large = (kept != 0)[ranks >= 48].float().mean().item()  # 0.66 .. 0.8
    assert small < 0.32 and large > 0.68
    one_column = della_prune(torch.ones(5000, 1), 0.4, epsilon=0.1, rescale=False, generator=g)
    assert abs(one_column.mean().item() - 0.4) < 0.03  # a one-entry row keeps with probability density


def test_della_refuses_density_epsilon_outside_the_unit_interval(models):
    recipe = _recipe(models, "della")
    recipe["parameters"] = {"epsilon": 0.6}
    with pytest.raises(WorkbenchError, match=r"density 0.5 \+/- epsilon 0.6 of model .* must stay inside \(0, 1\)"):
        plan_merge(recipe)


@pytest.mark.oracle
def test_arcee_fusion_quantile_sampling_matches_mergekit_and_is_seeded():
    from mergekit.merge_methods import merge_tensors

    g = torch.Generator().manual_seed(0)
    base = torch.randn(1100, 1000, generator=g)  # > 1,000,000 entries: quartiles from a sample
    other = base + 0.1 * torch.randn(1100, 1000, generator=g)
    torch.manual_seed(9)
    want = merge_tensors([base, other], "arcee_fusion", base_index=0)
    got = fuse(base, other, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, want)
    again = fuse(base, other, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, again)
    assert not torch.equal(got, fuse(base, other, generator=torch.Generator().manual_seed(10)))
