"""Hub ids offline: models resolved from a Hugging Face cache laid out by ``huggingface_hub`` itself.

There is no Hub here, so a thread on 127.0.0.1 speaks the few endpoints ``snapshot_download``
uses (revision info, the recursive tree listing, ``resolve/<commit>/<file>`` with the ETag /
X-Repo-Commit / Content-Length headers), without advertising Xet. ``huggingface_hub``
populates a cache from it (through workbench, online), then every check runs with
``HF_HUB_OFFLINE=1`` and the server counting requests: none may arrive.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from workbench.checkpoints import open_checkpoint
from workbench.errors import WorkbenchError
from workbench.merge import merge_in_memory, merge_to_disk
from workbench.testing import write_random_llama

DIMS = dict(hidden_size=32, num_layers=2, vocab_size=64, num_heads=4, intermediate_size=48)
REPO_ROOT = Path(__file__).resolve().parents[1]


def _commit(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()  # 40 hex digits, like a git commit


class FakeHub:
    """Repositories (id -> ref -> (commit, {path: bytes})) served the way the Hub API serves them."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, model_dir: Path, refs: tuple[str, ...] = ("main",), extra: dict | None = None) -> str:
        files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
        files.update(extra or {})
        commit = _commit(f"{repo}:{refs}")
        for ref in (*refs, commit):
            self.repos.setdefault(repo, {})[ref] = (commit, files)
        return commit

    def _lookup(self, repo: str, ref: str) -> tuple[str, dict[str, bytes]] | None:
        return self.repos.get(repo, {}).get(ref)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _missing(self, head: bool, code: str = "RepoNotFound") -> None:
                self._send(404, b'{"error": "not found"}', {"X-Error-Code": code}, head)

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = "/".join(parts[2:4])
                    kind = parts[4] if len(parts) > 4 else "revision"
                    ref = "/".join(parts[5:]) if len(parts) > 5 else "main"
                    hit = hub._lookup(repo, ref)
                    if hit is None:
                        return self._missing(head, "RevisionNotFound" if repo in hub.repos else "RepoNotFound")
                    commit, files = hit
                    if kind == "revision":
                        info = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
                        return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                    if kind == "tree":
                        tree = [
                            {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                            for f, b in files.items()
                        ]
                        return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                    return self._missing(head)
                # /{org}/{name}/resolve/{revision}/{file}
                if len(parts) >= 5 and parts[2] == "resolve":
                    hit = hub._lookup("/".join(parts[:2]), parts[3])
                    name = "/".join(parts[4:])
                    if hit is None or name not in hit[1]:
                        return self._missing(head, "EntryNotFound")
                    commit, files = hit
                    body = files[name]
                    headers = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": commit}
                    return self._send(200, body, headers, head)
                return self._missing(head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A populated cache: ``org/base`` (main), ``org/tuned`` (main and tag ``v1``, different
    weights), ``org/sharded`` (sharded with an index, split unlike anything else, and a decoy
    ``consolidated.safetensors`` that must never be fetched)."""
    root = tmp_path_factory.mktemp("hub")
    models = {
        "base": write_random_llama(root / "src" / "base", seed=0, **DIMS),
        "tuned_v1": write_random_llama(root / "src" / "tuned_v1", seed=1, **DIMS),
    }
    models["tuned"] = write_random_llama(root / "src" / "tuned", like=models["base"], noise=0.01, seed=2)
    # the same tensors as `other`, written once whole and once in shards of about 5 kB
    models["other"] = write_random_llama(root / "src" / "other", seed=3, **DIMS)
    sharded = write_random_llama(root / "src" / "other_sharded", seed=3, max_shard_bytes=5_000, **DIMS)
    server = FakeHub()
    commits = {
        "org/base": server.add("org/base", models["base"]),
        "org/tuned@v1": server.add("org/tuned", models["tuned_v1"], refs=("v1",)),
        "org/tuned": server.add("org/tuned", models["tuned"]),
        "org/sharded": server.add("org/sharded", sharded, extra={"consolidated.safetensors": b"\0" * 4096}),
    }
    cache = root / "cache"
    from huggingface_hub import snapshot_download

    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "hf_xet", None)  # any use of Xet would fail: the plain HTTP path must do
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        # what a user does once, online: `hf download org/base` etc. (whole repositories)
        for repo, rev in (("org/base", None), ("org/tuned", None), ("org/tuned", "v1")):
            snapshot_download(repo, revision=rev, cache_dir=cache, endpoint=server.endpoint)
        # workbench's own online path, which fetches only the weights the index names
        import huggingface_hub.constants as hc

        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setattr(hc, "HF_HUB_OFFLINE", False)
        mp.setattr(hc, "ENDPOINT", server.endpoint)  # read from HF_ENDPOINT at import
        mp.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        open_checkpoint("org/sharded")
    finally:
        mp.undo()
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    yield dict(server=server, cache=cache, models=models, commits=commits, shards=shards, sharded=sharded)
    server.close()


@pytest.fixture()
def offline(hub, monkeypatch):
    """Offline, pointed at the populated cache; fails the test if the server hears anything."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # as if the variable had been set before import
    before = len(hub["server"].requests)
    yield hub
    assert hub["server"].requests[before:] == [], "an offline run contacted the Hub"


def _assert_same_tensors(a, b) -> None:
    a, b = open_checkpoint(a), open_checkpoint(b)
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
        assert a.dtype(n) == b.dtype(n)
        assert torch.equal(a.get(n), b.get(n)), n


def test_cache_is_laid_out_by_huggingface_hub(hub):
    cache, commits = hub["cache"], hub["commits"]
    tuned = cache / "models--org--tuned"
    assert (tuned / "refs" / "main").read_text() == commits["org/tuned"]
    assert (tuned / "refs" / "v1").read_text() == commits["org/tuned@v1"]
    snap = tuned / "snapshots" / commits["org/tuned"] / "model.safetensors"
    assert snap.is_symlink() and snap.resolve().parent.name == "blobs"
    # workbench fetched only the weights the index names: the decoy was never asked for
    requested = " ".join(hub["server"].requests)
    assert "org/sharded/resolve" in requested and "consolidated.safetensors" not in requested
    sharded = cache / "models--org--sharded" / "snapshots" / commits["org/sharded"]
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == hub["shards"]
    assert len(hub["shards"]) >= 3


def test_hub_ids_resolve_offline_with_revisions(offline):
    models, commits = offline["models"], offline["commits"]
    _assert_same_tensors("org/base", models["base"])
    _assert_same_tensors("org/tuned", models["tuned"])
    _assert_same_tensors("org/tuned@v1", models["tuned_v1"])
    _assert_same_tensors(f"org/tuned@{commits['org/tuned@v1']}", models["tuned_v1"])
    ck = open_checkpoint("org/tuned", revision="v1")
    assert ck.path.name == commits["org/tuned@v1"] and ck.source == "org/tuned"
    assert open_checkpoint("org/tuned@v1").source == "org/tuned@v1"
    with pytest.raises(WorkbenchError, match="revision given twice"):
        open_checkpoint("org/tuned@v1", revision="main")


def test_recipe_of_hub_ids_merges_offline_like_local_dirs(offline, tmp_path):
    models = offline["models"]

    def recipe(base: str, other: str) -> dict:
        return {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": other}],
            "parameters": {"t": [0.0, 0.3, 1.0]},
        }

    merge_to_disk(recipe("org/base", "org/tuned@v1"), tmp_path / "hub", progress=False)
    merge_to_disk(recipe(str(models["base"]), str(models["tuned_v1"])), tmp_path / "local", progress=False)
    _assert_same_tensors(tmp_path / "hub", tmp_path / "local")
    mem = merge_in_memory(recipe("org/base", "org/tuned@v1"))
    disk = open_checkpoint(tmp_path / "local")
    for n, t in mem.items():
        assert torch.allclose(t, disk.get(n), rtol=0, atol=1e-6 * float(t.abs().max())), n


def test_shard_layouts_may_differ_between_ingredients(offline, tmp_path):
    """One ingredient a single file, the other sharded (with an index, split elsewhere): the
    merge equals the merge of the unsharded models, bit for bit."""
    models = offline["models"]
    sharded = open_checkpoint("org/sharded")
    assert len({sharded.file_of(n) for n in sharded.names()}) >= 3
    rec = {
        "merge_method": "slerp",
        "base_model": "org/base",
        "models": [{"model": "org/base"}, {"model": "org/sharded"}],
        "parameters": {"t": 0.4},
    }
    merge_to_disk(rec, tmp_path / "mixed", progress=False, max_shard_bytes=7_000)
    flat = dict(
        rec, base_model=str(models["base"]), models=[{"model": str(models["base"])}, {"model": str(models["other"])}]
    )
    merge_to_disk(flat, tmp_path / "flat", progress=False)
    _assert_same_tensors(tmp_path / "mixed", tmp_path / "flat")
    assert (tmp_path / "mixed" / "model.safetensors.index.json").is_file()


def test_uncached_hub_id_offline_is_one_error_naming_id_and_cache(offline, tmp_path):
    cache = offline["cache"]
    listing = sorted(str(p) for p in cache.rglob("*"))
    with pytest.raises(WorkbenchError) as err:
        open_checkpoint("org/not-downloaded")
    msg = str(err.value)
    assert "org/not-downloaded" in msg and str(cache) in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(WorkbenchError, match=r"org/tuned@v2 is not in the Hugging Face cache"):
        open_checkpoint("org/tuned@v2")  # a revision never downloaded
    rec = {
        "merge_method": "slerp",
        "base_model": "org/base",
        "models": [{"model": "org/base"}, {"model": "org/not-downloaded"}],
        "parameters": {"t": 0.5},
    }
    with pytest.raises(WorkbenchError, match="org/not-downloaded"):
        merge_to_disk(rec, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert sorted(str(p) for p in cache.rglob("*")) == listing  # nothing written into the cache


def test_unreachable_hub_falls_back_to_the_cache(hub, monkeypatch):
    """Online mode but no network (the endpoint refuses connections): cached ids still open,
    an uncached one is one error saying the Hub cannot be reached."""
    import huggingface_hub.constants as hc

    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", closed)
    monkeypatch.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", closed + "/{repo_id}/resolve/{revision}/{filename}")
    _assert_same_tensors("org/tuned@v1", hub["models"]["tuned_v1"])
    _assert_same_tensors("org/sharded", hub["models"]["other"])
    with pytest.raises(WorkbenchError, match=r"org/elsewhere is not in the Hugging Face cache at .* cannot be reached"):
        open_checkpoint("org/elsewhere")


@pytest.mark.slow
def test_cli_offline_set_before_import(offline, tmp_path):
    """The CLI in a fresh process (HF_HUB_OFFLINE set before anything is imported): a cached
    Hub id merges; an uncached one exits non-zero with the one-sentence error."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "merge_method: slerp\nbase_model: org/base\nmodels:\n  - model: org/base\n"
        "  - model: org/tuned@v1\nparameters:\n  t: 0.5\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(offline["cache"]), HF_ENDPOINT="http://127.0.0.1:9")
    cmd = [sys.executable, "-m", "workbench.cli", "merge"]
    ok = subprocess.run([*cmd, str(recipe), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert open_checkpoint(tmp_path / "out").names() == open_checkpoint(offline["models"]["base"]).names()
    recipe.write_text(recipe.read_text().replace("org/tuned@v1", "org/absent"))
    bad = subprocess.run([*cmd, str(recipe), str(tmp_path / "bad")], env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "org/absent" in bad.stderr and str(offline["cache"]) in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
