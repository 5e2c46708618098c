"""Merge search: the space and its bad input, the optimisers, the dev/test statistics (simulation),
and searches end to end on the tiny family (local, CLI with Ray, kill-and-resume, best.yaml
read by `workbench merge` and `mergekit-yaml`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _processes import sigkill_when  # noqa: E402

from workbench.errors import WorkbenchError
from workbench.search import (
    Term,
    dev_test_gaps,
    load_search,
    make_optimizer,
    objective_values,
    parse_space,
)

PY = sys.executable


# ----------------------------------------------------------------------------------------------
# the space (no models needed)


def _space(space, method="slerp", models=("a", "b"), base="a"):
    return parse_space(space, base_method=method, models=list(models), base_model=base, ingredients=["a", "b", "c"])


def test_space_per_group_gradients_per_model_and_choices():
    s = _space(
        {
            "t.self_attn": {"low": 0, "high": 1, "knots": 3},
            "t": {"low": 0.2, "high": 0.8},
            "method": ["slerp"],
        }
    )
    assert [d.name for d in s.dims] == ["t.self_attn[0]", "t.self_attn[1]", "t.self_attn[2]", "t", "method"]
    params = s.decode([0.0, 0.5, 1.0, 0.5], [0])
    assert params == {"t.self_attn[0]": 0.0, "t.self_attn[1]": 0.5, "t.self_attn[2]": 1.0, "t": 0.5, "method": "slerp"}
    axes, per_model = s.axes(params)
    assert axes == {"t.self_attn": [0.0, 0.5, 1.0], "t": 0.5, "method": "slerp"} and per_model == {}

    lin = _space({"weight@*": {"low": 0, "high": 2}, "normalize": [True, False]}, method="linear", models="abc")
    assert [d.name for d in lin.dims] == ["weight@a", "weight@b", "weight@c", "normalize"]
    axes, per_model = lin.axes(lin.decode([0.25, 0.5, 1.0], [1]))
    assert axes == {"normalize": False}
    assert per_model == {("a", "weight"): [(None, 0.5)], ("b", "weight"): [(None, 1.0)], ("c", "weight"): [(None, 2.0)]}

    # a parameter only non-base models take: the base model gets no dimension
    ties = _space({"density@*": {"low": 0.1, "high": 1}}, method="ties", models="abc", base="a")
    assert [d.name for d in ties.dims] == ["density@b", "density@c"]


@pytest.mark.parametrize(
    "space, method, message",
    [
        ({"temperature": {"low": 0, "high": 1}}, "slerp", "unknown parameter 'temperature'"),
        ({"t": {"low": 0, "high": 1.5}}, "slerp", "range [0, 1.5] lies outside the bounds [0, 1] of slerp's t"),
        ({"density": {"low": -0.1, "high": 0.5}}, "ties", "outside the bounds [0, 1] of ties's density"),
        ({"weight@a": {"low": -1, "high": 1}}, "linear", "outside the bounds [0, inf] of linear's weight"),
        ({"density": {"low": 0, "high": 1}}, "linear", "method linear has no parameter 'density'"),
        ({"t": {"low": 0, "high": 1}, "method": ["slerp", "linear"]}, "slerp", "method linear has no parameter 't'"),
        ({"t@a": {"low": 0, "high": 1}}, "slerp", "one value per tensor, not per model"),
        ({"weight@z": {"low": 0, "high": 1}}, "linear", "'z' is not a model of the recipe"),
        ({"t": {"low": 0.6, "high": 0.4}}, "slerp", "need finite low < high"),
        ({"t": 0.5}, "slerp", "give a range {low, high} or a list of choices"),
        ({"t": {"low": 0, "high": 1, "knots": 1}}, "slerp", "knots must be an integer of at least 2"),
        ({"t": [0.2, 1.2]}, "slerp", "choice 1.2 lies outside the bounds"),
        ({"method": ["lerp"]}, "slerp", "workbench extension mergekit does not know"),
        ({"base_model": ["a", "q"]}, "slerp", "'q' is not an ingredient name"),
        ({"density@a": {"low": 0, "high": 1}}, "ties", "not given to the base model 'a'"),
        ({}, "slerp", "space is empty"),
    ],
)
def test_space_bad_input_is_one_clear_error(space, method, message):
    models = "abc" if method in ("linear", "ties") else "ab"
    with pytest.raises(WorkbenchError) as err:
        _space(space, method=method, models=models)
    assert message in str(err.value)


def _setup(doc):
    """A search's Setup built by hand (no checkpoints needed): the pieces ``prepare`` would check."""
    from workbench.search.run import Setup
    from workbench.search.spec import sweep_view
    from workbench.sweep import base_recipe_dict

    spec = load_search(doc)
    base = base_recipe_dict(sweep_view(spec))
    models = [m["model"] for m in base["models"]]
    space = parse_space(
        spec.space, base_method=base["merge_method"], models=models, base_model=base.get("base_model"),
        ingredients=list(spec.ingredients),
    )  # fmt: skip
    return Setup(spec, space, [], base, dict(spec.ingredients), None, spec.fidelity.rungs())


def test_trial_recipes_carry_the_values():
    from workbench.search import trial_recipe

    setup = _setup(
        {
            "ingredients": {"a": "/m/a", "b": "/m/b", "c": "/m/c"},
            "method": "linear",
            "models": ["a", "b", "c"],
            "space": {"weight.mlp@a": {"low": 0, "high": 1}, "weight@*": {"low": 0, "high": 2}},
            "tasks": ["blimp"],
            "budget": {"trials": 2},
        }
    )
    assert [d.name for d in setup.space.dims] == ["weight.mlp@a", "weight@a", "weight@b", "weight@c"]
    recipe = trial_recipe(setup, setup.space.decode([0.5, 0.25, 0.5, 1.0], []))
    assert [m["model"] for m in recipe["models"]] == ["/m/a", "/m/b", "/m/c"]
    assert recipe["models"][0]["parameters"]["weight"] == [{"filter": "mlp", "value": 0.5}, {"value": 0.5}]
    assert [m["parameters"]["weight"] for m in recipe["models"][1:]] == [1.0, 2.0]

    setup = _setup(
        {
            "ingredients": {"a": "/m/a", "b": "/m/b"},
            "method": "slerp",
            "models": ["a", "b"],
            "space": {
                "t.self_attn": {"low": 0, "high": 1, "knots": 2},
                "t": {"low": 0, "high": 1},
                "base_model": ["b", "a"],
            },
            "tasks": ["blimp"],
            "budget": {"trials": 2},
        }
    )
    recipe = trial_recipe(setup, setup.space.decode([0.0, 1.0, 0.3], [0]))
    assert recipe["parameters"]["t"] == [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.3}]
    assert recipe["base_model"] == "/m/b" and recipe["merge_method"] == "slerp"


def _doc(**over):
    doc = {
        "ingredients": {"a": "A", "b": "B"},
        "method": "slerp",
        "models": ["a", "b"],
        "space": {"t": {"low": 0, "high": 1}},
        "tasks": ["blimp", "wikitext"],
        "budget": {"trials": 4},
    }
    doc.update(over)
    return doc


@pytest.mark.parametrize(
    "over, message",
    [
        ({"space": {}}, "space is empty"),
        ({"budget": {"trials": 0}}, "budget.trials must be at least 1, got 0"),
        ({"budget": {"seconds": 0}}, "budget.seconds must be positive"),
        ({"budget": {}}, "budget: give trials"),
        ({"objective": {"arc_easy": 1.0}}, "objective[0]: task 'arc_easy' is not in tasks (blimp, wikitext)"),
        ({"objective": {"wikitext": {"metric": "acc"}}}, "task 'wikitext' has no per-item metric 'acc'"),
        ({"objective": {"blimp": 0}}, "weight 0"),
        ({"tasks": ["blimpp"]}, "unknown task 'blimpp'"),
        ({"ingredients": {"a": "A"}}, "at least two ingredients"),
        ({"optimizer": "annealing"}, "optimizer.name"),
    ],
)
def test_search_file_bad_input(over, message):
    with pytest.raises(WorkbenchError) as err:
        load_search(_doc(**over))
    assert message in str(err.value)


def test_objective_defaults_and_short_forms():
    spec = load_search(_doc())
    assert [(o.task, o.metric, o.weight) for o in spec.objective] == [
        ("blimp", "acc", 1.0),
        ("wikitext", "bits_per_byte", 1.0),
    ]
    spec = load_search(_doc(objective={"blimp": {"metric": "margin", "weight": 2}, "wikitext": 0.5}))
    assert [(o.task, o.metric, o.weight) for o in spec.objective] == [
        ("blimp", "margin", 2.0),
        ("wikitext", "bits_per_byte", 0.5),
    ]


# ----------------------------------------------------------------------------------------------
# the optimisers


def test_cmaes_finds_the_optimum_of_a_smooth_function_and_is_seeded():
    target = np.array([0.2, 0.7, 0.55])

    def run(seed):
        opt = make_optimizer("cmaes", n_continuous=3, n_choices=[3], seed=seed)
        best, asked = np.inf, []
        for _ in range(40):
            cands = opt.ask(opt.popsize)
            values = [
                float(np.sum((np.array(c.unit) - target) ** 2)) + (0.0 if c.choice[0] == 2 else 0.5) for c in cands
            ]
            asked += [c.unit for c in cands]
            best = min(best, *values)
            order = np.argsort(values)
            ranks = np.empty(len(values))
            ranks[order] = np.arange(len(values))
            opt.tell(cands, ranks)
        return best, asked

    best, asked = run(0)
    assert best < 1e-3  # told ranks only, it still converges (and picks the right category)
    assert run(0)[1] == asked and run(1)[1] != asked


def test_sobol_fills_the_cube_and_choices():
    opt = make_optimizer("sobol", n_continuous=2, n_choices=[4], seed=0, popsize=8)
    cands = opt.ask(64)
    units = np.array([c.unit for c in cands])
    assert units.min() >= 0 and units.max() < 1
    # low discrepancy: every quarter of each axis holds 16 of the 64 points
    for axis in range(2):
        assert np.bincount((units[:, axis] * 4).astype(int), minlength=4).tolist() == [16] * 4
    assert sorted(set(c.choice[0] for c in cands)) == [0, 1, 2, 3]
    again = make_optimizer("sobol", n_continuous=2, n_choices=[4], seed=0).ask(64)
    assert [c.unit for c in again] == [c.unit for c in cands]


# ----------------------------------------------------------------------------------------------
# the statistics: select the best on dev, report on test (simulation, no models)


def _simulated_items(rng, systems, p_item, item_ids):
    from workbench.eval.result import items_frame

    frames = []
    for s in systems:
        correct = rng.random(p_item.size) < p_item
        frames.append(
            items_frame(
                {
                    "task": ["arc_easy"] * p_item.size,
                    "item_id": item_ids,
                    "group": ["arc_easy"] * p_item.size,
                    "correct": correct.tolist(),
                    "tie": [False] * p_item.size,
                    "margin": (rng.normal(size=p_item.size) + correct).tolist(),
                }
            ).with_columns(pl.lit(s).alias("system"))
        )
    return pl.concat(frames)


@pytest.mark.slow
def test_selected_on_dev_reported_on_test_covers_zero_and_dev_is_biased():
    """K candidates with no true difference: the winner's test-half CI against the baseline covers 0
    at the nominal rate, while its dev-half difference (the one it was selected on) is biased up."""
    from workbench.stats import dev_test_split

    k, n, reps = 8, 400, 400
    item_ids = [f"q{i}" for i in range(n)]
    candidates = [f"cand{i}" for i in range(k)]
    terms = [Term("arc_easy", "acc", 1.0)]
    covered, dev_diffs, test_diffs = [], [], []
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        p_item = rng.beta(3.0, 2.0, size=n)  # item difficulty, shared by every system
        items = dev_test_split(_simulated_items(rng, [*candidates, "base", "base2"], p_item, item_ids), seed=0)
        dev = items.filter(pl.col("split") == "dev")
        scores = objective_values(dev, candidates, terms, ["base", "base2"], {("arc_easy", "acc"): 1.0})
        winner = max(candidates, key=lambda c: (scores[c].value, -candidates.index(c)))
        gaps = dev_test_gaps(items, subject=winner, references=["base"], seed=rep, n_resamples=1000)
        row = gaps.filter(pl.col("metric") == "acc").row(0, named=True)
        covered.append(row["test_low"] <= 0.0 <= row["test_high"])
        dev_diffs.append(row["dev_estimate"])
        test_diffs.append(row["test_estimate"])
        assert row["optimism"] == pytest.approx(row["dev_estimate"] - row["test_estimate"])
    coverage = float(np.mean(covered))
    assert 0.93 <= coverage <= 0.97, coverage
    dev_mean, dev_se = np.mean(dev_diffs), np.std(dev_diffs, ddof=1) / np.sqrt(reps)
    test_mean, test_se = np.mean(test_diffs), np.std(test_diffs, ddof=1) / np.sqrt(reps)
    assert dev_mean > 5 * dev_se and dev_mean > 0.02  # the winner's curse: best of 8 on dev
    assert abs(test_mean) < 3 * test_se  # unbiased on the items it was not selected on


# ----------------------------------------------------------------------------------------------
# searches on the factory's tiny family


@pytest.fixture(scope="module")
def family(request, tmp_path_factory, shared_data):
    """The factory's tiny family (session fixture ``tiny_family``), trained once per session."""
    try:
        return request.getfixturevalue("tiny_family")
    except pytest.FixtureLookupError:
        from workbench.factory import train_family

        return train_family("tiny", tmp_path_factory.mktemp("tiny_family"), progress=False, data_dir=shared_data)


def _write_search(path: Path, family, shared_data: Path, **over) -> Path:
    doc = {
        "ingredients": {"early": str(family.trajectory[0]), "late": str(family.trajectory[-1])},
        "method": "slerp",
        "models": ["early", "late"],
        "space": {"t.self_attn": {"low": 0.0, "high": 1.0}, "t": {"low": 0.0, "high": 1.0}},
        "tasks": ["blimp"],
        "limit": 2,  # two pairs per BLiMP paradigm: 134 pairs, about half of them dev
        "seed": 0,
        "data_dir": str(shared_data),
        "optimizer": {"name": "cmaes", "popsize": 4},
        "budget": {"trials": 4},
        "fidelity": {"min_fraction": 0.5, "eta": 2},
        "n_resamples": 200,
    }
    doc.update(over)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([PY, "-m", "workbench.cli", *args], capture_output=True, text=True, env=env, **kwargs)


def _search_entries(cache: Path) -> list:
    """The cached evaluations of search candidates (restricted to item ids), as EvalResults."""
    from workbench.store import ResultStore

    store = ResultStore(cache)
    out = []
    for f in cache.glob("*/*.wbres"):
        res = store.get(f.stem)
        if res is not None and any(t.get("item_ids_sha256") for t in res.settings["per_task"].values()):
            out.append(res)
    return out


@pytest.fixture(scope="module")
def searched(family, shared_data, tmp_path_factory):
    """One small search run in this process, its outputs written: (result, out dir, cache dir, search file)."""
    from workbench.search import run_search
    from workbench.store import ResultStore

    root = tmp_path_factory.mktemp("search")
    path = _write_search(root / "search.yaml", family, shared_data)
    result = run_search(path, root / "out", store=ResultStore(root / "cache"), progress=False)
    return result, root / "out", root / "cache", path


def test_search_end_to_end_local(searched, family):
    result, out, cache, path = searched
    assert sorted(p.name for p in out.iterdir()) == [
        "best.json", "best.yaml", "claim", "dev_test.parquet", "report.html", "search.yaml", "trials.parquet",
        "verdict.md",
    ]  # fmt: skip
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.equals(result.trials)
    # successive halving: 4 candidates on half the dev items, the best 2 on all of them
    assert trials.group_by("rung").len().sort("rung")["len"].to_list() == [4, 2]
    assert sorted(set(trials["fidelity"].to_list())) == [0.5, 1.0]
    assert set(trials.filter(pl.col("rung") == 1)["trial"].to_list()) == set(
        trials.filter(pl.col("rung") == 0).sort("objective", descending=True)["trial"].to_list()[:2]
    )
    assert (trials["n_items"].filter(trials["rung"] == 0) < trials["n_items"].filter(trials["rung"] == 1).min()).all()
    assert set(trials.columns) >= {"t.self_attn", "t", "objective", "blimp/acc", "blimp/acc:z", "seconds", "worker"}
    assert trials["status"].unique().to_list() == ["computed"]
    best = trials.filter(pl.col("best"))
    assert best.height == 1 and best["rung"][0] == 1
    assert best["objective"][0] == trials.filter(pl.col("rung") == 1)["objective"].max() == result.best["objective"]

    # the search never read the test half: every candidate evaluation is on dev items only
    split = result.panel.items.filter(pl.col("system") == "merge").select("item_id", "split")
    dev_ids = set(split.filter(pl.col("split") == "dev")["item_id"].to_list())
    entries = _search_entries(cache)
    assert len(entries) == 6
    for res in entries:
        assert set(res.items["item_id"].to_list()) <= dev_ids
    # the winner's dev objective in the search is the claim check's dev objective of the merge
    merge = result.objectives.filter(pl.col("system") == "merge").row(0, named=True)
    assert merge["dev"] == pytest.approx(result.best["objective"], abs=1e-9)

    verdict = (out / "verdict.md").read_text()
    assert "**Selected on dev.**" in verdict and "no candidate was scored on the test half" in verdict
    assert "| **the search's recipe** |" in verdict and "on dev (selected there) | on test (reported)" in verdict
    assert "# Claim check" in verdict and "best-on-dev ingredient" in verdict
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot(") >= 3 and 'src="http' not in html
    shown = re.sub(r"<script.*?</script>|<style.*?</style>", "", html, flags=re.S)
    assert str(family.root) not in shown and str(family.root) not in verdict  # no machine paths to share
    assert (out / "claim" / "report.html").is_file() and (out / "claim" / "tables" / "items.parquet").is_file()
    assert yaml.safe_load((out / "search.yaml").read_text())["space"] == yaml.safe_load(path.read_text())["space"]


def test_search_again_reads_every_evaluation_from_the_cache(searched):
    from workbench.search import run_search
    from workbench.store import ResultStore

    result, out, cache, path = searched
    again = run_search(path, None, store=ResultStore(cache), progress=False, check_claim=False)
    assert again.computed == 0 and again.cached == 6
    cols = ["trial", "rung", "t.self_attn", "t", "objective", "fingerprint", "seconds", "worker"]
    assert again.trials.select(cols).equals(result.trials.select(cols))  # the log keeps seconds and workers
    assert set(again.trials["status"].to_list()) == {"cached"}


def _tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _mergekit_readable(recipe: dict, root: Path) -> dict:
    """The recipe over copies of its models whose config names the architecture: the factory saves
    configs without ``architectures``, which mergekit needs (transformers does not)."""
    from workbench.merge.recipe import map_model_refs, model_refs

    copies = {}
    for i, ref in enumerate(model_refs(recipe)):
        dst = root / f"model-{i}"
        shutil.copytree(ref, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["architectures"] = ["LlamaForCausalLM"]
        (dst / "config.json").write_text(json.dumps(cfg))
        copies[ref] = str(dst)
    return map_model_refs(recipe, lambda ref: copies.get(ref, ref))


@pytest.mark.slow
def test_best_yaml_is_read_by_workbench_merge_and_mergekit(searched, tmp_path):
    result, out, cache, path = searched
    text = (out / "best.yaml").read_text()
    assert text.startswith("# selected on the dev half")
    recipe = _mergekit_readable(yaml.safe_load(text), tmp_path)
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    wb = _cli("merge", str(tmp_path / "best.yaml"), str(tmp_path / "wb"), timeout=300)
    assert wb.returncode == 0, wb.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    mk = subprocess.run(
        [str(Path(PY).with_name("mergekit-yaml")), str(tmp_path / "best.yaml"), str(tmp_path / "mk"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert mk.returncode == 0, mk.stderr[-2000:]
    a, b = _tensors(tmp_path / "wb"), _tensors(tmp_path / "mk")
    assert set(a) - {"lm_head.weight"} == set(b) - {"lm_head.weight"} and a
    for name in set(a) & set(b):
        scale = float(b[name].abs().max()) or 1.0
        assert float((a[name].float() - b[name].float()).abs().max()) <= 1e-5 * scale, name
    # the recipe on disk is the winner the search evaluated: same merge as the search's in-memory one
    from workbench.merge import merged_model

    mem = merged_model(result.best["recipe"]).state_dict()
    for name, t in a.items():
        if name in mem:
            assert float((mem[name].float() - t.float()).abs().max()) <= 1e-6 * (float(t.abs().max()) or 1.0), name


def _invoke(*args: str):
    from typer.testing import CliRunner

    from workbench.cli import app

    return CliRunner().invoke(app, list(args))


def test_bad_input_fails_before_any_work(family, shared_data, tmp_path):
    cache = tmp_path / "cache"
    other = tmp_path / "other"  # an ingredient of another architecture
    shutil.copytree(family.trajectory[-1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (other / "config.json").write_text(json.dumps(cfg))
    early, late = str(family.trajectory[0]), str(family.trajectory[-1])
    cases = {
        "param": ({"space": {"temperature": {"low": 0, "high": 1}}}, "unknown parameter 'temperature'"),
        "bounds": ({"space": {"t": {"low": 0, "high": 2}}}, "lies outside the bounds [0, 1] of slerp's t"),
        "empty": ({"space": {}}, "space is empty"),
        "budget": ({"budget": {"trials": 0}}, "budget.trials must be at least 1"),
        "objective": ({"objective": {"wikitext": 1.0}}, "task 'wikitext' is not in tasks (blimp)"),
        # the merge engine's error, before any evaluation ...
        "arch": ({"ingredients": {"early": early, "late": str(other)}}, "different architectures"),
        # ... also when the odd one is an ingredient the base recipe does not use (the soup would fail)
        "arch3": ({"ingredients": {"early": early, "late": late, "odd": str(other)}}, "intermediate_size"),
    }
    for name, (over, message) in cases.items():
        path = _write_search(tmp_path / f"{name}.yaml", family, shared_data, **over)
        res = _invoke("search", str(path), "--out", str(tmp_path / f"out-{name}"), "--cache", str(cache))
        assert res.exit_code == 2, (name, res.output)
        errors = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], (name, res.output)
    assert not any(p.name.startswith(("out-", ".out-")) for p in tmp_path.iterdir())
    assert not cache.exists() or not list(cache.rglob("*.wbres"))


@pytest.mark.slow
def test_cli_ray_backend_without_address(family, shared_data, tmp_path):
    """The path users run: `workbench search --backend ray` with no address starts Ray on this
    machine; the trials are the local backend's, computed in Ray workers."""
    from workbench.search import run_search
    from workbench.store import ResultStore

    path = _write_search(
        tmp_path / "search.yaml", family, shared_data, budget={"trials": 2}, optimizer={"name": "sobol", "popsize": 2},
        fidelity={"min_fraction": 1.0},
    )  # fmt: skip
    res = _cli("search", str(path), "--out", str(tmp_path / "ray"), "--backend", "ray", "--cache", str(tmp_path / "c1"), timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 trials, 2 evaluations: 2 computed, 0 from the cache" in res.stdout
    remote = pl.read_parquet(tmp_path / "ray" / "trials.parquet")
    assert set(remote["backend"].to_list()) == {"ray"} and os.getpid() not in remote["worker"].to_list()
    local = run_search(path, None, store=ResultStore(tmp_path / "c2"), progress=False, check_claim=False).trials
    assert remote["fingerprint"].to_list() == local["fingerprint"].to_list()
    for a, b in zip(remote["objective"].to_list(), local["objective"].to_list()):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert (tmp_path / "ray" / "verdict.md").is_file()


@pytest.mark.slow
def test_sigkill_midway_then_resume(family, shared_data, tmp_path):
    from workbench.search import run_search
    from workbench.store import ResultStore

    path = _write_search(
        tmp_path / "search.yaml", family, shared_data, budget={"trials": 8}, fidelity={"min_fraction": 1.0}
    )
    cache, out = tmp_path / "cache", tmp_path / "out"

    def two_logged() -> bool:
        logs = list((cache / "searches").glob("*.jsonl"))
        return bool(logs) and len(logs[0].read_text().splitlines()) >= 2

    sigkill_when(
        ["search", str(path), "--out", str(out), "--cache", str(cache)], two_logged, timeout=300, what="search"
    )
    assert not out.exists()  # the output directory only appears complete
    done = len(_search_entries(cache))
    assert 2 <= done < 8

    res = _cli("search", str(path), "--out", str(out), "--cache", str(cache), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"8 trials, 8 evaluations: {8 - done} computed, {done} from the cache" in res.stdout
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.filter(pl.col("status") == "cached").height == done
    # nothing was computed twice: one log line per evaluation over both runs
    lines = [json.loads(ln) for ln in next((cache / "searches").glob("*.jsonl")).read_text().splitlines()]
    assert len(lines) == len({ln["key"] for ln in lines}) == 8
    # the resumed search is the search run from scratch: the optimiser replays the same candidates
    fresh = run_search(path, None, store=ResultStore(tmp_path / "fresh"), progress=False, check_claim=False).trials
    cols = ["trial", "t.self_attn", "t", "fingerprint", "objective"]
    assert trials.select(cols).equals(fresh.select(cols))


@pytest.mark.slow
def test_notebook_runs_the_search_and_draws_its_figures(family, shared_data, tmp_path):
    from workbench.runner import run_notebook

    repo = Path(__file__).resolve().parents[1]
    params = {
        "models": [str(p) for p in family.trajectory[-3:]],
        "method": "linear",
        "space": {"weight@*": {"low": 0.0, "high": 1.0}},
        "tasks": ["blimp"],
        "subsample": 2,
        "trials": 4,
        "popsize": 4,
        "min_fraction": 0.5,
        "n_resamples": 200,
        "data_dir": str(shared_data),
        "out_dir": str(tmp_path / "search"),
    }
    res = run_notebook(repo / "notebooks" / "merge_search.ipynb", tmp_path / "nb", parameters=params, progress=False)
    html = res.html.read_text()
    assert html.count("Plotly.newPlot(") >= 3 and 'src="http' not in html
    assert "Selected on dev" in html
    assert (tmp_path / "search" / "best.yaml").is_file()
