"""The ipywidgets explorer: sliders and a method dropdown driving an :class:`~workbench.widgets.session.ExplorerSession` from one worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from workbench.errors import WorkbenchError
from workbench.merge.registry import DEFAULT, method_with

#: Methods the explorer offers (two models, base + t).
from workbench.widgets.session import METHODS, ExplorerSession, PointResult


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
