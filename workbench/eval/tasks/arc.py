"""ARC-Easy (``arc_easy``): multiple-choice science questions, scored as lm-eval 0.4.13 does.

Context ``"Question: {q}\\nAnswer:"``, continuations ``" " + choice``, context+continuation
encoded jointly with the tokenizer's default special tokens and the continuation's tokens
taken from the end; ``acc`` and ``acc_norm`` (ll divided by the choice's character count).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.eval import data as D
from workbench.eval.result import EvalResult, items_frame
from workbench.eval.tasks.common import TaskContext, mean_stderr, select_items
from workbench.eval.tasks.spec import TaskSpec

NAME = "arc_easy"
#: the reference data ships Train and Dev only, so Dev it is
DEFAULT_SPLIT = "validation"


def load(task: str, data_dir: Path | None, split: str | None) -> list[dict]:
    """The questions of an ARC-Easy split, in the Hub layout."""
    return D.load_arc_easy(data_dir, split or DEFAULT_SPLIT)


def data_files(task: str, data_dir: Path | None, split: str | None) -> list[Path] | None:
    """The split's file when it exists in ``data_dir`` (None: read from the Hub)."""
    if data_dir is None:
        return None
    f = D.arc_easy_file(data_dir, split or DEFAULT_SPLIT)
    return [f] if f.is_file() else []


def run(
    ctx: TaskContext, task: str, qs: list[dict], limit: float | None, seed: int, item_ids: Collection[str] | None
) -> EvalResult:
    """Score the selected questions; per-item rows and the lm-eval style summary."""
    ids = [q["id"] for q in qs]
    qs = [qs[i] for i in select_items(ids, [NAME] * len(ids), item_ids, limit, seed)]
    contexts, wholes, owner, choice_len = [], [], [], []
    for qi, q in enumerate(qs):
        c = f"Question: {q['question']}\nAnswer:"  # ends in "Answer:": no trailing space to move (lm-eval _encode_pair)
        contexts.append(c)
        for text in q["choices"]["text"]:
            wholes.append(c + " " + text)
            owner.append(qi)
            choice_len.append(len(text))
    ctx_enc = ctx.tok.encode(contexts, add_special_tokens=None)
    whole_enc = ctx.tok.encode(wholes, add_special_tokens=None)
    reqs = []
    for w, qi in zip(whole_enc, owner):
        ce = ctx_enc[qi]
        reqs.append((ce, w[len(ce) :]))
    res = ctx.score(reqs, desc=task)
    owner_a = np.array(owner)
    rows: dict[str, list] = {
        k: [] for k in ("task", "item_id", "group", "correct", "correct_norm", "tie", "margin", "loglik", "n_tokens")
    }
    acc, acc_norm = [], []
    for qi, q in enumerate(qs):
        m = np.flatnonzero(owner_a == qi)
        lls = res.loglik[m]
        lens = np.array([float(choice_len[j]) for j in m])
        gold = D.arc_gold_index(q["choices"]["label"], q["answerKey"])
        pred = int(np.argmax(lls))
        with np.errstate(divide="ignore", invalid="ignore"):
            pred_norm = int(np.argmax(lls / lens))
        others = np.delete(lls, gold)
        rows["task"].append(task)
        rows["item_id"].append(q["id"])
        rows["group"].append(NAME)
        rows["correct"].append(pred == gold)
        rows["correct_norm"].append(pred_norm == gold)
        rows["tie"].append(bool((lls == lls.max()).sum() > 1))
        rows["margin"].append(float(lls[gold] - others.max()) if len(others) else None)
        rows["loglik"].append(float(lls[gold]))
        rows["n_tokens"].append(int(res.n_tokens[m[gold]]))
        acc.append(pred == gold)
        acc_norm.append(pred_norm == gold)
    if not qs:
        raise WorkbenchError(f"{task}: no items selected")
    a, an = np.array(acc, dtype=np.float64), np.array(acc_norm, dtype=np.float64)
    summary = {
        task: {
            "acc,none": float(a.mean()),
            "acc_stderr,none": mean_stderr(a),
            "acc_norm,none": float(an.mean()),
            "acc_norm_stderr,none": mean_stderr(an),
            "tie_rate,none": float(np.mean(rows["tie"])),
            "n_items": float(len(qs)),
            "n_truncated": float(res.truncated.sum()),
        }
    }
    return EvalResult(items_frame(rows), summary, {})


SPEC = TaskSpec(
    name=NAME,
    usage=NAME,
    match=lambda name: name == NAME,
    load=load,
    run=run,
    data_files=data_files,
    metrics=("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none", "tie_rate,none"),
    primary_metric="acc,none",
    higher_is_better=True,
    item_metrics=("acc", "margin"),
    split_setting="arc_split",
    default_split=DEFAULT_SPLIT,
)
