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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _processes import sigkill_when  # noqa: E402

from workbench.errors import WorkbenchError
from workbench.sweep import SweepSpec, axis_values, expand, load_sweep

PY = sys.executable


# ----------------------------------------------------------------------------------------------
# expansion and bad input (no models needed)


def _spec(**over):
    base = dict(
        ingredients={"a": "/m/a", "b": "/m/b", "c": "/m/c"},
        method="slerp",
        models=["a", "b"],
        parameters={"t": 0.5},
        axes={"t": [0.0, 0.5, 1.0]},
        tasks=["blimp"],
    )
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


def test_slice_base_models_are_ingredients_too():
    spec = load_sweep(
        {
            "ingredients": {"a": "/m/a", "b": "/m/b"},
            "tasks": "blimp",
            "axes": {"t": [0.5]},
            "recipe": {
                "merge_method": "slerp",
                "parameters": {"t": 0.5},
                "slices": [
                    {
                        "base_model": "a",
                        "sources": [{"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 2]}],
                    }
                ],
            },
        }
    )
    assert expand(spec)[0].recipe["slices"][0]["base_model"] == "/m/a"
    spec.recipe["slices"][0]["base_model"] = "zz"
    with pytest.raises(WorkbenchError, match="'zz' is not an ingredient"):
        expand(spec)


def test_recipe_file_relative_to_sweep_file(tmp_path):
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [
                    {"model": "a", "parameters": {"weight": 1.0}},
                    {"model": "b", "parameters": {"weight": 1.0}},
                ],
            }
        )
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "ingredients": {"a": "a", "b": "b"},
                "recipe": "recipe.yaml",
                "axes": {"models": ["a+b", ["b"]]},
                "tasks": "blimp,arc_easy",
            }
        )
    )
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


# ----------------------------------------------------------------------------------------------
# runs on the factory's tiny family


@pytest.fixture(scope="module")
def family(request, tmp_path_factory, shared_data):
    """The factory's tiny family (session fixture ``tiny_family``), trained once per session."""
    try:
        return request.getfixturevalue("tiny_family")
    except pytest.FixtureLookupError:
        from workbench.factory import train_family

        return train_family("tiny", tmp_path_factory.mktemp("tiny_family"), progress=False, data_dir=shared_data)


def _write_sweep(path: Path, family, shared_data: Path, *, ts, **over) -> Path:
    doc = {
        "ingredients": {"early": str(family.trajectory[0]), "late": str(family.trajectory[-1])},
        "method": "slerp",
        "models": ["early", "late"],
        "axes": {"t": list(ts)},
        "tasks": ["blimp"],
        "limit": 2,  # two pairs per BLiMP paradigm: 134 pairs
        "seed": 0,
        "data_dir": str(shared_data),
    }
    doc.update(over)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([PY, "-m", "workbench.cli", *args], capture_output=True, text=True, env=env, **kwargs)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (the cluster this module started)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) == sid:
                os.kill(int(proc.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head node on 127.0.0.1 (2 CPUs), started for this module and stopped after.

    ``ray start --block`` runs in its own session; teardown signals that session only (never
    ``ray stop``, which would stop every Ray process on the machine). No autoscaler monitor:
    one process fewer importing Ray at once. Ray's raylet gives its agents a
    fixed 15 s to come up, which a heavily loaded machine can miss: then it starts again.
    """
    pytest.importorskip("ray")
    ray_bin = Path(PY).with_name("ray")
    # a loopback test cluster without token authentication (a driver naming an explicit
    # address sends no token unless RAY_AUTH_MODE=token is set)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    temp = Path(tempfile.mkdtemp(prefix="wbray", dir="/tmp"))  # short: Ray puts sockets in it
    proc, address, errors = None, None, []
    for attempt in range(3):
        port, client_port, dash_port = _free_ports(3)
        log = temp / f"start-{attempt}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [
                    str(ray_bin),
                    "start",
                    "--head",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--port={port}",
                    "--num-cpus=2",
                    "--disable-usage-stats",
                    "--include-dashboard=false",
                    "--no-monitor",
                    f"--ray-client-server-port={client_port}",
                    f"--dashboard-port={dash_port}",
                    f"--temp-dir={temp}",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if b"Ray runtime started" in log.read_bytes():
                address = f"127.0.0.1:{port}"
                break
            time.sleep(0.5)
        if address:
            break
        errors.append(log.read_text(errors="replace")[-600:])
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        _kill_session(proc.pid)
    if not address:
        shutil.rmtree(temp, ignore_errors=True)
        pytest.fail("could not start a local Ray head node in 3 attempts:\n" + "\n---\n".join(errors))
    try:
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        _kill_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)


def test_t_sweep_same_numbers_local_and_ray(family, shared_data, ray_cluster, tmp_path):
    from workbench.store import ResultStore
    from workbench.sweep import run_sweep

    sweep = _write_sweep(tmp_path / "sweep.yaml", family, shared_data, ts=[0.0, 0.5, 1.0])
    local = run_sweep(sweep, tmp_path / "local", store=ResultStore(tmp_path / "cache-local"), progress=False)
    remote = run_sweep(
        sweep,
        tmp_path / "ray",
        backend="ray",
        ray_address=ray_cluster,
        store=ResultStore(tmp_path / "cache-ray"),
        progress=False,
    )
    assert sorted(local.computed) == sorted(remote.computed) == [0, 1, 2]
    assert {row["backend"] for row in remote.log} == {"ray"}
    # ingredients are opened once per Ray worker process, not once per point
    opens: dict[int, int] = {}
    for row in remote.log:
        opens[row["worker"]] = max(opens.get(row["worker"], 0), row["opens"])
    assert all(n == 2 for n in opens.values()), opens

    a, b = local.table, remote.table
    assert a.height == b.height > 0
    assert a.select("point", "t", "task", "metric", "fingerprint").equals(
        b.select("point", "t", "task", "metric", "fingerprint")
    )
    acc = a.filter((a["task"] == "blimp") & (a["metric"] == "acc,none"))
    assert acc.height == 3 and acc["value"].is_not_null().all()
    assert a.filter(a["task"] == "blimp_adjunct_island")["parent"].unique().to_list() == ["blimp"]
    for va, vb in zip(a["value"].to_list(), b["value"].to_list()):
        assert va == pytest.approx(vb, rel=1e-9, abs=1e-12)
    ia, ib = local.items, remote.items
    assert ia.select("point", "task", "item_id", "correct").equals(ib.select("point", "task", "item_id", "correct"))
    for la, lb in zip(ia["loglik"].to_list(), ib["loglik"].to_list()):
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-5)
    # t = 0 is the base model; the table written to disk is the one returned
    import polars as pl

    assert pl.read_parquet(tmp_path / "ray" / "results.parquet").equals(b)
    assert set(b.columns) >= {"point", "t", "task", "metric", "value", "stderr"}

    # the Ray backend reads the cache the local backend filled: nothing to compute
    again = run_sweep(
        sweep, None, backend="ray", ray_address=ray_cluster, store=ResultStore(tmp_path / "cache-local"), progress=False
    )
    assert again.computed == [] and again.table.equals(a)


def test_unreachable_ray_address_fails_fast(family, shared_data, tmp_path):
    sweep = _write_sweep(tmp_path / "sweep.yaml", family, shared_data, ts=[0.5])
    (port,) = _free_ports(1)  # nothing listens there
    res = _cli(
        "sweep",
        str(sweep),
        "--out",
        str(tmp_path / "out"),
        "--backend",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        "--cache",
        str(tmp_path / "cache"),
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "nothing answers" in res.stderr and f"127.0.0.1:{port}" in res.stderr
    # a port that accepts TCP but never speaks Ray: the bounded wait gives up
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        res = _cli(
            "sweep",
            str(sweep),
            "--out",
            str(tmp_path / "out"),
            "--backend",
            "ray",
            "--ray-address",
            f"127.0.0.1:{silent.getsockname()[1]}",
            "--ray-timeout",
            "5",
            "--cache",
            str(tmp_path / "cache"),
            timeout=120,
        )
    assert res.returncode == 2, res.stderr
    assert "error: Ray address" in res.stderr
    assert not (tmp_path / "out").exists()


def _count_cached(sweep: Path, cache: Path) -> dict[int, bool]:
    from workbench.store import ResultStore
    from workbench.sweep import load_sweep, plan

    the_plan = plan(load_sweep(sweep))
    store = ResultStore(cache)
    return {
        p.index: all(store.get(the_plan.keys[(p.index, t)]) is not None for t in the_plan.spec.tasks)
        for p in the_plan.points
    }


def test_sigkill_midway_then_resume(family, shared_data, tmp_path):
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    sweep = _write_sweep(tmp_path / "sweep.yaml", family, shared_data, ts=ts)
    cache, out = tmp_path / "cache", tmp_path / "out"
    sigkill_when(
        ["sweep", str(sweep), "--out", str(out), "--cache", str(cache)],
        lambda: len(list(cache.glob("*/*.wbres"))) >= 2,
        timeout=240,
        what="sweep",
    )
    assert not out.exists()  # the output directory only appears complete
    before = _count_cached(sweep, cache)
    done_before = {i for i, ok in before.items() if ok}
    assert 2 <= len(done_before) < len(ts)

    # a torn entry (as if a write had been cut short) is never read back as valid
    victim = sorted(done_before)[0]
    from workbench.store import ResultStore
    from workbench.sweep import load_sweep, plan

    the_plan = plan(load_sweep(sweep))
    path = ResultStore(cache).path(the_plan.keys[(victim, "blimp")])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not _count_cached(sweep, cache)[victim]
    done_before.discard(victim)

    res = _cli("sweep", str(sweep), "--out", str(out), "--cache", str(cache), timeout=300)
    assert res.returncode == 0, res.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    computed = {row["point"] for row in log if row["status"] == "computed"}
    cached = {row["point"] for row in log if row["status"] == "cached"}
    assert cached == done_before  # nothing computed twice
    assert computed == set(range(len(ts))) - done_before
    assert f"{len(computed)} computed, {len(cached)} from the cache" in res.stdout

    import polars as pl

    table = pl.read_parquet(out / "results.parquet")
    acc = table.filter((pl.col("task") == "blimp") & (pl.col("metric") == "acc,none")).sort("point")
    assert acc["point"].to_list() == list(range(len(ts)))
    assert acc["t"].to_list() == ts
    assert acc["value"].is_not_null().all() and acc["value"].is_between(0, 1).all()
    items = pl.read_parquet(out / "items.parquet")
    assert items.group_by("point").len().sort("point")["len"].to_list() == [134] * len(ts)

    # the same sweep from scratch gives the same table
    fresh = _cli(
        "sweep", str(sweep), "--out", str(tmp_path / "fresh"), "--cache", str(tmp_path / "cache2"), timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr
    assert pl.read_parquet(tmp_path / "fresh" / "results.parquet").equals(table)


def test_bad_inputs_fail_before_any_work(family, shared_data, tmp_path):
    cache = tmp_path / "cache"
    sweep = _write_sweep(tmp_path / "axis.yaml", family, shared_data, ts=[0.5], axes={"temperature": [0.5]})
    res = _cli("sweep", str(sweep), "--out", str(tmp_path / "o1"), "--cache", str(cache))
    assert res.returncode == 2 and "unknown axis 'temperature'" in res.stderr

    sweep = _write_sweep(tmp_path / "empty.yaml", family, shared_data, ts=[])
    res = _cli("sweep", str(sweep), "--out", str(tmp_path / "o2"), "--cache", str(cache))
    assert res.returncode == 2 and "empty grid" in res.stderr

    # an ingredient of another architecture: the merge engine's error, before any merge
    other = tmp_path / "other"
    shutil.copytree(family.trajectory[-1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (other / "config.json").write_text(json.dumps(cfg))
    sweep = _write_sweep(
        tmp_path / "arch.yaml",
        family,
        shared_data,
        ts=[0.0, 0.5],
        ingredients={"early": str(family.trajectory[0]), "late": str(other)},
    )
    res = _cli("sweep", str(sweep), "--out", str(tmp_path / "o3"), "--cache", str(cache))
    assert res.returncode == 2 and "different architectures" in res.stderr and "intermediate_size" in res.stderr

    sweep = _write_sweep(tmp_path / "task.yaml", family, shared_data, ts=[0.5], tasks=["blimpp"])
    res = _cli("sweep", str(sweep), "--out", str(tmp_path / "o4"), "--cache", str(cache))
    assert res.returncode == 2 and "unknown task 'blimpp'" in res.stderr

    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    assert not cache.exists() or not list(cache.rglob("*.wbres"))


def test_cache_keys_follow_the_data_content(family, shared_data, tmp_path):
    """A sweep's results are keyed by the data's content, not its folder (as evaluate's are)."""
    from workbench.sweep import plan

    copy = tmp_path / "data"
    (copy / "blimp").mkdir(parents=True)
    for f in (shared_data / "blimp").glob("*.jsonl"):
        shutil.copy(f, copy / "blimp" / f.name)
    keys = {}
    for name, where in (("shared", shared_data), ("copy", copy)):
        keys[name] = plan(load_sweep(_write_sweep(tmp_path / f"{name}.yaml", family, where, ts=[0.5]))).keys
    assert keys["shared"] != keys["copy"]  # the folder is part of the settings too (data_source)
    first = copy / "blimp" / "adjunct_island.jsonl"
    first.write_text("\n".join(first.read_text().splitlines()[:-1]) + "\n")  # drop one pair
    edited = plan(load_sweep(_write_sweep(tmp_path / "edited.yaml", family, copy, ts=[0.5]))).keys
    assert edited != keys["copy"]


@pytest.mark.slow
def test_cli_ray_backend_without_address_starts_a_loopback_cluster(family, shared_data, tmp_path):
    """The path users run: `workbench sweep --backend ray` with no address starts Ray here and
    gives the numbers the local backend gives (no fixture-started cluster involved)."""
    import polars as pl

    sweep = _write_sweep(tmp_path / "sweep.yaml", family, shared_data, ts=[0.0, 1.0])
    local = _cli("sweep", str(sweep), "--out", str(tmp_path / "local"), "--cache", str(tmp_path / "c1"), timeout=300)
    assert local.returncode == 0, local.stderr
    res = _cli(
        "sweep",
        str(sweep),
        "--out",
        str(tmp_path / "ray"),
        "--backend",
        "ray",
        "--cache",
        str(tmp_path / "c2"),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "2 points: 2 computed" in res.stdout
    log = [json.loads(line) for line in (tmp_path / "ray" / "log.jsonl").read_text().splitlines()]
    assert {row["backend"] for row in log} == {"ray"}
    a = pl.read_parquet(tmp_path / "local" / "results.parquet")
    b = pl.read_parquet(tmp_path / "ray" / "results.parquet")
    assert a.select("point", "task", "metric", "fingerprint").equals(b.select("point", "task", "metric", "fingerprint"))
    for va, vb in zip(a["value"].to_list(), b["value"].to_list()):
        assert va == pytest.approx(vb, rel=1e-9, abs=1e-12)


def test_recipe_that_builds_a_tokenizer_is_refused_before_work(family, shared_data, tmp_path):
    """Points are evaluated with an ingredient's tokenizer files: a recipe that builds a new
    tokenizer (here: a chat template) would be scored with the wrong one, so it is refused."""
    from workbench.sweep import load_sweep, plan

    sweep = _write_sweep(tmp_path / "chat.yaml", family, shared_data, ts=[0.5])
    doc = yaml.safe_load(sweep.read_text())
    doc.pop("method"), doc.pop("models")
    doc["recipe"] = {
        "merge_method": "slerp",
        "base_model": "early",
        "models": [{"model": "early"}, {"model": "late"}],
        "parameters": {"t": 0.5},
        "chat_template": "chatml",
    }
    sweep.write_text(yaml.safe_dump(doc))
    with pytest.raises(WorkbenchError, match="builds a new tokenizer"):
        plan(load_sweep(sweep))
