"""Headless notebook runs: papermill execution plus a self-contained HTML copy.

``workbench run NOTEBOOK -p NAME VALUE -f PARAMS.yaml --out DIR`` is :func:`run_notebook`:

- parameters from ``-f`` (a YAML mapping) and ``-p`` (each value parsed as YAML, so
  ``-p tasks '[blimp, arc_easy]'`` is a list and ``-p seed 3`` an int), checked against
  the notebook's ``parameters`` cell (an unknown name is an error, not a silent no-op);
- the kernel is the running interpreter (a ``python3`` kernelspec pointing at
  ``sys.executable`` is put first on the Jupyter path for the run), so no manual kernel
  registration is needed in a fresh virtualenv or in CI;
- a failing cell or a cell timeout raises :class:`~workbench.errors.WorkbenchError`
  naming the cell (index, first line) and the error; nothing is written then;
- the output directory (written atomically) holds the executed ``NAME.ipynb`` and
  ``NAME.html``; the HTML needs no network: plotly.js is embedded once by
  :func:`workbench.plots.setup_offline_html` (called by the notebooks), and the
  exporter's CDN scripts (require.js, MathJax, the widget manager) are left out;
- shared output is clean: the kernel runs with progress bars switched off where a library
  honours a switch (:data:`HEADLESS_ENV`), and whatever bars remain (tqdm's text and notebook
  widgets, transformers' "Loading weights") are removed from the stored outputs
  (:func:`strip_progress_output`); the HTML leaves out the source of the parameter cells (they
  hold machine paths) and of cells tagged ``hide-input``. Bars still show in the terminal and
  in a live JupyterLab session, which never pass through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.io.yaml import parse_yaml

#: The kernel name written into the notebooks and used for headless runs.
KERNEL_NAME = "python3"
#: Environment of a headless kernel: progress bars off where a library has a switch (tqdm bars
#: created without an explicit ``disable``, Hugging Face Hub and transformers bars).
HEADLESS_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
#: Cells whose source the HTML leaves out (their outputs stay).
HIDDEN_INPUT_TAGS = ("parameters", "injected-parameters", "hide-input")


@dataclass(frozen=True)
class RunResult:
    """Where :func:`run_notebook` put its outputs."""

    notebook: Path
    html: Path
    out_dir: Path


def parse_param_value(text: str) -> Any:
    """Parse one ``-p NAME VALUE`` value as YAML (lists and dicts pass through as such).

    >>> parse_param_value("[blimp, arc_easy]")
    ['blimp', 'arc_easy']
    >>> parse_param_value("0.25"), parse_param_value("7"), parse_param_value("cpu")
    (0.25, 7, 'cpu')
    >>> parse_param_value("{filter: mlp, value: 0.3}")
    {'filter': 'mlp', 'value': 0.3}
    >>> parse_param_value("null") is None
    True
    """
    return parse_yaml(text, f"parameter value {text!r}")


def parse_param_pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    """Turn ``["-p", "seed", "3", "--param", "tasks", "[blimp]"]`` into (name, value) pairs.

    >>> parse_param_pairs(["-p", "seed", "3", "--param", "tasks", "[blimp]"])
    [('seed', '3'), ('tasks', '[blimp]')]
    >>> parse_param_pairs(["-p", "seed"])
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: -p takes two values, NAME and VALUE: got -p seed
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    args = list(args)
    while i < len(args):
        flag = args[i]
        if flag not in ("-p", "--param"):
            raise WorkbenchError(f"unexpected argument {flag!r} (parameters are given as -p NAME VALUE)")
        if len(args) - i < 3:
            raise WorkbenchError(f"-p takes two values, NAME and VALUE: got {' '.join(args[i:])}")
        pairs.append((args[i + 1], args[i + 2]))
        i += 3
    return pairs


def collect_parameters(pairs: Sequence[tuple[str, str]] = (), params_file: str | Path | None = None) -> dict[str, Any]:
    """Merge ``-f PARAMS.yaml`` (first) and ``-p NAME VALUE`` pairs (they win).

    >>> collect_parameters([("t_grid", "[0, 0.5, 1]"), ("seed", "1")])
    {'t_grid': [0, 0.5, 1], 'seed': 1}
    """
    params: dict[str, Any] = {}
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise WorkbenchError(f"{path}: parameters file not found")
        loaded = parse_yaml(path.read_text(encoding="utf-8"), str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise WorkbenchError(f"{path}: expected a mapping of parameter names to values")
        params.update({str(k): v for k, v in loaded.items()})
    for name, value in pairs:
        params[name] = parse_param_value(value)
    return params


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's ``parameters`` cell: name -> {inferred_type_name, default, help}.

    Raises WorkbenchError if the file is missing or is not a notebook.
    """
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise WorkbenchError(f"{path}: notebook not found")
    try:
        return dict(papermill.inspect_notebook(str(path)))
    except Exception as err:  # nbformat / json errors
        raise WorkbenchError(f"{path}: cannot read the notebook: {err}") from None


@contextlib.contextmanager
def current_python_kernel() -> Iterator[str]:
    """Make ``python3`` mean the running interpreter for kernels started inside the block.

    A kernelspec directory whose ``argv`` starts with :data:`sys.executable` is put first
    on ``JUPYTER_PATH`` (the first match wins); the variable is restored afterwards.
    Yields the kernel name to pass to papermill.
    """
    with tempfile.TemporaryDirectory(prefix="workbench-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (workbench)",
            "language": "python",
            "metadata": {"debugger": True},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp if not old else tmp + os.pathsep + old
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


@contextlib.contextmanager
def headless_environment(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Set :data:`HEADLESS_ENV` (and ``extra``) for processes started inside the block; restore afterwards."""
    values = {**HEADLESS_ENV, **dict(extra or {})}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_CDN_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A progress bar's text: tqdm's "desc:  45%|####  | 45/100 [00:01<00:02, 30.1it/s]", or without a
#: total "desc: 123it [00:01, 99.0it/s]" (transformers' "Loading weights" bars are tqdm bars).
_BAR = re.compile(r"\d{1,3}%\|[^|\n]*\||\d+(?:\.\d+)?[kMGTP]?\w* \[\d+:\d\d(?::\d\d)?(?:<[^,\]]*)?,[^\]]*\]")
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def is_progress_text(text: str) -> bool:
    """Whether a piece of output text is a progress bar (tqdm's format, ANSI codes ignored).

    >>> is_progress_text("Loading weights:  42%|####2     | 10/24 [00:00<00:00, 99.1it/s]")
    True
    >>> is_progress_text("blimp: 1340seq [00:02, 612.3seq/s]"), is_progress_text("accuracy 42% | best")
    (True, False)
    """
    return bool(_BAR.search(_ANSI.sub("", text)))


def _strip_stream(text: str) -> str:
    """Stream text without its progress-bar segments (a bar redraws itself after a carriage return)."""
    lines = []
    for line in text.split("\n"):
        segments = [seg for seg in line.split("\r") if _ANSI.sub("", seg).strip()]
        kept = [seg for seg in segments if not is_progress_text(seg)]
        if kept:
            lines.append(kept[-1])  # what a terminal shows after the carriage returns
        elif not segments:
            lines.append(line if "\r" not in line else "")
    return "\n".join(lines).strip("\n") + ("\n" if text.endswith("\n") and lines else "")


def _is_progress_widget(output: Mapping[str, Any]) -> bool:
    data = output.get("data") or {}
    if _WIDGET_VIEW not in data:
        return False
    plain = data.get("text/plain", "")
    plain = "".join(plain) if isinstance(plain, list) else str(plain)
    return is_progress_text(plain) or ("FloatProgress" in plain and plain.startswith("HBox("))


def strip_progress_output(nb: Any) -> Any:
    r"""Remove progress bars from a notebook's stored outputs, in place; returns ``nb``.

    Progress text is cut out of stream outputs (other text stays), tqdm's notebook widgets are
    dropped with their saved widget state; widgets a notebook shows on purpose are kept.

    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook()
    >>> cell = nbformat.v4.new_code_cell("x")
    >>> cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
    ...     text="blimp:   0%|          | 0/9 [00:00<?, ?seq/s]\rblimp: 100%|##########| 9/9 [00:01<00:00]\nwarning: kept\n")]
    >>> nb.cells = [cell]
    >>> strip_progress_output(nb).cells[0].outputs[0]["text"]
    'warning: kept\n'
    """
    removed_views = False
    for cell in nb.cells:
        outputs = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = output.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                output["text"] = _strip_stream(text)
                if not output["text"].strip():
                    continue
            elif _is_progress_widget(output):
                removed_views = True
                continue
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
    if removed_views:
        _prune_widget_state(nb)
    return nb


def _prune_widget_state(nb: Any) -> None:
    """Keep only the saved widget models that a remaining widget view needs (drop them all if none)."""
    widgets = nb.metadata.get("widgets", {})
    state = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    todo = [
        o["data"][_WIDGET_VIEW].get("model_id")
        for c in nb.cells
        for o in c.get("outputs", [])
        if _WIDGET_VIEW in (o.get("data") or {})
    ]
    keep: set[str] = set()
    while todo:
        mid = todo.pop()
        if mid in keep or mid not in state:
            continue
        keep.add(mid)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[mid]))
    if not keep:
        nb.metadata.pop("widgets", None)
        return
    for mid in [m for m in state if m not in keep]:
        del state[mid]


def strip_widget_state(nb: Any) -> Any:
    """Drop ipywidgets state and widget views (they need a CDN widget manager offline).

    Each widget output keeps its ``text/plain`` fallback, so the HTML shows a short note
    where a live widget was. Works in place and returns ``nb``.
    """
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                data["text/plain"] = "(live widget: open the notebook in JupyterLab to use it)"
    return nb


def export_html(nb: Any, *, title: str | None = None) -> str:
    """Render an executed notebook to one self-contained HTML page (no network needed).

    Uses nbconvert's ``lab`` template with images embedded; plotly figures carry their
    ``text/html`` outputs (plotly.js inlined once, see
    :func:`workbench.plots.setup_offline_html`); script tags that would fetch from a CDN
    (require.js, MathJax, widget manager) are removed.
    """
    import copy

    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = strip_widget_state(strip_progress_output(copy.deepcopy(nb)))
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags=set(HIDDEN_INPUT_TAGS)), enabled=True)
    resources: dict[str, Any] = {}
    if title:
        resources["metadata"] = {"name": title}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return _CDN_SCRIPT.sub("", body)


def _cell_label(cell: Mapping[str, Any], index: int) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(source)
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    if len(first) > 70:
        first = first[:67] + "..."
    return f"cell {index} ({first!r})" if first else f"cell {index}"


def _timed_out_cell(message: str, partial: Path) -> str:
    """Name the cell in nbclient's timeout message (its source preview), by index if found."""
    import nbformat

    parts = message.split("-------------------")
    preview = parts[1].strip("\n") if len(parts) >= 3 else ""
    first = next((line.strip() for line in preview.splitlines() if line.strip()), "")
    try:
        nb = nbformat.read(str(partial), as_version=4)
    except Exception:
        nb = None
    if nb is not None and preview:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and cell.source.strip("\n").startswith(preview.strip()):
                return _cell_label(cell, index)
    return f"the cell starting {first!r}" if first else "a cell"


def run_notebook(
    notebook: str | Path,
    out_dir: str | Path,
    *,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = 1800,
    overwrite: bool = False,
    progress: bool = True,
    cwd: str | Path | None = None,
) -> RunResult:
    """Execute ``notebook`` with papermill and write ``NAME.ipynb`` + ``NAME.html`` to ``out_dir``.

    ``timeout`` is per cell, in seconds (None: no limit). Unknown parameter names, a
    failing cell and a cell timeout raise WorkbenchError naming the notebook and the
    cell; ``out_dir`` is then left untouched.

    Example (runs a real notebook; see tests/test_notebooks.py)::

        run_notebook("notebooks/layer_angles.ipynb", "runs/angles",
                     parameters={"models": ["data/families/demo/siblings/sibling-1",
                                             "data/families/demo/siblings/sibling-2"]})
    """
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError

    from workbench.io.atomic import atomic_output_dir

    path = Path(notebook)
    declared = notebook_parameters(path)
    params = dict(parameters or {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise WorkbenchError(f"{path}: unknown parameter(s) {', '.join(unknown)}; the notebook declares: {known}")
    stem = path.stem
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        out_nb = tmp / f"{stem}.ipynb"
        try:
            with current_python_kernel() as kernel_name, headless_environment():
                nb = papermill.execute_notebook(
                    str(path),
                    str(out_nb),
                    parameters=params,
                    kernel_name=kernel_name,
                    execution_timeout=timeout,
                    progress_bar=progress,
                    cwd=str(cwd) if cwd is not None else None,
                    log_output=False,
                )
        except papermill.PapermillExecutionError as err:
            label = _cell_label({"source": err.source}, err.cell_index)
            tail = err.traceback[-1] if err.traceback else ""
            tail = re.sub(r"\x1b\[[0-9;]*m", "", tail).strip()
            raise WorkbenchError(
                f"{path}: {label} failed: {err.ename}: {err.evalue}"
                + (f" [{tail}]" if tail and err.evalue not in tail else "")
            ) from None
        except CellTimeoutError as err:
            label = _timed_out_cell(str(err), out_nb)
            raise WorkbenchError(f"{path}: {label} timed out after {timeout} s (raise --timeout)") from err
        except (RuntimeError, OSError) as err:
            if "kernel" in str(err).lower():
                raise WorkbenchError(f"{path}: the kernel failed: {err}") from err
            raise
        nbformat.write(strip_progress_output(nb), str(out_nb))
        html = export_html(nb, title=stem)
        (tmp / f"{stem}.html").write_text(html, encoding="utf-8")
    out = Path(out_dir)
    return RunResult(notebook=out / f"{stem}.ipynb", html=out / f"{stem}.html", out_dir=out)
