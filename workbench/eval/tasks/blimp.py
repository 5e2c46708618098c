"""BLiMP: the ``blimp`` group (67 paradigms of minimal pairs) and each ``blimp_<paradigm>``.

lm-eval 0.4.13 conventions: empty context, so the context is the prefix token (BOS, else
EOS) and the continuation is ``" " + sentence`` encoded without special tokens; a pair is
correct when ll(good) >= ll(bad) (an exact tie counts as correct, as lm-eval's argmax takes
the first choice); the tie rate is reported. The ``field`` column spells the data's two
variants of the syntax-semantics field ("syntax/semantics", "syntax_semantics") one way,
giving BLiMP's 4 fields, and the ``term`` column files the two "s-selection" paradigms
under "argument_structure" as the published BLiMP summary does, giving its 12 phenomena.
The group's summary has an entry per paradigm (``blimp_<paradigm>``), per field
(``blimp_field_<field>``) and per phenomenon (``blimp_term_<term>``).

>>> paradigms_of("blimp_adjunct_island"), len(paradigms_of("blimp"))
(('adjunct_island',), 67)
>>> parent_of("blimp_field_syntax"), parent_of("blimp")
('blimp', None)
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import polars as pl

from workbench.errors import WorkbenchError
from workbench.eval import data as D
from workbench.eval.result import EvalResult, items_frame
from workbench.eval.tasks.common import TaskContext, mean_stderr, pooled_stderr, select_items
from workbench.eval.tasks.spec import TaskSpec

GROUP = "blimp"
_PREFIX = GROUP + "_"
#: linguistics_term spellings mapped to the 12 phenomena of the BLiMP paper's summary
BLIMP_TERM_ALIASES = {"s-selection": "argument_structure"}
#: item columns the group's summary also reports, as ``blimp_<column>_<value>`` entries
BREAKDOWNS = ("field", "term")


def is_blimp_task(name: str) -> bool:
    """Whether ``name`` is the BLiMP group or one of its paradigms."""
    return name == GROUP or (name.startswith(_PREFIX) and name[len(_PREFIX) :] in D.BLIMP_PARADIGMS)


def paradigms_of(task: str) -> tuple[str, ...]:
    """The paradigms a BLiMP task scores: all 67 for the group, else its own."""
    return D.BLIMP_PARADIGMS if task == GROUP else (task[len(_PREFIX) :],)


def subtasks(task: str) -> tuple[str, ...]:
    """The paradigm tasks of the group (a paradigm task has none)."""
    return tuple(_PREFIX + uid for uid in D.BLIMP_PARADIGMS) if task == GROUP else ()


def parent_of(name: str) -> str | None:
    """``blimp`` for a paradigm task and for the group's field and term entries."""
    if is_blimp_task(name) and name != GROUP:
        return GROUP
    if any(name.startswith(f"{_PREFIX}{col}_") for col in BREAKDOWNS):
        return GROUP
    return None


def load(task: str, data_dir: Path | None, split: str | None) -> list[dict]:
    """The minimal pairs of the task's paradigms, in file order."""
    return D.load_blimp(data_dir, paradigms_of(task))


def data_files(task: str, data_dir: Path | None, split: str | None) -> list[Path] | None:
    """The paradigm files that exist in ``data_dir`` (None: read from the Hub)."""
    if data_dir is None:
        return None
    return [f for f in (D.blimp_file(data_dir, uid) for uid in paradigms_of(task)) if f.is_file()]


def _requests(ctx: TaskContext, sentences: list[str]) -> list[tuple[list[int], list[int]]]:
    enc = ctx.tok.encode([" " + s for s in sentences], add_special_tokens=False)
    reqs = []
    for s, e in zip(sentences, enc):
        if not e:
            raise WorkbenchError(f"BLiMP sentence {s!r} encodes to no tokens")
        if e[0] == ctx.tok.prefix_id:  # the text itself starts with the prefix token
            reqs.append((e[:1], e[1:]))
        else:
            reqs.append(([ctx.tok.prefix_id], e))
    return reqs


def run(
    ctx: TaskContext, task: str, pairs: list[dict], limit: float | None, seed: int, item_ids: Collection[str] | None
) -> EvalResult:
    """Score the selected minimal pairs; per-item rows and the lm-eval style summary."""
    ids = [f"{p['UID']}/{p['pairID']}" for p in pairs]
    keep = select_items(ids, [p["UID"] for p in pairs], item_ids, limit, seed)
    pairs = [pairs[i] for i in keep]
    ids = [ids[i] for i in keep]
    reqs = _requests(ctx, [p["sentence_good"] for p in pairs] + [p["sentence_bad"] for p in pairs])
    res = ctx.score(reqs, desc=task)
    n = len(pairs)
    good, bad = res.loglik[:n], res.loglik[n:]
    correct = good >= bad  # argmax over (good, bad) takes the first on a tie
    tie = good == bad
    items = items_frame(
        {
            "task": [task] * n,
            "item_id": ids,
            "group": [p["UID"] for p in pairs],
            "field": [p["field"].replace("/", "_") for p in pairs],
            "term": [BLIMP_TERM_ALIASES.get(p["linguistics_term"], p["linguistics_term"]) for p in pairs],
            "correct": correct.tolist(),
            "tie": tie.tolist(),
            "margin": (good - bad).tolist(),
            "loglik": good.tolist(),
            "loglik_alt": bad.tolist(),
            "n_tokens": res.n_tokens[:n].tolist(),
        }
    )
    summary: dict[str, dict[str, float]] = {}
    accs, ses, sizes = [], [], []
    uids = np.array([p["UID"] for p in pairs], dtype=object)
    for uid in paradigms_of(task):
        m = uids == uid
        if not m.any():
            continue
        c = correct[m].astype(np.float64)
        accs.append(float(c.mean()))
        ses.append(mean_stderr(c))
        sizes.append(int(m.sum()))
        if task == GROUP:
            summary[_PREFIX + uid] = {
                "acc,none": accs[-1],
                "acc_stderr,none": ses[-1],
                "tie_rate,none": float(tie[m].mean()),
                "n_items": float(sizes[-1]),
            }
    if not sizes:
        raise WorkbenchError(f"{task}: no items selected")
    top = {
        "acc,none": float(np.mean(accs)),  # macro mean over paradigms (lm-eval: weight_by_size False)
        "acc_stderr,none": pooled_stderr(ses, sizes) if len(sizes) > 1 else ses[0],
        "acc_micro,none": float(correct.mean()),
        "tie_rate,none": float(tie.mean()),
        "n_items": float(n),
        "n_truncated": float(res.truncated.sum()),
    }
    summary = {task: top, **summary}
    if task == GROUP:
        for col in BREAKDOWNS:
            agg = (
                items.group_by(col)
                .agg(pl.col("correct").mean().alias("acc"), pl.col("tie").mean().alias("tie"), pl.len().alias("n"))
                .sort(col)
            )
            for row in agg.iter_rows(named=True):
                summary[f"{_PREFIX}{col}_{row[col]}"] = {
                    "acc,none": float(row["acc"]),
                    "tie_rate,none": float(row["tie"]),
                    "n_items": float(row["n"]),
                }
    return EvalResult(items, summary, {})


SPEC = TaskSpec(
    name=GROUP,
    usage="blimp, blimp_<paradigm> (one of the 67 BLiMP paradigms)",
    match=is_blimp_task,
    load=load,
    run=run,
    data_files=data_files,
    metrics=("acc,none", "acc_stderr,none", "acc_micro,none", "tie_rate,none"),
    primary_metric="acc,none",
    higher_is_better=True,
    item_metrics=("acc", "margin"),
    subtasks=subtasks,
    parent_of=parent_of,
    cluster_column="group",
    breakdowns=BREAKDOWNS,
)
