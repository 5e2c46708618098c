"""Checkpoint families on disk: train one (resumably) into a directory, open one, name one.

:func:`train_family` prepares the corpus and tokenizer (everything that can fail on bad input
fails before anything is written), then trains one run per member, each planned by its own
builder: the trajectory, the annealed control, the siblings and the independent runs.
``family.yaml`` records the recipe, the corpus digests and every member; a build in progress
says ``status: building`` and resumes from ``.state/`` when run again.

>>> FAMILY_FORMAT
'workbench-family/1'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from workbench.errors import WorkbenchError
from workbench.factory.corpus import corpus_files, encode_stream, load_split, token_blocks, train_tokenizer
from workbench.factory.recipe import TrainRecipe, load_train_recipe, recipe_hash, validate_recipe
from workbench.factory.schedule import lr_at
from workbench.factory.trainer import Run, Trainer, llama_config, loss_curve, param_count
from workbench.io.yaml import parse_yaml

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["FAMILY_FILE", "FAMILY_FORMAT", "Family", "family_id", "load_family", "train_family"]

FAMILY_FILE = "family.yaml"
FAMILY_FORMAT = "workbench-family/1"


@dataclass(frozen=True)
class Family:
    """A trained checkpoint family (see :mod:`workbench.factory`); paths are absolute.

    >>> fam = load_family("runs/tiny")  # doctest: +SKIP
    >>> fam.trajectory[-1].name  # doctest: +SKIP
    'step-000240'
    """

    root: Path
    trajectory: list[Path]
    siblings: list[Path]
    independent: list[Path]
    annealed: Path | None
    heldout: Path
    recipe: TrainRecipe
    tokenizer: Path
    info: dict = field(default_factory=dict, repr=False, compare=False)

    def checkpoints(self) -> list[Path]:
        """Every checkpoint directory of the family."""
        out = [*self.trajectory, *self.siblings, *self.independent]
        if self.annealed is not None:
            out.append(self.annealed)
        return out

    def losses(self, run: str = "trajectory") -> list[tuple[int, float]]:
        """(step, mean training loss over the logging interval) pairs of one run."""
        return [(int(s), float(v)) for s, v in self.info.get("losses", {}).get(run, [])]


def load_family(out_dir: str | os.PathLike) -> Family:
    """Open a family directory written by :func:`train_family` (WorkbenchError if incomplete)."""
    root = Path(out_dir).absolute()
    fy = root / FAMILY_FILE
    if not fy.is_file():
        raise WorkbenchError(f"{root}: no {FAMILY_FILE}: not a checkpoint family directory")
    info = parse_yaml(fy.read_text(encoding="utf-8"), str(fy))
    if not isinstance(info, dict) or info.get("format") != FAMILY_FORMAT:
        raise WorkbenchError(f"{fy}: not a workbench family file (format {FAMILY_FORMAT} expected)")
    if info.get("status") != "complete":
        raise WorkbenchError(
            f"{root}: the family is not complete (status {info.get('status')!r}); run train again to resume"
        )
    recipe = validate_recipe(info["recipe"], str(fy))

    def paths(entries: list[dict]) -> list[Path]:
        out = []
        for e in entries:
            p = root / e["path"]
            if not (p / "config.json").is_file():
                raise WorkbenchError(f"{fy}: checkpoint {p} is missing")
            out.append(p)
        return out

    annealed = paths([info["annealed"]])[0] if info.get("annealed") else None
    return Family(
        root=root,
        trajectory=paths(info.get("trajectory", [])),
        siblings=paths(info.get("siblings", [])),
        independent=paths(info.get("independent", [])),
        annealed=annealed,
        heldout=root / info["heldout"],
        recipe=recipe,
        tokenizer=root / info["tokenizer"],
        info=info,
    )


def family_id(
    recipe_or_preset: str | os.PathLike | Mapping[str, Any] | TrainRecipe,
    *,
    corpus: Sequence[str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> str:
    """The identity (sha256 hex) of the family a recipe would build on a corpus: for cache keys.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "c.txt"; _ = p.write_text("a b\\n\\nc d\\n")
    >>> len(family_id("tiny", corpus=[p]))
    64
    """
    recipe = load_train_recipe(recipe_or_preset)
    _, digests = corpus_files(recipe, corpus, data_dir)
    return recipe_hash(recipe, digests)


# --- building a family ----------------------------------------------------------------------


def train_family(
    recipe_or_preset: str | os.PathLike | Mapping[str, Any] | TrainRecipe,
    out_dir: str | os.PathLike,
    *,
    corpus: Sequence[str | os.PathLike] | None = None,
    device: str | None = None,
    progress: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> Family:
    """Train a whole checkpoint family into ``out_dir`` (resuming an interrupted build).

    ``corpus`` (files or globs) replaces the recipe's ``data.corpus``; relative patterns of the
    recipe resolve against the data directory (``data_dir`` > env ``WORKBENCH_DATA_DIR`` >
    ``<repo>/../shared/data``). An ``out_dir`` holding a different family is refused; the
    same recipe on the same corpus resumes (or returns at once when complete).

    >>> fam = train_family("tiny", "runs/tiny")  # doctest: +SKIP
    >>> len(fam.trajectory), fam.annealed.name  # doctest: +SKIP
    (4, 'annealed')
    """
    import torch

    from workbench.devices import resolve_device

    recipe = load_train_recipe(recipe_or_preset)
    root = Path(out_dir).absolute()
    files, digests = corpus_files(recipe, corpus, data_dir)
    identity = recipe_hash(recipe, digests)
    if root.exists() and not root.is_dir():
        raise WorkbenchError(f"output {root} exists and is not a directory")
    _check_out_dir(root, identity, recipe)
    if _is_complete(root):
        return load_family(root)
    dev = resolve_device(device)
    data = _prepare(recipe, root, files)  # may refuse the corpus: nothing is written before it
    with _locked(root):
        if _is_complete(root):  # another build finished while this one waited for the lock
            _check_out_dir(root, identity, recipe)
            return load_family(root)
        t_start = time.perf_counter()
        info: dict[str, Any] = {
            "format": FAMILY_FORMAT,
            "status": "building",
            "name": recipe.name,
            "recipe_hash": identity,
            "recipe": recipe.model_dump(mode="json"),
            "corpus": [{"file": str(f), "sha256": d} for f, d in zip(files, digests)],
        }
        _begin(root, info, data)
        trainer = Trainer(recipe, data.blocks, data.config, root / "tokenizer", root, dev, progress)
        members = _plan(recipe, root, trainer.state_dir)
        losses = {m.run.name: loss_curve(trainer.run(m.run), m.run.start_step) for m in members}
        info.update(_contents(recipe, data, members, losses))
        info["build"] = {
            "device": dev,
            "torch": str(torch.__version__),
            "seconds": round(time.perf_counter() - t_start, 2),
            "run_seconds": trainer.timings,
            "tokens_per_s": trainer.tokens_per_s,
        }
        _write_family_yaml(root, info)
        shutil.rmtree(trainer.state_dir, ignore_errors=True)
        return load_family(root)


@dataclass
class _Data:
    """What a build trains on, prepared (and checked) before anything is written."""

    documents: int
    train_documents: int
    held_docs: list[str]
    tokenizer: PreTrainedTokenizerBase
    train_tokens: int
    blocks: torch.Tensor
    config: dict


def _prepare(recipe: TrainRecipe, root: Path, files: list[Path]) -> _Data:
    """Documents, split, tokenizer (the one already saved in ``root`` when resuming) and blocks."""
    docs, train_docs, held_docs = load_split(files, recipe)
    tok_file = root / "tokenizer" / "tokenizer.json"
    if tok_file.is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_file.parent))
    else:
        tok = train_tokenizer(
            train_docs,
            recipe.tokenizer.vocab_size,
            min_frequency=recipe.tokenizer.min_frequency,
            max_chars=recipe.data.tokenizer_chars,
        )
    stream = encode_stream(tok, train_docs)
    blocks = token_blocks(stream, recipe)
    return _Data(len(docs), len(train_docs), held_docs, tok, len(stream), blocks, llama_config(recipe, tok))


def _begin(root: Path, info: dict, data: _Data) -> None:
    """Mark the build as in progress; write the held-out text and the tokenizer once."""
    from workbench.io.atomic import atomic_output_dir, write_text_atomic

    _write_family_yaml(root, info)
    for leftover in root.rglob(".*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    heldout = root / "heldout.txt"
    if not heldout.is_file():
        write_text_atomic(heldout, "\n\n".join(data.held_docs) + "\n")
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        with atomic_output_dir(tok_dir, overwrite=True) as tmp:
            data.tokenizer.save_pretrained(str(tmp))


def _contents(recipe: TrainRecipe, data: _Data, members: list[_Member], losses: dict[str, list]) -> dict:
    """The finished family's entries in ``family.yaml`` (members, data counts, loss curves)."""
    tokens_per_step = recipe.optim.batch_size * recipe.optim.seq_len
    entries = {kind: [m.entry for m in members if m.kind == kind] for kind in ("siblings", "independent")}
    annealed = [m.entry for m in members if m.kind == "annealed"]
    return {
        "status": "complete",
        "tokenizer": "tokenizer",
        "heldout": "heldout.txt",
        "vocab_size": len(data.tokenizer),
        "n_params": int(param_count(data.config)),
        "tokens_per_step": tokens_per_step,
        "data": {
            "documents": data.documents,
            "train_documents": data.train_documents,
            "heldout_documents": len(data.held_docs),
            "train_tokens": data.train_tokens,
            "blocks": int(data.blocks.shape[0]),
        },
        "trajectory": [
            {"path": f"trajectory/step-{s:06d}", "step": s, "tokens": s * tokens_per_step} for s in recipe.kept_steps()
        ],
        "siblings": entries["siblings"],
        "independent": entries["independent"],
        "annealed": annealed[0] if annealed else None,
        "losses": losses,
    }


# --- the members: one builder per kind of run --------------------------------------------------


@dataclass
class _Member:
    """One planned run of the family and its entry in ``family.yaml`` (None for the trajectory,
    whose kept checkpoints are listed from the recipe)."""

    kind: str  # "trajectory", "annealed", "siblings" or "independent"
    run: Run
    entry: dict | None = None


def _plan(recipe: TrainRecipe, root: Path, state_dir: Path) -> list[_Member]:
    """Every run of the family, in training order: the trajectory first (it writes the branch
    states the others start from), then the annealed control (with the trajectory it is all a
    soup comparison needs), the siblings and the independent runs."""
    members = [_trajectory(recipe, root, state_dir)]
    if recipe.annealed.enabled:
        members.append(_annealed(recipe, root, state_dir))
    members += _siblings(recipe, root, state_dir)
    members += _independents(recipe, root)
    return members


def _branch_state(state_dir: Path, step: int) -> Path:
    """The trajectory's training state at ``step``, kept for the runs that branch there."""
    return state_dir / f"branch-{step:06d}.pt"


def _trajectory(recipe: TrainRecipe, root: Path, state_dir: Path) -> _Member:
    """The trajectory: keeps its last checkpoints and the states the branches start from."""
    o, tr = recipe.optim, recipe.trajectory
    extra = {recipe.branch_step(): _branch_state(state_dir, recipe.branch_step())}
    if recipe.annealed.enabled:
        extra[recipe.window_start()] = _branch_state(state_dir, recipe.window_start())
    run = Run(
        name="trajectory",
        init_seed=recipe.seed,
        data_seed=recipe.seed,
        start_step=0,
        end_step=tr.steps,
        lr_fn=partial(
            lr_at, lr=o.lr, warmup=o.warmup_steps, schedule=tr.schedule, total=tr.steps, min_ratio=o.min_lr_ratio
        ),
        save_steps={s: root / "trajectory" / f"step-{s:06d}" for s in recipe.kept_steps()},
        state_steps=set(range(tr.checkpoint_every, tr.steps + 1, tr.checkpoint_every)),
        extra_state=extra,
    )
    return _Member("trajectory", run)


def _annealed(recipe: TrainRecipe, root: Path, state_dir: Path) -> _Member:
    """The annealed control: the trajectory from the soup window's start, LR decayed to the end."""
    o, a0, n = recipe.optim, recipe.window_start(), recipe.annealed_steps()
    decay = recipe.annealed.decay
    lr_fn = partial(lr_at, lr=o.lr, warmup=0, min_ratio=o.min_lr_ratio, decay_start=a0, decay_steps=n, decay=decay)
    return _one_checkpoint_run(
        recipe,
        root,
        "annealed",
        "annealed",
        init_seed=recipe.seed,
        data_seed=recipe.seed,
        start=a0,
        steps=n,
        lr_fn=lr_fn,
        branch_from=_branch_state(state_dir, a0),
        entry={"from_step": a0, "steps": n, "decay": decay},
    )


def _siblings(recipe: TrainRecipe, root: Path, state_dir: Path) -> list[_Member]:
    """Siblings: the trajectory from the branch step at constant LR, each with its own data order."""
    branch, n = recipe.branch_step(), recipe.sibling_steps()
    out = []
    for i in range(recipe.siblings.count):
        data_seed = recipe.seed + 101 + i
        member = _one_checkpoint_run(
            recipe,
            root,
            "siblings",
            f"siblings/sibling-{i + 1}",
            init_seed=recipe.seed,
            data_seed=data_seed,
            start=branch,
            steps=n,
            lr_fn=partial(lr_at, lr=recipe.optim.lr, warmup=0),
            branch_from=_branch_state(state_dir, branch),
            entry={"branch_step": branch, "steps": n, "data_seed": data_seed},
        )
        out.append(member)
    return out


def _independents(recipe: TrainRecipe, root: Path) -> list[_Member]:
    """Independent runs: from scratch, other initialisation and data order, the trajectory's schedule."""
    o, tr, n = recipe.optim, recipe.trajectory, recipe.independent_steps()
    lr_fn = partial(lr_at, lr=o.lr, warmup=o.warmup_steps, schedule=tr.schedule, total=n, min_ratio=o.min_lr_ratio)
    out = []
    for i in range(recipe.independent.count):
        seed = recipe.seed + 1001 + i
        member = _one_checkpoint_run(
            recipe,
            root,
            "independent",
            f"independent/independent-{i + 1}",
            init_seed=seed,
            data_seed=seed,
            start=0,
            steps=n,
            lr_fn=lr_fn,
            entry={"init_seed": seed, "data_seed": seed, "steps": n},
        )
        out.append(member)
    return out


def _one_checkpoint_run(
    recipe: TrainRecipe,
    root: Path,
    kind: str,
    path: str,
    *,
    init_seed: int,
    data_seed: int,
    start: int,
    steps: int,
    lr_fn: Callable[[int], float],
    entry: dict,
    branch_from: Path | None = None,
) -> _Member:
    """What the annealed control, siblings and independent runs share: ``steps`` steps from
    ``start`` (from ``branch_from``'s state when given), one checkpoint at the end (``path``
    in the family, whose last part names the run), a resume state every ``checkpoint_every``
    steps; the entry gains the path and the tokens seen."""
    every, end = recipe.trajectory.checkpoint_every, start + steps
    run = Run(
        name=path.rsplit("/", 1)[-1],
        init_seed=init_seed,
        data_seed=data_seed,
        start_step=start,
        end_step=end,
        lr_fn=lr_fn,
        save_steps={end: root / path},
        state_steps=set(range(start + every, end, every)),
        branch_from=branch_from,
    )
    tokens = end * recipe.optim.batch_size * recipe.optim.seq_len
    return _Member(kind, run, {"path": path, **entry, "tokens": tokens})


# --- family.yaml, the lock, the output directory ------------------------------------------------


def _read_family_yaml(root: Path) -> dict | None:
    fy = root / FAMILY_FILE
    if not fy.is_file():
        return None
    info = parse_yaml(fy.read_text(encoding="utf-8"), str(fy))
    return info if isinstance(info, dict) else {}


def _is_complete(root: Path) -> bool:
    info = _read_family_yaml(root) if root.is_dir() else None
    return info is not None and info.get("status") == "complete"


def _write_family_yaml(root: Path, info: dict) -> None:
    from workbench.io.atomic import write_text_atomic

    write_text_atomic(root / FAMILY_FILE, yaml.safe_dump(info, sort_keys=False, width=120))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on the family directory, so two builds into one place take turns."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_out_dir(root: Path, identity: str, recipe: TrainRecipe) -> None:
    """Refuse an output directory that holds something other than this family."""
    if not root.is_dir():
        return
    info = _read_family_yaml(root)
    if info is None:
        visible = [p.name for p in root.iterdir() if not p.name.startswith(".")]
        if visible:
            raise WorkbenchError(
                f"output directory {root} is not empty and holds no {FAMILY_FILE}; choose an empty or new directory"
            )
        return
    if info.get("format") != FAMILY_FORMAT:
        raise WorkbenchError(f"{root / FAMILY_FILE}: not a workbench family file; choose another directory")
    if info.get("recipe_hash") != identity:
        what = "recipe" if info.get("recipe") != recipe.model_dump(mode="json") else "corpus"
        raise WorkbenchError(
            f"output directory {root} already holds a different family ({info.get('name')!r}, other {what}); "
            "choose another directory"
        )
