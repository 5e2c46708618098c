"""Evaluation data: BLiMP, ARC-Easy, WikiText-2 and plain text files.

Data comes from a *data directory* laid out like the reference data folder
(``blimp/<paradigm>.jsonl``, ``arc_easy/ARC-Easy-{Train,Dev,Test}.jsonl``,
``wikitext-2/{valid,test}.txt``), or from the Hugging Face Hub through ``datasets``
when no directory is given (``nyu-mll/blimp``, ``allenai/ai2_arc``,
``EleutherAI/wikitext_document_level``). Loaders return plain Python records in a
form that does not depend on the source:

- BLiMP: dicts with ``sentence_good``, ``sentence_bad``, ``field``,
  ``linguistics_term``, ``UID``, ``pairID``;
- ARC: dicts with ``id``, ``question`` (str), ``choices`` ({"text": [...], "label": [...]}),
  ``answerKey`` (the Hub layout, which lm-eval reads);
- WikiText: document strings (``page``), one per article.

Every malformed input raises :class:`~workbench.errors.WorkbenchError` naming the file
and line.

>>> split_wikitext_documents(" = A = \\n x\\n = B = \\n y\\n")
[' = A = \\n x', ' = B = \\n y\\n']
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.io.datadir import DATA_DIR_HINT as _HINT

#: The 67 BLiMP paradigms (UIDs), in the order of the published data set.
BLIMP_PARADIGMS: tuple[str, ...] = (
    "adjunct_island",
    "anaphor_gender_agreement",
    "anaphor_number_agreement",
    "animate_subject_passive",
    "animate_subject_trans",
    "causative",
    "complex_NP_island",
    "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction",
    "determiner_noun_agreement_1",
    "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1",
    "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2",
    "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun",
    "distractor_agreement_relative_clause",
    "drop_argument",
    "ellipsis_n_bar_1",
    "ellipsis_n_bar_2",
    "existential_there_object_raising",
    "existential_there_quantifiers_1",
    "existential_there_quantifiers_2",
    "existential_there_subject_raising",
    "expletive_it_object_raising",
    "inchoative",
    "intransitive",
    "irregular_past_participle_adjectives",
    "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1",
    "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question",
    "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present",
    "npi_present_1",
    "npi_present_2",
    "only_npi_licensor_present",
    "only_npi_scope",
    "passive_1",
    "passive_2",
    "principle_A_c_command",
    "principle_A_case_1",
    "principle_A_case_2",
    "principle_A_domain_1",
    "principle_A_domain_2",
    "principle_A_domain_3",
    "principle_A_reconstruction",
    "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2",
    "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope",
    "sentential_subject_island",
    "superlative_quantifiers_1",
    "superlative_quantifiers_2",
    "tough_vs_raising_1",
    "tough_vs_raising_2",
    "transitive",
    "wh_island",
    "wh_questions_object_gap",
    "wh_questions_subject_gap",
    "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap",
    "wh_vs_that_no_gap_long_distance",
    "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
)

BLIMP_FIELDS = ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID")
ARC_SPLITS = {"train": "Train", "validation": "Dev", "test": "Test"}
WIKITEXT_SPLITS = {"validation": "valid.txt", "test": "test.txt"}


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read a jsonl file; a malformed line raises WorkbenchError naming ``file:line``.

    Blank lines are skipped. ``required`` lists keys every record must have.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as err:
        raise WorkbenchError(f"{path}: cannot read ({err.strerror}); {_HINT}") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise WorkbenchError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise WorkbenchError(f"{path}:{lineno}: expected a JSON object per line")
            missing = [k for k in required if k not in rec]
            if missing:
                raise WorkbenchError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            records.append(rec)
    return records


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WorkbenchError(f"{path}: {what} not found; put the file there or {_HINT}")
    return path


def _hub_dataset(path: str, name: str | None, split: str):  # pragma: no cover - needs the Hub
    try:
        import datasets
    except ImportError:
        raise WorkbenchError(
            f"reading {path} from the Hub needs the `datasets` package (pip install 'workbench[hub]'); or {_HINT}"
        ) from None
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # network, missing config, ...
        raise WorkbenchError(f"{path} ({name}, {split}): could not load from the Hub ({err}); {_HINT}") from None


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def blimp_file(data_dir: Path | str, paradigm: str) -> Path:
    """Where a data directory keeps one BLiMP paradigm: ``blimp/<paradigm>.jsonl``."""
    return Path(data_dir) / "blimp" / f"{paradigm}.jsonl"


def arc_easy_file(data_dir: Path | str, split: str) -> Path:
    """Where a data directory keeps an ARC-Easy split: ``arc_easy/ARC-Easy-{Train,Dev,Test}.jsonl``.

    An unknown split names a file of its own (hashing never fails); the loader rejects it.
    """
    return Path(data_dir) / "arc_easy" / f"ARC-Easy-{ARC_SPLITS.get(split, split)}.jsonl"


def wikitext_file(data_dir: Path | str, split: str) -> Path:
    """Where a data directory keeps a WikiText-2 split: ``wikitext-2/{valid,test}.txt``."""
    return Path(data_dir) / "wikitext-2" / WIKITEXT_SPLITS.get(split, split)


def files_fingerprint(files: list[Path]) -> str:
    """sha256 over the contents of ``files`` (memoised per path, size and mtime), so
    cached results follow the data, not its location."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        digest = _FILE_HASHES.get(memo)
        if digest is None:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            _FILE_HASHES[memo] = digest
        h.update(f"{f.name}:{digest}\n".encode())
    return h.hexdigest()


# --- BLiMP ------------------------------------------------------------------------------


_BLIMP_MEMO: dict[tuple, list[dict]] = {}


def load_blimp(data_dir: Path | None, paradigms: tuple[str, ...] | list[str] | None = None) -> list[dict]:
    """All minimal pairs of the given BLiMP paradigms (default: all 67), in file order.

    Records read from a data directory are kept for the process (keyed by the files' sizes
    and modification times), so repeated evaluations (sweeps, panels, widgets) parse the
    67 files once; each call returns a new list of the same read-only records.
    """
    paradigms = tuple(paradigms) if paradigms is not None else BLIMP_PARADIGMS
    unknown = [p for p in paradigms if p not in BLIMP_PARADIGMS]
    if unknown:
        raise WorkbenchError(f"unknown BLiMP paradigm(s): {', '.join(unknown)}")
    if data_dir is None:
        return _read_blimp(None, paradigms)
    stats = []
    for uid in paradigms:
        try:
            st = os.stat(blimp_file(data_dir, uid))
        except OSError:
            return _read_blimp(data_dir, paradigms)  # the reader names the missing file
        stats.append((st.st_size, st.st_mtime_ns))
    key = (str(Path(data_dir).resolve()), paradigms, tuple(stats))
    if key not in _BLIMP_MEMO:
        if len(_BLIMP_MEMO) >= 4:
            _BLIMP_MEMO.pop(next(iter(_BLIMP_MEMO)))
        _BLIMP_MEMO[key] = _read_blimp(data_dir, paradigms)
    return list(_BLIMP_MEMO[key])


def _read_blimp(data_dir: Path | None, paradigms: tuple[str, ...]) -> list[dict]:
    out: list[dict] = []
    for uid in paradigms:
        if data_dir is not None:
            path = _need(blimp_file(data_dir, uid), f"BLiMP paradigm {uid}")
            recs = read_jsonl(path, BLIMP_FIELDS)
            where = str(path)
        else:  # pragma: no cover - needs the Hub
            recs = [dict(r) for r in _hub_dataset("nyu-mll/blimp", uid, "train")]
            where = f"nyu-mll/blimp:{uid}"
        seen: set[str] = set()
        for i, r in enumerate(recs):
            pid = str(r["pairID"])
            if pid in seen:
                raise WorkbenchError(f"{where}: duplicate pairID {pid!r} (record {i + 1})")
            seen.add(pid)
            out.append({k: (str(r[k]) if k != "pairID" else pid) for k in BLIMP_FIELDS})
    return out


# --- ARC-Easy ---------------------------------------------------------------------------


def _arc_from_ai2(rec: dict, where: str) -> dict:
    q = rec.get("question")
    if not isinstance(q, dict) or "stem" not in q or "choices" not in q:
        raise WorkbenchError(f"{where}: expected question.stem and question.choices")
    try:
        labels = [str(c["label"]) for c in q["choices"]]
        texts = [str(c["text"]) for c in q["choices"]]
    except (KeyError, TypeError):
        raise WorkbenchError(f"{where}: each choice needs 'label' and 'text'") from None
    return {
        "id": str(rec["id"]),
        "question": str(q["stem"]),
        "choices": {"text": texts, "label": labels},
        "answerKey": str(rec["answerKey"]),
    }


def arc_gold_index(labels: list[str], answer_key: str) -> int:
    """Index of the gold choice, as lm-eval (``labels.index(answerKey)``); digit keys
    ("1".."4") that do not appear among letter labels map to position key-1.

    >>> arc_gold_index(["A", "B", "C", "D"], "C"), arc_gold_index(["1", "2", "3", "4"], "2")
    (2, 1)
    >>> arc_gold_index(["A", "B", "C", "D"], "4")
    3
    """
    if answer_key in labels:
        return labels.index(answer_key)
    if answer_key.isdigit() and 1 <= int(answer_key) <= len(labels):
        return int(answer_key) - 1
    raise WorkbenchError(f"answer key {answer_key!r} is not one of the labels {labels}")


def load_arc_easy(data_dir: Path | None, split: str = "validation") -> list[dict]:
    """ARC-Easy questions in the Hub layout; ``split`` in train/validation/test.

    The reference data directory ships Train and Dev only, so the default is
    ``validation`` (Dev, 570 questions).
    """
    if split not in ARC_SPLITS:
        raise WorkbenchError(f"unknown ARC split {split!r}; choose one of {', '.join(ARC_SPLITS)}")
    out: list[dict] = []
    if data_dir is not None:
        path = _need(arc_easy_file(data_dir, split), f"ARC-Easy {split} split")
        for lineno, rec in enumerate(read_jsonl(path, ("id", "question", "answerKey")), start=1):
            out.append(_arc_from_ai2(rec, f"{path}:{lineno}"))
        where = str(path)
    else:  # pragma: no cover - needs the Hub
        for rec in _hub_dataset("allenai/ai2_arc", "ARC-Easy", split):
            out.append(
                {
                    "id": str(rec["id"]),
                    "question": rec["question"],
                    "choices": {"text": list(rec["choices"]["text"]), "label": list(rec["choices"]["label"])},
                    "answerKey": str(rec["answerKey"]),
                }
            )
        where = "allenai/ai2_arc:ARC-Easy"
    for i, rec in enumerate(out):
        try:
            arc_gold_index(rec["choices"]["label"], rec["answerKey"])
        except WorkbenchError as err:
            raise WorkbenchError(f"{where}: question {rec['id']} (record {i + 1}): {err}") from None
    return out


# --- WikiText ---------------------------------------------------------------------------


def _is_title(line: str) -> bool:
    """A level-1 heading line (`` = Title = ``), after collapsing ``= =`` runs."""
    s = line.replace("= = =", "===").replace("= =", "==").strip()
    return s.startswith("= ") and s.endswith(" =")


def split_wikitext_documents(text: str) -> list[str]:
    """Split a WikiText file into articles at level-1 headings, as the document-level
    Hub data set does: each page starts at its `` = Title = `` line; lines are joined
    with newlines; a page made only of whitespace is dropped (except the last one)."""
    pages: list[str] = []
    cur: list[str] = []
    for line in text.split("\n"):
        if _is_title(line):
            page = "\n".join(cur)
            if page.strip():
                pages.append(page)
            cur = []
        cur.append(line)
    pages.append("\n".join(cur))
    return pages


def wikitext_variant(data_dir: Path | str | None) -> str:
    """The WikiText-2 variant :func:`load_wikitext` reads: tokenised from a data directory,
    raw from the Hub."""
    return "wikitext-2-v1" if data_dir is not None else "wikitext-2-raw-v1"


def load_wikitext(data_dir: Path | None, split: str = "test") -> tuple[list[str], str]:
    """WikiText-2 articles and the variant name.

    From a data directory: ``wikitext-2/{valid,test}.txt``, the tokenised variant
    (``"wikitext-2-v1"``: ``<unk>`` for rare words). From the Hub: the raw variant
    (``"wikitext-2-raw-v1"`` of ``EleutherAI/wikitext_document_level``), the one
    lm-eval's ``wikitext`` task reads.
    """
    if split not in WIKITEXT_SPLITS:
        raise WorkbenchError(f"unknown WikiText split {split!r}; choose one of {', '.join(WIKITEXT_SPLITS)}")
    if data_dir is not None:
        path = _need(wikitext_file(data_dir, split), f"WikiText-2 {split} split")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise WorkbenchError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        return split_wikitext_documents(text), wikitext_variant(data_dir)
    ds = _hub_dataset("EleutherAI/wikitext_document_level", wikitext_variant(None), split)  # pragma: no cover
    return [r["page"] for r in ds], wikitext_variant(None)  # pragma: no cover


def load_text_documents(path: str | os.PathLike) -> list[str]:
    """Documents of a plain UTF-8 text file, separated by blank lines (whitespace-only
    documents dropped)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: text file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise WorkbenchError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    docs = [d.strip("\n") for d in re.split(r"\n[ \t]*\n", text)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise WorkbenchError(f"{path}: no text to score")
    return docs
