"""Sweeps: grids of (merge, evaluation) points, cached and resumable, local or on Ray.

A sweep file names the ingredients, a base recipe (mergekit-style), the axes to vary and the
evaluation settings. :func:`expand` turns it into :class:`Point` s, each one merge recipe;
:func:`run_sweep` merges every point in memory (never on disk), evaluates it, and collects one
long table (point parameters, task, metric, value, stderr) plus the per-item results.

Every (point, task) result goes through :class:`workbench.store.ResultStore` under the key
``store.key(recipe_fingerprint(point recipe), task, settings)``: a point whose tasks are all in
the store is not merged again, so a sweep that was killed (even with SIGKILL) and is started
again finishes the remaining points and loses nothing.

A sweep file::

    ingredients:            # name -> checkpoint directory (relative to the sweep file) or Hub id
      a: family/trajectory/step-0400
      b: family/siblings/sib-1
    recipe:                 # the base recipe: a mergekit dict, or a path to a recipe YAML
      merge_method: slerp
      base_model: a
      models: [{model: a}, {model: b}]
      parameters: {t: 0.5}
    axes:                   # cartesian product (``mode: zip`` pairs them instead)
      t: {start: 0.0, stop: 1.0, num: 11}
    tasks: [blimp, wikitext]
    limit: 200
    seed: 0

Axis names: a merge parameter (``t``, ``weight``, ``density``, ``epsilon``, ``lambda``) sets the
recipe's global ``parameters``; ``<parameter>.<filter>`` (e.g. ``t.self_attn``, ``t.mlp``)
sets the value for the tensors whose name contains ``<filter>`` (mergekit filter list, the
axis order is the match order, the plain ``<parameter>`` value or the base recipe's is the
catch-all); ``method`` sets ``merge_method``; ``models`` takes lists of ingredient names;
``base_model`` takes ingredient names.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workbench.errors import WorkbenchError
from workbench.io.yaml import is_path_like_source, parse_yaml

#: Merge parameters an axis may set (mergekit names).
MERGE_PARAMETERS: tuple[str, ...] = ("t", "weight", "density", "epsilon", "lambda")
#: Axes that are not merge parameters.
STRUCTURAL_AXES: tuple[str, ...] = ("method", "models", "base_model")
#: Methods whose base model is one of exactly two models (t = 0 gives the base).
_TWO_MODEL_METHODS = ("slerp", "lerp", "lerp_norm_restore")


# --------------------------------------------------------------------------------------------
# the sweep file
# --------------------------------------------------------------------------------------------


class Resources(BaseModel):
    """Resources one point declares to Ray (ignored by the local backend)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class SweepSpec(BaseModel):
    """A sweep file, validated. Paths are resolved against ``root`` (the sweep file's folder).

    >>> spec = SweepSpec(ingredients={"a": "A", "b": "B"}, method="slerp", models=["a", "b"],
    ...                  axes={"t": [0.0, 0.5, 1.0]}, tasks=["blimp"])
    >>> spec.mode, spec.seed
    ('grid', 0)
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    ingredients: dict[str, str]
    recipe: dict[str, Any] | str | None = None
    method: str | None = None
    models: list[str] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "float32"
    axes: dict[str, Any]
    mode: Literal["grid", "zip"] = "grid"
    tasks: list[str]
    limit: float | None = Field(None, gt=0)
    seed: int = 0
    data_dir: str | None = None
    device: str | None = None
    batch_size: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    root: str | None = Field(None, exclude=True)

    @field_validator("ingredients", mode="before")
    @classmethod
    def _ingredients_as_dict(cls, value: Any) -> Any:
        if isinstance(value, list):  # a plain list: each path is its own name
            return {str(v): str(v) for v in value}
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


def load_sweep(source: str | os.PathLike | Mapping[str, Any], *, root: str | os.PathLike | None = None) -> SweepSpec:
    """Read a sweep file (YAML path, YAML text or dict) into a validated :class:`SweepSpec`.

    Relative ingredient, recipe and data paths are taken against the sweep file's folder (or
    ``root``; the current directory for dicts and text).

    >>> spec = load_sweep("ingredients: [A, B]\\nmethod: lerp\\naxes: {t: [0, 1]}\\ntasks: blimp")
    >>> spec.ingredients, spec.tasks
    ({'A': 'A', 'B': 'B'}, ['blimp'])
    """
    name = "sweep"
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        text = None
        path = Path(source)
        if is_path_like_source(source):
            if not path.is_file():
                raise WorkbenchError(f"{path}: sweep file not found")
            name = str(path)
            text = path.read_text()
            if root is None:
                root = path.resolve().parent
        else:
            text = str(source)
        data = parse_yaml(text, name)
    if not isinstance(data, dict):
        raise WorkbenchError(f"{name}: a sweep file must be a mapping (ingredients, recipe, axes, tasks)")
    data.pop("root", None)
    try:
        spec = SweepSpec(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise WorkbenchError(f"{name}: {where}: {first['msg']}") from None
    spec.root = str(Path(root).resolve()) if root is not None else str(Path.cwd())
    if not spec.ingredients:
        raise WorkbenchError(f"{name}: ingredients is empty")
    if not spec.tasks:
        raise WorkbenchError(f"{name}: tasks is empty")
    return spec


# --------------------------------------------------------------------------------------------
# expansion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One sweep point: its index, the axis values that define it and its merge recipe.

    ``recipe`` is a mergekit-style dict whose model references are resolved paths.
    """

    index: int
    params: dict[str, Any]
    recipe: dict[str, Any]

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. ``t=0.3 method=slerp``."""
        return " ".join(f"{k}={_format_value(v)}" for k, v in self.params.items())


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _axis_kind(name: str) -> tuple[str, str | None]:
    """``"t"`` -> ("t", None); ``"t.self_attn"`` -> ("t", "self_attn"); structural axes as is."""
    if name in STRUCTURAL_AXES:
        return name, None
    param, dot, filt = name.partition(".")
    if param in MERGE_PARAMETERS and (not dot or filt):
        return param, (filt or None)
    known = ", ".join([*MERGE_PARAMETERS, *(f"{p}.<filter>" for p in ("t",)), *STRUCTURAL_AXES])
    raise WorkbenchError(f"unknown axis {name!r}; known axes: {known}")


def axis_values(name: str, spec: Any) -> list[Any]:
    """The values of one axis: a list, or ``{start, stop, num}`` (inclusive, evenly spaced).

    >>> axis_values("t", {"start": 0, "stop": 1, "num": 5})
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> axis_values("t", [0.1, 0.2])
    [0.1, 0.2]
    """
    if isinstance(spec, Mapping):
        if set(spec) != {"start", "stop", "num"}:
            raise WorkbenchError(f"axis {name!r}: give a list of values or {{start, stop, num}}")
        try:
            start, stop, num = float(spec["start"]), float(spec["stop"]), int(spec["num"])
        except (TypeError, ValueError):
            raise WorkbenchError(f"axis {name!r}: start, stop must be numbers and num an integer") from None
        if num < 1:
            raise WorkbenchError(f"axis {name!r}: empty grid (num = {num})")
        if num == 1:
            return [start]
        return [round(start + (stop - start) * i / (num - 1), 12) for i in range(num)]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise WorkbenchError(f"axis {name!r}: give a list of values or {{start, stop, num}}, got {spec!r}")
    values = list(spec)
    if not values:
        raise WorkbenchError(f"axis {name!r}: empty grid (no values)")
    seen: list[str] = []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen:
            raise WorkbenchError(f"axis {name!r}: value {v!r} appears twice")
        seen.append(key)
    return values


def _resolve_path(value: str, root: Path) -> str:
    """An ingredient reference as given: an existing relative path becomes absolute."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = root / p
    if candidate.exists():
        return str(candidate.resolve())
    return value  # a Hub id, or a path that does not exist (the merge engine will say so)


def base_recipe_dict(spec: SweepSpec) -> dict[str, Any]:
    """The base recipe as a mergekit-style dict (model references still ingredient names)."""
    root = Path(spec.root or ".")
    if spec.recipe is not None:
        if spec.method is not None or spec.models is not None or spec.base_model is not None:
            raise WorkbenchError("sweep file: give either recipe or method/models/base_model, not both")
        if isinstance(spec.recipe, str):
            path = Path(spec.recipe)
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise WorkbenchError(f"{path}: recipe file not found")
            recipe = parse_yaml(path.read_text(encoding="utf-8"), str(path))
            if not isinstance(recipe, dict):
                raise WorkbenchError(f"{path}: a recipe must be a mapping")
        else:
            recipe = copy.deepcopy(spec.recipe)
        if spec.parameters:
            recipe.setdefault("parameters", {}).update(copy.deepcopy(spec.parameters))
        return recipe
    method = spec.method or "slerp"
    models = list(spec.models) if spec.models is not None else list(spec.ingredients)
    recipe = {"merge_method": method, "models": [{"model": m} for m in models], "dtype": spec.dtype}
    base = spec.base_model
    if base is None and method in _TWO_MODEL_METHODS and models:
        base = models[0]
    if base is not None:
        recipe["base_model"] = base
    if spec.parameters:
        recipe["parameters"] = copy.deepcopy(spec.parameters)
    return recipe


def _apply_axes(base: dict[str, Any], values: Mapping[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """One point's recipe (names, not paths): the base recipe with the axis values applied."""
    recipe = copy.deepcopy(base)
    if "method" in values:
        recipe["merge_method"] = str(values["method"])
    if "models" in values:
        subset = values["models"]
        if isinstance(subset, str):
            subset = [s for s in subset.replace(",", "+").split("+") if s]
        if not isinstance(subset, (list, tuple)) or not subset:
            raise WorkbenchError(f"axis 'models': each value must be a non-empty list of ingredient names, got {values['models']!r}")
        old = {str(e["model"]): e for e in recipe.get("models") or [] if isinstance(e, dict)}
        recipe["models"] = [copy.deepcopy(old.get(str(m), {"model": m})) for m in subset]
        if recipe.get("merge_method") in _TWO_MODEL_METHODS and recipe.get("base_model") not in subset:
            recipe["base_model"] = subset[0]
    if "base_model" in values:
        recipe["base_model"] = values["base_model"]
    if recipe.get("merge_method") in _TWO_MODEL_METHODS and not recipe.get("base_model") and recipe.get("models"):
        recipe["base_model"] = recipe["models"][0]["model"]

    if not any(_axis_kind(a)[0] in MERGE_PARAMETERS for a in values):
        return recipe
    params = recipe.setdefault("parameters", {})
    for param in MERGE_PARAMETERS:
        filters = [(a, _axis_kind(a)[1]) for a in values if _axis_kind(a)[0] == param and _axis_kind(a)[1]]
        if param in values:
            params[param] = values[param]
        if not filters:
            continue
        current = params.get(param)
        entries = [{"filter": f, "value": values[a]} for a, f in filters]
        if isinstance(current, list) and current and all(isinstance(e, Mapping) for e in current):
            rest = [e for e in current if e.get("filter") not in {f for _, f in filters}]
            params[param] = entries + copy.deepcopy(rest)
        elif current is None:
            raise WorkbenchError(
                f"axis {filters[0][0]!r}: the other tensors need a default {param}: "
                f"set parameters.{param} in the recipe or add a {param!r} axis"
            )
        else:
            params[param] = entries + [{"value": current}]
    return recipe


def expand(spec: SweepSpec) -> list[Point]:
    """All points of a sweep, in order (the last axis varies fastest in ``grid`` mode).

    >>> spec = SweepSpec(ingredients={"a": "/m/a", "b": "/m/b"}, method="slerp", models=["a", "b"],
    ...                  axes={"t.self_attn": [0.2, 0.8], "t.mlp": [0.3, 0.7]}, parameters={"t": 0.5},
    ...                  tasks=["blimp"])
    >>> [p.label for p in expand(spec)]
    ['t.self_attn=0.2 t.mlp=0.3', 't.self_attn=0.2 t.mlp=0.7', 't.self_attn=0.8 t.mlp=0.3', 't.self_attn=0.8 t.mlp=0.7']
    >>> expand(spec)[1].recipe["parameters"]["t"]
    [{'filter': 'self_attn', 'value': 0.2}, {'filter': 'mlp', 'value': 0.7}, {'value': 0.5}]
    >>> expand(spec)[0].recipe["base_model"]
    '/m/a'
    """
    if not isinstance(spec.axes, Mapping) or not spec.axes:
        raise WorkbenchError("sweep file: empty grid (axes is empty; give at least one axis)")
    for name in spec.axes:
        _axis_kind(str(name))
    grid = {str(name): axis_values(str(name), values) for name, values in spec.axes.items()}
    root = Path(spec.root or ".")
    paths = {name: _resolve_path(p, root) for name, p in spec.ingredients.items()}
    for name in ("models", "base_model"):
        for v in grid.get(name, []):
            refs = [v] if name == "base_model" else (v if isinstance(v, (list, tuple)) else str(v).replace(",", "+").split("+"))
            unknown = [r for r in refs if str(r) not in paths]
            if unknown:
                raise WorkbenchError(f"axis {name!r}: {unknown[0]!r} is not an ingredient name (ingredients: {', '.join(paths)})")

    names = list(grid)
    if spec.mode == "zip":
        lengths = {len(v) for v in grid.values()}
        if len(lengths) != 1:
            raise WorkbenchError("sweep file: mode zip needs axes of equal length, got " + ", ".join(f"{n}: {len(v)}" for n, v in grid.items()))
        combos = list(zip(*grid.values()))
    else:
        combos = list(itertools.product(*grid.values()))

    from workbench.merge.recipe import map_model_refs, model_refs  # the merge package imports torch

    base = base_recipe_dict(spec)
    points = []
    for i, combo in enumerate(combos):
        values = dict(zip(names, combo))
        recipe = _apply_axes(base, values, spec)
        unknown = [r for r in model_refs(recipe) if r not in paths and r not in paths.values()]
        if unknown:
            raise WorkbenchError(f"point {i} ({Point(i, values, {}).label}): model {unknown[0]!r} is not an ingredient name (ingredients: {', '.join(paths)})")
        recipe = map_model_refs(recipe, lambda ref: paths.get(ref, ref))
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        points.append(Point(i, params, recipe))
    return points


# --------------------------------------------------------------------------------------------
# running points (the same code in-process and in a Ray worker)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one worker needs to compute one point: a picklable, self-contained description."""

    index: int
    recipe: dict[str, Any]
    fingerprint: str
    tokenizer: str
    tasks: tuple[str, ...]
    data_dir: str | None
    limit: int | None
    seed: int
    batch_size: int | None
    device: str | None


class _WorkerState:
    """Per-process cache: opened ingredients and tokenizers, loaded once and reused by every point.

    The local backend uses one (in the driver); each Ray worker process holds its own, so a
    worker that runs several points opens each ingredient once (the merge engine also keeps
    their float32 tensors on the device between points).
    """

    def __init__(self) -> None:
        self.checkpoints: dict[str, Any] = {}
        self.tokenizers: dict[str, Any] = {}
        self.points_run = 0
        self.opens = 0

    def checkpoint(self, path: str) -> Any:
        if path not in self.checkpoints:
            from workbench.checkpoints import open_checkpoint

            self.checkpoints[path] = open_checkpoint(path)
            self.opens += 1
        return self.checkpoints[path]

    def checkpoints_for(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        from workbench.merge.recipe import model_refs

        return {ref: self.checkpoint(ref) for ref in model_refs(recipe)}

    def tokenizer(self, path: str) -> Any:
        if path not in self.tokenizers:
            from workbench.checkpoints import load_tokenizer

            self.tokenizers[path] = load_tokenizer(path)
        return self.tokenizers[path]


_STATE = _WorkerState()



def compute_point(job: Job) -> dict[str, Any]:
    """Merge one point in memory and evaluate it on ``job.tasks``: task -> EvalResult.

    Ingredients and tokenizers come from this process's cache; nothing is written to disk.
    """
    from workbench.eval import evaluate
    from workbench.merge import merged_model

    from workbench.checkpoints import resolve_device

    device = resolve_device(job.device)
    model = merged_model(job.recipe, device=device, checkpoints=_STATE.checkpoints_for(job.recipe))
    tokenizer = _STATE.tokenizer(job.tokenizer)
    kwargs: dict[str, Any] = {"data_dir": job.data_dir, "limit": job.limit, "seed": job.seed}
    if job.batch_size is not None:
        kwargs["batch_size"] = job.batch_size
    results = {}
    for task in job.tasks:
        results[task] = evaluate(model, tokenizer, [task], **kwargs, device=device, progress=False,
                                 model_fingerprint=job.fingerprint)
    _STATE.points_run += 1
    del model
    return results


@dataclass
class PointOutcome:
    """What came back for one computed point: results per task, time, and which worker."""

    job: Job
    results: dict[str, Any]
    seconds: float
    worker: int
    opens: int


def _timed_point(job: Job) -> PointOutcome:
    start = time.perf_counter()
    results = compute_point(job)
    return PointOutcome(job, results, time.perf_counter() - start, os.getpid(), _STATE.opens)


def _run_local(jobs: Sequence[Job]):
    for job in jobs:
        yield _timed_point(job)


# --- Ray --------------------------------------------------------------------------------------

_REMOTE: Any = None


def _parse_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` -> (host, port); None for ``auto``/``local``.

    >>> _parse_address("127.0.0.1:6379"), _parse_address("ray://head:10001"), _parse_address("auto")
    (('127.0.0.1', 6379), ('head', 10001), None)
    """
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WorkbenchError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def _probe(address: str, timeout: float) -> None:
    """A TCP connection to a Ray address, or WorkbenchError saying nothing answers there."""
    target = _parse_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        raise WorkbenchError(
            f"Ray address {address}: nothing answers ({err.strerror or err}); start a cluster "
            "there (ray start --head) or leave out --ray-address to run Ray on this machine"
        ) from None


def connect_ray(address: str | None = None, *, timeout: float = 60.0, num_cpus: int | None = None) -> bool:
    """Connect to the Ray cluster at ``address`` (or start one on this machine when None).

    Returns True when this call initialised Ray (the caller then shuts it down), False when
    Ray was already initialised. An address where nothing answers raises
    :class:`WorkbenchError` after at most ``timeout`` seconds (a TCP probe first, then the
    connection itself in a watched thread), never hangs.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:  # pragma: no cover - optional dependency
        raise WorkbenchError("the ray backend needs Ray: pip install 'workbench[ray]'") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if address:
        _probe(address, min(5.0, timeout))
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    box: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as err:  # reported to the caller below
            box["error"] = err

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    where = address or "a new local cluster"
    if thread.is_alive():
        hint = " (is it a Ray head node? a cluster with token authentication also needs RAY_AUTH_MODE=token here)"
        raise WorkbenchError(f"Ray address {where}: no answer within {timeout:.0f} s{hint if address else ''}")
    if "error" in box:
        err = box["error"]
        raise WorkbenchError(f"Ray address {where}: cannot connect ({type(err).__name__}: {err})")
    return True


def _remote_point(job: Job) -> PointOutcome:
    """The Ray task body: one point, computed with this worker process's ingredient cache."""
    return _timed_point(job)


def _run_ray(jobs: Sequence[Job], *, address: str | None, resources: Resources, timeout: float = 60.0):
    import ray

    global _REMOTE
    started = connect_ray(address, timeout=timeout)
    try:
        if _REMOTE is None:
            # max_calls=0: worker processes are reused, so each keeps its opened ingredients
            _REMOTE = ray.remote(max_calls=0)(_remote_point)
        fn = _REMOTE.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        pending = {fn.remote(job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, WorkbenchError):
                        raise WorkbenchError(str(cause)) from None
                    raise WorkbenchError(f"point {job.index}: failed on a Ray worker: {cause or err}") from None
                except ray.exceptions.RayError as err:
                    raise WorkbenchError(f"point {job.index}: Ray could not run it ({type(err).__name__}: {err})") from None
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# the driver: cache look-ups, scheduling, the long table
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """A finished sweep: the long table, the per-item results, the points and the run log."""

    table: Any  # pl.DataFrame: point, label, <axes>, fingerprint, parent, task, metric, value, stderr
    items: Any  # pl.DataFrame: point, <axes>, then the evaluation engine's item columns
    points: list[dict[str, Any]]  # point, label, params, fingerprint, recipe
    log: list[dict[str, Any]]  # point, status (computed | cached | partial), tasks computed, seconds, worker
    spec: SweepSpec

    @property
    def computed(self) -> list[int]:
        """Indices of the points merged and evaluated by this run (the rest came from the cache)."""
        return [row["point"] for row in self.log if row["tasks_computed"]]

    def write(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``results.parquet``, ``items.parquet``, ``points.json``, ``log.jsonl`` and
        ``sweep.yaml`` into ``out_dir`` atomically."""
        from workbench.checkpoints import atomic_output_dir

        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            self.table.write_parquet(tmp / "results.parquet")
            self.items.write_parquet(tmp / "items.parquet")
            (tmp / "points.json").write_text(json.dumps(self.points, indent=1, sort_keys=True, default=str) + "\n")
            (tmp / "log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.log))
            spec = self.spec.model_dump(mode="json", exclude_none=True)
            (tmp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return Path(out_dir)


@dataclass
class _Plan:
    spec: SweepSpec
    points: list[Point]
    fingerprints: list[str]
    tokenizers: list[str]
    data_dir: str | None
    keys: dict[tuple[int, str], str]


def _max_length(config: Mapping[str, Any], tokenizer: Any) -> int:
    """The evaluation context length for a model with this config (the evaluation engine's rule)."""
    from types import SimpleNamespace

    from workbench.eval.tasks import resolve_max_length

    cfg = dict(config)
    if isinstance(cfg.get("text_config"), Mapping):
        cfg["text_config"] = SimpleNamespace(**cfg["text_config"])
    return resolve_max_length(SimpleNamespace(config=SimpleNamespace(**cfg)), tokenizer)


def _data_dir(spec: SweepSpec) -> str | None:
    from workbench.io.datadir import resolve_data_dir

    given = spec.data_dir
    if given is not None and not Path(given).expanduser().is_absolute():
        given = str(Path(spec.root or ".") / given)
    resolved = resolve_data_dir(given)
    return str(resolved) if resolved is not None else None


def plan(spec: SweepSpec) -> _Plan:
    """Expand and check a sweep before any work.

    Every point's recipe goes through the merge engine's planner (its errors, e.g. ingredients
    of different architectures, name the file), gets its :func:`recipe_fingerprint`, and each
    (point, task) its store key: ``ResultStore.key(fingerprint, task, settings)`` where the
    settings are everything besides the weights that changes a number.
    """
    from workbench.merge import plan_merge, recipe_fingerprint
    from workbench.store import ResultStore

    from workbench.eval import data as D
    from workbench.eval import parse_tasks
    from workbench.eval.tasks import tokenizer_sha256

    points = expand(spec)
    parse_tasks(spec.tasks)  # unknown task names fail here, before any work
    data_dir = _data_dir(spec)
    fingerprints, tokenizers, settings = [], [], []
    tok_cache: dict[str, tuple[Any, str]] = {}
    for p in points:
        checkpoints = _STATE.checkpoints_for(p.recipe)
        try:
            merge_plan = plan_merge(p.recipe, checkpoints=checkpoints)
        except WorkbenchError as err:
            raise WorkbenchError(f"point {p.index} ({p.label}): {err}") from None
        fingerprints.append(recipe_fingerprint(merge_plan.recipe, checkpoints=merge_plan.checkpoints))
        tok_path = str(merge_plan.checkpoints[merge_plan.tokenizer_source].path)
        if tok_path not in tok_cache:
            tok = _STATE.tokenizer(tok_path)
            tok_cache[tok_path] = (tok, tokenizer_sha256(tok))
        tok, tok_sha = tok_cache[tok_path]
        tokenizers.append(tok_path)
        settings.append({
            "data_source": data_dir or "hub", "limit": spec.limit, "seed": spec.seed,
            "max_length": _max_length(merge_plan.config, tok), "tokenizer_sha256": tok_sha,
            "arc_split": "validation", "wikitext_split": "test",
        })
    # results follow the data's content, as in evaluate(): the same files, wherever they are
    data_sha = {task: D.task_data_sha256(data_dir, task) for task in spec.tasks}
    keys = {(p.index, task): ResultStore.key(fp, task, {**s, "data_sha256": data_sha[task]})
            for p, fp, s in zip(points, fingerprints, settings) for task in spec.tasks}
    return _Plan(spec, points, fingerprints, tokenizers, data_dir, keys)


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
    if backend not in ("local", "ray"):
        raise WorkbenchError(f"unknown backend {backend!r}; use local or ray")
    if out_dir is not None:
        from workbench.checkpoints import check_output_dir

        check_output_dir(out_dir, overwrite=overwrite)
    if ray_address and backend != "ray":
        raise WorkbenchError("--ray-address needs --backend ray")
    if backend == "ray" and ray_address:
        _probe(ray_address, min(5.0, ray_timeout))  # fail fast, before planning, when nothing answers
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
    jobs = []
    for p, fp, tok in zip(the_plan.points, the_plan.fingerprints, the_plan.tokenizers):
        missing = tuple(t for t in spec.tasks if (p.index, t) not in results)
        if missing:
            jobs.append(Job(p.index, p.recipe, fp, tok, missing, the_plan.data_dir, spec.limit, spec.seed,
                            spec.batch_size, device))
    log: dict[int, dict[str, Any]] = {
        p.index: {"point": p.index, "label": p.label, "status": "cached", "tasks_computed": [], "seconds": 0.0,
                  "worker": None, "backend": backend}
        for p in the_plan.points
    }

    n = len(the_plan.points)
    bar = tqdm(total=n, initial=n - len(jobs), unit="point", desc="sweep", disable=not progress, dynamic_ncols=True)
    try:
        if jobs:
            outcomes = _run_local(jobs) if backend == "local" else _run_ray(
                jobs, address=ray_address, resources=spec.resources, timeout=ray_timeout)
            for outcome in outcomes:
                job = outcome.job
                for task in job.tasks:
                    res = outcome.results[task]
                    store.put(the_plan.keys[(job.index, task)], res)
                    results[(job.index, task)] = res
                row = log[job.index]
                row.update(status="computed" if len(job.tasks) == len(spec.tasks) else "partial",
                           tasks_computed=list(job.tasks), seconds=round(outcome.seconds, 3),
                           worker=outcome.worker, opens=outcome.opens)
                if on_point is not None:
                    on_point(dict(row))
                bar.update(1)
    finally:
        bar.close()
    return _assemble(the_plan, results, [log[p.index] for p in the_plan.points], out_dir, overwrite)


def _param_columns(points: Sequence[Point]) -> dict[str, list[Any]]:
    """One column per axis; numbers stay numbers, ingredient lists read ``a+b``."""
    columns: dict[str, list[Any]] = {}
    for name in points[0].params if points else []:
        values = [p.params[name] for p in points]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            columns[name] = [float(v) for v in values]
        elif all(isinstance(v, str) for v in values):
            columns[name] = values
        elif all(isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) for v in values):
            columns[name] = ["+".join(v) for v in values]
        else:
            columns[name] = [json.dumps(v, sort_keys=True) for v in values]
    return columns


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def long_table(points: Sequence[Point], fingerprints: Sequence[str], tasks: Sequence[str],
               results: Mapping[tuple[int, str], Any]) -> Any:
    """The sweep's long table: one row per (point, task, metric) with its stderr when known.

    ``task`` is each entry of the evaluation summary (the task itself, then its parts, e.g.
    ``blimp`` then ``blimp_adjunct_island``, ...) and ``parent`` the task that was asked for;
    metrics keep the lm-eval style keys (``"acc,none"``), whose stderr is ``"acc_stderr,none"``.
    """
    import polars as pl

    params = _param_columns(points)
    rows: dict[str, list[Any]] = {"point": [], "label": [], **{k: [] for k in params}, "fingerprint": [],
                                  "parent": [], "task": [], "metric": [], "value": [], "stderr": []}
    for j, (p, fp) in enumerate(zip(points, fingerprints)):
        for parent in tasks:
            summary = results[(p.index, parent)].summary
            names = [parent] + sorted(k for k in summary if k != parent)
            for task in names:
                entry = summary.get(task, {})
                for metric in sorted(entry):
                    name, _, filt = metric.partition(",")
                    if name.endswith("_stderr"):
                        continue
                    stderr_key = f"{name}_stderr,{filt}" if filt else f"{name}_stderr"
                    rows["point"].append(p.index)
                    rows["label"].append(p.label)
                    for k in params:
                        rows[k].append(params[k][j])
                    rows["fingerprint"].append(fp)
                    rows["parent"].append(parent)
                    rows["task"].append(task)
                    rows["metric"].append(metric)
                    rows["value"].append(_float_or_none(entry[metric]))
                    rows["stderr"].append(_float_or_none(entry.get(stderr_key)))
    schema = {"point": pl.Int64, "label": pl.Utf8, "fingerprint": pl.Utf8, "parent": pl.Utf8, "task": pl.Utf8,
              "metric": pl.Utf8, "value": pl.Float64, "stderr": pl.Float64}
    schema.update({k: (pl.Float64 if params[k] and isinstance(params[k][0], float) else pl.Utf8) for k in params})
    return pl.DataFrame(rows, schema={k: schema[k] for k in rows})


def items_table(points: Sequence[Point], tasks: Sequence[str], results: Mapping[tuple[int, str], Any]) -> Any:
    """All per-item results, each row tagged with its point and the point's axis values."""
    import polars as pl

    params = _param_columns(points)
    frames = []
    for j, p in enumerate(points):
        for task in tasks:
            items = results[(p.index, task)].items
            if "task" in items.columns:
                items = items.filter(pl.col("task") == task)
            tags = [pl.lit(p.index, dtype=pl.Int64).alias("point")]
            tags += [pl.lit(params[k][j]).alias(k) for k in params]
            frames.append(items.select([*tags, *[pl.col(c) for c in items.columns if c not in params and c != "point"]]))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


def _assemble(the_plan: _Plan, results: Mapping[tuple[int, str], Any], log: list[dict[str, Any]],
              out_dir: str | os.PathLike | None, overwrite: bool) -> SweepResult:
    spec = the_plan.spec
    table = long_table(the_plan.points, the_plan.fingerprints, spec.tasks, results)
    items = items_table(the_plan.points, spec.tasks, results)
    points = [{"point": p.index, "label": p.label, "params": p.params, "fingerprint": fp, "recipe": p.recipe}
              for p, fp in zip(the_plan.points, the_plan.fingerprints)]
    result = SweepResult(table, items, points, log, spec)
    if out_dir is not None:
        result.write(out_dir, overwrite=overwrite)
    return result
