"""The merge-method registry: its declarations against mergekit 0.1.5's own, and the modules that
read it (CLI help, sweep axes, explorer dropdown, claim baselines, README)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.merge import load_recipe, simple_recipe
from workbench.merge.execute import GRAM_METHODS
from workbench.merge.registry import (
    CURVE,
    DEFAULT,
    INTERPOLATION,
    METHODS,
    NORM_RESTORE,
    REQUIRED,
    SOUP,
    method_help,
    method_spec,
    method_with,
    methods_with,
    parameter_names,
)

ROOT = Path(__file__).resolve().parents[1]


def _mergekit_specs() -> dict:
    import mergekit.merge_methods as mm

    return {m.spec.name: m.spec for m in mm.registered_methods()}


@pytest.mark.oracle
def test_the_twenty_mergekit_methods_are_declared_as_mergekit_declares_them():
    from mergekit.merge_methods.base import MISSING

    theirs = _mergekit_specs()
    ours = {name: spec for name, spec in METHODS.items() if spec.mergekit}
    assert sorted(ours) == sorted(theirs)
    for name, spec in ours.items():
        ref = theirs[name]
        c = ref.contract
        assert spec.base == c.base.value, name
        assert (spec.min_inputs, spec.max_inputs) == (c.min_inputs, c.max_inputs), name
        assert (spec.min_non_base, spec.max_non_base) == (c.min_non_base, c.max_non_base), name
        want = {p.name: (p.scope.value, None if p.default is MISSING else p.default) for p in ref.parameters}
        have = {p.name: (p.scope, None if p.default is REQUIRED else p.default) for p in spec.parameters if p.mergekit}
        assert have == want, name
        assert [p.name for p in spec.parameters if p.required] == [p.name for p in ref.parameters if p.required]
        types = {p.name: p.value_type for p in ref.parameters}
        for p in spec.parameters:
            if p.mergekit and types[p.name] in (bool, int, float):
                assert p.type is types[p.name], (name, p.name)


def test_workbench_only_methods_are_marked_and_every_declaration_resolves():
    assert sorted(n for n, s in METHODS.items() if not s.mergekit) == ["chained_slerp", "lerp", "lerp_norm_restore"]
    for spec in METHODS.values():
        assert callable(spec.kernel_fn), spec.name
        assert spec.gram is None or callable(spec.gram_fn)
        assert spec.validate is None or callable(spec.validate_fn)
        assert spec.summary and "\n" not in spec.summary
        for p in spec.parameters:
            assert p.type in (bool, int, float) and p.scope in ("shared", "input", "non_base")
            assert p.required or p.nullable or p.in_bounds(p.default), (spec.name, p.name)
    assert GRAM_METHODS == tuple(n for n, s in METHODS.items() if s.gram)
    assert sorted(GRAM_METHODS) == ["lerp", "lerp_norm_restore", "linear", "slerp"]
    assert {n for n, s in METHODS.items() if s.random} == {
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
        "arcee_fusion",
    }


def test_roles():
    assert method_with(SOUP).name == "linear"
    assert method_with(NORM_RESTORE).name == "lerp_norm_restore"
    assert method_with(DEFAULT).name == "slerp"
    assert [m.name for m in methods_with(CURVE)] == ["lerp", "slerp"]
    for spec in methods_with(INTERPOLATION):  # what the role promises its readers
        assert spec.base == "required" and spec.min_inputs == spec.max_inputs == 2
        assert spec.parameter("t").scope == "shared" and spec.parameter("t").required
    with pytest.raises(ValueError):
        method_with(INTERPOLATION)  # three methods have it


def test_recipe_validation_and_errors_read_the_registry(tmp_path):
    with pytest.raises(WorkbenchError, match="unknown merge method 'slurp'; known: linear, lerp, slerp"):
        load_recipe({"merge_method": "slurp", "models": ["a"]})
    with pytest.raises(WorkbenchError, match="has no parameter 'gamma'"):
        method_spec("ties").parameter("gamma")
    spec = method_spec("nuslerp")
    with pytest.raises(WorkbenchError, match="takes an optional base_model and exactly 2 other models, got 3"):
        spec.check_inputs(["a", "b", "c"], None)
    assert spec.check_inputs(["a", "b", "c"], "b") == 1
    with pytest.raises(WorkbenchError, match="needs a base_model"):
        method_spec("ram").check_inputs(["a", "b"], None)
    with pytest.raises(WorkbenchError, match="takes exactly 1 model"):
        method_spec("passthrough").check_inputs(["a", "b"], None)
    with pytest.raises(WorkbenchError, match=r"t=1.5 for tensor 'w' is outside \[0, 1\].*--allow-extrapolation"):
        method_spec("slerp").parameter("t").check(1.5, "tensor 'w'")
    with pytest.raises(WorkbenchError, match="takes no weights"):
        simple_recipe("karcher", ["a", "b"], weights=[1, 2])
    assert simple_recipe("ties", ["a", "b"]).base_model == "a"  # methods that need a base default to the first


def test_cli_help_lists_every_method_with_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "merge", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    flat = " ".join(out.split())
    for spec in METHODS.values():
        assert f"- {spec.name}: {' '.join(spec.summary.split())}" in flat


def test_sweep_axes_and_explorer_dropdown_read_the_registry():
    from workbench.sweep.spec import MERGE_PARAMETERS, axis_kind
    from workbench.widgets import METHODS as EXPLORER

    assert MERGE_PARAMETERS == parameter_names()
    assert {"gamma", "epsilon", "select_topk", "r", "alpha", "scale"} <= set(MERGE_PARAMETERS)
    assert axis_kind("gamma.mlp") == ("gamma", "mlp")
    assert EXPLORER == tuple(m.name for m in methods_with(INTERPOLATION))


def test_reading_the_registry_needs_no_torch():
    code = "import sys, workbench.merge.registry, workbench.merge.recipe; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def _readme_methods() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Merging", 1)[1].split("\n## ", 1)[0]
    block = section.split("<!-- methods: start -->", 1)[1].split("<!-- methods: end -->", 1)[0]
    return [ln.strip() for ln in block.strip().splitlines()]


def test_readme_method_list_is_the_registry():
    want = [f"- `{ln.split(':', 1)[0]}`:{ln.split(':', 1)[1]}" for ln in method_help().splitlines()]
    assert _readme_methods() == want, "regenerate README's method list from workbench.merge.registry.method_help()"
    assert all(re.match(r"- `\w+`: ", ln) for ln in want)
