"""A real browser: JupyterLab + Debian's Chromium driven by Playwright.

Starts JupyterLab on 127.0.0.1 (free port, no token) over a temporary copy of
``notebooks/merge_explorer.ipynb`` whose parameters point at the ``tiny`` family, runs all
cells, drags the t slider and checks that the explorer's figure changed. A screenshot goes
to ``test-artifacts/``. The server is stopped by its own process id.

Skipped (with the reason) only when ``/usr/bin/chromium`` is absent (``make browser`` installs it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(run `make browser` or `apt-get install chromium`)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} within {timeout} s")


@pytest.fixture()
def lab_server(tmp_path: Path, tiny_family, shared_data: Path):
    """JupyterLab over a parameterised copy of merge_explorer.ipynb; yields (base_url, notebook name, log)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from workbench.runner import current_python_kernel

    work = tmp_path / "lab"
    work.mkdir()
    nb = load_notebook_node(str(REPO / "notebooks" / "merge_explorer.ipynb"))
    nb = parameterize_notebook(
        nb,
        {
            "models": [str(tiny_family.siblings[0]), str(tiny_family.independent[0])],
            "subsample": 1,
            "t_grid": [0.0, 0.5, 1.0],
            "data_dir": str(shared_data),
            "device": "cpu",
        },
    )
    nbformat.write(nb, work / "merge_explorer.ipynb")
    port = _free_port()
    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ("IPYTHONDIR", "ipython"),
    ):
        env[var] = str(tmp_path / sub)
    log = open(tmp_path / "lab.log", "w")
    with current_python_kernel():
        env["JUPYTER_PATH"] = os.environ["JUPYTER_PATH"]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                "--IdentityProvider.token=",
                "--ServerApp.password=",
                "--ServerApp.disable_check_xsrf=True",
                f"--ServerApp.root_dir={work}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--ServerApp.open_browser=False",
                "--allow-root",
            ],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(f"{base}/api/status", 90, proc)
        yield base, "merge_explorer.ipynb", tmp_path / "lab.log"
    finally:
        if proc.poll() is None:  # stop the server we started, by its own process id
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


# JS helpers evaluated in the page: the explorer figure is the first plotly graph in the notebook.
_FIGURE_STATE = """() => {
  const gds = Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot'));
  if (!gds.length || !gds[0].data) return null;
  return JSON.stringify(gds[0].data.map(t => [t.x, t.y]));
}"""

_READOUT = """() => {
  const r = Array.from(document.querySelectorAll('.widget-html-content')).map(e => e.innerText)
    .filter(t => t.includes('latency'));
  return r.length ? r[0] : null;
}"""


def _accept_kernel_dialog(page, wait_ms: int = 3000) -> None:
    """Accept JupyterLab's "Select Kernel" dialog (python3) if it shows up."""
    button = page.locator(".jp-Dialog button.jp-mod-accept")
    try:
        button.wait_for(state="visible", timeout=wait_ms)
    except Exception:
        return
    button.click()


def test_merge_explorer_in_jupyterlab(lab_server) -> None:
    from playwright.sync_api import sync_playwright

    base, name, log = lab_server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab/tree/{name}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            # wait for the kernel to be idle before running everything
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            _accept_kernel_dialog(page)
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")
            _accept_kernel_dialog(page)
            # the explorer: a slider and a filled figure (the first readout with a latency)
            page.wait_for_selector(".widget-slider .noUi-handle", timeout=240_000)
            page.wait_for_function("() => document.body.innerText.includes('latency')", timeout=240_000)
            page.wait_for_function(_FIGURE_STATE, timeout=120_000)
            # every cell has run once the static slider figure is there (second plot)
            page.wait_for_function(
                "() => document.querySelectorAll('.jp-Notebook .js-plotly-plot').length >= 2", timeout=240_000
            )
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=240_000)
            before = page.evaluate(_FIGURE_STATE)
            readout_before = page.evaluate(_READOUT)

            handle = page.locator(".widget-slider .noUi-handle").first
            handle.scroll_into_view_if_needed()
            box = handle.bounding_box()
            track = page.locator(".widget-slider .noUi-target").first.bounding_box()
            assert box is not None and track is not None
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] / 2, y)
            page.mouse.down()
            target = track["x"] + 0.1 * track["width"]
            for k in range(1, 6):
                page.mouse.move(box["x"] + (target - box["x"]) * k / 5, y)
                page.wait_for_timeout(50)
            page.mouse.up()

            page.wait_for_function(
                f"(b) => {{ const s = ({_FIGURE_STATE})(); return s !== null && s !== b; }}",
                arg=before,
                timeout=120_000,
            )
            page.wait_for_function(
                f"(b) => {{ const r = ({_READOUT})(); return r !== null && r !== b; }}",
                arg=readout_before,
                timeout=120_000,
            )
            after = page.evaluate(_FIGURE_STATE)
            page.screenshot(path=str(ARTIFACTS / "merge_explorer_jupyterlab.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "merge_explorer_jupyterlab_failure.png"), full_page=False)
            state = page.evaluate(_FIGURE_STATE)
            readouts = page.evaluate(
                "() => Array.from(document.querySelectorAll('.widget-html-content')).map(e => e.innerText)"
            )
            (ARTIFACTS / "merge_explorer_jupyterlab_failure.txt").write_text(f"{state}\n{readouts}\n")
            raise
        finally:
            browser.close()
    b, a = json.loads(before), json.loads(after)
    assert b != a
    # the current point (trace 1) moved to a smaller t
    assert a[1][0][0] < b[1][0][0], (b[1], a[1])


# --- the claim check's report: the answer on the first screen ---------------------------------

_HEADLINE = """() => {
  const h = document.querySelector('#headline');
  if (!h) return null;
  const items = Array.from(h.querySelectorAll('li')).map(li => ({
    text: li.innerText, bottom: li.getBoundingClientRect().bottom}));
  return {bottom: h.getBoundingClientRect().bottom, height: window.innerHeight, items: items,
          visible: document.body.innerText};
}"""
_CALLS = ("a significant gain", "a significant loss", "no evidence of a difference")


@pytest.fixture()
def claim_report(tiny_family, shared_data: Path, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A real claim report on the tiny family: three tasks (one a text file), control, seeds."""
    import yaml
    from typer.testing import CliRunner

    from workbench.cli import app

    fam = tiny_family
    a, b = fam.trajectory[-2], fam.trajectory[-1]
    recipe = tmp_path / "slerp.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": "slerp",
                "base_model": str(a),
                "models": [{"model": str(a)}, {"model": str(b)}],
                "parameters": {"t": [{"filter": "self_attn", "value": 0.3}, {"value": 0.6}]},
            }
        )
    )
    out = tmp_path / "claim"
    tasks = ["blimp", "arc_easy", f"text:{fam.heldout}"]
    res = CliRunner().invoke(
        app,
        [
            "compare",
            "--ingredients",
            str(a),
            str(b),
            str(fam.trajectory[-3]),
            "--recipe",
            str(recipe),
            "--tasks",
            ",".join(tasks),
            "--data-dir",
            str(shared_data),
            "--limit",
            "2",
            "--curve-ts",
            "0,0.5,1",
            "--resamples",
            "300",
            "--control",
            str(fam.annealed),
            "--seeds",
            str(b),
            *map(str, fam.siblings),
            "--claim",
            "the SLERP of the last two checkpoints beats the best of them",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    return out / "report.html", ["blimp", "arc_easy", fam.heldout.name], [str(tmp_path), str(fam.root)]


def test_claim_report_first_screen_holds_the_answer(claim_report) -> None:
    from playwright.sync_api import sync_playwright

    report, labels, machine_paths = claim_report
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
            state = page.evaluate(_HEADLINE)
            page.screenshot(path=str(ARTIFACTS / "claim_report_first_screen.png"), full_page=False)
        finally:
            browser.close()
    assert not errors, errors
    assert state is not None and state["height"] == 800
    assert state["bottom"] <= 800, f"the headline ends at {state['bottom']} px, below the first screen"
    for label in labels:
        item = next((i for i in state["items"] if i["text"].startswith(label + " (")), None)
        assert item is not None, (label, [i["text"][:40] for i in state["items"]])
        assert item["bottom"] <= 800 and any(c in item["text"] for c in _CALLS), item
    assert any(i["text"].startswith("Cost:") for i in state["items"])
    assert "Claim:" in state["visible"].split("Cost:")[0]
    assert not [p for p in machine_paths if p in state["visible"]]  # full paths only in folded blocks
