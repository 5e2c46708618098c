"""Sweeps: expansion and bad input, local vs Ray on a real local cluster, kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from workbench.errors import WorkbenchError
from workbench.sweep import SweepSpec, axis_values, expand, load_sweep

PY = sys.executable


# ----------------------------------------------------------------------------------------------
# expansion and bad input (no models needed)


def _spec(**over):
    base = dict(ingredients={"a": "/m/a", "b": "/m/b", "c": "/m/c"}, method="slerp", models=["a", "b"],
                parameters={"t": 0.5}, axes={"t": [0.0, 0.5, 1.0]}, tasks=["blimp"])
    base.update(over)
    return SweepSpec(**base)


def test_t_grid_expands_in_order_with_paths_resolved():
    points = expand(_spec(axes={"t": {"start": 0, "stop": 1, "num": 11}}))
    assert [p.params["t"] for p in points] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    r = points[3].recipe
    assert r["merge_method"] == "slerp" and r["base_model"] == "/m/a"
    assert [m["model"] for m in r["models"]] == ["/m/a", "/m/b"]
    assert r["parameters"]["t"] == 0.3


def test_per_group_method_and_subset_axes():
    spec = _spec(axes={"method": ["slerp", "lerp"], "models": [["a", "b"], ["c", "b"]], "t.mlp": [0.2]})
    points = expand(spec)
    assert len(points) == 4
    last = points[-1]
    assert last.params == {"method": "lerp", "models": ["c", "b"], "t.mlp": 0.2}
    assert last.recipe["merge_method"] == "lerp"
    # the base of a two-model method follows the subset
    assert last.recipe["base_model"] == "/m/c"
    assert last.recipe["parameters"]["t"] == [{"filter": "mlp", "value": 0.2}, {"value": 0.5}]


def test_zip_mode_pairs_axes():
    points = expand(_spec(mode="zip", axes={"t.self_attn": [0.1, 0.9], "t.mlp": [0.9, 0.1]}))
    assert [p.label for p in points] == ["t.self_attn=0.1 t.mlp=0.9", "t.self_attn=0.9 t.mlp=0.1"]


def test_recipe_file_relative_to_sweep_file(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(
        {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}}, {"model": "b", "parameters": {"weight": 1.0}}]}))
    (tmp_path / "a").mkdir()
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {"ingredients": {"a": "a", "b": "b"}, "recipe": "recipe.yaml", "axes": {"models": ["a+b", ["b"]]}, "tasks": "blimp,arc_easy"}))
    spec = load_sweep(tmp_path / "sweep.yaml")
    assert spec.tasks == ["blimp", "arc_easy"]
    points = expand(spec)
    assert points[0].recipe["models"][0] == {"model": str(tmp_path / "a"), "parameters": {"weight": 1.0}}
    assert points[1].recipe["models"] == [{"model": "b", "parameters": {"weight": 1.0}}]
    assert points[0].label == "models=a+b"


@pytest.mark.parametrize(
    "over, message",
    [
        ({"axes": {"tt": [0.1]}}, "unknown axis 'tt'"),
        ({"axes": {"t.": [0.1]}}, "unknown axis 't.'"),
        ({"axes": {}}, "empty grid"),
        ({"axes": {"t": []}}, "empty grid"),
        ({"axes": {"t": {"start": 0, "stop": 1, "num": 0}}}, "empty grid"),
        ({"axes": {"t": [0.1, 0.1]}}, "appears twice"),
        ({"axes": {"models": [["a", "zz"]]}}, "'zz' is not an ingredient"),
        ({"axes": {"t.mlp": [0.1]}, "parameters": {}}, "need a default t"),
        ({"mode": "zip", "axes": {"t": [0.1, 0.2], "method": ["slerp"]}}, "equal length"),
    ],
)
def test_bad_axes_raise_one_clear_error(over, message):
    with pytest.raises(WorkbenchError, match=message):
        expand(_spec(**over))


def test_bad_sweep_files(tmp_path):
    with pytest.raises(WorkbenchError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "s.yaml").write_text("ingredients: {a: x}\naxes: {t: [1]}\ntasks: [blimp]\ncolour: red\n")
    with pytest.raises(WorkbenchError, match="colour"):
        load_sweep(tmp_path / "s.yaml")
    with pytest.raises(WorkbenchError, match="axis 't'"):
        axis_values("t", "0.5")
