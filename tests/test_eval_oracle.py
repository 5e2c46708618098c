"""Oracle tests: the evaluation engine against lm-evaluation-harness 0.4.13 itself.

A small Llama (2 layers, BOS-adding byte-level BPE tokenizer, 128-token context) is made
on the spot; lm-eval runs offline in-process with task YAMLs that include its own
``blimp``, ``arc_easy`` and ``wikitext`` definitions and only swap the Hub data set for
local json files (``dataset_path: json``, ``--include_path``), with per-sample logging.
Compared: every item of 3 BLiMP paradigms (3 x 1000 pairs), all 570 ARC-Easy Dev
questions (some exceed the context and are left-truncated) and the first 3 WikiText-2
test documents (about 30 rolling windows): identical decisions, per-item
log-likelihoods within 1e-4, perplexity metrics within 1e-4 relative.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _eval_model import _one_thread, build_tiny_model, tiny_model_dir  # noqa: E402,F401  (fixtures)

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

lm_eval = pytest.importorskip("lm_eval")

PARADIGMS = ("adjunct_island", "determiner_noun_agreement_2", "principle_A_c_command")
WIKI_DOCS = ("0", "1", "2")
LL_TOL = 1e-4


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _write_task_yamls(d: Path, shared_data: Path) -> list[str]:
    from workbench.eval import data as D

    lt = Path(lm_eval.__file__).parent / "tasks"
    names = []
    for uid in PARADIGMS:
        name = f"wbo_blimp_{uid}"
        (d / f"{name}.yaml").write_text(
            f"include: {lt}/blimp/_template_yaml\ntask: {name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    train: {shared_data}/blimp/{uid}.jsonl\n"
        )
        names.append(name)
    # lm-eval reads ARC in the Hub layout; the AI2 jsonl is only re-shaped
    with open(d / "arc_dev.jsonl", "w", encoding="utf-8") as fh:
        for rec in D.load_arc_easy(shared_data, "validation"):
            fh.write(json.dumps(rec) + "\n")
    (d / "wbo_arc_easy.yaml").write_text(
        f"include: {lt}/arc/arc_easy.yaml\ntask: wbo_arc_easy\ntag: null\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {d}/arc_dev.jsonl\ntraining_split: null\ntest_split: null\n"
    )
    names.append("wbo_arc_easy")
    pages, _ = D.load_wikitext(shared_data, "test")
    with open(d / "wiki_test.jsonl", "w", encoding="utf-8") as fh:
        for i in WIKI_DOCS:
            fh.write(json.dumps({"page": pages[int(i)]}) + "\n")
    (d / "wbo_wikitext.yaml").write_text(
        f"include: {lt}/wikitext/wikitext.yaml\ntask: wbo_wikitext\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d}/wiki_test.jsonl\ntraining_split: null\nvalidation_split: null\n"
    )
    names.append("wbo_wikitext")
    return names


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data, model_and_tok):
    """lm-eval's results and per-sample log for the same model."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    d = tmp_path_factory.mktemp("lm_eval_tasks")
    names = _write_task_yamls(d, shared_data)
    model, tok = model_and_tok
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=256)
        return lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=TaskManager(include_path=str(d)), log_samples=True
        )


@pytest.fixture(scope="module")
def ours(shared_data, model_and_tok):
    from workbench.eval import evaluate

    model, tok = model_and_tok
    tasks = [f"blimp_{p}" for p in PARADIGMS] + ["arc_easy", "wikitext"]
    return evaluate(
        model, tok, tasks, data_dir=shared_data, batch_size=256, progress=False, item_ids={"wikitext": WIKI_DOCS}
    )


def _lls(sample) -> list[float]:
    return [float(r[0]) for r in sample["filtered_resps"]]


@pytest.mark.parametrize("uid", PARADIGMS)
def test_blimp_items_match_lm_eval(reference, ours, uid):
    samples = reference["samples"][f"wbo_blimp_{uid}"]
    assert len(samples) == 1000
    items = ours.items.filter(ours.items["task"] == f"blimp_{uid}")
    assert items.height == 1000
    by_id = {r["item_id"]: r for r in items.iter_rows(named=True)}
    for s in samples:
        row = by_id[f"{uid}/{s['doc']['pairID']}"]
        good, bad = _lls(s)
        assert abs(row["loglik"] - good) < LL_TOL, (uid, s["doc"]["pairID"])
        assert abs(row["loglik_alt"] - bad) < LL_TOL, (uid, s["doc"]["pairID"])
        assert row["correct"] == bool(s["acc"]), (uid, s["doc"]["pairID"])
    ref = reference["results"][f"wbo_blimp_{uid}"]
    assert ours.summary[f"blimp_{uid}"]["acc,none"] == pytest.approx(ref["acc,none"], abs=1e-12)
    assert ours.summary[f"blimp_{uid}"]["acc_stderr,none"] == pytest.approx(ref["acc_stderr,none"], rel=1e-9)


def test_arc_easy_items_match_lm_eval(reference, ours):
    samples = reference["samples"]["wbo_arc_easy"]
    assert len(samples) == 570
    items = {r["item_id"]: r for r in ours.items.filter(ours.items["task"] == "arc_easy").iter_rows(named=True)}
    assert len(items) == 570
    for s in samples:
        doc = s["doc"]
        row = items[doc["id"]]
        lls = _lls(s)
        gold = int(s["target"]) if not isinstance(s["target"], int) else s["target"]
        assert abs(row["loglik"] - lls[gold]) < LL_TOL, doc["id"]
        others = max(v for i, v in enumerate(lls) if i != gold)
        assert abs(row["margin"] - (lls[gold] - others)) < 2 * LL_TOL, doc["id"]
        assert row["correct"] == bool(s["acc"]), doc["id"]
        assert row["correct_norm"] == bool(s["acc_norm"]), doc["id"]
    ref = reference["results"]["wbo_arc_easy"]
    for k in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
        assert ours.summary["arc_easy"][k] == pytest.approx(ref[k], rel=1e-9), k
    # some prompts exceed the 128-token context: both tools left-truncate them
    assert ours.summary["arc_easy"]["n_truncated"] > 0


def test_wikitext_matches_lm_eval(reference, ours):
    samples = reference["samples"]["wbo_wikitext"]
    assert len(samples) == len(WIKI_DOCS)
    items = ours.items.filter(ours.items["task"] == "wikitext").sort("item_id")
    assert items["item_id"].to_list() == list(WIKI_DOCS)
    for s, row in zip(sorted(samples, key=lambda s: int(s["doc_id"])), items.iter_rows(named=True)):
        ref_ll = (
            float(s["filtered_resps"][0])
            if not isinstance(s["filtered_resps"][0], (list, tuple))
            else float(s["filtered_resps"][0][0])
        )
        assert row["loglik"] == pytest.approx(ref_ll, rel=LL_TOL)
        words = (
            s["word_perplexity"][1]
            if isinstance(s["word_perplexity"], (list, tuple))
            else ast.literal_eval(s["word_perplexity"])[1]
        )
        assert row["n_words"] == words
    ref = reference["results"]["wbo_wikitext"]
    for k in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours.summary["wikitext"][k] == pytest.approx(ref[k], rel=LL_TOL), k
    assert ours.summary["wikitext"]["n_windows"] > len(WIKI_DOCS)  # documents span several windows
