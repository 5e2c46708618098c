"""The search file: :class:`SearchSpec` (validated) and :func:`load_search`.

A search file is a sweep file (ingredients, a base recipe, tasks, ``limit``, ``seed``,
``data_dir``, ``resources``) whose ``axes`` became a ``space`` of ranges (:mod:`.space`), plus
what a search needs besides: the ``objective`` (a weighted sum of task metrics on the dev half),
the ``optimizer``, the ``budget`` and the ``fidelity`` schedule.

>>> spec = load_search('''
... ingredients: [A, B]
... method: slerp
... space: {t: {low: 0, high: 1}}
... tasks: blimp
... budget: {trials: 8}
... ''')
>>> spec.optimizer.name, spec.budget.trials, [(o.task, o.metric, o.weight) for o in spec.objective]
('cmaes', 8, [('blimp', 'acc', 1.0)])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workbench.errors import WorkbenchError
from workbench.sweep.spec import RunSpec, read_spec_source, validated

__all__ = ["Budget", "Fidelity", "ObjectiveTerm", "OptimizerSettings", "SearchSpec", "load_search"]

#: optimiser names: CMA-ES (``cmaes`` package) and the quasi-random Sobol baseline
OPTIMIZERS = ("cmaes", "sobol")


class Budget(BaseModel):
    """How much a search may spend: a number of trials, a wall-clock time, or both (first reached wins)."""

    model_config = ConfigDict(extra="forbid")
    trials: int | None = None
    seconds: float | None = None


class OptimizerSettings(BaseModel):
    """Which optimiser proposes candidates; ``popsize`` candidates per generation (CMA-ES) or batch
    (Sobol); ``sigma`` is CMA-ES's initial step size, as a fraction of each range."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["cmaes", "sobol"] = "cmaes"
    popsize: int | None = Field(None, ge=2)
    sigma: float = Field(0.3, gt=0.0, le=1.0)


class Fidelity(BaseModel):
    """Successive halving: every candidate of a generation is first scored on ``min_fraction`` of
    the dev items, the best 1/``eta`` of them on ``eta`` times more, up to all dev items."""

    model_config = ConfigDict(extra="forbid")
    min_fraction: float = Field(1.0, gt=0.0, le=1.0)
    eta: int = Field(2, ge=2)

    def rungs(self) -> list[float]:
        """The dev fractions of the rungs, smallest first, the last always 1.

        >>> Fidelity(min_fraction=0.25, eta=2).rungs(), Fidelity().rungs()
        ([0.25, 0.5, 1.0], [1.0])
        """
        out, f = [], self.min_fraction
        while f < 1.0 - 1e-9:
            out.append(round(f, 9))
            f *= self.eta
        return [*out, 1.0]


class ObjectiveTerm(BaseModel):
    """One part of the objective: a task's per-item metric (``acc``, ``margin``, ``bits_per_byte``;
    default the task's primary one) with its weight."""

    model_config = ConfigDict(extra="forbid")
    task: str
    metric: str | None = None
    weight: float = 1.0


class SearchSpec(RunSpec):
    """A search file, validated. Paths are resolved against ``root`` (the search file's folder)."""

    space: dict[str, Any]
    objective: list[ObjectiveTerm] = Field(default_factory=list)
    limit: float | dict[str, float | None] | None = None
    dev_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    budget: Budget = Field(default_factory=Budget)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    control: str | None = None
    n_resamples: int = Field(2000, ge=100)

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_as_list(cls, value: Any) -> Any:
        # {task: weight} or {task: {metric, weight}}: the short forms of the list of terms
        if isinstance(value, Mapping):
            return [{"task": task, **(v if isinstance(v, Mapping) else {"weight": v})} for task, v in value.items()]
        return value

    def fingerprint_data(self) -> dict[str, Any]:
        """What the search's trials depend on (the budget and the name do not): keys its trial log."""
        data = self.model_dump(mode="json", exclude={"budget", "name"})
        data["root"] = self.root
        return json.loads(json.dumps(data, sort_keys=True, default=str))


def _resolve(value: str, root: Path) -> str:
    """A relative path that exists under ``root`` as an absolute path; anything else unchanged."""
    p = Path(value).expanduser()
    if not p.is_absolute() and (root / p).exists():
        return str((root / p).resolve())
    return value


def load_search(source: str | os.PathLike | Mapping[str, Any], *, root: str | os.PathLike | None = None) -> SearchSpec:
    """Read a search file (YAML path, YAML text or dict) into a validated :class:`SearchSpec`.

    Relative ingredient, recipe, control, data and ``text:<file>`` task paths are taken against the
    search file's folder (or ``root``; the current directory for dicts and text). Bad input is one
    WorkbenchError: an empty ``space``, ingredient list or task list, a zero budget, an objective
    naming a task not in ``tasks`` (parameters and their ranges are checked against the merge
    registry by :func:`workbench.search.space.parse_space`).
    """
    data, name, root = read_spec_source(source, root, "search")
    if not isinstance(data, dict):
        raise WorkbenchError(f"{name}: a search file must be a mapping (ingredients, recipe, space, tasks, objective)")
    spec = validated(SearchSpec, data, name)
    base = Path(root).resolve() if root is not None else Path.cwd()
    spec.root = str(base)
    _check(spec, name)
    spec.tasks = [f"text:{_resolve(t[5:], base)}" if t.startswith("text:") else t for t in spec.tasks]
    for term in spec.objective:
        if term.task.startswith("text:"):
            term.task = f"text:{_resolve(term.task[5:], base)}"
    if spec.control is not None:
        spec.control = _resolve(spec.control, base)
    if not spec.objective:  # the default: every task's primary metric, weight 1
        spec.objective = [ObjectiveTerm(task=t) for t in spec.tasks]
    _check_objective(spec, name)
    return spec


def _check(spec: SearchSpec, name: str) -> None:
    """The checks that need no merge registry or models: empty parts, the budget."""
    from workbench.eval import parse_tasks

    if not spec.ingredients:
        raise WorkbenchError(f"{name}: ingredients is empty")
    if len(spec.ingredients) < 2:
        raise WorkbenchError(f"{name}: a search needs at least two ingredients (the claim check's baselines)")
    if not spec.tasks:
        raise WorkbenchError(f"{name}: tasks is empty")
    parse_tasks(spec.tasks)  # an unknown task name is an error here
    if not spec.space:
        raise WorkbenchError(f"{name}: space is empty (give at least one parameter range, e.g. t: {{low: 0, high: 1}})")
    b = spec.budget
    if b.trials is None and b.seconds is None:
        raise WorkbenchError(f"{name}: budget: give trials (a number of candidates) or seconds (a wall-clock limit)")
    if b.trials is not None and b.trials < 1:
        raise WorkbenchError(f"{name}: budget.trials must be at least 1, got {b.trials}")
    if b.seconds is not None and not b.seconds > 0:
        raise WorkbenchError(f"{name}: budget.seconds must be positive, got {b.seconds:g}")


def _check_objective(spec: SearchSpec, name: str) -> None:
    """Every term names a task of ``tasks`` and a per-item metric that task has, once, with a weight."""
    from workbench.claim.metrics import ACC, BPB, MARGIN
    from workbench.eval import is_perplexity_task

    seen = set()
    for i, term in enumerate(spec.objective):
        if term.task not in spec.tasks:
            raise WorkbenchError(
                f"{name}: objective[{i}]: task {term.task!r} is not in tasks ({', '.join(spec.tasks)})"
            )
        allowed = [BPB.name] if is_perplexity_task(term.task) else [ACC.name, MARGIN.name]
        if term.metric is None:
            term.metric = allowed[0]
        if term.metric not in allowed:
            raise WorkbenchError(
                f"{name}: objective[{i}]: task {term.task!r} has no per-item metric {term.metric!r} "
                f"(it has {', '.join(allowed)})"
            )
        if term.weight == 0:
            raise WorkbenchError(f"{name}: objective[{i}]: weight 0 for {term.task} {term.metric} (drop the term)")
        if (term.task, term.metric) in seen:
            raise WorkbenchError(f"{name}: objective[{i}]: {term.task} {term.metric} appears twice")
        seen.add((term.task, term.metric))


def sweep_view(spec: SearchSpec, recipe: dict[str, Any] | None = None, axes: Mapping[str, Any] | None = None) -> Any:
    """The search's ingredients and base recipe as a one-point :class:`~workbench.sweep.SweepSpec`,
    so that recipes are built by the sweep's own expansion (one owner for axis values).

    ``recipe`` replaces the base recipe (a mergekit dict whose model names are ingredient names).
    """
    from workbench.sweep import SweepSpec

    base: dict[str, Any] = {"recipe": recipe} if recipe is not None else {}
    if recipe is None:
        base.update(recipe=spec.recipe, method=spec.method, models=spec.models, base_model=spec.base_model)
        base.update(parameters=spec.parameters)
    return SweepSpec(
        ingredients=spec.ingredients,
        dtype=spec.dtype,
        axes=dict(axes or {}),
        tasks=spec.tasks,
        seed=spec.seed,
        root=spec.root,
        **base,
    )
