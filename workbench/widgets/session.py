"""The explorer's logic without a UI: one setting -> merge in memory -> evaluate (see the package docstring)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from workbench.errors import WorkbenchError
from workbench.eval.tasks import primary_metric as task_primary_metric
from workbench.eval.tasks import task_spec
from workbench.labels import short_label
from workbench.merge.registry import INTERPOLATION, methods_with
from workbench.naming import LM_HEAD, group_t_setting

#: Methods the explorer offers (two models, base + t).

METHODS = tuple(m.name for m in methods_with(INTERPOLATION))


def t_parameter(
    t: float, t_attn: float | None = None, t_mlp: float | None = None, *, model_type: str | None = None
) -> float | list[dict[str, Any]]:
    """The recipe's ``t``: a float, or a mergekit filter list when a group has its own t.

    The attention / MLP filters are the architecture's (:func:`workbench.naming.t_filters`;
    Llama naming when ``model_type`` is None).

    >>> t_parameter(0.5)
    0.5
    >>> t_parameter(0.5, 0.2, 0.8)
    [{'filter': 'self_attn', 'value': 0.2}, {'filter': 'mlp', 'value': 0.8}, {'value': 0.5}]
    >>> t_parameter(0.5, 0.2, None, model_type="gpt_neox")
    [{'filter': '.attention.', 'value': 0.2}, {'value': 0.5}]
    """
    return group_t_setting(
        float(t),
        attention=None if t_attn is None else float(t_attn),
        mlp=None if t_mlp is None else float(t_mlp),
        model_type=model_type,
    )


def field_accuracy(items: pl.DataFrame) -> dict[str, float]:
    """Accuracy per BLiMP field (micro mean over the items present).

    >>> items = pl.DataFrame({"task": ["blimp"] * 3, "field": ["syntax", "syntax", "semantics"],
    ...                       "correct": [True, False, True]})
    >>> field_accuracy(items)
    {'semantics': 1.0, 'syntax': 0.5}
    """
    if "field" not in items.columns or items.height == 0:
        return {}
    with_fields = [t for t in items["task"].unique().to_list() if "field" in task_spec(t).breakdowns]
    sub = items.filter(pl.col("task").is_in(with_fields) & pl.col("field").is_not_null())
    agg = sub.group_by("field").agg(pl.col("correct").cast(pl.Float64).mean().alias("acc")).sort("field")
    return {f: float(a) for f, a in agg.iter_rows()}


def primary_metric(task: str, summary: dict[str, dict[str, float]]) -> float | None:
    """The number the explorer plots for ``task``: ``acc,none`` (else word perplexity).

    >>> primary_metric("blimp", {"blimp": {"acc,none": 0.7}})
    0.7
    """
    s = summary.get(task, {})
    key = task_primary_metric(task)
    return float(s[key]) if key in s else None


@dataclass
class PointResult:
    """One evaluated merge setting."""

    method: str
    t: float
    t_attn: float | None
    t_mlp: float | None
    metrics: dict[str, float | None]
    fields: dict[str, float]
    merge_s: float
    eval_s: float
    summary: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)


class ExplorerSession:
    """Two checkpoints, one model on the device, a fixed dev subsample; merges and evaluates settings.

    ``models``: the two ingredients (local dirs or Hub ids; the first is the base, t = 0).
    ``limit``: items per BLiMP paradigm (or per task stratum) before the dev split.
    Counters ``merges`` and ``evaluations`` record the work done (tests read them).
    """

    def __init__(
        self,
        models: Sequence[str | os.PathLike],
        *,
        tasks: Sequence[str] = ("blimp",),
        limit: float | None = 4,
        seed: int = 0,
        device: str | None = None,
        data_dir: str | os.PathLike | None = None,
        dev_fraction: float = 0.5,
        batch_size: int = 64,
    ):
        from workbench.checkpoints import load_model, load_tokenizer, open_checkpoint
        from workbench.devices import resolve_device
        from workbench.eval import evaluate
        from workbench.stats import dev_test_split

        if len(models) != 2:
            raise WorkbenchError(f"the merge explorer takes exactly two models, got {len(models)}: {list(models)}")
        self.models = [os.fspath(m) for m in models]
        self.tasks = list(tasks)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.checkpoints = {m: open_checkpoint(m) for m in self.models}
        self.tokenizer = load_tokenizer(self.models[0])
        self.model = load_model(self.checkpoints[self.models[0]], device=self.device)
        self.merges = 0
        self.evaluations = 0
        self._lock = threading.Lock()
        self.labels = [short_label(m) for m in self.models]
        first = evaluate(
            self.model,
            self.tokenizer,
            self.tasks,
            data_dir=data_dir,
            limit=limit,
            seed=self.seed,
            device=self.device,
            batch_size=batch_size,
            progress=False,
        )
        split = dev_test_split(first.items, seed=self.seed, dev_fraction=dev_fraction)
        dev = split.filter(pl.col("split") == "dev")
        if dev.height == 0:
            dev = split
        self.item_ids: dict[str, list[str]] = {
            task: dev.filter(pl.col("task") == task)["item_id"].to_list() for task in self.tasks
        }
        self.n_items = dev.height
        self.baselines: list[PointResult] = []
        for i, m in enumerate(self.models):
            if i:
                self._load(self._state_of(m))
            self.baselines.append(self._evaluate("ingredient", float(i), None, None, merge_s=0.0))
        self.fields = sorted({f for b in self.baselines for f in b.fields})

    def _load(self, state: dict[str, Any]) -> None:
        """Put merged tensors (checkpoint layout) into the session's model. Where the model's own
        layout differs from the files' (fused MoE experts, renamed heads), rebuild it through
        transformers' checkpoint conversion instead of silently skipping tensors."""
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        ck = self.checkpoints[self.models[0]]
        if unexpected or [k for k in missing if not (ck.tied and k == LM_HEAD)]:
            from workbench.checkpoints import model_from_state_dict

            self.model = model_from_state_dict(ck, state, device=self.device)

    def _state_of(self, model: str) -> dict[str, Any]:
        ck = self.checkpoints[model]
        return {n: ck.get(n, device=self.device) for n in ck.names() if n != LM_HEAD or not ck.tied}

    def recipe(self, method: str, t: float, t_attn: float | None = None, t_mlp: float | None = None):
        """The :class:`workbench.merge.MergeRecipe` of one explorer setting."""
        from workbench.merge import simple_recipe

        if method not in METHODS:
            raise WorkbenchError(f"explorer method must be one of {', '.join(METHODS)}, got {method!r}")
        model_type = self.checkpoints[self.models[0]].config.get("model_type")
        return simple_recipe(method, self.models, t=t_parameter(t, t_attn, t_mlp, model_type=model_type))

    def _evaluate(self, method: str, t: float, t_attn, t_mlp, *, merge_s: float) -> PointResult:
        from workbench.eval import evaluate

        t0 = time.perf_counter()
        # BLiMP records and token encodings are memoised by workbench.eval, so each call only scores
        res = evaluate(
            self.model,
            self.tokenizer,
            self.tasks,
            data_dir=self.data_dir,
            item_ids=self.item_ids,
            seed=self.seed,
            device=self.device,
            batch_size=self.batch_size,
            progress=False,
        )
        self.evaluations += 1
        metrics = {task: primary_metric(task, res.summary) for task in self.tasks}
        return PointResult(
            method, t, t_attn, t_mlp, metrics, field_accuracy(res.items), merge_s, time.perf_counter() - t0, res.summary
        )

    def point(self, method: str, t: float, t_attn: float | None = None, t_mlp: float | None = None) -> PointResult:
        """Merge one setting in memory, load it into the session's model and evaluate it."""
        import torch

        from workbench.merge import merge_in_memory

        with self._lock:
            t0 = time.perf_counter()
            state = merge_in_memory(
                self.recipe(method, t, t_attn, t_mlp), device=self.device, checkpoints=self.checkpoints
            )
            with torch.no_grad():
                self._load(state)
            self.merges += 1
            merge_s = time.perf_counter() - t0
            return self._evaluate(method, float(t), t_attn, t_mlp, merge_s=merge_s)

    def grid_point(self, method: str, t: float) -> PointResult:
        """Like :meth:`point` for a uniform t, but t = 0 and t = 1 reuse the ingredients' results
        (the interpolation's endpoints are the ingredients, for every method)."""
        if t in (0.0, 1.0):
            base = self.baselines[int(t)]
            return PointResult(
                method, float(t), None, None, dict(base.metrics), dict(base.fields), 0.0, 0.0, base.summary
            )
        return self.point(method, t)

    def deltas(self, point: PointResult) -> dict[str, list[float | None]]:
        """Per ingredient label: merge minus ingredient accuracy for each field of :attr:`fields`."""
        out = {}
        for label, base in zip(self.labels, self.baselines):
            out[label] = [
                (point.fields[f] - base.fields[f]) if f in point.fields and f in base.fields else None
                for f in self.fields
            ]
        return out

    def grid(self, method: str, t_grid: Sequence[float]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Evaluate a t grid: (curve: t, task, value) and (deltas: t, ingredient, field, delta) tables.

        Feeds :func:`workbench.plots.t_slider_figure` for the static HTML.
        """
        return self.tables({float(t): self.grid_point(method, float(t)) for t in t_grid})

    def tables(self, points: dict[float, PointResult | None]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(curve, deltas) tables of already evaluated points keyed by t (see :meth:`grid`)."""
        curve: dict[str, list] = {"t": [], "task": [], "value": []}
        deltas: dict[str, list] = {"t": [], "ingredient": [], "field": [], "delta": []}
        for t, p in sorted(points.items()):
            if p is None:
                continue
            for task, v in p.metrics.items():
                curve["t"].append(float(t))
                curve["task"].append(task)
                curve["value"].append(v)
            for label, ds in self.deltas(p).items():
                for f, d in zip(self.fields, ds):
                    deltas["t"].append(float(t))
                    deltas["ingredient"].append(label)
                    deltas["field"].append(f)
                    deltas["delta"].append(d)
        return (
            pl.DataFrame(curve, schema={"t": pl.Float64, "task": pl.Utf8, "value": pl.Float64}),
            pl.DataFrame(
                deltas, schema={"t": pl.Float64, "ingredient": pl.Utf8, "field": pl.Utf8, "delta": pl.Float64}
            ),
        )
