"""The house rules that keep the package readable, checked on the tree itself.

- no module in ``workbench/`` over 600 lines;
- no function over 80 lines unless a ``# long: <why>`` comment sits on the line above its
  ``def`` (or decorators) or first in its body;
- the statistics and figure modules import without torch;
- the README's "What is where" table names every module and package of ``workbench/``, and
  every path it names exists.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _long_functions(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        n = node.end_lineno - node.lineno + 1
        if n <= MAX_FUNCTION_LINES:
            continue
        first = min([d.lineno for d in node.decorator_list] + [node.lineno])
        above = lines[first - 2].strip() if first >= 2 else ""
        body_start = node.body[0].lineno
        # a docstring comes first in the body; look just after it too
        if isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
            body_start = node.body[0].end_lineno + 1
        inside = [lines[i].strip() for i in range(node.lineno, min(body_start + 1, len(lines)))]
        if not any(s.startswith("# long:") for s in [above, *inside]):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_long_functions_say_why():
    assert [f for p in _modules() for f in _long_functions(p)] == []


@pytest.mark.parametrize("module", ["workbench.stats", "workbench.claim", "workbench.plots", "workbench.labels"])
def test_statistics_and_figures_import_without_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, f"{module} imports torch"


def _readme_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## What is where", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`(workbench/[^`]+|notebooks/|benchmarks/)`", section)


def test_readme_table_matches_the_tree():
    named = _readme_table()
    assert named, "README has no 'What is where' table"
    missing = [p for p in named if not (ROOT / p).exists()]
    assert missing == []
    covered = {p.rstrip("/") for p in named}
    top = sorted(
        f"workbench/{p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())
    )
    unlisted = [t for t in top if not any(c == t or c.startswith(t + "/") for c in covered)]
    assert unlisted == []
