"""Unit tests of the evaluation engine: scorer, tasks, bad inputs, cache, output, CLI."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_model import _one_thread, build_tiny_model, tiny_model_dir  # noqa: E402,F401  (fixtures)

from workbench.errors import WorkbenchError
from workbench.eval import EvalResult, evaluate, score_requests
from workbench.eval.tasks.perplexity import rolling_windows
from workbench.store import ResultStore


@pytest.fixture(scope="module")
def mt(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


class Counting(torch.nn.Module):
    """Wraps a model and counts forward calls (a real model underneath)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def _naive(model, ctx, cont, max_length):
    full = (list(ctx) + list(cont))[-(max_length + 1) :]
    inp = torch.tensor([full[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=inp).logits.float(), -1)[0]
    pos = range(len(full) - len(cont) - 1, len(full) - 1)
    return float(sum(lp[p, full[p + 1]] for p in pos))


def test_scorer_matches_one_request_at_a_time(mt):
    model, tok = mt
    texts = ["The cat sat on the mat.", "The cat sat", "A much longer sentence that goes on and on " * 4, "Hi"]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    reqs = [
        ([0], enc[0]),
        ([0], enc[1]),
        ([0], enc[0]),  # duplicate and a prefix of another request
        ([0] + enc[1], enc[0][len(enc[1]) :] or enc[3]),
        ([0] + enc[2], enc[3]),
        ([0], enc[3]),
    ]
    res = score_requests(model, reqs, max_length=16, batch_size=2, progress=False)
    for (c, x), got in zip(reqs, res.loglik):
        assert got == pytest.approx(_naive(model, c, x, 16), abs=1e-4)
    assert res.truncated.tolist() == [len(c) + len(x) > 17 for c, x in reqs]
    assert res.n_forward_sequences < len(reqs)  # shared sequences scored once


def _shared_prefix_requests(tok):
    """ARC-like (one question, four answers) and BLiMP-like (minimal pairs) requests."""
    q = tok("Question: Which animal sat on the mat?\nAnswer:", add_special_tokens=False)["input_ids"]
    answers = [" the cat", " a dog", " the cat and the dog", " nobody"]
    reqs = [([0] + q, tok(a, add_special_tokens=False)["input_ids"]) for a in answers]
    for good, bad in [
        ("The cats sit.", "The cats sits."),
        ("She has eaten.", "She have eaten."),
        ("Who did you see?", "Who did you see him?"),
    ]:
        reqs += [
            ([0], tok(" " + good, add_special_tokens=False)["input_ids"]),
            ([0], tok(" " + bad, add_special_tokens=False)["input_ids"]),
        ]
    return reqs


def test_prefix_sharing_gives_the_plain_scores_with_fewer_tokens(mt, monkeypatch):
    from workbench.eval import scoring

    model, tok = mt
    reqs = _shared_prefix_requests(tok)
    plain = score_requests(model, reqs, max_length=128, share_prefixes=False, progress=False)
    shared = score_requests(model, reqs, max_length=128, share_prefixes=True, progress=False)
    assert not plain.prefix_sharing and shared.prefix_sharing
    assert shared.loglik == pytest.approx(plain.loglik, abs=1e-4)
    assert shared.n_forward_tokens < plain.n_forward_tokens
    for (c, x), got in zip(reqs, shared.loglik):
        assert got == pytest.approx(_naive(model, c, x, 128), abs=1e-4)
    # small rows: trees split across rows and batches, longer sequences left to the plain path
    monkeypatch.setattr(scoring, "PACKED_ROW_NODES", 12)
    split = score_requests(model, reqs, max_length=128, batch_size=1, share_prefixes=True, progress=False)
    assert split.prefix_sharing and split.loglik == pytest.approx(plain.loglik, abs=1e-4)


class IgnoresPositions(torch.nn.Module):
    """Takes position_ids and a mask but drops both (like a wrapper written for plain batches)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, **kwargs):
        return self.inner(input_ids=input_ids)


def test_prefix_sharing_is_checked_against_the_plain_path(mt):
    model, tok = mt
    reqs = _shared_prefix_requests(tok)
    plain = score_requests(model, reqs, max_length=128, share_prefixes=False, progress=False)
    with pytest.warns(UserWarning, match="prefix sharing switched off"):
        auto = score_requests(IgnoresPositions(model), reqs, max_length=128, progress=False)
    assert not auto.prefix_sharing  # the check failed: everything ran the plain way
    assert auto.loglik == pytest.approx(plain.loglik, abs=1e-4)
    with pytest.raises(WorkbenchError, match="prefix sharing changes"):
        score_requests(IgnoresPositions(model), reqs, max_length=128, share_prefixes=True, progress=False)
    with pytest.raises(WorkbenchError, match="position_ids"):
        score_requests(Counting(model), reqs, max_length=128, share_prefixes=True, progress=False)


def test_fast_tokenizer_path_is_checked_before_use(mt, monkeypatch):
    from workbench.eval.tasks.tokenizer import _Tok

    _, tok = mt
    strings = [" The cats sit.", " She has eaten.", " Who did you see?"] * 20
    expected = [list(x) for x in tok(strings, add_special_tokens=False)["input_ids"]]
    assert _Tok(tok)._encode_batch(strings, False) == expected
    backend = tok._tokenizer
    wrong = lambda xs, add_special_tokens: [type("E", (), {"ids": [1]})() for _ in xs]  # noqa: E731
    monkeypatch.setattr(
        type(tok),
        "_tokenizer",
        property(
            lambda self: type(
                "B",
                (),
                {
                    "encode_batch_fast": staticmethod(wrong),
                    "truncation": None,
                    "padding": None,
                    "__getattr__": lambda s, name: getattr(backend, name),
                },
            )()
        ),
        raising=False,
    )
    assert _Tok(tok)._encode_batch(strings, False) == expected  # the sample check caught the wrong ids


def test_scorer_rejects_overlong_continuation(mt):
    with pytest.raises(WorkbenchError, match="exceeds the model's maximum length"):
        score_requests(mt[0], [([0], list(range(1, 20)))], max_length=8, progress=False)


def test_rolling_windows_cover_every_token_once():
    toks = list(range(1, 24))
    wins = rolling_windows(toks, 0, 5)
    assert [t for _, p in wins for t in p] == toks
    assert wins[0] == ([0], [1, 2, 3, 4, 5])  # first window: prefix token, then max_length tokens
    assert wins[-1] == ([18, 19, 20], [21, 22, 23])  # the last window's context fills the window
    assert all(len(c) + len(p) <= 6 for c, p in wins)


def test_malformed_jsonl_names_file_and_line(tmp_path, mt, tiny_model_dir):
    (tmp_path / "blimp").mkdir()
    good = {
        "sentence_good": "A cat.",
        "sentence_bad": "Cat a.",
        "field": "syntax",
        "linguistics_term": "t",
        "UID": "adjunct_island",
        "pairID": "0",
    }
    (tmp_path / "blimp" / "adjunct_island.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(WorkbenchError, match=r"adjunct_island\.jsonl:2: malformed JSON"):
        evaluate(*mt, "blimp_adjunct_island", data_dir=tmp_path, progress=False)
    from typer.testing import CliRunner

    from workbench.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--tasks",
            "blimp_adjunct_island",
            "--data-dir",
            str(tmp_path),
            "--no-cache",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "adjunct_island.jsonl:2: malformed JSON" in r.output
    assert not out.exists()  # nothing written
    (tmp_path / "blimp" / "adjunct_island.jsonl").write_text(json.dumps({"sentence_good": "x"}) + "\n")
    with pytest.raises(WorkbenchError, match=r"adjunct_island\.jsonl:1: missing field"):
        evaluate(*mt, "blimp_adjunct_island", data_dir=tmp_path, progress=False)


def test_missing_data_says_where_to_put_it(tmp_path, mt):
    with pytest.raises(WorkbenchError, match=r"arc_easy/ARC-Easy-Dev\.jsonl.*--data-dir"):
        evaluate(*mt, "arc_easy", data_dir=tmp_path, progress=False)


def test_unknown_task_lists_known_ones(mt, shared_data):
    with pytest.raises(WorkbenchError, match="unknown task 'blimpp'.*arc_easy, wikitext"):
        evaluate(*mt, "blimpp", data_dir=shared_data, progress=False)


def test_tokenizer_without_bos_uses_eos_and_without_both_fails(tiny_model_dir, mt, shared_data):
    from transformers import AutoTokenizer

    model, _ = mt
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.bos_token = None
    res = evaluate(model, tok, "blimp_adjunct_island", data_dir=shared_data, limit=3, progress=False)
    assert res.settings["prefix_token"] == "eos" and res.settings["prefix_token_id"] == tok.eos_token_id
    row = res.items.row(0, named=True)
    pid = int(row["item_id"].split("/")[1])
    sent = json.loads((shared_data / "blimp" / "adjunct_island.jsonl").read_text().splitlines()[pid])
    cont = tok(" " + sent["sentence_good"], add_special_tokens=False)["input_ids"]
    assert row["loglik"] == pytest.approx(_naive(model, [tok.eos_token_id], cont, 128), abs=1e-4)
    tok.eos_token = None
    with pytest.raises(WorkbenchError, match="neither a BOS nor an EOS"):
        evaluate(model, tok, "blimp_adjunct_island", data_dir=shared_data, limit=3, progress=False)


def test_long_inputs_are_left_truncated_and_counted(mt, shared_data):
    res = evaluate(*mt, "arc_easy", data_dir=shared_data, limit=20, max_length=24, progress=False)
    assert res.summary["arc_easy"]["n_truncated"] > 0
    assert res.settings["max_length"] == 24


def test_limit_is_stratified_and_seeded(mt, shared_data):
    a = evaluate(*mt, "blimp", data_dir=shared_data, limit=2, seed=1, progress=False)
    b = evaluate(*mt, "blimp", data_dir=shared_data, limit=2, seed=1, progress=False)
    c = evaluate(*mt, "blimp", data_dir=shared_data, limit=2, seed=2, progress=False)
    assert a.items.height == 134
    assert a.items.group_by("group").len()["len"].to_list() == [2] * 67
    assert a.items["item_id"].to_list() == b.items["item_id"].to_list() != c.items["item_id"].to_list()
    assert a.items.equals(b.items)
    s = a.summary["blimp"]
    assert s["acc,none"] == pytest.approx(a.aggregate("group")["acc"].mean())
    assert len([k for k in a.summary if k.startswith("blimp_field_")]) == 4
    assert len([k for k in a.summary if k.startswith("blimp_term_")]) == 12
    assert 0.0 <= s["tie_rate,none"] <= 1.0


def test_limit_per_task_mapping(tmp_path, mt, shared_data):
    """A mapping gives each task its own subsample size; a task left out keeps all its items."""
    text = tmp_path / "held.txt"
    text.write_text("\n\n".join(f"document number {i} has a few words." for i in range(7)) + "\n")
    tasks = f"blimp_adjunct_island,arc_easy,text:{text}"
    res = evaluate(*mt, tasks, data_dir=shared_data, limit={"blimp_adjunct_island": 3, "arc_easy": 4}, progress=False)
    counts = dict(res.items.group_by("task").len().iter_rows())
    assert counts == {"blimp_adjunct_island": 3, "arc_easy": 4, f"text:{text}": 7}
    same = evaluate(*mt, "arc_easy", data_dir=shared_data, limit=4, progress=False)
    assert same.items["item_id"].to_list() == res.items.filter(res.items["task"] == "arc_easy")["item_id"].to_list()
    # the scorer's prefix sharing is recorded next to the numbers (ARC's answers share the question)
    assert same.settings["per_task"]["arc_easy"]["prefix_sharing"] is True
    off = evaluate(*mt, "arc_easy", data_dir=shared_data, limit=4, progress=False, share_prefixes=False)
    assert off.settings["per_task"]["arc_easy"]["prefix_sharing"] is False
    assert off.items["loglik"].to_list() == pytest.approx(same.items["loglik"].to_list(), abs=1e-4)


def test_cache_serves_second_run_and_recomputes_truncated_entry(tmp_path, mt, shared_data):
    model, tok = mt
    counting = Counting(model)
    store = ResultStore(tmp_path / "cache")
    kw = dict(data_dir=shared_data, limit=5, progress=False, store=store, model_fingerprint="m" * 64)
    first = evaluate(counting, tok, "blimp_adjunct_island,arc_easy", **kw)
    calls = counting.calls
    assert calls > 0 and store.hits == 0
    second = evaluate(counting, tok, "blimp_adjunct_island,arc_easy", **kw)
    assert counting.calls == calls and store.hits == 2  # nothing scored again
    assert second.items.equals(first.items) and second.summary == first.summary
    entries = sorted((tmp_path / "cache").rglob("*.wbres"))
    assert len(entries) == 2
    raw = entries[0].read_bytes()
    entries[0].write_bytes(raw[: len(raw) // 2])  # truncated entry
    third = evaluate(counting, tok, "blimp_adjunct_island,arc_easy", **kw)
    assert counting.calls > calls  # the corrupt entry was recomputed, not trusted
    assert third.items.equals(first.items)
    assert entries[0].read_bytes() == raw  # and rewritten whole
    # without a given fingerprint the weights are hashed
    fourth = evaluate(model, tok, "blimp_adjunct_island", data_dir=shared_data, limit=5, progress=False, store=store)
    assert fourth.settings["model_fingerprint"] != "m" * 64


def test_text_file_perplexity(tmp_path, mt):
    f = tmp_path / "held.txt"
    f.write_text("The cat sat on the mat.\nIt was warm.\n\n\nA dog barked at night.\n")
    res = evaluate(*mt, f"text:{f}", progress=False)
    items = res.items
    assert items.height == 2 and items["n_words"].to_list() == [9, 5]
    s = res.summary[f"text:{f}"]
    assert s["byte_perplexity,none"] == pytest.approx(math.exp(-items["loglik"].sum() / items["n_bytes"].sum()))
    assert s["bits_per_byte,none"] == pytest.approx(-items["loglik"].sum() / items["n_bytes"].sum() / math.log(2))


def test_write_is_atomic_and_readable(tmp_path, mt, shared_data):
    res = evaluate(*mt, "blimp_adjunct_island", data_dir=shared_data, limit=3, progress=False)
    out = res.write(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "summary.json"]
    back = EvalResult.read(out)
    assert back.items.equals(res.items)
    assert json.loads((out / "summary.json").read_text())["summary"]["blimp_adjunct_island"]["n_items"] == 3
    with pytest.raises(WorkbenchError):
        res.write(tmp_path / "out")


def test_cli_eval_and_model_without_tokenizer(tmp_path, tiny_model_dir, shared_data):
    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    out = tmp_path / "res"
    r = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--tasks",
            "blimp_adjunct_island,arc_easy",
            "--limit",
            "3",
            "--data-dir",
            str(shared_data),
            "--no-cache",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "items.parquet").is_file() and "blimp_adjunct_island" in r.output
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    r = runner.invoke(
        app,
        [
            "eval",
            str(bare),
            "--tasks",
            "blimp",
            "--data-dir",
            str(shared_data),
            "--no-cache",
            "--out",
            str(tmp_path / "res2"),
        ],
    )
    assert r.exit_code == 2
    assert "tokenizer" in r.output and not (tmp_path / "res2").exists()
    r = runner.invoke(app, ["eval", str(tiny_model_dir), "--tasks", "nope", "--out", str(tmp_path / "res3")])
    assert r.exit_code == 2 and "unknown task 'nope'" in r.output
    assert not (tmp_path / "res3").exists()


def test_cache_follows_data_content(tmp_path, mt, shared_data):
    (tmp_path / "data" / "blimp").mkdir(parents=True)
    lines = (shared_data / "blimp" / "adjunct_island.jsonl").read_text().splitlines()[:4]
    f = tmp_path / "data" / "blimp" / "adjunct_island.jsonl"
    f.write_text("\n".join(lines) + "\n")
    store = ResultStore(tmp_path / "cache")
    kw = dict(data_dir=tmp_path / "data", progress=False, store=store, model_fingerprint="m" * 64)
    assert evaluate(*mt, "blimp_adjunct_island", **kw).items.height == 4
    assert evaluate(*mt, "blimp_adjunct_island", **kw).items.height == 4 and store.hits == 1
    f.write_text("\n".join(lines[:3]) + "\n")  # same path, different data
    assert evaluate(*mt, "blimp_adjunct_island", **kw).items.height == 3 and store.hits == 1


def test_cli_eval_dtype_is_applied_and_recorded(tmp_path, tiny_model_dir, shared_data):
    import json

    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    base = ["eval", str(tiny_model_dir), "--tasks", "blimp_adjunct_island", "--limit", "3"]
    base += ["--data-dir", str(shared_data), "--no-cache"]
    r = runner.invoke(app, [*base, "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")])
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "bf16" / "summary.json").read_text())["settings"]
    assert "bfloat16" in json.dumps(settings)
    r = runner.invoke(app, [*base, "--dtype", "int8", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--dtype" in r.output and not (tmp_path / "bad").exists()
