"""The corpus a family learns from: files, documents, the held-out split, tokenizer and token stream.

Documents are separated by blank lines. A seeded shuffle puts the held-out documents first
(``heldout.txt``, never seen by the tokenizer or the models) and the training documents after;
the tokenizer is a byte-level BPE that adds BOS; the training stream is every document as
BOS + text + EOS, cut into blocks of ``seq_len`` tokens.

>>> train, held = split_documents(list("abcdefghij"), TrainRecipe())
>>> sorted(train + held) == list("abcdefghij"), len(held)
(True, 1)
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.factory.recipe import TrainRecipe
from workbench.io.datadir import resolve_data_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "corpus_files",
    "encode_stream",
    "file_digest",
    "load_split",
    "read_documents",
    "resolve_corpus",
    "split_documents",
    "token_blocks",
    "train_tokenizer",
]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def resolve_corpus(patterns: Sequence["str | os.PathLike"], data_dir: "str | os.PathLike | None" = None) -> list[Path]:
    """Expand files / glob patterns (relative ones against ``data_dir`` when given) to files."""
    if not patterns:
        raise WorkbenchError("corpus: no files given")
    files: list[Path] = []
    for pat in patterns:
        p = Path(pat).expanduser()
        if not p.is_absolute() and data_dir is not None:
            p = Path(data_dir) / p
        if glob.has_magic(str(p)):
            hits = sorted(Path(h) for h in glob.glob(str(p)) if Path(h).is_file())
            if not hits:
                raise WorkbenchError(f"corpus: pattern {p} matches no files")
            files.extend(hits)
        elif p.is_file():
            files.append(p)
        else:
            raise WorkbenchError(f"corpus file {p} not found")
    seen: set[Path] = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


def read_documents(files: Sequence["str | os.PathLike"]) -> list[str]:
    """Read text files; documents are separated by blank lines; empty documents are dropped.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "c.txt"
    >>> _ = p.write_text("one doc\\nstill one\\n\\n\\nsecond doc\\n")
    >>> read_documents([p])
    ['one doc\\nstill one', 'second doc']
    """
    docs: list[str] = []
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise WorkbenchError(f"corpus file {f}: cannot read ({err.strerror})") from None
        text = text.replace("\r\n", "\n")
        for block in text.split("\n\n"):
            block = block.strip("\n")
            if block.strip():
                docs.append(block)
    return docs


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_documents(docs: list[str], recipe: TrainRecipe) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then held-out documents first, training documents after (both capped).

    >>> split_documents(["a", "b", "c", "d"], TrainRecipe(data={"heldout_fraction": 0.25}))
    (['a', 'b', 'd'], ['c'])
    """
    d = recipe.data
    order = list(range(len(docs)))
    random.Random(recipe.seed).shuffle(order)
    n_held = max(1, round(d.heldout_fraction * len(docs)))
    held: list[str] = []
    chars = 0
    for i in order[:n_held]:
        if d.heldout_max_chars is not None and held and chars + len(docs[i]) > d.heldout_max_chars:
            break
        held.append(docs[i])
        chars += len(docs[i])
    train: list[str] = []
    chars = 0
    for i in order[n_held:]:
        if d.max_train_chars is not None and chars >= d.max_train_chars:
            break
        train.append(docs[i])
        chars += len(docs[i])
    return train, held


def corpus_files(
    recipe: TrainRecipe,
    corpus: Sequence[str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tuple[list[Path], list[str]]:
    """The corpus files a build reads and their sha256 digests.

    ``corpus`` (files or globs) replaces the recipe's ``data.corpus``; the recipe's relative
    patterns resolve against the data directory (:func:`workbench.io.datadir.resolve_data_dir`).
    """
    if corpus is not None:
        files = resolve_corpus([str(c) for c in corpus], None)
    else:
        ddir = resolve_data_dir(data_dir)
        if ddir is None and any(not Path(p).is_absolute() for p in recipe.data.corpus):
            raise WorkbenchError(
                "no data directory for the corpus: pass --corpus FILES, --data-dir DIR or set WORKBENCH_DATA_DIR"
            )
        files = resolve_corpus(recipe.data.corpus, ddir)
    return files, [file_digest(f) for f in files]


def load_split(files: Sequence[Path], recipe: TrainRecipe) -> tuple[list[str], list[str], list[str]]:
    """All documents of the corpus, then its training and held-out documents (:func:`split_documents`).

    A corpus with fewer than two documents, or none left for training, is refused.
    """
    docs = read_documents(files)
    if not docs:
        raise WorkbenchError(f"corpus is empty: {', '.join(str(f) for f in files)}")
    if len(docs) < 2:
        raise WorkbenchError(
            f"corpus has only one document ({files[0]}): need at least two (documents are separated by blank lines)"
        )
    train_docs, held_docs = split_documents(docs, recipe)
    if not train_docs:
        raise WorkbenchError("corpus: no documents left for training after the held-out split")
    return docs, train_docs, held_docs


def train_tokenizer(
    docs: Sequence[str], vocab_size: int, *, min_frequency: int = 2, max_chars: int | None = None
) -> "PreTrainedTokenizerFast":
    """Train a byte-level BPE tokenizer; returns a transformers fast tokenizer that adds BOS.

    >>> tok = train_tokenizer(["hello world, hello there"] * 50, 270)
    >>> ids = tok("hello world").input_ids
    >>> ids[0] == tok.bos_token_id, tok.decode(ids, skip_special_tokens=True)
    (True, 'hello world')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def sample() -> Iterator[str]:
        used = 0
        for doc in docs:
            if max_chars is not None and used >= max_chars:
                return
            yield doc
            used += len(doc)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample(), trainer)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise WorkbenchError(
            f"corpus supports only {got} tokens but the recipe asks for tokenizer.vocab_size={vocab_size} "
            f"(min_frequency={min_frequency}): lower the vocabulary or give more text"
        )
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def encode_stream(tokenizer: "PreTrainedTokenizerBase", docs: Sequence[str]) -> list[int]:
    """Token stream: each document with its BOS (added by the tokenizer) and a closing EOS.

    >>> tok = train_tokenizer(["hello world, hello there"] * 50, 270)
    >>> stream = encode_stream(tok, ["hello", "world"])
    >>> stream.count(tok.bos_token_id), stream.count(tok.eos_token_id), stream[-1] == tok.eos_token_id
    (2, 2, True)
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    batch = 512
    for i in range(0, len(docs), batch):
        for ids in tokenizer(list(docs[i : i + batch]))["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    return stream


def token_blocks(stream: Sequence[int], recipe: TrainRecipe) -> "torch.Tensor":
    """The training stream cut into ``seq_len`` blocks (the tail that fills no block is dropped).

    >>> token_blocks(list(range(20)), TrainRecipe(optim={"seq_len": 8, "batch_size": 2})).shape
    torch.Size([2, 8])
    """
    import torch

    B, S = recipe.optim.batch_size, recipe.optim.seq_len
    n_blocks = len(stream) // S
    if n_blocks < B:
        raise WorkbenchError(
            f"corpus too small: {len(stream)} training tokens make {n_blocks} blocks of seq_len={S}, "
            f"fewer than one batch (batch_size={B})"
        )
    return torch.tensor(stream[: n_blocks * S], dtype=torch.long).view(n_blocks, S)
