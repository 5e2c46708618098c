"""``workbench demo``: from nothing to a shareable report.

1. Build the factory's ``demo`` checkpoint family into ``data/families/demo`` (git-ignored),
   or reuse it when it is already there (:func:`workbench.factory.train_family` resumes or
   returns at once for a complete family of the same recipe and corpus).
2. Run ``notebooks/soup_report.ipynb`` on the trajectory checkpoints (the uniform soup of
   the last checkpoints, judged against the annealed run as control, with the last trajectory
   checkpoint and the siblings as seeds: trained alike from the same start but for the data-order
   seed) and ``notebooks/layer_angles.ipynb`` on the siblings and an independent run.
3. Write ``runs/demo/{soup_report,layer_angles}.{html,ipynb}``, the claim report the soup
   report writes (``runs/demo/claim/``: ``report.html``, ``explorer.html`` with the t slider,
   ``verdict.md``, tables) and an ``index.html`` linking them (atomically; a previous demo output
   is replaced) and return the soup report's path.
"""

from __future__ import annotations

import html
import os
import shutil
import time
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.eval.tasks import text_task
from workbench.io.datadir import resolve_data_dir

#: Evaluation settings of the demo report: benchmarks subsampled (items per BLiMP paradigm /
#: ARC stratum); the family's held-out text is added in full, since that is where a trajectory
#: soup's gain is expected (see benchmarks/RESULTS.md, checkpoint factory).
DEMO_TASKS = ["blimp", "arc_easy"]
DEMO_SUBSAMPLE = 20
DEMO_T_GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
#: The claim the demo checks, in words (quoted in the headline).
DEMO_CLAIM = "the uniform soup of the last trajectory checkpoints beats the best of them"
#: Where the soup report writes its claim report, inside the demo's output directory.
CLAIM_DIR = "claim"


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (next to the package, else under the working directory)."""
    for candidate in (Path(__file__).resolve().parents[1] / "notebooks", Path.cwd() / "notebooks"):
        if (candidate / "soup_report.ipynb").is_file():
            return candidate
    raise WorkbenchError("notebooks/soup_report.ipynb not found: run the demo from the repository checkout")


def reuse_family(family_dir: str | os.PathLike, preset: str) -> Any:
    """The complete family of ``preset`` already in ``family_dir`` (trained from that preset's
    recipe), else None (then it is built or resumed)."""
    from workbench.factory import load_family, load_train_recipe

    try:
        family = load_family(family_dir)
    except WorkbenchError:  # missing or incomplete: train_family builds or resumes it
        return None
    same = family.recipe.model_dump(mode="json") == load_train_recipe(preset).model_dump(mode="json")
    return family if same else None


def demo_parameters(
    family: Any,
    data_dir: Path | None,
    device: str | None,
    subsample: int | None = DEMO_SUBSAMPLE,
    report_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Notebook name -> papermill parameters for a family (see the module docstring); the soup
    report writes its claim report to ``report_dir`` when given."""
    from workbench.devices import resolve_device

    if len(family.trajectory) < 2:
        raise WorkbenchError(f"{family.root}: the demo needs at least two trajectory checkpoints")
    angle_models = [*family.siblings, *family.independent[:1]]
    if len(angle_models) < 2:
        angle_models = list(family.trajectory[-2:])
    dd = str(data_dir) if data_dir is not None else None
    # the siblings continue the last trajectory checkpoint's run from the same step with other data orders
    seeds = [str(family.trajectory[-1]), *map(str, family.siblings)] if family.siblings else []
    return {
        "soup_report": {
            "models": [str(p) for p in family.trajectory],
            "control": str(family.annealed) if family.annealed is not None else None,
            "seeds": seeds,
            "claim": DEMO_CLAIM,
            "report_dir": None if report_dir is None else str(report_dir),
            "tasks": [*DEMO_TASKS, text_task(family.heldout)],
            "t_grid": DEMO_T_GRID,
            "subsample": None if subsample is None else {task: subsample for task in DEMO_TASKS},
            "seed": 0,
            "device": resolve_device(device),
            "data_dir": dd,
        },
        "layer_angles": {"models": [str(p) for p in angle_models], "t": 0.5},
    }


def _index_html(entries: list[tuple[str, str, str]], took_s: float) -> str:
    rows = "\n".join(
        f'<li><a href="{html.escape(f)}">{html.escape(title)}</a>: {html.escape(text)}</li>'
        for f, title, text in entries
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>workbench demo</title></head>"
        "<body style='font-family: sans-serif; max-width: 50em; margin: 2em auto'>"
        "<h1>workbench demo</h1><ul>\n" + rows + f"\n</ul><p>Built in {took_s:.0f} s. Every page works offline.</p>"
        "</body></html>\n"
    )


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    family_dir: str | os.PathLike = "data/families/demo",
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    subsample: int | None = DEMO_SUBSAMPLE,
    progress: bool = True,
    preset: str = "demo",
) -> Path:
    """Build or reuse the demo family, run the two report notebooks, write ``out``; return the report path."""
    from workbench.devices import resolve_device
    from workbench.factory import train_family
    from workbench.io.atomic import atomic_output_dir
    from workbench.runner import run_notebook

    device = resolve_device(device)  # the family and both notebooks run on the same device
    start = time.perf_counter()
    nb_dir = notebooks_dir()
    data = resolve_data_dir(data_dir)
    family = reuse_family(family_dir, preset)
    if family is None:
        family = train_family(preset, family_dir, data_dir=data, device=device, progress=progress)
    out_path = Path(out)
    with atomic_output_dir(out_path, overwrite=True) as tmp:
        tmp = Path(tmp).absolute()
        params = demo_parameters(family, data, device, subsample, report_dir=tmp / CLAIM_DIR)
        for name, p in params.items():
            res = run_notebook(nb_dir / f"{name}.ipynb", tmp / f".{name}", parameters=p, progress=progress)
            for f in (res.html, res.notebook):
                shutil.move(str(tmp / f".{name}" / f.name), str(tmp / f.name))
            shutil.rmtree(tmp / f".{name}")
        entries = [
            (
                "soup_report.html",
                "Soup report",
                "is the uniform soup of the trajectory checkpoints better? the answer first, then baselines, "
                "paired statistics, power, seed spread, interpolation curve",
            ),
            (
                f"{CLAIM_DIR}/report.html",
                "Claim check report",
                "the same verdict as a report page, with its tables as parquet and CSV files",
            ),
            (
                f"{CLAIM_DIR}/explorer.html",
                "Interpolation explorer",
                "move t along the precomputed LERP/SLERP grid with a slider (no kernel needed)",
            ),
            ("layer_angles.html", "Layer angles", "angles, norms, SLERP norm factor and fallback share, per layer"),
        ]
        (tmp / "index.html").write_text(_index_html(entries, time.perf_counter() - start), encoding="utf-8")
    return (out_path / "soup_report.html").absolute()
