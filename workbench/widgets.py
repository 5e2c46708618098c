"""The live merge explorer: sliders -> merge in memory -> evaluate -> Plotly FigureWidget.

Two layers, so that the logic is testable without a browser:

- :class:`ExplorerSession` (no UI): opens two checkpoints once, keeps one model instance on
  the device, fixes a stratified dev subsample of the evaluation items (at most ``limit``
  items per BLiMP paradigm, then the ``dev`` half of :func:`workbench.stats.dev_test_split`)
  and evaluates the ingredients on it once. :meth:`ExplorerSession.point` merges one
  setting in memory (:func:`workbench.merge.merge_in_memory`, ingredient tensors cached on
  the device), loads it into the model in place and evaluates it
  (:func:`workbench.eval.evaluate`, same items), returning timings.
- :class:`MergeExplorer` (ipywidgets): a ``t`` slider, attention / MLP sliders (per-group t,
  enabled by a checkbox), a method dropdown (the registry's interpolation methods), a
  ``plotly.graph_objects.FigureWidget`` (metric vs t over the grid with the current point;
  per-field BLiMP deltas vs each ingredient) and a latency readout. Widget callbacks only
  record the requested setting; one worker thread computes, latest value wins, after a
  short debounce, so a slow evaluation never blocks the slider. The t-grid curve is filled
  in when no slider request is waiting.

Example (in a notebook)::

    from workbench.widgets import ExplorerSession, MergeExplorer
    session = ExplorerSession([model_a, model_b], tasks=["blimp"], limit=4, data_dir="../shared/data")
    MergeExplorer(session, t_grid=[0, 0.25, 0.5, 0.75, 1]).widget
"""

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
from workbench.merge.registry import DEFAULT, INTERPOLATION, SOUP, method_with, methods_with
from workbench.naming import group_t_setting

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


def notebook_models(models: Sequence[str] | None, recipe: str | None = None, *, count: int | None = None) -> list[str]:
    """The checkpoints a notebook works on: ``models`` if given, else the models of ``recipe``.

    ``count`` (if given) is how many are needed (extra ones are an error, not dropped).

    >>> notebook_models(["a", "b"], count=2)
    ['a', 'b']
    >>> notebook_models(None, "{merge_method: slerp, base_model: a, models: [{model: a}, {model: b}], parameters: {t: 0.5}}")
    ['a', 'b']
    """
    out = [os.fspath(m) for m in (models or [])]
    if not out and recipe:
        from workbench.merge import load_recipe

        rec = load_recipe(recipe)
        out = [str(m.model) for m in rec.models]
        if rec.base_model and str(rec.base_model) in out:
            out.remove(str(rec.base_model))
            out.insert(0, str(rec.base_model))
    if not out:
        raise WorkbenchError("no models given: set the notebook parameter `models` (or `recipe`)")
    if count is not None and len(out) != count:
        raise WorkbenchError(f"this notebook takes {count} models, got {len(out)}: {out}")
    if len(out) < 2:
        raise WorkbenchError(f"give at least two models, got {out}")
    return out


def soup_recipe(models: Sequence[str], recipe: str | None = None):
    """The merge the soup report judges: ``recipe`` if given, else a uniform linear soup of ``models``.

    >>> soup_recipe(["a", "b"]).merge_method
    'linear'
    """
    from workbench.merge import load_recipe, simple_recipe

    return load_recipe(recipe) if recipe else simple_recipe(method_with(SOUP).name, list(models))


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
                self.model.load_state_dict(self._state_of(m), strict=False)
            self.baselines.append(self._evaluate("ingredient", float(i), None, None, merge_s=0.0))
        self.fields = sorted({f for b in self.baselines for f in b.fields})

    def _state_of(self, model: str) -> dict[str, Any]:
        ck = self.checkpoints[model]
        return {n: ck.get(n, device=self.device) for n in ck.names() if n != "lm_head.weight" or not ck.tied}

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
                self.model.load_state_dict(state, strict=False)
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


@dataclass
class _Request:
    method: str
    t: float
    t_attn: float | None
    t_mlp: float | None
    at: float
    seq: int


class MergeExplorer:
    """ipywidgets front end of an :class:`ExplorerSession` (see the module docstring).

    ``background=False`` computes in the calling thread (used by scripts); the default
    runs one worker thread. :meth:`wait` blocks until every request is processed (tests and
    benchmarks use it); ``latencies`` holds seconds from a slider change to updated figure data.
    """

    def __init__(
        self,
        session: ExplorerSession,
        *,
        t_grid: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        method: str | None = None,
        t: float = 0.5,
        debounce_s: float = 0.15,
        background: bool = True,
    ):
        import ipywidgets as w
        import plotly.graph_objects as go

        from workbench.plots import explorer_figure

        method = method or method_with(DEFAULT).name
        if method not in METHODS:
            raise WorkbenchError(f"explorer method must be one of {', '.join(METHODS)}, got {method!r}")
        self.session = session
        self.t_grid = sorted(float(x) for x in t_grid)
        self.debounce_s = float(debounce_s)
        self.background = background
        self.latencies: list[float] = []
        self.results: list[PointResult] = []
        self.curves: dict[str, dict[float, PointResult]] = {}
        self.error: str | None = None

        self.t_slider = w.FloatSlider(
            value=t, min=0.0, max=1.0, step=0.05, description="t", continuous_update=True, readout_format=".2f"
        )
        self.per_group = w.Checkbox(value=False, description="separate attention / MLP t")
        self.attn_slider = w.FloatSlider(
            value=t, min=0.0, max=1.0, step=0.05, description="attention t", disabled=True, readout_format=".2f"
        )
        self.mlp_slider = w.FloatSlider(
            value=t, min=0.0, max=1.0, step=0.05, description="MLP t", disabled=True, readout_format=".2f"
        )
        self.method = w.Dropdown(options=list(METHODS), value=method, description="method")
        self.readout = w.HTML(value="<i>starting...</i>")
        self.figure = go.FigureWidget(explorer_figure(session.tasks, session.labels, session.fields))
        for trace in self.figure.data[2 * len(session.tasks) :]:
            trace.x = list(session.fields)
        self.widget = w.VBox(
            [
                w.HBox([self.method, self.t_slider]),
                w.HBox([self.per_group, self.attn_slider, self.mlp_slider]),
                self.readout,
                self.figure,
            ]
        )

        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._seq = 0
        self._done_seq = 0
        self._busy = False
        self._stop = False
        for widget in (self.t_slider, self.attn_slider, self.mlp_slider, self.method):
            widget.observe(self._on_change, names="value")
        self.per_group.observe(self._on_group_toggle, names="value")
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="merge-explorer", daemon=True)
            self._thread.start()
        self.request()

    # --- callbacks: cheap, never compute -----------------------------------------------------

    def _on_group_toggle(self, change: dict) -> None:
        on = bool(change["new"])
        self.attn_slider.disabled = not on
        self.mlp_slider.disabled = not on
        self.request()

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.t_slider and not self.per_group.value:
            # groups follow the main slider while they are not separate
            for s in (self.attn_slider, self.mlp_slider):
                s.unobserve(self._on_change, names="value")
                s.value = change["new"]
                s.observe(self._on_change, names="value")
        self.request()

    def settings(self) -> tuple[str, float, float | None, float | None]:
        """(method, t, attention t or None, MLP t or None) as the widgets show them now."""
        if self.per_group.value:
            return (
                self.method.value,
                float(self.t_slider.value),
                float(self.attn_slider.value),
                float(self.mlp_slider.value),
            )
        return self.method.value, float(self.t_slider.value), None, None

    def request(self) -> None:
        """Queue the current widget setting (replacing any setting not yet started)."""
        method, t, ta, tm = self.settings()
        with self._cond:
            self._seq += 1
            self._pending = _Request(method, t, ta, tm, time.perf_counter(), self._seq)
            self._cond.notify_all()
        if not self.background:
            self._drain()

    # --- worker --------------------------------------------------------------------------------

    def _take(self) -> _Request | None:
        with self._cond:
            req, self._pending = self._pending, None
            if req is not None:
                self._busy = True
            return req

    def _drain(self) -> None:
        while (req := self._take()) is not None:
            self._process(req)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop and not self._grid_todo():
                    self._cond.wait(timeout=0.5)
                if self._stop:
                    return
                has_request = self._pending is not None
            if has_request:
                time.sleep(self.debounce_s)  # coalesce a drag into its latest value
                req = self._take()
                if req is not None:
                    self._process(req)
            else:
                self._grid_step()

    def _grid_todo(self) -> tuple[str, float] | None:
        method = self.method.value
        done = self.curves.get(method, {})
        for t in self.t_grid:
            if t not in done:
                return method, t
        return None

    def _grid_step(self) -> None:
        todo = self._grid_todo()
        if todo is None:
            return
        method, t = todo
        try:
            p = self.session.grid_point(method, t)
        except Exception as err:  # shown in the readout; the explorer keeps running
            self.error = f"{type(err).__name__}: {err}"
            self.curves.setdefault(method, {})[t] = None  # type: ignore[assignment]
            self._show_error()
            return
        self.curves.setdefault(method, {})[t] = p
        if method == self.method.value:
            self._draw_curve(method)

    def _process(self, req: _Request) -> None:
        try:
            p = self.session.point(req.method, req.t, req.t_attn, req.t_mlp)
            if req.t_attn is None and req.t_mlp is None and req.t in self.t_grid:
                self.curves.setdefault(req.method, {})[req.t] = p
            self._draw(req, p)
            self.error = None
        except Exception as err:  # shown in the readout; the explorer keeps running
            self.error = f"{type(err).__name__}: {err}"
            self._show_error()
        finally:
            with self._cond:
                self._done_seq = max(self._done_seq, req.seq)
                self._busy = False
                self._cond.notify_all()

    def _show_error(self) -> None:
        self.readout.value = f"<b style='color:#b00'>error:</b> {self.error}"

    def _draw_curve(self, method: str) -> None:
        pts = sorted((t, p) for t, p in self.curves.get(method, {}).items() if p is not None)
        with self.figure.batch_update():
            for k, task in enumerate(self.session.tasks):
                self.figure.data[2 * k].x = [t for t, _ in pts]
                self.figure.data[2 * k].y = [p.metrics[task] for _, p in pts]

    def _draw(self, req: _Request, p: PointResult) -> None:
        tasks = self.session.tasks
        deltas = self.session.deltas(p)
        pts = sorted((t, q) for t, q in self.curves.get(req.method, {}).items() if q is not None)
        with self.figure.batch_update():
            for k, task in enumerate(tasks):
                self.figure.data[2 * k].x = [t for t, _ in pts]
                self.figure.data[2 * k].y = [q.metrics[task] for _, q in pts]
                self.figure.data[2 * k + 1].x = [p.t]
                self.figure.data[2 * k + 1].y = [p.metrics[task]]
            for i, label in enumerate(self.session.labels):
                self.figure.data[2 * len(tasks) + i].y = deltas[label]
            self.figure.layout.title = {"text": _setting_text(p)}
        latency = time.perf_counter() - req.at
        self.latencies.append(latency)
        self.results.append(p)
        shown = ", ".join(f"{task} {v:.3f}" for task, v in p.metrics.items() if v is not None)
        self.readout.value = (
            f"<b>{_setting_text(p)}</b> &middot; {shown} on {self.session.n_items} dev items &middot; "
            f"latency {latency * 1000:.0f} ms (merge {p.merge_s * 1000:.0f} ms, eval {p.eval_s * 1000:.0f} ms)"
        )

    # --- control ---------------------------------------------------------------------------------

    def wait(self, timeout: float = 120.0, *, grid: bool = False) -> bool:
        """Block until the latest request is drawn (and the t grid, if ``grid``); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy or self._done_seq < self._seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.05))
        while grid and self._grid_todo() is not None:
            if time.monotonic() > deadline:
                return False
            if not self.background:
                self._grid_step()
            else:
                time.sleep(0.05)
        return True

    def grid_tables(self, method: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(curve, deltas) over the t grid for ``method`` (default: the dropdown's), reusing what the
        explorer already evaluated; feeds :func:`workbench.plots.t_slider_figure`."""
        method = method or self.method.value
        for t in self.t_grid:
            if t not in self.curves.get(method, {}):
                self.curves.setdefault(method, {})[t] = self.session.grid_point(method, t)
        return self.session.tables({t: self.curves[method][t] for t in self.t_grid})

    def close(self) -> None:
        """Stop the worker thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _ipython_display_(self) -> None:  # pragma: no cover - needs a frontend
        from IPython.display import display

        display(self.widget)


def _setting_text(p: PointResult) -> str:
    if p.t_attn is None and p.t_mlp is None:
        return f"{p.method} t = {p.t:.2f}"
    return f"{p.method} t = {p.t:.2f} (attention {p.t_attn:.2f}, MLP {p.t_mlp:.2f})"
