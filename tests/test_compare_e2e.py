"""Claim check end to end: `workbench compare` on real (tiny) checkpoints and the reference data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from workbench.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family(request, shared_data, tmp_path_factory):
    """The factory's tiny family (session fixture ``tiny_family``), trained once per session;
    trained here with the factory's ``tiny`` preset when that fixture is not available."""
    try:
        return request.getfixturevalue("tiny_family")
    except pytest.FixtureLookupError:
        from workbench.factory import train_family

        return train_family("tiny", tmp_path_factory.mktemp("tiny_family"), progress=False, data_dir=shared_data)


def _write_recipe(path: Path, method: str, a: Path, b: Path, t: float = 0.5) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": method,
                "base_model": str(a),
                "dtype": "float32",
                "models": [{"model": str(a)}, {"model": str(b)}],
                "parameters": {"t": t},
            }
        )
    )
    return path


def _write_slices_recipe(path: Path, a: Path, b: Path) -> Path:
    """mergekit's usual SLERP layout: slices over the whole layer stack, per-group t."""
    n_layers = json.loads((a / "config.json").read_text())["num_hidden_layers"]
    path.write_text(
        yaml.safe_dump(
            {
                "slices": [
                    {
                        "sources": [
                            {"model": str(a), "layer_range": [0, n_layers]},
                            {"model": str(b), "layer_range": [0, n_layers]},
                        ]
                    }
                ],
                "merge_method": "slerp",
                "base_model": str(a),
                "dtype": "float32",
                "parameters": {
                    "t": [{"filter": "self_attn", "value": [0.2, 0.6]}, {"filter": "mlp", "value": 0.7}, {"value": 0.4}]
                },
            }
        )
    )
    return path


def _compare(args: list[str]):
    result = CliRunner().invoke(app, ["compare", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_planted_null_model_against_its_copy(family, shared_data, tmp_path):
    """A checkpoint and a byte-identical copy: every difference must be 'no evidence'."""
    a = family.trajectory[-1]
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    recipe = _write_recipe(tmp_path / "slerp.yaml", "slerp", a, copy)
    out = tmp_path / "null"
    _compare(
        [
            "--ingredients",
            str(a),
            str(copy),
            "--recipe",
            str(recipe),
            "--tasks",
            "blimp_anaphor_number_agreement,blimp_regular_plural_subject_verb_agreement_1",
            "--data-dir",
            str(shared_data),
            "--limit",
            "100",
            "--curve-ts",
            "none",
            "--resamples",
            "2000",
            "--out",
            str(out),
        ]
    )
    cmp = pl.read_parquet(out / "tables" / "comparisons.parquet")
    assert cmp.height > 0
    assert ((cmp["low"] <= 0) & (cmp["high"] >= 0)).all(), cmp.filter(
        ~((cmp["low"] <= 0) & (cmp["high"] >= 0))
    ).to_dicts()
    assert (cmp["call"] == "no evidence").all()
    text = (out / "verdict.md").read_text()
    assert "no evidence of a difference" in text
    assert "significant gain" not in text and "significant loss" not in text


def test_compare_end_to_end_on_tiny_family(family, shared_data, tmp_path):
    ingredients = family.trajectory[-3:]
    recipe = _write_slices_recipe(tmp_path / "slerp.yaml", ingredients[0], ingredients[1])
    out = tmp_path / "claim"
    res = _compare(
        [
            "--ingredients",
            *map(str, ingredients),
            "--recipe",
            str(recipe),
            "--tasks",
            "blimp,arc_easy,wikitext",
            "--data-dir",
            str(shared_data),
            "--limit",
            "4",
            "--curve-ts",
            "0,0.5,1",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert "merge vs best-on-dev ingredient" in res.output
    systems = pl.read_parquet(out / "tables" / "systems.parquet")
    kinds = set(systems["kind"].to_list())
    assert {"ingredient", "soup", "lerp_norm_restore", "merge", "ensemble"} <= kinds
    assert systems.filter(pl.col("kind") == "ensemble")["inference_cost"][0] == 3
    cmp = pl.read_parquet(out / "tables" / "comparisons.parquet")
    assert set(cmp["task"].to_list()) == {"blimp", "arc_easy", "wikitext"}
    assert {"acc", "margin", "bits_per_byte"} <= set(cmp["metric"].to_list())
    refs = set(cmp.filter(pl.col("subject") == "merge")["reference"].to_list())
    assert {"best_dev", "median", "soup", "lerp_norm_restore", "ensemble"} <= refs
    for r in cmp.iter_rows(named=True):  # never a gain when the CI covers 0
        if r["low"] <= 0 <= r["high"]:
            assert r["call"] == "no evidence"
    items = pl.read_parquet(out / "tables" / "items.parquet")
    # all systems on the same items
    per = items.group_by("system").agg(pl.col("item_id").sort().alias("ids"))
    assert len({tuple(x) for x in per["ids"].to_list()}) == 1
    barriers = pl.read_parquet(out / "tables" / "barriers.parquet")
    assert set(barriers["method"].to_list()) == {"lerp", "slerp"}
    curve = pl.read_parquet(out / "tables" / "curve.parquet")
    assert sorted(set(curve["t"].to_list())) == [0.0, 0.5, 1.0]
    for name in ("deltas", "forest", "curve"):
        assert json.loads((out / "figures" / f"{name}.json").read_text())["data"]
    assert (out / "report.html").stat().st_size > 1_000_000
    text = (out / "verdict.md").read_text()
    assert "test half" in text and "best-on-dev ingredient" in text
    sel = pl.read_parquet(out / "tables" / "selections.parquet")
    assert sel.filter(pl.col("task") == "blimp")["reported_on"][0] == "test"
    settings = json.loads((out / "panel.json").read_text())
    assert settings["reported_on"] == "test" and settings["curve"]["ts"] == [0.0, 0.5, 1.0]


def test_compare_bad_input_is_one_clear_error(family, tmp_path):
    a = family.trajectory[-1]
    recipe = _write_recipe(tmp_path / "r.yaml", "slerp", a, a)
    res = CliRunner().invoke(
        app,
        ["compare", "--ingredients", str(a), "--recipe", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2 and "missing.yaml" in res.output
    res = CliRunner().invoke(
        app, ["compare", "--ingredients", str(a), "--recipe", str(recipe), "--out", str(tmp_path / "o2")]
    )
    assert res.exit_code == 2 and "at least two ingredients" in res.output
    assert not (tmp_path / "o2").exists()


def test_compare_with_seeds_and_a_text_task_names_tasks_by_label(family, shared_data, tmp_path):
    """--seeds A B C (the last trajectory checkpoint and the siblings): the seed spread is in the
    tables and the verdict; the text: task is shown by its file name, its path only in Sources."""
    ingredients = family.trajectory[-3:]
    recipe = _write_recipe(tmp_path / "soup.yaml", "slerp", ingredients[0], ingredients[1])
    out = tmp_path / "seeds"
    seeds = [family.trajectory[-1], *family.siblings]
    res = _compare(
        [
            "--ingredients",
            *map(str, ingredients),
            "--recipe",
            str(recipe),
            "--tasks",
            f"blimp_anaphor_number_agreement,text:{family.heldout}",
            "--data-dir",
            str(shared_data),
            "--limit",
            "40",
            "--curve-ts",
            "none",
            "--resamples",
            "300",
            "--seeds",
            *map(str, seeds),
            "--claim",
            "the merge beats the best checkpoint",
            "--out",
            str(out),
        ]
    )
    assert f"{family.heldout.name} (bits_per_byte)" in res.output
    sn = pl.read_parquet(out / "tables" / "seed_noise.parquet")
    assert (sn["n"] == 3).all() and (sn["sd"] >= 0).all()
    systems = pl.read_parquet(out / "tables" / "systems.parquet")
    assert systems.filter(pl.col("kind") == "seed").height == len(family.siblings)  # the ingredient is reused
    cmp = pl.read_parquet(out / "tables" / "comparisons.parquet")
    assert cmp["seed_ratio"].null_count() == 0 and (cmp["mde"] > 0).all()
    text = (out / "verdict.md").read_text()
    head = text.split("## Details")[0]
    assert "the merge beats the best checkpoint" in head and f"**{family.heldout.name}**" in head
    assert str(family.heldout.parent) not in text.split("## Sources")[0]
    page = (out / "report.html").read_text()
    visible = re.sub(r"<details.*?</details>|<script.*?</script>", "", page, flags=re.S)
    assert str(tmp_path) not in visible and str(family.root) not in visible
    res = CliRunner().invoke(
        app,
        [
            "compare",
            "--ingredients",
            *map(str, ingredients),
            "--recipe",
            str(recipe),
            "--seeds",
            str(seeds[0]),
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert res.exit_code == 2 and "two or more" in res.output and not (tmp_path / "bad").exists()
