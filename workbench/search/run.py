"""The search driver: :func:`prepare` (every check before any work) and :func:`run_search`.

A search runs in generations. The optimiser proposes ``popsize`` candidates; each becomes a merge
recipe (the sweep's own expansion applies the values), is planned by the merge engine (its
fingerprint keys the results cache) and, by successive halving, scored on the smallest dev
subset, the best 1/eta of them on the next, up to the whole dev half. Evaluations run through
the sweep's backends (in this process, or as Ray tasks whose workers keep the ingredients open);
each result is put in the results cache the moment it arrives, so a search killed even with
SIGKILL and started again replays the optimiser, finds every finished evaluation in the cache
and computes only the rest. The ranks of a generation go back to the optimiser; the budget
(trials, seconds) ends the loop. The best candidate on the whole dev half then goes through the
claim check (:func:`workbench.claim.run_panel`) against every baseline, reported on the test half.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from workbench.errors import WorkbenchError
from workbench.search.objective import Score, Term, dev_subsets, ingredient_scales, objective_values, restrict, tagged
from workbench.search.optimizers import Candidate, make_optimizer
from workbench.search.space import Space, parse_space
from workbench.search.spec import SearchSpec, load_search, sweep_view
from workbench.search.trials import Evaluation, Trial, TrialLog
from workbench.sweep.backends import STATE, Job, connect_ray, run_local, run_ray
from workbench.sweep.spec import spec_data_dir

__all__ = [
    "CANDIDATE",
    "Outcome",
    "Reference",
    "Setup",
    "prepare",
    "run_search",
    "score_recipes",
    "search_loop",
    "trial_recipe",
]

#: the system name a candidate's items carry while its objective is computed
CANDIDATE = "search candidate"


@dataclass
class Setup:
    """A checked search: the spec, the parsed space and objective, the base recipe (ingredient
    names), the ingredients' resolved paths, the data directory and the fidelity rungs."""

    spec: SearchSpec
    space: Space
    terms: list[Term]
    base: dict[str, Any]
    paths: dict[str, str]
    data_dir: str | None
    rungs: list[float]


@dataclass
class Reference:
    """What candidates are scored against: the ingredients' per-item results (system = short
    name), the nested dev subsets of the rungs, and the objective's scales."""

    names: list[str]
    items: pl.DataFrame
    subsets: list[dict[str, tuple[str, ...]]]
    rung_items: list[pl.DataFrame]
    scales: dict[tuple[str, str], float]


def _ingredient_paths(spec: SearchSpec) -> dict[str, str]:
    """Ingredient name -> the path every recipe of the search reads (the sweep's resolution)."""
    from workbench.merge.registry import SOUP, method_with
    from workbench.sweep import expand

    names = list(spec.ingredients)
    recipe = {"merge_method": method_with(SOUP).name, "models": [{"model": n} for n in names]}
    point = expand(sweep_view(spec, recipe=recipe, axes={"models": [names]}))[0]
    return dict(zip(names, [str(e["model"]) for e in point.recipe["models"]]))


def trial_recipe(setup: Setup, params: Mapping[str, Any]) -> dict[str, Any]:
    """The merge recipe (ingredient paths) of one point of the space.

    Per-model values go into the models' own ``parameters``; everything else is a one-point sweep
    axis, applied by the sweep's expansion (filters, catch-alls, methods, base models).
    """
    from workbench.sweep import expand

    axes, per_model = setup.space.axes(params)
    base = copy.deepcopy(setup.base)
    for (model, param), entries in per_model.items():
        entry = next(e for e in base["models"] if str(e["model"]) == model)
        ps = entry.get("parameters") or {}
        plain = [v for f, v in entries if f is None]
        current = plain[-1] if plain else ps.get(param)
        filtered = [{"filter": f, "value": v} for f, v in entries if f is not None]
        ps[param] = filtered + ([{"value": current}] if current is not None else []) if filtered else current
        entry["parameters"] = ps
    if not axes:  # only per-model values: the models themselves are the one (no-op) axis
        axes = {"models": [str(e["model"]) for e in base["models"]]}
    return expand(sweep_view(setup.spec, recipe=base, axes={k: [v] for k, v in axes.items()}))[0].recipe


def _probe_points(space: Space) -> list[dict[str, Any]]:
    """The space's centre, and the centre with each other choice of every list: planned before any work."""
    n_cont = len(space.continuous)
    cats = space.categorical
    out = [space.centre()]
    for j, d in enumerate(cats):
        for c in range(1, len(d.choices or ())):
            choice = [0] * len(cats)
            choice[j] = c
            out.append(space.decode([0.5] * n_cont, choice))
    return out


def prepare(spec: SearchSpec) -> Setup:
    """Check a search before any work: the space against the registry and the base recipe, every
    ingredient against the others (the soup baseline's plan: architectures, shapes), the recipe
    of the space's centre and of each choice through the merge planner, the control checkpoint."""
    from workbench.merge import plan_merge
    from workbench.merge.registry import SOUP, method_with
    from workbench.sweep import base_recipe_dict

    base = base_recipe_dict(sweep_view(spec))
    base["models"] = [e if isinstance(e, dict) else {"model": e} for e in base.get("models") or []]
    models = [str(e["model"]) for e in base["models"]]
    space = parse_space(
        spec.space,
        base_method=str(base.get("merge_method")),
        models=models,
        base_model=base.get("base_model"),
        ingredients=list(spec.ingredients),
    )
    terms = [Term(o.task, str(o.metric), float(o.weight)) for o in spec.objective]
    setup = Setup(spec, space, terms, base, _ingredient_paths(spec), spec_data_dir(spec), spec.fidelity.rungs())
    soup = {
        "merge_method": method_with(SOUP).name,
        "models": [{"model": p, "parameters": {"weight": 1.0}} for p in setup.paths.values()],
        "dtype": spec.dtype,
    }
    plan_merge(soup, checkpoints=STATE.checkpoints_for(soup))
    for params in _probe_points(space):
        recipe = trial_recipe(setup, params)
        try:
            plan_merge(recipe, checkpoints=STATE.checkpoints_for(recipe))
        except WorkbenchError as err:
            raise WorkbenchError(f"search: the recipe at {json.dumps(params)}: {err}") from None
    if spec.control is not None:
        STATE.checkpoint(spec.control)
    return setup


def _plan_trial(setup: Setup, trial: Trial, recipe: dict[str, Any] | None = None) -> None:
    """Build (unless given) and plan a trial's recipe; one the planner refuses makes it infeasible."""
    from workbench.eval.tasks.tokenizer import context_length
    from workbench.merge import plan_merge, recipe_fingerprint

    try:
        recipe = trial_recipe(setup, trial.params) if recipe is None else recipe
        plan = plan_merge(recipe, checkpoints=STATE.checkpoints_for(recipe))
    except WorkbenchError as err:
        trial.note = str(err)
        return
    trial.recipe = recipe
    trial.fingerprint = recipe_fingerprint(plan.recipe, checkpoints=plan.checkpoints)
    trial.tokenizer = str(plan.checkpoints[plan.tokenizer_source].path)
    trial.max_length = context_length(plan.config, STATE.tokenizer(trial.tokenizer))
    # the merged model is built in its first tensor's dtype (checkpoints.model_from_state_dict)
    trial.model_dtype = str(plan.jobs[0].out_dtype)


class _Runner:
    """One search run: the evaluations (cache, backends, trial log), successive halving, the loop."""

    def __init__(self, setup: Setup, store: Any, backend: str, ray_address: str | None, ray_timeout: float):
        self.setup, self.spec, self.store = setup, setup.spec, store
        self.backend, self.ray_address, self.ray_timeout = backend, ray_address, ray_timeout
        key = hashlib.sha256(json.dumps(self.spec.fingerprint_data(), sort_keys=True).encode()).hexdigest()
        self.log = TrialLog(Path(store.root) / "searches" / f"{key[:32]}.jsonl")
        self.device = self.spec.device
        if backend == "ray" and self.device is None:
            self.device = "cuda" if self.spec.resources.num_gpus > 0 else "cpu"
        self.reference: Reference | None = None
        self.facts: dict[str, Any] = {}
        self.computed = 0
        self.cached = 0

    # --- the ingredients ------------------------------------------------------------------

    def ingredients(self, device: str, progress: bool) -> Reference:
        """Evaluate the ingredients on every item (cached under the keys the claim check uses, so it
        finds them there) and derive the dev subsets and the objective's scales from their dev rows."""
        from workbench.checkpoints import load_model, load_tokenizer
        from workbench.eval import evaluate
        from workbench.eval.tasks.evaluation import DEFAULT_BATCH_SIZE
        from workbench.labels import short_names

        paths = list(self.setup.paths.values())
        short = short_names(paths)
        tok = load_tokenizer(paths[0])
        frames = []
        for p in paths:
            model = load_model(STATE.checkpoint(p), device=device)
            res = evaluate(
                model, tok, self.spec.tasks, data_dir=self.setup.data_dir, limit=self.spec.limit,
                seed=self.spec.seed, device=device, progress=progress, store=self.store,
                batch_size=self.spec.batch_size or DEFAULT_BATCH_SIZE,
            )  # fmt: skip
            frames.append(tagged(res.items, short[p]))
            del model
        items = pl.concat(frames, how="diagonal_relaxed")
        names = [short[p] for p in paths]
        first = items.filter(pl.col("system") == names[0]).drop("system")
        subsets, _ = dev_subsets(
            first, self.spec.tasks, self.setup.rungs, seed=self.spec.seed, dev_fraction=self.spec.dev_fraction
        )
        rung_items = [restrict(items, s) for s in subsets]
        scales = ingredient_scales(rung_items[-1], self.setup.terms, names)
        self.reference = Reference(names, items, subsets, rung_items, scales)
        return self.reference

    # --- evaluations ------------------------------------------------------------------------

    def _settings(self, trial: Trial, rung: int) -> Any:
        from workbench.eval import EvalSettings
        from workbench.eval.tasks.tokenizer import TokenizerFacts

        assert self.reference is not None and trial.tokenizer is not None
        if trial.tokenizer not in self.facts:
            self.facts[trial.tokenizer] = TokenizerFacts.of(STATE.tokenizer(trial.tokenizer))
        return EvalSettings.create(
            tokenizer=self.facts[trial.tokenizer],
            max_length=int(trial.max_length or 0),
            model_dtype=str(trial.model_dtype),
            data_dir=self.setup.data_dir,
            limit=None,
            seed=self.spec.seed,
            item_ids=self.reference.subsets[rung],
        )

    def score(self, results: Mapping[str, Any], rung: int) -> Score:
        """A candidate's objective from its per-task results on the rung's dev subset."""
        assert self.reference is not None
        frames = [tagged(results[t].items, CANDIDATE) for t in self.spec.tasks]
        items = pl.concat([*frames, self.reference.rung_items[rung]], how="diagonal_relaxed")
        return objective_values(items, [CANDIDATE], self.setup.terms, self.reference.names, self.reference.scales)[
            CANDIDATE
        ]

    def _execute(self, jobs: list[Job]) -> Any:
        if self.backend == "local":
            return run_local(jobs)
        return run_ray(jobs, address=self.ray_address, resources=self.spec.resources, timeout=self.ray_timeout)

    def _lookup(self, trial: Trial, rung: int) -> tuple[dict[str, str], dict[str, Any], bool]:
        """(task -> store key, task -> cached result, whether every task was there); a complete hit
        is recorded as the trial's ``cached`` evaluation, with the logged seconds and worker."""
        settings = self._settings(trial, rung)
        keys = {t: settings.key(trial.fingerprint, t) for t in self.spec.tasks}
        results = {t: r for t, k in keys.items() if (r := self.store.get(k)) is not None}
        if len(results) < len(keys):
            return keys, results, False
        logged = [self.log.entries.get(k, {}) for k in keys.values()]
        seconds = sum(float(e.get("seconds", 0.0)) for e in logged)
        worker = next((e.get("worker") for e in logged if e.get("worker") is not None), None)
        score = self.score(results, rung)
        trial.evaluations[rung] = Evaluation(
            rung, self.setup.rungs[rung], score, "cached", seconds, worker, self.backend
        )
        self.cached += 1
        return keys, results, True

    def evaluate(self, trials: Sequence[Trial], rung: int) -> None:
        """Score ``trials`` at ``rung``: from the cache where every task is there, else computed on
        the backend (each result cached and logged the moment it arrives). A recipe proposed twice
        in one batch is computed once."""
        pending: dict[int, tuple[Trial, dict[str, str], dict[str, Any]]] = {}
        fingerprints: set[str | None] = set()
        twins, jobs = [], []
        for tr in trials:
            if tr.fingerprint in fingerprints:
                twins.append(tr)
                continue
            keys, results, hit = self._lookup(tr, rung)
            if not hit:
                fingerprints.add(tr.fingerprint)
                pending[tr.index] = (tr, keys, results)
                jobs.append(self._job(tr, rung, tuple(t for t in self.spec.tasks if t not in results)))
        for outcome in self._execute(jobs) if jobs else ():
            tr, keys, results = pending[outcome.job.index]
            share = outcome.seconds / len(outcome.job.tasks)
            for t in outcome.job.tasks:
                results[t] = outcome.results[t]
                self.store.put(keys[t], results[t])
                self.log.append(
                    {"key": keys[t], "trial": tr.index, "rung": rung, "task": t, "seconds": round(share, 4),
                     "worker": outcome.worker, "backend": self.backend, "fingerprint": tr.fingerprint}
                )  # fmt: skip
            tr.evaluations[rung] = Evaluation(
                rung, self.setup.rungs[rung], self.score(results, rung), "computed", round(outcome.seconds, 4),
                outcome.worker, self.backend,
            )  # fmt: skip
            self.computed += 1
        for tr in twins:
            self._lookup(tr, rung)

    def _job(self, trial: Trial, rung: int, tasks: tuple[str, ...]) -> Job:
        assert self.reference is not None and trial.recipe is not None and trial.fingerprint and trial.tokenizer
        return Job(
            index=trial.index,
            recipe=trial.recipe,
            fingerprint=trial.fingerprint,
            tokenizer=trial.tokenizer,
            tasks=tasks,
            data_dir=self.setup.data_dir,
            limit=None,
            seed=self.spec.seed,
            batch_size=self.spec.batch_size,
            device=self.device,
            item_ids=self.reference.subsets[rung],
        )

    # --- the loop ---------------------------------------------------------------------------

    def loop(self, bar: Any, on_trial: Callable[[dict[str, Any]], None] | None) -> list[Trial]:
        """Generations of candidates until the budget is spent; returns every trial in order."""
        spec, space = self.spec, self.setup.space
        opt = make_optimizer(
            spec.optimizer.name,
            n_continuous=len(space.continuous),
            n_choices=[len(d.choices or ()) for d in space.categorical],
            seed=spec.seed,
            popsize=spec.optimizer.popsize,
            sigma=spec.optimizer.sigma,
        )
        limit = spec.budget.trials if spec.budget.trials is not None else math.inf
        deadline = time.monotonic() + (spec.budget.seconds if spec.budget.seconds is not None else math.inf)
        trials: list[Trial] = []
        generation = 0
        while len(trials) < limit and time.monotonic() < deadline:
            n = int(min(opt.popsize, limit - len(trials)))
            cands = opt.ask(n)
            gen = [Trial(len(trials) + i, generation, space.decode(c.unit, c.choice), c) for i, c in enumerate(cands)]
            for tr in gen:
                _plan_trial(self.setup, tr)
            self.halving([t for t in gen if t.feasible], deadline)
            trials += gen
            order = sorted(gen, key=lambda t: (not t.feasible, *t.rank_key()))
            rank = {t.index: r for r, t in enumerate(order)}
            opt.tell(cands, [rank[t.index] for t in gen])
            bar.update(len(gen))
            best = _best(trials, len(self.setup.rungs) - 1)
            if best is not None:
                bar.set_postfix_str(f"best {best.objective():+.3f} (trial {best.index})")
            if on_trial is not None:
                for tr in gen:
                    on_trial({"trial": tr.index, "objective": tr.objective(), "rung": tr.top_rung, "note": tr.note})
            generation += 1
        return trials

    def halving(self, alive: list[Trial], deadline: float) -> None:
        """Successive halving within one generation: all on rung 0, the best 1/eta on each next rung."""
        eta = self.spec.fidelity.eta
        for rung in range(len(self.setup.rungs)):
            if not alive or (rung > 0 and time.monotonic() >= deadline):
                return
            self.evaluate(alive, rung)
            keep = max(1, len(alive) // eta)
            alive = sorted(alive, key=lambda t: (-t.objective(rung), t.index))[:keep]


def _best(trials: Sequence[Trial], top: int) -> Trial | None:
    """The trial with the highest objective on the whole dev half (the top rung), else None."""
    full = [t for t in trials if top in t.evaluations]
    return max(full, key=lambda t: (t.objective(top), -t.index)) if full else None


def score_recipes(
    search: SearchSpec | str | os.PathLike | Mapping[str, Any],
    recipes: Sequence[Mapping[str, Any]],
    *,
    store: Any = None,
    progress: bool = False,
) -> list[Score | None]:
    """Score given recipes (model references: ingredient names or paths) on the whole dev half with
    the search's objective, in this process and cached like trials; e.g. the points of a t sweep a
    search is set against. A recipe the planner refuses scores None."""
    from workbench.merge.recipe import map_model_refs
    from workbench.store import ResultStore

    spec = search if isinstance(search, SearchSpec) else load_search(search)
    setup = prepare(spec)
    runner = _Runner(setup, store if store is not None else ResultStore(), "local", None, 60.0)
    runner.ingredients(_device(spec), progress)
    trials = []
    for i, r in enumerate(recipes):
        tr = Trial(i, 0, {}, Candidate((), ()))
        _plan_trial(setup, tr, map_model_refs(dict(r), lambda ref: setup.paths.get(ref, ref)))
        trials.append(tr)
    top = len(setup.rungs) - 1
    runner.evaluate([t for t in trials if t.feasible], top)
    return [t.evaluations[top].score if t.feasible else None for t in trials]


@contextlib.contextmanager
def _quiet_model_loading() -> Iterator[None]:
    """transformers' per-model "Loading weights" bar off while trials run: one bar per merged candidate
    would bury the search's own bar. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _device(spec: SearchSpec) -> str:
    from workbench.devices import resolve_device

    return resolve_device(spec.device)


def _winner(runner: _Runner, trials: list[Trial]) -> Trial:
    """The best trial on the whole dev half; when the time budget stopped every trial short of it,
    the best-ranked one is scored on the whole dev half first (a winner needs its full dev score)."""
    top = len(runner.setup.rungs) - 1
    best = _best(trials, top)
    if best is not None:
        return best
    scored = [t for t in trials if t.evaluations]
    if not scored:
        notes = [t.note for t in trials if t.note]
        why = f": {notes[0]}" if notes else " (the budget ended before the first evaluation)"
        raise WorkbenchError(f"search: no candidate was scored{why}")
    first = min(scored, key=lambda t: t.rank_key())
    runner.evaluate([first], top)
    return first


@dataclass
class Outcome:
    """What the loop produced, before the claim check: trials, the winner, the reference, counts, times."""

    setup: Setup
    trials: list[Trial]
    winner: Trial
    reference: Reference
    computed: int
    cached: int
    seconds: dict[str, float]
    backend: str


def search_loop(
    setup: Setup,
    store: Any,
    *,
    backend: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    ray_timeout: float = 60.0,
    progress: bool = True,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome:
    """The ingredients' evaluation, then the generations of trials until the budget is spent, then
    the winner (a Ray cluster started here is shut down at the end)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    runner = _Runner(setup, store, backend, ray_address, ray_timeout)
    reference = runner.ingredients(_device(setup.spec), progress)
    t1 = time.perf_counter()
    started = connect_ray(ray_address, timeout=ray_timeout) if backend == "ray" else False
    bar = tqdm(total=setup.spec.budget.trials, unit="trial", desc="search", disable=not progress, dynamic_ncols=True)
    try:
        with _quiet_model_loading():
            trials = runner.loop(bar, on_trial)
            winner = _winner(runner, trials)
    finally:
        bar.close()
        if started:
            import ray

            ray.shutdown()
    seconds = {"ingredients": t1 - t0, "search": time.perf_counter() - t1}
    return Outcome(setup, trials, winner, reference, runner.computed, runner.cached, seconds, backend)


def run_search(
    search: SearchSpec | str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    *,
    backend: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    store: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    ray_timeout: float = 60.0,
    check_claim: bool = True,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Run a merge search: candidates scored on the dev half, the winner claim-checked on the test half.

    Every evaluation goes through ``store`` (default :class:`workbench.store.ResultStore` at its
    default root), so a killed search resumes where it stopped. With ``out_dir`` the outputs are
    written there atomically (:meth:`~workbench.search.report.SearchResult.write`);
    ``check_claim=False`` skips the claim check (the trials and ``best.yaml`` only). Bad input
    raises one WorkbenchError before any work, with nothing written. ``on_trial`` is called with
    each trial's summary as its generation finishes. Returns a
    :class:`~workbench.search.report.SearchResult`.
    """
    from workbench.search.report import claim_check, search_result
    from workbench.store import ResultStore
    from workbench.sweep.run import check_run_options  # the sweep's own argument checks (backend, out dir, address)

    spec = search if isinstance(search, SearchSpec) else load_search(search)
    check_run_options(backend, ray_address, ray_timeout, out_dir, overwrite)
    store = store if store is not None else ResultStore()
    setup = prepare(spec)
    outcome = search_loop(
        setup, store, backend=backend, ray_address=ray_address, ray_timeout=ray_timeout, progress=progress,
        on_trial=on_trial,
    )  # fmt: skip
    t0 = time.perf_counter()
    panel = claim_check(outcome, store, device=_device(spec), progress=progress) if check_claim else None
    outcome.seconds["claim_check"] = time.perf_counter() - t0
    result = search_result(outcome, panel)
    if out_dir is not None:
        result.write(out_dir, overwrite=overwrite)
    return result
