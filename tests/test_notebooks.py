"""Notebooks: committed clean, documented parameters, headless runs (papermill) on the tiny
family, the ``workbench run`` command's errors, and the shared HTML drawing its plots offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.runner import notebook_parameters, run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_the_three_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"merge_explorer.ipynb", "layer_angles.ipynb", "soup_report.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} carries outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state is committed"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_typed_and_documented(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    params = notebook_parameters(path)
    assert "models" in params and "recipe" in params
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", ""), f"{path.name}: {name} has no type annotation"
        assert p["help"], f"{path.name}: {name} has no help comment"


# --- the run command ---------------------------------------------------------------------


def _toy_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        "xs: list = [1, 2]  # values to plot\nlabel: str = 'ok'  # a label\nnap: float = 0.0  # seconds to sleep"
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from workbench import plots\nimport plotly.graph_objects as go\nplots.setup_offline_html()"
        ),
        nbformat.v4.new_code_cell("print('sum', sum(xs), label)\ngo.Figure(go.Scatter(x=xs, y=xs))"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(nap)\nassert label != 'bad', 'the label is bad'"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_run_command_yaml_parameters_and_outputs(tmp_path: Path) -> None:
    nb = _toy_notebook(tmp_path / "toy.ipynb")
    pfile = tmp_path / "params.yaml"
    pfile.write_text("label: from-file\nxs: [9, 9]\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(nb), "-p", "xs", "[3, 4, 5]", "-f", str(pfile), "--out", str(out)])
    assert res.exit_code == 0, res.output
    executed = nbformat.read(out / "toy.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "sum 12 from-file" in text  # -p wins over -f; the list arrived as a list
    html = (out / "toy.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html


def test_run_command_failing_cell_names_the_cell(tmp_path: Path) -> None:
    nb = _toy_notebook(tmp_path / "toy.ipynb")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(nb), "-p", "label", "bad", "--out", str(out)])
    assert res.exit_code == 2
    assert "cell 4" in res.output and "AssertionError: the label is bad" in res.output
    assert not out.exists()


def test_run_command_timeout_names_the_cell(tmp_path: Path) -> None:
    nb = _toy_notebook(tmp_path / "toy.ipynb")
    with pytest.raises(WorkbenchError, match=r"cell 4 \('import time'\) timed out after 5"):
        run_notebook(nb, tmp_path / "out", parameters={"nap": 30}, timeout=5, progress=False)
    assert not (tmp_path / "out").exists()


def test_run_command_refuses_unknown_parameters(tmp_path: Path) -> None:
    nb = _toy_notebook(tmp_path / "toy.ipynb")
    res = CliRunner().invoke(app, ["run", str(nb), "-p", "nonsense", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown parameter(s) nonsense" in res.output
    res = CliRunner().invoke(app, ["run", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "notebook not found" in res.output


# --- the three notebooks on the tiny family ------------------------------------------------


def _no_errors(nb_path: Path) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", f"{nb_path.name}: cell {i}: {o.get('ename')}: {o.get('evalue')}"


@pytest.fixture(scope="module")
def notebook_runs(tiny_family, shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Run each notebook once on the tiny family with small subsamples; name -> HTML path."""
    root = tmp_path_factory.mktemp("notebook_runs")
    fam = tiny_family
    runs = {
        "layer_angles": {"models": [str(p) for p in [*fam.siblings, fam.independent[0]]]},
        "merge_explorer": {
            "models": [str(fam.siblings[0]), str(fam.independent[0])],
            "subsample": 1,
            "t_grid": [0.0, 0.5, 1.0],
            "data_dir": str(shared_data),
            "device": "cpu",
        },
        "soup_report": {
            "models": [str(p) for p in fam.trajectory[-3:]],
            "control": str(fam.annealed),
            "tasks": ["blimp", "arc_easy"],
            "subsample": 1,
            "t_grid": [0.0, 0.5, 1.0],
            "n_resamples": 200,
            "data_dir": str(shared_data),
        },
    }
    out = {}
    for name, params in runs.items():
        res = run_notebook(
            REPO / "notebooks" / f"{name}.ipynb", root / name, parameters=params, timeout=600, progress=False
        )
        _no_errors(res.notebook)
        out[name] = res.html
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name, min_plots", [("layer_angles", 6), ("merge_explorer", 1), ("soup_report", 4)])
def test_notebook_executes_on_tiny_family(notebook_runs: dict[str, Path], name: str, min_plots: int) -> None:
    html = notebook_runs[name].read_text()
    assert html.count("Plotly.newPlot(") >= min_plots
    assert 'src="http' not in html  # nothing fetched from a CDN
    assert html.count("plotly.js v") <= 2  # the library embedded once (the banner may repeat once)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (run `make browser` or `apt-get install chromium`)",
)
def test_shared_html_draws_its_plots_offline(notebook_runs: dict[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(offline=True)
            requested: list[str] = []

            def block(route) -> None:
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    requested.append(route.request.url)
                    route.abort()

            ctx.route("**/*", block)
            for name, html in notebook_runs.items():
                page = ctx.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(html.as_uri())
                expected = html.read_text().count("Plotly.newPlot(")
                page.wait_for_function(
                    f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}", timeout=60_000
                )
                plots = page.locator(".js-plotly-plot").count()
                assert plots >= expected, (name, plots, expected)
                if name in ("merge_explorer", "soup_report"):
                    assert page.locator(".slider-container").count() >= 1, f"{name}: no plotly slider drawn"
                assert not errors, (name, errors)
                page.close()
            assert requested == []
        finally:
            browser.close()


# --- clean shared output: no progress bars, short labels, the demo's pages ------------------

_RESIDUE = ("Loading weights", "it/s]", "seq/s]", "%|")


def _output_texts(nb_path: Path) -> list[str]:
    """Every text an executed notebook stores in its outputs (stream text and each mimetype's data)."""
    nb = nbformat.read(nb_path, as_version=4)
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"]))
            for key, value in (o.get("data") or {}).items():
                if key.startswith("text/") and key != "text/html":
                    out.append(value if isinstance(value, str) else "".join(value))
    out.append(json.dumps(nb.metadata.get("widgets", {})))
    return out


def _assert_no_progress_residue(nb_path: Path, html_path: Path) -> None:
    from workbench.runner import is_progress_text

    for text in _output_texts(nb_path):
        assert not is_progress_text(text), (nb_path.name, text[:200])
        assert "Loading weights" not in text, nb_path.name
    body = html_path.read_text()
    body = body[body.index("<body") :]
    for script in ("<script", "<style"):  # plotly.js and CSS are code, not output
        while script in body:
            start = body.index(script)
            body = body[:start] + body[body.index(script.replace("<", "</"), start) + 8 :]
    for mark in _RESIDUE:
        assert mark not in body, (html_path.name, mark)


def test_headless_runs_strip_progress_bars_but_keep_other_output(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from tqdm.auto import tqdm\nimport sys\n"
            "for _ in tqdm(range(3), desc='toy', disable=False): pass\n"  # explicit: no switch stops it
            "from tqdm import tqdm as text_bar\n"
            "for _ in text_bar(range(3), desc='text', disable=False, file=sys.stderr): pass\n"
            "print('kept output')"
        )
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "bars.ipynb")
    res = run_notebook(tmp_path / "bars.ipynb", tmp_path / "out", progress=False)
    texts = _output_texts(res.notebook)
    assert any("kept output" in t for t in texts)
    _assert_no_progress_residue(res.notebook, res.html)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["layer_angles", "merge_explorer", "soup_report"])
def test_executed_notebooks_carry_no_progress_bars(notebook_runs: dict[str, Path], name: str) -> None:
    html = notebook_runs[name]
    _assert_no_progress_residue(html.with_suffix(".ipynb"), html)


@pytest.fixture(scope="module")
def demo_run(tiny_family, shared_data: Path, tmp_path_factory) -> Path:
    """``workbench demo``'s code path on the tiny family (reused, not retrained): its output directory."""
    from workbench.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    run_demo(
        out, family_dir=tiny_family.root, data_dir=shared_data, device="cpu", subsample=1, progress=False, preset="tiny"
    )
    return out


@pytest.mark.slow
def test_demo_pages_are_clean_labelled_and_linked(demo_run: Path, tiny_family) -> None:
    index = (demo_run / "index.html").read_text()
    for page in ("soup_report.html", "claim/report.html", "claim/explorer.html", "layer_angles.html"):
        assert f'href="{page}"' in index and (demo_run / page).is_file()
    for name in ("soup_report", "layer_angles"):
        _assert_no_progress_residue(demo_run / f"{name}.ipynb", demo_run / f"{name}.html")
    explorer = (demo_run / "claim" / "explorer.html").read_text()
    assert '"sliders"' in explorer and 'src="http' not in explorer
    heldout = tiny_family.heldout.name
    for page in ("soup_report.html", "claim/report.html"):
        text = (demo_run / page).read_text()
        shown = re.sub(r"<script.*?</script>|<style.*?</style>", "", text, flags=re.S)
        first = re.sub(r"<details.*?</details>", "", shown, flags=re.S)  # what shows before any unfolding
        assert heldout in first and f"text:{tiny_family.heldout}" not in first, page
        # no machine path anywhere a reader can see, folded "Sources" block included
        assert str(tiny_family.root) not in shown and "Sources (task names and checkpoint paths)" in shown, page
    verdict_md = (demo_run / "claim" / "verdict.md").read_text()
    assert str(tiny_family.root) not in verdict_md
    assert "seed spread" in verdict_md and verdict_md.startswith("# Claim check")
