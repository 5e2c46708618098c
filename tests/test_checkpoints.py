"""Checkpoint I/O and the merge engine's handling of bad input.

Every bad input must give one WorkbenchError naming the file or tensor, write nothing,
and leave the inputs byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.checkpoints import load_model, load_tokenizer, model_from_state_dict, open_checkpoint
from workbench.cli import app
from workbench.errors import WorkbenchError
from workbench.io.atomic import atomic_output_dir, write_text_atomic
from workbench.io.safetensors import SafetensorsWriter, write_safetensors
from workbench.merge import merge_in_memory, merge_to_disk, simple_recipe
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=16, num_layers=2, vocab_size=40, num_heads=2)
Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    write_random_llama(root / "a", seed=0, **DIMS)
    write_random_llama(root / "b", seed=1, **DIMS)
    write_random_llama(root / "tied", seed=2, tie=True, **DIMS)
    return root


@pytest.fixture
def models(pristine, tmp_path) -> dict[str, Path]:
    """Fresh copies of the models for one test (which may damage them)."""
    out = {}
    for name in ("a", "b", "tied"):
        shutil.copytree(pristine / name, tmp_path / "in" / name)
        out[name] = tmp_path / "in" / name
    return out


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rewrite(model_dir: Path, change) -> None:
    """Rewrite a model's safetensors with ``change(dict_of_tensors)`` applied."""
    ck = open_checkpoint(model_dir)
    state = {n: ck.get(n).clone() for n in ck.names() if not (ck.tied and n == "lm_head.weight")}
    change(state)
    tmp = model_dir / "model.safetensors.new"
    write_safetensors(tmp, state)
    tmp.replace(model_dir / "model.safetensors")


def _expect_refusal(models, recipe, out: Path, *fragments: str, **kwargs) -> str:
    before = _snapshot(out.parent.parent / "in")
    with pytest.raises(WorkbenchError) as info:
        merge_to_disk(recipe, out, progress=False, **kwargs)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp leftovers
    assert _snapshot(out.parent.parent / "in") == before  # inputs unchanged
    return msg


# ------------------------------------------------------------------------- reading


def test_open_checkpoint_is_lazy_and_aliases_tied_lm_head(models):
    ck = open_checkpoint(models["tied"])
    assert ck.tied and "lm_head.weight" in ck.names()
    assert torch.equal(ck.get("lm_head.weight"), ck.get("model.embed_tokens.weight"))
    assert ck.shape(Q0) == (16, 16) and ck.dtype(Q0) == torch.float32
    assert not open_checkpoint(models["a"]).tied
    model = load_model(models["tied"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_sharded_checkpoint_roundtrip(tmp_path):
    tensors = {f"w{i}": torch.full((10, 10), float(i)) for i in range(5)}
    with atomic_output_dir(tmp_path / "m") as tmp:
        w = SafetensorsWriter(tmp, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], max_shard_bytes=900)
        for n, t in tensors.items():
            w.add(n, t)
        files = w.close()
        write_text_atomic(tmp / "config.json", json.dumps({"model_type": "llama"}))
    assert "model.safetensors.index.json" in files and len(files) == 4
    ck = open_checkpoint(tmp_path / "m")
    assert ck.names() == list(tensors) and all(torch.equal(ck.get(n), t) for n, t in tensors.items())


def test_fingerprint_is_stable_and_content_sensitive(models):
    fa = open_checkpoint(models["a"]).fingerprint()
    assert fa == open_checkpoint(models["a"]).fingerprint()
    _rewrite(models["a"], lambda s: s[Q0].add_(1e-3))
    assert open_checkpoint(models["a"]).fingerprint() != fa


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "v1.txt").write_text("1")
    with pytest.raises(WorkbenchError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "v2.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["v2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_tokenizer_and_state_dict_bridges(models, tmp_path):
    tok = load_tokenizer(models["a"])
    assert tok("ab").input_ids[0] == tok.bos_token_id
    (tmp_path / "notok").mkdir()
    shutil.copy(models["a"] / "config.json", tmp_path / "notok")
    with pytest.raises(WorkbenchError, match="no tokenizer"):
        load_tokenizer(tmp_path / "notok")
    ck = open_checkpoint(models["tied"])
    model = model_from_state_dict(ck, {n: ck.get(n) for n in ck.names() if n != "lm_head.weight"})
    assert torch.equal(model.lm_head.weight, ck.get("model.embed_tokens.weight"))


def test_merged_output_has_config_tokenizer_and_recipe(models, tmp_path):
    out = merge_to_disk(simple_recipe("slerp", [models["a"], models["b"]], t=0.5), tmp_path / "m", progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "workbench_merge.yaml",
    ]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


# ------------------------------------------------------------------------- bad input


def test_shape_mismatch(models, tmp_path):
    _rewrite(models["b"], lambda s: s.__setitem__(Q0, torch.zeros(16, 15)))
    _expect_refusal(
        models,
        simple_recipe("slerp", [models["a"], models["b"]], t=0.5),
        tmp_path / "out",
        Q0,
        "model.safetensors",
        "(16, 15)",
    )


def test_different_architectures(models, tmp_path):
    write_random_llama(tmp_path / "in" / "wide", seed=3, **{**DIMS, "hidden_size": 32})
    _expect_refusal(
        models,
        simple_recipe("linear", [models["a"], tmp_path / "in" / "wide"]),
        tmp_path / "out",
        "different architectures",
        "hidden_size",
        "config.json",
    )
    write_random_llama(tmp_path / "in" / "deep", seed=3, **{**DIMS, "num_layers": 3})
    _expect_refusal(
        models, simple_recipe("linear", [models["a"], tmp_path / "in" / "deep"]), tmp_path / "out", "num_hidden_layers"
    )


def test_missing_tensor(models, tmp_path):
    _rewrite(models["b"], lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    _expect_refusal(
        models,
        simple_recipe("slerp", [models["a"], models["b"]], t=0.5),
        tmp_path / "out",
        "model.layers.1.mlp.up_proj.weight",
        str(models["b"]),
    )


def test_nonfinite_input_refused_unless_allowed(models, tmp_path):
    def poison(s):
        s[Q0][3, 4] = float("nan")

    _rewrite(models["b"], poison)
    recipe = simple_recipe("slerp", [models["a"], models["b"]], t=0.5)
    msg = _expect_refusal(models, recipe, tmp_path / "out", Q0, "NaN", "model.safetensors")
    assert "--allow-nonfinite" in msg
    with pytest.raises(WorkbenchError, match="NaN"):
        merge_in_memory(recipe)
    out = merge_to_disk(recipe, tmp_path / "out", progress=False, allow_nonfinite=True)
    assert torch.isnan(open_checkpoint(out).get(Q0)).any()


def test_t_outside_unit_interval_refused_unless_allowed(models, tmp_path):
    recipe = simple_recipe("slerp", [models["a"], models["b"]], t=[{"filter": "mlp", "value": 1.5}, {"value": 0.5}])
    _expect_refusal(models, recipe, tmp_path / "out", "t=1.5", "mlp", "--allow-extrapolation")
    out = merge_to_disk(recipe, tmp_path / "out", progress=False, allow_extrapolation=True)
    assert open_checkpoint(out).get("model.layers.0.mlp.up_proj.weight").isfinite().all()


def test_non_float_tensors_copied_from_base_and_reported(models, tmp_path):
    name = "model.layers.0.self_attn.step_count"
    _rewrite(models["a"], lambda s: s.__setitem__(name, torch.tensor([7, 8], dtype=torch.int64)))
    _rewrite(models["b"], lambda s: s.__setitem__(name, torch.tensor([9, 9], dtype=torch.int64)))
    out = merge_to_disk(simple_recipe("slerp", [models["a"], models["b"]], t=0.5), tmp_path / "out", progress=False)
    assert torch.equal(open_checkpoint(out).get(name), torch.tensor([7, 8]))
    note = (out / "workbench_merge.yaml").read_text()
    assert name in note and "not floating point" in note and "copied from" in note


def test_existing_output_directory(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = simple_recipe("slerp", [models["a"], models["b"]], t=0.5)
    with pytest.raises(WorkbenchError, match="already exists"):
        merge_to_disk(recipe, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    merge_to_disk(recipe, out, progress=False, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_output_directory_may_not_be_an_input(models):
    recipe = simple_recipe("slerp", [models["a"], models["b"]], t=0.5)
    before = _snapshot(models["b"])
    with pytest.raises(WorkbenchError, match="would overwrite input"):
        merge_to_disk(recipe, models["b"], progress=False, overwrite=True)
    assert _snapshot(models["b"]) == before


def test_truncated_safetensors(models, tmp_path):
    f = models["b"] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _expect_refusal(
        models, simple_recipe("slerp", [models["a"], models["b"]], t=0.5), tmp_path / "out", str(f), "truncated"
    )


def test_corrupt_safetensors_header(models, tmp_path):
    f = models["b"] / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"#not json!!#"
    f.write_bytes(bytes(data))
    _expect_refusal(
        models, simple_recipe("slerp", [models["a"], models["b"]], t=0.5), tmp_path / "out", str(f), "corrupt"
    )


def test_bin_checkpoint_needs_opt_in(models, tmp_path):
    ck = open_checkpoint(models["b"])
    state = {n: ck.get(n).clone() for n in ck.names()}
    (models["b"] / "model.safetensors").unlink()
    torch.save(state, models["b"] / "pytorch_model.bin")
    _expect_refusal(
        models,
        simple_recipe("slerp", [models["a"], models["b"]], t=0.5),
        tmp_path / "out",
        "pytorch_model.bin",
        "allow_bin",
    )
    opened = open_checkpoint(models["b"], allow_bin=True)
    assert torch.equal(opened.get(Q0), state[Q0])


def test_cli_reports_one_clear_error(models, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(simple_recipe("slerp", [models["a"], models["b"]], t=1.2).to_yaml())
    runner = CliRunner()
    res = runner.invoke(app, ["merge", str(recipe), str(tmp_path / "out")])
    text = res.output + (res.stderr if hasattr(res, "stderr") and res.stderr_bytes is not None else "")
    assert res.exit_code == 2 and "error: recipe: t=1.2" in text
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["merge", str(recipe), str(tmp_path / "out"), "--allow-extrapolation"])
    assert res.exit_code == 0, res.output
    assert open_checkpoint(tmp_path / "out").get(Q0).shape == (16, 16)
    res = runner.invoke(app, ["angles", str(models["a"]), str(models["b"]), "--out", str(tmp_path / "ang.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ang.csv").read_text().startswith("name,layer,group,numel")


def test_large_tensors_stream_in_chunks(models, tmp_path, monkeypatch):
    import workbench.merge.disk as disk

    recipe = simple_recipe("slerp", [models["a"], models["b"]], t=[0.2, 0.9])
    whole = merge_in_memory(recipe)
    monkeypatch.setattr(disk, "CHUNK_ELEMENTS", 100)  # most tensors now take two passes over chunks
    out = open_checkpoint(merge_to_disk(recipe, tmp_path / "chunked", progress=False))
    for name, want in whole.items():
        assert torch.allclose(out.get(name), want, atol=1e-6, rtol=0), name
    _rewrite(models["b"], lambda s: s["model.embed_tokens.weight"].__setitem__((5, 3), float("inf")))
    with pytest.raises(WorkbenchError, match="model.embed_tokens.weight.*Inf"):
        merge_to_disk(recipe, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    """Outputs are readable like any file the user writes, not private temp-file modes."""
    import os
    import stat

    from workbench.io.atomic import atomic_output_dir, write_bytes_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    with atomic_output_dir(tmp_path / "out") as tmp:
        write_bytes_atomic(tmp / "f.bin", b"x")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "out" / "f.bin").stat().st_mode) == 0o666 & ~mask
