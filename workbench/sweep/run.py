"""The sweep driver: :func:`plan` (expansion, merge checks, cache keys) and :func:`run_sweep`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from workbench.errors import WorkbenchError
from workbench.sweep.backends import STATE, Job, probe_ray_address, run_local, run_ray
from workbench.sweep.points import Point, expand
from workbench.sweep.spec import SweepSpec, load_sweep, spec_data_dir
from workbench.sweep.tables import SweepResult, assemble


@dataclass
class _Plan:
    """A checked sweep: its points, their fingerprints and tokenizers, the (point, task) store keys."""

    spec: SweepSpec
    points: list[Point]
    fingerprints: list[str]
    tokenizers: list[str]
    data_dir: str | None
    keys: dict[tuple[int, str], str]


def plan(spec: SweepSpec) -> _Plan:
    """Expand and check a sweep before any work.

    Every point's recipe goes through the merge engine's planner (its errors, e.g. ingredients
    of different architectures, name the file), gets its :func:`recipe_fingerprint`, and each
    (point, task) its store key: ``EvalSettings.key(fingerprint, task)``, the key
    :func:`~workbench.eval.evaluate` would give the merged model under that fingerprint, from
    everything besides the weights that changes a number (data and its content, limit, seed,
    context length, tokenizer, dtype).
    """
    from workbench.eval import EvalSettings, parse_tasks
    from workbench.eval.tasks.tokenizer import TokenizerFacts, context_length
    from workbench.merge import plan_merge, recipe_fingerprint

    points = expand(spec)
    parse_tasks(spec.tasks)  # unknown task names fail here, before any work
    data_dir = spec_data_dir(spec)
    fingerprints, tokenizers, keys = [], [], {}
    tok_cache: dict[str, tuple[Any, TokenizerFacts]] = {}
    for p in points:
        checkpoints = STATE.checkpoints_for(p.recipe)
        try:
            merge_plan = plan_merge(p.recipe, checkpoints=checkpoints)
        except WorkbenchError as err:
            raise WorkbenchError(f"point {p.index} ({p.label}): {err}") from None
        fp = recipe_fingerprint(merge_plan.recipe, checkpoints=merge_plan.checkpoints)
        fingerprints.append(fp)
        if merge_plan.tokenizer is not None:
            # points are evaluated with an ingredient's tokenizer files, read by every worker
            raise WorkbenchError(
                f"point {p.index} ({p.label}): the recipe builds a new tokenizer (tokenizer_source / "
                "tokenizer / chat_template); sweeps evaluate with an ingredient's tokenizer, so merge such "
                "a recipe with `workbench merge` and evaluate the output with `workbench eval`"
            )
        tok_path = str(merge_plan.checkpoints[merge_plan.tokenizer_source].path)
        if tok_path not in tok_cache:
            tok = STATE.tokenizer(tok_path)
            tok_cache[tok_path] = (tok, TokenizerFacts.of(tok))
        tok, facts = tok_cache[tok_path]
        tokenizers.append(tok_path)
        # the merged model is built in its first tensor's dtype (checkpoints.model_from_state_dict)
        settings = EvalSettings.create(
            tokenizer=facts,
            max_length=context_length(merge_plan.config, tok),
            model_dtype=str(merge_plan.jobs[0].out_dtype),
            data_dir=data_dir,
            limit=spec.limit,
            seed=spec.seed,
        )
        keys.update({(p.index, task): settings.key(fp, task) for task in spec.tasks})
    return _Plan(spec, points, fingerprints, tokenizers, data_dir, keys)


def _jobs(the_plan: _Plan, results: Mapping[tuple[int, str], Any], device: str | None) -> list[Job]:
    """One job per point with a task missing from ``results`` (cache hits), for those tasks only."""
    spec, jobs = the_plan.spec, []
    for p, fp, tok in zip(the_plan.points, the_plan.fingerprints, the_plan.tokenizers):
        missing = tuple(t for t in spec.tasks if (p.index, t) not in results)
        if missing:
            jobs.append(
                Job(
                    index=p.index,
                    recipe=p.recipe,
                    fingerprint=fp,
                    tokenizer=tok,
                    tasks=missing,
                    data_dir=the_plan.data_dir,
                    limit=spec.limit,
                    seed=spec.seed,
                    batch_size=spec.batch_size,
                    device=device,
                )
            )
    return jobs


def _log_row(p: Point, backend: str) -> dict[str, Any]:
    """A point's log row before it runs (a point left alone stays ``cached``)."""
    return {
        "point": p.index,
        "label": p.label,
        "status": "cached",
        "tasks_computed": [],
        "seconds": 0.0,
        "worker": None,
        "backend": backend,
    }


def check_run_options(
    backend: str, ray_address: str | None, ray_timeout: float, out_dir: str | os.PathLike | None, overwrite: bool
) -> None:
    """Bad arguments fail before planning: the backend, the output folder, the Ray address."""
    if backend not in ("local", "ray"):
        raise WorkbenchError(f"unknown backend {backend!r}; use local or ray")
    if out_dir is not None:
        from workbench.io.atomic import check_output_dir

        check_output_dir(out_dir, overwrite=overwrite)
    if ray_address and backend != "ray":
        raise WorkbenchError("--ray-address needs --backend ray")
    if backend == "ray" and ray_address:
        probe_ray_address(ray_address, min(5.0, ray_timeout))  # fail fast when nothing answers


def run_sweep(
    sweep: SweepSpec | str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    *,
    backend: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    store: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    ray_timeout: float = 60.0,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run a sweep: every point merged in memory and evaluated, cached per (point, task).

    Points whose tasks are all in ``store`` (default: :class:`workbench.store.ResultStore`
    at its default root) are not merged again; each computed (point, task) result is put in
    the store as soon as it arrives, so a killed sweep resumes where it stopped. With
    ``out_dir`` the result is written there atomically (see :meth:`SweepResult.write`).
    ``on_point`` is called with each point's log row as it finishes.
    """
    from tqdm.auto import tqdm

    from workbench.store import ResultStore

    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    check_run_options(backend, ray_address, ray_timeout, out_dir, overwrite)
    store = store if store is not None else ResultStore()
    the_plan = plan(spec)

    results: dict[tuple[int, str], Any] = {}
    for key_id, key in the_plan.keys.items():
        hit = store.get(key)
        if hit is not None:
            results[key_id] = hit
    device = spec.device
    if backend == "ray" and device is None:
        device = "cuda" if spec.resources.num_gpus > 0 else "cpu"
    jobs = _jobs(the_plan, results, device)
    log = {p.index: _log_row(p, backend) for p in the_plan.points}

    n = len(the_plan.points)
    bar = tqdm(total=n, initial=n - len(jobs), unit="point", desc="sweep", disable=not progress, dynamic_ncols=True)
    try:
        if jobs:
            outcomes = (
                run_local(jobs)
                if backend == "local"
                else run_ray(jobs, address=ray_address, resources=spec.resources, timeout=ray_timeout)
            )
            for outcome in outcomes:
                job = outcome.job
                for task in job.tasks:
                    res = outcome.results[task]
                    store.put(the_plan.keys[(job.index, task)], res)
                    results[(job.index, task)] = res
                row = log[job.index]
                row.update(
                    status="computed" if len(job.tasks) == len(spec.tasks) else "partial",
                    tasks_computed=list(job.tasks),
                    seconds=round(outcome.seconds, 3),
                    worker=outcome.worker,
                    opens=outcome.opens,
                )
                if on_point is not None:
                    on_point(dict(row))
                bar.update(1)
    finally:
        bar.close()
    result = assemble(spec, the_plan.points, the_plan.fingerprints, results, [log[p.index] for p in the_plan.points])
    if out_dir is not None:
        result.write(out_dir, overwrite=overwrite)
    return result
