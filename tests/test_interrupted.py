"""Interrupted runs: partial outputs of killed writers are removed by the next write of the same
output, and said so; partials of live (or unknown, or other hosts') writers are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.checkpoints import open_checkpoint
from workbench.io import atomic
from workbench.io.atomic import atomic_output_dir, remove_stale_partials, write_text_atomic, writer_tag
from workbench.testing import write_random_llama

HOST, BOOT = atomic._HOST, atomic._BOOT


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(root: Path, name: str, tag: str, kind: str = "partial") -> Path:
    p = root / f".{name}.{tag}.r4nd0m_x.{kind}"
    if kind == "tmp":
        p.write_text("half a file")
    else:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"\0" * 64)
    return p


def test_only_partials_of_gone_writers_are_removed(tmp_path):
    dead = _dead_pid()
    me, my_start = os.getpid(), int(writer_tag().split("-")[1])
    stale = {
        "dead pid": _partial(tmp_path, "out", f"w{dead}-0-{HOST}-{BOOT}"),
        "pid reused": _partial(tmp_path, "out", f"w{me}-{my_start + 1}-{HOST}-{BOOT}"),
        "previous boot": _partial(
            tmp_path, "out", f"w{me}-{my_start}-{HOST}-{'f' * 8 if BOOT != 'f' * 8 else 'e' * 8}"
        ),
        "replaced output": _partial(tmp_path, "out", f"w{dead}-0-{HOST}-{BOOT}", kind="old"),
    }
    kept = {
        "live (this process)": _partial(tmp_path, "out", writer_tag()),
        "other host": _partial(tmp_path, "out", f"w{dead}-0-{'0' * 7}1-{BOOT}"),
        "unknown writer": tmp_path / ".out.k2j3h4g5.partial",
        "other output": _partial(tmp_path, "out2", f"w{dead}-0-{HOST}-{BOOT}"),
        "an output named like a tag": _partial(tmp_path, "out.v2", f"w{dead}-0-{HOST}-{BOOT}"),
    }
    kept["unknown writer"].mkdir()
    lines: list[str] = []
    removed = remove_stale_partials(tmp_path / "out", report=lines.append)
    assert sorted(removed) == sorted(stale.values())
    assert all(not p.exists() for p in stale.values())
    assert all(p.exists() for p in kept.values()), [k for k, p in kept.items() if not p.exists()]
    assert len(lines) == len(stale)
    assert all(str(p) in " ".join(lines) for p in stale.values())
    assert all(line.count("\n") == 0 and "stale partial" in line for line in lines)


def test_a_killed_unreaped_writer_counts_as_gone(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        p = _partial(tmp_path, "out", writer_tag(proc.pid))
        assert remove_stale_partials(tmp_path / "out", report=lambda _m: None) == []  # alive: kept
        proc.send_signal(signal.SIGKILL)
        time.sleep(0.2)  # a zombie until reaped: the pid still answers kill(pid, 0)
        assert remove_stale_partials(tmp_path / "out", report=lambda _m: None) == [p]
    finally:
        proc.kill()
        proc.wait()


def test_atomic_writes_clean_up_before_writing(tmp_path, capsys):
    dead = _dead_pid()
    d = _partial(tmp_path, "model", f"w{dead}-0-{HOST}-{BOOT}")
    with atomic_output_dir(tmp_path / "model") as tmp:
        assert writer_tag() in tmp.name and tmp.name.endswith(".partial")
        (tmp / "a.txt").write_text("1")
    assert not d.exists()
    assert f"removed stale partial output {d}" in capsys.readouterr().err
    f = _partial(tmp_path, "x.json", f"w{dead}-0-{HOST}-{BOOT}", kind="tmp")
    lines: list[str] = []
    write_text_atomic(tmp_path / "x.json", "{}", report=lines.append)
    assert not f.exists() and len(lines) == 1 and str(f) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.json"]


@pytest.mark.slow
def test_merge_killed_with_sigkill_is_cleaned_up_by_the_next_run(tmp_path):
    """A real `workbench merge`, killed with SIGKILL once its partial output exists; the second
    run removes the partial, names it on stderr, and writes the complete output."""
    dims = dict(hidden_size=512, num_layers=8, vocab_size=8192, num_heads=8, intermediate_size=1536)
    a = write_random_llama(tmp_path / "a", seed=0, tokenizer=False, **dims)  # ~36M parameters, 145 MB
    b = write_random_llama(tmp_path / "b", seed=1, tokenizer=False, **dims)
    recipe = tmp_path / "slerp.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\nparameters:\n  t: 0.5\n"
    )
    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "workbench.cli", "merge", str(recipe), str(out)]
    env = dict(os.environ, WORKBENCH_MERGE_CACHE_MB="0")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    partials: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partials = [p for p in tmp_path.glob(".merged.*.partial") if any(p.glob("*.safetensors"))]
        if partials:
            break
        time.sleep(0.005)
    assert partials, "the merge finished (or failed) before its partial output could be seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    (left,) = list(tmp_path.glob(".merged.*.partial"))
    assert f"w{proc.pid}-" in left.name

    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"removed stale partial output {left}" in again.stderr
    assert not left.exists() and list(tmp_path.glob(".merged.*")) == []
    merged, ca, cb = open_checkpoint(out), open_checkpoint(a), open_checkpoint(b)
    assert sorted(merged.names()) == sorted(ca.names())
    for n in ("model.embed_tokens.weight", "model.layers.7.mlp.down_proj.weight", "lm_head.weight"):
        x, y = ca.get(n).double().flatten(), cb.get(n).double().flatten()
        cos = float(x @ y / (x.norm() * y.norm()))
        theta = torch.tensor(cos).acos()
        want = (torch.sin(0.5 * theta) / torch.sin(theta)) * (x + y)
        got = merged.get(n).double().flatten()
        assert float((got - want).abs().max()) <= 2e-6 * float(want.abs().max()), n
