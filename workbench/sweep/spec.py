"""The sweep file: :class:`SweepSpec` (validated), :func:`load_sweep`, and the axes' names and values.

>>> axis_kind("t.self_attn"), axis_kind("method")
(('t', 'self_attn'), ('method', None))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workbench.errors import WorkbenchError
from workbench.io.yaml import is_path_like_source, parse_yaml
from workbench.merge.registry import parameter_names

#: Merge parameters an axis may set: every parameter of a registered method (mergekit names).
MERGE_PARAMETERS: tuple[str, ...] = parameter_names()
#: Axes that are not merge parameters.
STRUCTURAL_AXES: tuple[str, ...] = ("method", "models", "base_model")


class Resources(BaseModel):
    """Resources one point declares to Ray (ignored by the local backend)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class RunSpec(BaseModel):
    """What sweep and search files share: the ingredients, the base recipe (a ``recipe`` or
    ``method``/``models``/``base_model``/``parameters``), the tasks and where they run.
    ``ingredients`` may be a plain list (each path names itself), ``tasks`` a comma-separated string."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    ingredients: dict[str, str]
    recipe: dict[str, Any] | str | None = None
    method: str | None = None
    models: list[str] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "float32"
    tasks: list[str]
    seed: int = 0
    data_dir: str | None = None
    device: str | None = None
    batch_size: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    root: str | None = Field(None, exclude=True)

    @field_validator("ingredients", mode="before")
    @classmethod
    def _ingredients_as_dict(cls, value: Any) -> Any:
        return named_ingredients(value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks_as_list(cls, value: Any) -> Any:
        return task_list(value)


class SweepSpec(RunSpec):
    """A sweep file, validated. Paths are resolved against ``root`` (the sweep file's folder).

    >>> spec = SweepSpec(ingredients={"a": "A", "b": "B"}, method="slerp", models=["a", "b"],
    ...                  axes={"t": [0.0, 0.5, 1.0]}, tasks=["blimp"])
    >>> spec.mode, spec.seed
    ('grid', 0)
    """

    axes: dict[str, Any]
    mode: Literal["grid", "zip"] = "grid"
    limit: float | None = Field(None, gt=0)


def named_ingredients(value: Any) -> Any:
    """A spec's ``ingredients`` as name -> path: a plain list names each path by itself
    (sweep and search files take both forms)."""
    if isinstance(value, list):
        return {str(v): str(v) for v in value}
    return value


def task_list(value: Any) -> Any:
    """A spec's ``tasks`` as a list: a string is split at commas."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


def spec_data_dir(spec: Any) -> str | None:
    """The data directory a sweep or search spec reads: its ``data_dir`` (relative to the spec
    file's folder, ``spec.root``) through the one data-directory rule."""
    from workbench.io.datadir import resolve_data_dir

    given = spec.data_dir
    if given is not None and not Path(given).expanduser().is_absolute():
        given = str(Path(spec.root or ".") / given)
    resolved = resolve_data_dir(given)
    return str(resolved) if resolved is not None else None


def read_spec_source(source: str | os.PathLike | Mapping[str, Any], root: Any, kind: str) -> tuple[Any, str, Any]:
    """(parsed data, name for errors, root folder) of a ``kind`` file ("sweep", "search") given as a
    path, YAML text or dict; a file's root defaults to its folder."""
    if isinstance(source, Mapping):
        return dict(source), kind, root
    if is_path_like_source(source):
        path = Path(source)
        if not path.is_file():
            raise WorkbenchError(f"{path}: {kind} file not found")
        return parse_yaml(path.read_text(encoding="utf-8"), str(path)), str(path), root or path.resolve().parent
    return parse_yaml(str(source), kind), kind, root


def validated(model: type[BaseModel], data: dict[str, Any], name: str) -> Any:
    """``model(**data)`` (any ``root`` key dropped: it is set by the loader), a validation error
    as one WorkbenchError naming the file and the field."""
    data.pop("root", None)
    try:
        return model(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise WorkbenchError(f"{name}: {where}: {first['msg']}") from None


def load_sweep(source: str | os.PathLike | Mapping[str, Any], *, root: str | os.PathLike | None = None) -> SweepSpec:
    """Read a sweep file (YAML path, YAML text or dict) into a validated :class:`SweepSpec`.

    Relative ingredient, recipe and data paths are taken against the sweep file's folder (or
    ``root``; the current directory for dicts and text).

    >>> spec = load_sweep("ingredients: [A, B]\\nmethod: lerp\\naxes: {t: [0, 1]}\\ntasks: blimp")
    >>> spec.ingredients, spec.tasks
    ({'A': 'A', 'B': 'B'}, ['blimp'])
    """
    data, name, root = read_spec_source(source, root, "sweep")
    if not isinstance(data, dict):
        raise WorkbenchError(f"{name}: a sweep file must be a mapping (ingredients, recipe, axes, tasks)")
    spec = validated(SweepSpec, data, name)
    spec.root = str(Path(root).resolve()) if root is not None else str(Path.cwd())
    if not spec.ingredients:
        raise WorkbenchError(f"{name}: ingredients is empty")
    if not spec.tasks:
        raise WorkbenchError(f"{name}: tasks is empty")
    return spec


def axis_kind(name: str) -> tuple[str, str | None]:
    """``"t"`` -> ("t", None); ``"t.self_attn"`` -> ("t", "self_attn"); structural axes as is."""
    if name in STRUCTURAL_AXES:
        return name, None
    param, dot, filt = name.partition(".")
    if param in MERGE_PARAMETERS and (not dot or filt):
        return param, (filt or None)
    known = ", ".join([*MERGE_PARAMETERS, "<parameter>.<filter>", *STRUCTURAL_AXES])
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
