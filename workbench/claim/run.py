"""Run the claim check on checkpoints: evaluate the merge and every baseline, then build the panel.

:func:`run_panel` evaluates, on the *same* items, every ingredient, the uniform LERP soup,
``lerp_norm_restore`` at the recipe's t (two-model LERP/SLERP recipes: it isolates any
spherical effect), the recipe's merge, the output ensemble of the ingredients (N x the
inference cost), optionally a control checkpoint and seed checkpoints (trained identically but
for the seed: their spread is the yardstick of every gain); then the interpolation curve between
two ingredients. Models, merges and torch are imported only when it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.claim.curve import CURVE_METHODS, CURVE_TS, curve_tables, interpolation_curve
from workbench.claim.panel import Panel, System, build_panel
from workbench.errors import WorkbenchError
from workbench.labels import short_names
from workbench.merge.registry import INTERPOLATION, NORM_RESTORE, SOUP, method_spec, method_with

__all__ = ["recipe_summary", "run_panel"]


def _recipe_t(recipe: Any) -> Any:
    params = recipe.parameters or {}
    t = params.get("t")
    if hasattr(t, "model_dump"):
        t = t.model_dump(exclude_none=True)
    elif isinstance(t, list):
        t = [x.model_dump(exclude_none=True) if hasattr(x, "model_dump") else x for x in t]
    return t


def recipe_summary(recipe: Any) -> str:
    """The merge method and its t, e.g. ``"slerp, t=0.5"`` (a loaded MergeRecipe).

    >>> from workbench.merge import simple_recipe
    >>> recipe_summary(simple_recipe("slerp", ["a", "b"], t=0.25))
    'slerp, t=0.25'
    """
    t = _recipe_t(recipe)
    out = recipe.merge_method
    if t is not None:
        out += f", t={json.dumps(t) if not isinstance(t, (int, float)) else f'{t:g}'}"
    return out


def run_panel(
    ingredients: Sequence[str | Path],
    recipe: Any,
    tasks: str | Iterable[str],
    *,
    data_dir: str | Path | None = None,
    limit: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    control: str | Path | None = None,
    seeds: Sequence[str | Path] | None = None,
    claim: str | None = None,
    curve_ts: Sequence[float] | None = CURVE_TS,
    curve_methods: Sequence[str] = CURVE_METHODS,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    dev_fraction: float = 0.5,
    batch_size: int = 64,
    progress: bool = True,
    store: Any = None,
) -> Panel:
    """Evaluate the merge and every baseline on the same items and compute the statistics.

    ``ingredients``: checkpoint directories (or Hub ids); ``recipe``: path, YAML text, dict or
    MergeRecipe; ``seeds``: two or more checkpoints trained alike but for the seed (ingredients
    among them are reused), the yardstick of every gain; ``claim``: the claim in words, for the
    headline. ``curve_ts=None`` (or < 2 points) skips the curve between the recipe's two models.
    Example (needs checkpoints and data)::

        panel = run_panel(["ckpt_a", "ckpt_b"], "recipe.yaml", "blimp", data_dir="../shared/data", limit=50)
    """
    from workbench.checkpoints import load_tokenizer
    from workbench.eval import evaluate, parse_tasks
    from workbench.merge import load_recipe

    names = [str(i) for i in ingredients]
    if len(names) < 2:
        raise WorkbenchError("compare: give at least two ingredients (--ingredients A B [C ...])")
    if len(set(names)) != len(names):
        raise WorkbenchError(f"compare: an ingredient is listed twice: {names}")
    task_list = parse_tasks(tasks)
    rec = load_recipe(recipe)
    cks = _open_ingredients(names)
    tok = load_tokenizer(names[0])
    short = short_names(names)
    ev = dict(data_dir=data_dir, limit=limit, seed=seed, batch_size=batch_size, progress=progress, store=store)

    def run(model: Any) -> Any:
        return evaluate(model, tok, task_list, device=device, **ev)

    seed_names, seed_paths = _seed_names([str(x) for x in seeds or []], short)
    seed_cks = _open_seeds(seed_paths, cks)  # checked before any evaluation
    results, systems, notes = _evaluate_systems(names, short, rec, cks, control, device, run)
    _evaluate_seeds(seed_cks, seed_paths, device, run, results, systems)
    settings = _run_settings(rec, short, control, data_dir, limit, device)
    settings.update(
        eval_settings=next(iter(results.values())).settings, notes=notes, claim=claim, seed_paths=seed_paths
    )
    stats = dict(seed=seed, n_resamples=n_resamples, confidence=confidence, dev_fraction=dev_fraction)
    sys_args = dict(ingredients=[short[n] for n in names], subject="merge", systems=systems, seeds=seed_names)
    panel = build_panel(results, settings=settings, **sys_args, **stats)
    if curve_ts is not None and len(curve_ts) >= 2:
        pair = rec.referenced_models()[:2] if _two_model(rec) else names[:2]  # the base model first
        # an ingredient at an end of the curve is not evaluated again
        endpoints = {t: results[short[m]] for t, m in ((0.0, pair[0]), (1.0, pair[1])) if m in short}
        curve_items = interpolation_curve(
            *pair,
            curve_ts,
            task_list,
            methods=curve_methods,
            tokenizer=tok,
            endpoints=endpoints,
            checkpoints=_curve_checkpoints(rec, pair, cks),
            device=device,
            **ev,
        )
        panel.curve, panel.barriers, panel.curve_tests = curve_tables(curve_items, **stats)
        ts = sorted(set(map(float, curve_ts)))
        panel.settings["curve"] = {"model_a": pair[0], "model_b": pair[1], "ts": ts, "methods": list(curve_methods)}
    return panel


def _run_settings(
    rec: Any,
    short: dict[str, str],
    control: str | Path | None,
    data_dir: str | Path | None,
    limit: float | None,
    device: str,
) -> dict[str, Any]:
    """What the panel was run on, recorded in ``panel.json``."""
    return {
        "recipe": json.loads(rec.canonical_json()),
        "recipe_summary": recipe_summary(rec),
        "ingredient_paths": {s: n for n, s in short.items()},
        "control": str(control) if control else None,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "limit": limit,
        "device": device,
    }


def _seed_names(seeds: Sequence[str], short: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(system name of every seed, label -> path of the seeds that are not ingredients)."""
    if not seeds:
        return [], {}
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise WorkbenchError(f"compare: --seeds needs two or more different checkpoints, got {list(seeds)}")
    known = {os.path.normpath(p): name for p, name in short.items()}  # "a/b/" is the ingredient "a/b"
    extra = [x for x in seeds if os.path.normpath(x) not in known]
    labels = short_names(extra)
    taken = set(short.values())
    paths = {(labels[x] if labels[x] not in taken else f"seed {labels[x]}"): x for x in extra}
    by_path = {p: label for label, p in paths.items()}
    return [known.get(os.path.normpath(x)) or by_path[x] for x in seeds], paths


def _open_seeds(seed_paths: dict[str, str], cks: dict[str, Any]) -> dict[str, Any]:
    """Label -> opened seed checkpoint; each must share the ingredients' vocabulary."""
    from workbench.checkpoints import open_checkpoint

    vocab = next(iter(cks.values())).config.get("vocab_size")
    out = {}
    for label, path in seed_paths.items():
        out[label] = open_checkpoint(path)
        if out[label].config.get("vocab_size") != vocab:
            raise WorkbenchError(
                f"compare: seed checkpoint {path} has vocabulary size {out[label].config.get('vocab_size')}, "
                f"the ingredients {vocab}"
            )
    return out


def _evaluate_seeds(
    seed_cks: dict[str, Any],
    seed_paths: dict[str, str],
    device: str,
    run: Callable[[Any], Any],
    results: dict[str, Any],
    systems: list[System],
) -> None:
    """Evaluate the seed checkpoints that are not ingredients, one at a time, into ``results``."""
    from workbench.checkpoints import load_model

    for label, path in seed_paths.items():
        results[label] = run(load_model(seed_cks[label], device=device))
        systems.append(System(label, "seed", path))


def _open_ingredients(names: Sequence[str]) -> dict[str, Any]:
    """Path -> opened checkpoint; the ingredients must share one vocabulary."""
    from workbench.checkpoints import open_checkpoint

    cks = {n: open_checkpoint(n) for n in names}
    vocab = {n: ck.config.get("vocab_size") for n, ck in cks.items()}
    if len(set(vocab.values())) > 1:
        raise WorkbenchError(f"compare: ingredients have different vocabularies: {vocab}")
    return cks


def _curve_checkpoints(rec: Any, pair: Sequence[str], cks: Mapping[str, Any]) -> dict[str, Any]:
    """The curve's checkpoints: with an aligning recipe, its second model aligned to the first
    (an exact symmetry: the endpoint is the same function), so the curve is the one the merge walks."""
    if rec.align is None:
        return dict(cks)
    from workbench.align import align_options, aligned_checkpoint

    a, b = pair
    opts = align_options(rec.align, "recipe: align")
    return {**cks, b: aligned_checkpoint(cks.get(a, a), cks.get(b, b), **opts)}


def _two_model(rec: Any) -> bool:
    """Whether the recipe interpolates two models (then the norm-restore control is a fair baseline)."""
    return INTERPOLATION in method_spec(rec.merge_method).roles and len(rec.referenced_models()) == 2


def _evaluate_systems(
    names: Sequence[str],
    short: dict[str, str],
    rec: Any,
    cks: dict[str, Any],
    control: str | Path | None,
    device: str,
    run: Callable[[Any], Any],
) -> tuple[dict[str, Any], list[System], list[str]]:
    """Evaluate every system of the panel, one model on the device at a time (the ensemble: all members).

    Returns (system name -> EvalResult, the systems, notes on baselines skipped).
    """
    from workbench.checkpoints import load_model, open_checkpoint
    from workbench.eval.ensemble import EnsembleLM
    from workbench.merge import load_recipe, merged_model, simple_recipe

    results: dict[str, Any] = {}
    systems: list[System] = []
    for n in names:
        model = load_model(cks[n], device=device)
        results[short[n]] = run(model)
        systems.append(System(short[n], "ingredient", n))
        del model
    soup = simple_recipe(method_with(SOUP).name, list(names))
    if rec.align is not None:  # a recipe that aligns its ingredients is compared with an aligned soup
        soup = load_recipe({**soup.model_dump(mode="json", exclude_none=True), "align": rec.align})
    merges: list[tuple[str, Any]] = [("soup", soup)]
    notes = []
    restore = method_with(NORM_RESTORE).name  # the method and the baseline's name
    if _two_model(rec) and rec.merge_method != restore:
        # the same recipe (models or slices, every t setting) with the interpolation swapped
        data = rec.model_dump(mode="json", exclude_none=True)
        data["merge_method"] = restore
        merges.append((restore, load_recipe(data)))
    elif rec.merge_method == restore:
        notes.append(f"{restore} baseline skipped: the recipe is {restore} itself")
    else:
        notes.append(f"{restore} baseline skipped: it applies to two-model interpolation recipes")
    merges.append(("merge", rec))
    for kind, r in merges:
        model = merged_model(r, device=device, checkpoints=cks)
        results[kind] = run(model)
        systems.append(System(kind, kind, recipe_summary(r)))
        del model
    members = [load_model(cks[n], device=device) for n in names]
    ens = EnsembleLM(members)
    results["ensemble"] = run(ens)
    systems.append(
        System(
            "ensemble",
            "ensemble",
            "mean of probabilities of " + ", ".join(short[n] for n in names),
            inference_cost=len(names),
        )
    )
    del ens, members
    if control is not None:
        ctl = load_model(open_checkpoint(control), device=device)
        results["control"] = run(ctl)
        systems.append(System("control", "control", str(control)))
        del ctl
    return results, systems, notes
