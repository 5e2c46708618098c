"""Checkpoint factory: train small Llama models and whole checkpoint families to merge.

A *family* is one directory of Hugging Face checkpoints that share a tokenizer, plus a
``family.yaml`` describing them:

- ``trajectory``: one run at the recipe's learning-rate schedule (constant by default); the last ``keep_last`` checkpoints,
  ``checkpoint_every`` steps apart, are kept (averaging them is a known positive control).
- ``siblings``: runs branched from a late shared trajectory checkpoint (by default the first
  kept one), continued with different data orders.
- ``independent``: runs from different random initialisations (for barrier studies).
- ``annealed``: the trajectory continued from the same branch checkpoint with the learning
  rate decayed to zero over the same tokens the soup window spans: the fair control for a
  uniform soup of the trajectory checkpoints (same start, same data, same tokens).
- ``heldout.txt``: documents of the corpus kept out of tokenizer and model training.

Recipes are YAML files validated by :class:`TrainRecipe`; the presets ``tiny`` (seconds,
for tests) and ``demo`` (minutes, for the demo) live in ``workbench/presets/``.

>>> r = load_train_recipe("tiny")
>>> r.name, r.trajectory.schedule
('tiny', 'constant')
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workbench.errors import WorkbenchError
from workbench.io.datadir import resolve_data_dir
from workbench.io.yaml import parse_yaml

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PRESETS",
    "Family",
    "TrainRecipe",
    "load_train_recipe",
    "train_family",
    "load_family",
    "recipe_hash",
    "family_id",
    "heldout_perplexity",
    "read_documents",
    "lr_at",
    "batch_order",
]

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("tiny", "demo")
FAMILY_FILE = "family.yaml"
FAMILY_FORMAT = "workbench-family/1"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TRAINER_VERSION = 1  # bump when training changes the bytes a recipe produces (invalidates caches)


# ----------------------------------------------------------------------------------------
# recipe schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Which text to train on and how much of it."""

    corpus: list[str] = Field(default_factory=lambda: ["corpus/*.txt"])
    """Files or glob patterns; relative ones resolve against the data directory."""
    max_train_chars: int | None = Field(default=None, gt=0)
    """Cap on the training text (documents are shuffled first, so the cap takes a sample)."""
    tokenizer_chars: int = Field(default=2_000_000, gt=0)
    """Cap on the text the tokenizer is trained on (taken from the training documents)."""
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1)
    heldout_max_chars: int | None = Field(default=200_000, gt=0)


class TokenizerSpec(_Strict):
    vocab_size: int = Field(default=2048, ge=260)
    min_frequency: int = Field(default=2, ge=1)


class ModelSpec(_Strict):
    hidden_size: int = Field(default=128, gt=0)
    intermediate_size: int = Field(default=344, gt=0)
    num_hidden_layers: int = Field(default=4, gt=0)
    num_attention_heads: int = Field(default=4, gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    initializer_range: float = Field(default=0.02, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        kv = self.num_key_value_heads or self.num_attention_heads
        if self.num_attention_heads % kv:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class OptimSpec(_Strict):
    seq_len: int = Field(default=128, ge=8)
    batch_size: int = Field(default=16, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Cosine and annealing schedules end at ``lr * min_lr_ratio``."""
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)


class TrajectorySpec(_Strict):
    steps: int = Field(default=1000, gt=0)
    checkpoint_every: int = Field(default=50, gt=0)
    keep_last: int = Field(default=5, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"


class SiblingsSpec(_Strict):
    count: int = Field(default=3, ge=0)
    branch_step: int | None = Field(default=None, gt=0)
    """Trajectory step to branch from (a multiple of checkpoint_every); default: the first kept checkpoint."""
    steps: int | None = Field(default=None, gt=0)
    """Steps each sibling trains after the branch; default: the soup window of the trajectory."""


class IndependentSpec(_Strict):
    count: int = Field(default=2, ge=0)
    steps: int | None = Field(default=None, gt=0)
    """Default: the trajectory's steps."""


class AnnealedSpec(_Strict):
    enabled: bool = True
    steps: int | None = Field(default=None, gt=0)
    """Default: the soup window, i.e. (keep_last - 1) * checkpoint_every steps."""
    decay: Literal["cosine", "linear"] = "cosine"


class TrainRecipe(_Strict):
    """A training recipe: data, tokenizer, model size, optimiser and family layout.

    >>> TrainRecipe(name="x").trajectory.keep_last
    5
    """

    name: str = "family"
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    trajectory: TrajectorySpec = Field(default_factory=TrajectorySpec)
    siblings: SiblingsSpec = Field(default_factory=SiblingsSpec)
    independent: IndependentSpec = Field(default_factory=IndependentSpec)
    annealed: AnnealedSpec = Field(default_factory=AnnealedSpec)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainRecipe":
        tr = self.trajectory
        window = (tr.keep_last - 1) * tr.checkpoint_every
        if window >= tr.steps:
            raise ValueError(
                f"trajectory keeps {tr.keep_last} checkpoints every {tr.checkpoint_every} steps, "
                f"which needs more than steps={tr.steps}"
            )
        if tr.steps % tr.checkpoint_every:
            raise ValueError("trajectory.steps must be a multiple of trajectory.checkpoint_every")
        b = self.siblings.branch_step
        if b is not None and (b % tr.checkpoint_every or b > tr.steps):
            raise ValueError(
                "siblings.branch_step must be a multiple of trajectory.checkpoint_every "
                "and at most trajectory.steps"
            )
        if self.annealed.enabled and self.annealed.steps is None and window == 0:
            raise ValueError("the annealed control needs keep_last >= 2 or an explicit annealed.steps")
        return self

    # derived quantities (not part of the schema)
    def window_start(self) -> int:
        """First kept trajectory step: the start of the soup window."""
        tr = self.trajectory
        return tr.steps - (tr.keep_last - 1) * tr.checkpoint_every

    def kept_steps(self) -> list[int]:
        """Trajectory steps whose checkpoints are kept, oldest first.

        >>> TrainRecipe(trajectory={"steps": 100, "checkpoint_every": 10, "keep_last": 3}).kept_steps()
        [80, 90, 100]
        """
        tr = self.trajectory
        return list(range(self.window_start(), tr.steps + 1, tr.checkpoint_every))

    def branch_step(self) -> int:
        return self.siblings.branch_step or self.window_start()

    def sibling_steps(self) -> int:
        return self.siblings.steps or max(self.trajectory.steps - self.branch_step(), self.trajectory.checkpoint_every)

    def annealed_steps(self) -> int:
        return self.annealed.steps or (self.trajectory.steps - self.window_start())

    def independent_steps(self) -> int:
        return self.independent.steps or self.trajectory.steps


def load_train_recipe(path_or_preset: "str | os.PathLike | Mapping[str, Any] | TrainRecipe") -> TrainRecipe:
    """Load a training recipe from a YAML file, a preset name (``tiny``, ``demo``) or a dict.

    >>> load_train_recipe("demo").name
    'demo'
    >>> load_train_recipe({"name": "x", "tokenizer": {"vocab_size": 300}}).tokenizer.vocab_size
    300
    >>> load_train_recipe({"modle": {}})
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: training recipe <dict>: modle: Extra inputs are not permitted
    """
    if isinstance(path_or_preset, TrainRecipe):
        return path_or_preset
    if isinstance(path_or_preset, Mapping):
        return _validate(dict(path_or_preset), "<dict>")
    text = str(path_or_preset)
    path = Path(text)
    if text in PRESETS and not path.exists():
        path = PRESETS_DIR / f"{text}.yaml"
    if not path.is_file():
        raise WorkbenchError(
            f"training recipe {text}: no such file (presets: {', '.join(PRESETS)})"
        )
    data = parse_yaml(path.read_text(encoding="utf-8"), f"training recipe {path}")
    if not isinstance(data, dict):
        raise WorkbenchError(f"training recipe {path}: expected a mapping at the top level")
    return _validate(data, str(path))


def _validate(data: dict, where: str) -> TrainRecipe:
    try:
        return TrainRecipe.model_validate(data)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise WorkbenchError(f"training recipe {where}: " + "; ".join(parts)) from None


def recipe_hash(recipe: TrainRecipe, corpus_digests: Sequence[str] = ()) -> str:
    """sha256 over the canonical recipe and the corpus contents: a family's identity.

    >>> recipe_hash(load_train_recipe("tiny")) == recipe_hash(load_train_recipe("tiny"))
    True
    """
    payload = json.dumps(
        {"recipe": recipe.model_dump(mode="json"), "corpus": list(corpus_digests), "trainer": TRAINER_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# ----------------------------------------------------------------------------------------
# corpus


def resolve_corpus(
    patterns: Sequence["str | os.PathLike"], data_dir: "str | os.PathLike | None" = None
) -> list[Path]:
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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_documents(docs: list[str], recipe: TrainRecipe) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then held-out documents first, training documents after (both capped)."""
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


# ----------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(docs: Sequence[str], vocab_size: int, *, min_frequency: int = 2, max_chars: int | None = None):
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


def _encode_stream(tokenizer, docs: Sequence[str]) -> list[int]:
    """Token stream: each document with its BOS (added by the tokenizer) and a closing EOS."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    batch = 512
    for i in range(0, len(docs), batch):
        for ids in tokenizer(list(docs[i : i + batch]))["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    return stream


# ----------------------------------------------------------------------------------------
# schedule and data order (pure)


def lr_at(
    step: int,
    *,
    lr: float,
    warmup: int,
    schedule: str = "constant",
    total: int = 1,
    min_ratio: float = 0.0,
    decay_start: int = 0,
    decay_steps: int = 0,
    decay: str = "cosine",
) -> float:
    """Learning rate for the 0-based ``step``: linear warmup, then constant or cosine.

    With ``decay_steps > 0`` (the annealed control) the rate decays from ``lr`` at
    ``decay_start`` to ``lr * min_ratio`` at ``decay_start + decay_steps``.

    >>> [round(lr_at(s, lr=1.0, warmup=2), 2) for s in range(4)]
    [0.5, 1.0, 1.0, 1.0]
    >>> round(lr_at(5, lr=1.0, warmup=0, schedule="cosine", total=10), 3)
    0.5
    >>> [round(lr_at(s, lr=1.0, warmup=0, decay_start=4, decay_steps=4, decay="linear"), 2) for s in (4, 6, 7)]
    [1.0, 0.5, 0.25]
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if decay_steps > 0:
        frac = min(max((step - decay_start) / decay_steps, 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * frac)) if decay == "cosine" else 1.0 - frac
        return lr * (min_ratio + (1 - min_ratio) * shape)
    if schedule == "cosine":
        span = max(total - warmup, 1)
        frac = min(max((step - warmup) / span, 0.0), 1.0)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    return lr


def batch_order(data_seed: int, step: int, batch_size: int, n_blocks: int) -> list[int]:
    """Block indices of the batch at ``step``: epochs of seeded permutations, a pure function.

    Resuming at any step, or continuing another run with the same ``data_seed``, sees the
    same data as an uninterrupted run.

    >>> batch_order(0, 0, 3, 5) == batch_order(0, 0, 3, 5)
    True
    >>> sorted(batch_order(0, 0, 5, 5))
    [0, 1, 2, 3, 4]
    """
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_blocks)
        perm = _epoch_perm(data_seed, epoch, n_blocks)
        take = min(batch_size - len(out), n_blocks - offset)
        out.extend(perm[offset : offset + take])
        pos += take
    return out


_PERM_CACHE: dict[tuple[int, int, int], list[int]] = {}


def _epoch_perm(data_seed: int, epoch: int, n: int) -> list[int]:
    key = (data_seed, epoch, n)
    perm = _PERM_CACHE.get(key)
    if perm is None:
        if len(_PERM_CACHE) > 64:
            _PERM_CACHE.clear()
        perm = list(range(n))
        random.Random(f"{data_seed}/{epoch}").shuffle(perm)
        _PERM_CACHE[key] = perm
    return perm


# ----------------------------------------------------------------------------------------
# family on disk


@dataclass(frozen=True)
class Family:
    """A trained checkpoint family (see the module docstring); paths are absolute.

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


def load_family(out_dir: "str | os.PathLike") -> Family:
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
    recipe = _validate(info["recipe"], str(fy))

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


def _write_family_yaml(root: Path, info: dict) -> None:
    from workbench.checkpoints import write_text_atomic

    write_text_atomic(root / FAMILY_FILE, yaml.safe_dump(info, sort_keys=False, width=120))


# ----------------------------------------------------------------------------------------
# training


def _pick_device(device: "str | None") -> str:
    from workbench.checkpoints import resolve_device

    return resolve_device(device)


def _llama_config(recipe: TrainRecipe, tokenizer) -> dict:
    m = recipe.model
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads or m.num_attention_heads,
        max_position_embeddings=recipe.optim.seq_len,
        rope_theta=m.rope_theta,
        initializer_range=m.initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        use_cache=False,
    )


def _new_model(config: dict, seed: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    return model.to(device)


def _param_count(config: dict) -> int:
    """Parameters of the model ``config`` describes (built on the meta device: no memory,
    no initialisation, the global random state untouched)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**config)).parameters())


def _new_optimizer(model, recipe: TrainRecipe):
    import torch

    o = recipe.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8, foreach=True)


def _save_checkpoint(model, tokenizer_dir: Path, out: Path, *, meta: dict) -> None:
    """Write one full HF model dir (config, safetensors, tokenizer files) atomically."""
    from workbench.checkpoints import atomic_output_dir, copy_tokenizer_files

    with atomic_output_dir(out, overwrite=True) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        state.pop("lm_head.weight", None)  # tied to the embeddings
        from safetensors.torch import save_file

        model.config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)
        (tmp / "workbench_checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _save_state(path: Path, model, opt, step: int, losses: list[float]) -> None:
    import io

    import torch

    from workbench.checkpoints import write_bytes_atomic

    buf = io.BytesIO()
    torch.save(
        {
            "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
            "optim": opt.state_dict(),
            "step": step,
            "losses": list(losses),
        },
        buf,
    )
    write_bytes_atomic(path, buf.getvalue())


def _load_state(path: Path, model, opt) -> tuple[int, list[float]]:
    import torch

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
    except Exception as err:
        raise WorkbenchError(f"{path}: cannot resume from this training state ({err}); delete it to restart") from None
    return int(st["step"]), [float(x) for x in st["losses"]]


@dataclass
class _Run:
    """One training run: its steps, schedule, data order and where it saves."""

    name: str
    init_seed: int
    data_seed: int
    start_step: int
    end_step: int
    lr_fn: Callable[[int], float]
    save_steps: dict[int, Path]  # step -> checkpoint dir
    state_steps: set[int]  # steps after which the resume state is written
    branch_from: Path | None = None  # training state to start from (a branch)
    extra_state: dict[int, Path] = field(default_factory=dict)  # step -> state file kept for branches


class _Trainer:
    def __init__(self, recipe: TrainRecipe, blocks, config: dict, tokenizer_dir: Path, root: Path, device: str, progress: bool):
        self.recipe = recipe
        self.blocks = blocks
        self.config = config
        self.tokenizer_dir = tokenizer_dir
        self.root = root
        self.state_dir = root / ".state"
        self.device = device
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.tokens_per_s: dict[str, float] = {}

    def run(self, run: _Run) -> list[float]:
        """Train one run (resuming from its saved state); returns its per-step losses."""
        import torch
        from tqdm.auto import tqdm

        r = self.recipe
        model = _new_model(self.config, run.init_seed, self.device)
        model.train()
        opt = _new_optimizer(model, r)
        state_file = self.state_dir / f"{run.name}.pt"
        step, losses = run.start_step, []
        if state_file.is_file():
            step, losses = _load_state(state_file, model, opt)
        elif run.branch_from is not None:
            step, _ = _load_state(run.branch_from, model, opt)
            if step != run.start_step:
                raise WorkbenchError(f"{run.branch_from}: branch state is at step {step}, expected {run.start_step}")
            losses = []
        if step >= run.end_step and all(p.is_dir() for p in run.save_steps.values()):
            return losses
        B, S = r.optim.batch_size, r.optim.seq_len
        n_blocks = self.blocks.shape[0]
        clip = r.optim.grad_clip
        params = [p for p in model.parameters()]
        bar = tqdm(
            total=(run.end_step - run.start_step) * B * S,
            initial=(step - run.start_step) * B * S,
            unit="tok",
            unit_scale=True,
            desc=f"{r.name}:{run.name}",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )
        t0, done_tokens = time.perf_counter(), 0
        pending: list = []
        try:
            while step < run.end_step:
                idx = torch.tensor(batch_order(run.data_seed, step, B, n_blocks))
                batch = self.blocks[idx].to(self.device, non_blocking=True)
                lr = run.lr_fn(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                pending.append(loss.detach())
                done_tokens += B * S
                bar.update(B * S)
                flush = step % 10 == 0 or step == run.end_step or step in run.save_steps or step in run.state_steps
                if flush:  # one device sync per few steps, not per step
                    values = torch.stack(pending).float().cpu()
                    pending.clear()
                    if not bool(torch.isfinite(values).all()):
                        raise WorkbenchError(
                            f"{r.name}:{run.name}: the loss became {values[-1].item()} by step {step}; lower optim.lr"
                        )
                    losses.extend(values.tolist())
                    bar.set_postfix(step=step, loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", lr=f"{lr:.2g}")
                if step in run.save_steps:
                    _save_checkpoint(
                        model,
                        self.tokenizer_dir,
                        run.save_steps[step],
                        meta={"family": r.name, "run": run.name, "step": step, "tokens": step * B * S,
                              "init_seed": run.init_seed, "data_seed": run.data_seed},
                    )
                if step in run.extra_state:
                    _save_state(run.extra_state[step], model, opt, step, [])
                if step in run.state_steps and step < run.end_step:
                    _save_state(state_file, model, opt, step, losses)
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        self.timings[run.name] = round(dt, 3)
        if dt > 0 and done_tokens:
            self.tokens_per_s[run.name] = round(done_tokens / dt, 1)
        _save_state(state_file, model, opt, step, losses)
        return losses


def _curve(losses: list[float], start_step: int, every: int) -> list[list[float]]:
    """Mean loss per ``every`` steps, as [end step, mean] pairs."""
    out = []
    for i in range(0, len(losses), every):
        chunk = losses[i : i + every]
        out.append([start_step + i + len(chunk), round(sum(chunk) / len(chunk), 5)])
    return out


def train_family(
    recipe_or_preset: "str | os.PathLike | Mapping[str, Any] | TrainRecipe",
    out_dir: "str | os.PathLike",
    *,
    corpus: "Sequence[str | os.PathLike] | None" = None,
    device: str | None = None,
    progress: bool = True,
    data_dir: "str | os.PathLike | None" = None,
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

    recipe = load_train_recipe(recipe_or_preset)
    root = Path(out_dir).absolute()
    files, digests = _corpus_files(recipe, corpus, data_dir)
    identity = recipe_hash(recipe, digests)

    if root.exists() and not root.is_dir():
        raise WorkbenchError(f"output {root} exists and is not a directory")
    _check_out_dir(root, identity, recipe)
    existing = _read_family_yaml(root) if root.is_dir() else None
    if existing is not None and existing.get("status") == "complete":
        return load_family(root)
    dev = _pick_device(device)

    # everything that can fail on bad input happens before anything is written
    docs = read_documents(files)
    if not docs:
        raise WorkbenchError(f"corpus is empty: {', '.join(str(f) for f in files)}")
    if len(docs) < 2:
        raise WorkbenchError(
            f"corpus has only one document ({files[0]}): need at least two (documents are separated by blank lines)"
        )
    train_docs, held_docs = _split_documents(docs, recipe)
    if not train_docs:
        raise WorkbenchError("corpus: no documents left for training after the held-out split")
    tok_dir = root / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tok = train_tokenizer(
            train_docs,
            recipe.tokenizer.vocab_size,
            min_frequency=recipe.tokenizer.min_frequency,
            max_chars=recipe.data.tokenizer_chars,
        )
    stream = _encode_stream(tok, train_docs)
    B, S = recipe.optim.batch_size, recipe.optim.seq_len
    n_blocks = len(stream) // S
    if n_blocks < B:
        raise WorkbenchError(
            f"corpus too small: {len(stream)} training tokens make {n_blocks} blocks of seq_len={S}, "
            f"fewer than one batch (batch_size={B})"
        )
    blocks = torch.tensor(stream[: n_blocks * S], dtype=torch.long).view(n_blocks, S)
    config = _llama_config(recipe, tok)

    from workbench.checkpoints import atomic_output_dir, write_text_atomic

    with _locked(root):
        existing = _read_family_yaml(root)
        if existing is not None and existing.get("status") == "complete":
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
        _write_family_yaml(root, info)
        for leftover in root.rglob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        heldout = root / "heldout.txt"
        if not heldout.is_file():
            write_text_atomic(heldout, "\n\n".join(held_docs) + "\n")
        if not (tok_dir / "tokenizer.json").is_file():
            with atomic_output_dir(tok_dir, overwrite=True) as tmp:
                tok.save_pretrained(str(tmp))

        trainer = _Trainer(recipe, blocks, config, tok_dir, root, dev, progress)
        o, tr = recipe.optim, recipe.trajectory
        seed = recipe.seed
        kept = recipe.kept_steps()
        branch = recipe.branch_step()
        branch_state = trainer.state_dir / f"branch-{branch:06d}.pt"
        anneal_state = trainer.state_dir / f"branch-{recipe.window_start():06d}.pt"

        def trajectory_lr(step: int) -> float:
            return lr_at(step, lr=o.lr, warmup=o.warmup_steps, schedule=tr.schedule, total=tr.steps,
                         min_ratio=o.min_lr_ratio)

        traj_dirs = {s: root / "trajectory" / f"step-{s:06d}" for s in kept}
        extra = {branch: branch_state}
        if recipe.annealed.enabled:
            extra[recipe.window_start()] = anneal_state
        traj = _Run(
            name="trajectory", init_seed=seed, data_seed=seed, start_step=0, end_step=tr.steps, lr_fn=trajectory_lr,
            save_steps=traj_dirs, state_steps=set(range(tr.checkpoint_every, tr.steps + 1, tr.checkpoint_every)),
            extra_state=extra,
        )
        losses: dict[str, list] = {}
        losses["trajectory"] = _curve(trainer.run(traj), 0, 10)

        # the annealed control first: with the trajectory it is all a soup comparison needs
        ann_entry = None
        if recipe.annealed.enabled:
            a0, n = recipe.window_start(), recipe.annealed_steps()
            d = root / "annealed"
            run = _Run(
                name="annealed", init_seed=seed, data_seed=seed, start_step=a0, end_step=a0 + n,
                lr_fn=lambda s: lr_at(s, lr=o.lr, warmup=0, min_ratio=o.min_lr_ratio, decay_start=a0,
                                      decay_steps=n, decay=recipe.annealed.decay),
                save_steps={a0 + n: d},
                state_steps=set(range(a0 + tr.checkpoint_every, a0 + n, tr.checkpoint_every)),
                branch_from=anneal_state,
            )
            losses["annealed"] = _curve(trainer.run(run), a0, 10)
            ann_entry = {"path": "annealed", "from_step": a0, "steps": n, "decay": recipe.annealed.decay,
                         "tokens": (a0 + n) * B * S}

        sib_entries = []
        if recipe.siblings.count:
            n = recipe.sibling_steps()
            for i in range(recipe.siblings.count):
                name = f"sibling-{i + 1}"
                d = root / "siblings" / name
                run = _Run(
                    name=name, init_seed=seed, data_seed=seed + 101 + i, start_step=branch, end_step=branch + n,
                    lr_fn=lambda s: lr_at(s, lr=o.lr, warmup=0), save_steps={branch + n: d},
                    state_steps=set(range(branch + tr.checkpoint_every, branch + n, tr.checkpoint_every)),
                    branch_from=branch_state,
                )
                losses[name] = _curve(trainer.run(run), branch, 10)
                sib_entries.append({"path": f"siblings/{name}", "branch_step": branch, "steps": n,
                                    "data_seed": seed + 101 + i, "tokens": (branch + n) * B * S})

        ind_entries = []
        if recipe.independent.count:
            n = recipe.independent_steps()
            for i in range(recipe.independent.count):
                name = f"independent-{i + 1}"
                d = root / "independent" / name
                s_i = seed + 1001 + i
                run = _Run(
                    name=name, init_seed=s_i, data_seed=s_i, start_step=0, end_step=n,
                    lr_fn=lambda s, n=n: lr_at(s, lr=o.lr, warmup=o.warmup_steps, schedule=tr.schedule, total=n,
                                               min_ratio=o.min_lr_ratio),
                    save_steps={n: d}, state_steps=set(range(tr.checkpoint_every, n, tr.checkpoint_every)),
                )
                losses[name] = _curve(trainer.run(run), 0, 10)
                ind_entries.append({"path": f"independent/{name}", "init_seed": s_i, "data_seed": s_i, "steps": n,
                                    "tokens": n * B * S})

        n_params = _param_count(config)
        info.update(
            {
                "status": "complete",
                "tokenizer": "tokenizer",
                "heldout": "heldout.txt",
                "vocab_size": len(tok),
                "n_params": int(n_params),
                "tokens_per_step": B * S,
                "data": {
                    "documents": len(docs),
                    "train_documents": len(train_docs),
                    "heldout_documents": len(held_docs),
                    "train_tokens": len(stream),
                    "blocks": int(n_blocks),
                },
                "trajectory": [{"path": f"trajectory/step-{s:06d}", "step": s, "tokens": s * B * S} for s in kept],
                "siblings": sib_entries,
                "independent": ind_entries,
                "annealed": ann_entry,
                "losses": losses,
                "build": {
                    "device": dev,
                    "torch": str(torch.__version__),
                    "seconds": round(time.perf_counter() - t_start, 2),
                    "run_seconds": trainer.timings,
                    "tokens_per_s": trainer.tokens_per_s,
                },
            }
        )
        _write_family_yaml(root, info)
        shutil.rmtree(trainer.state_dir, ignore_errors=True)
        return load_family(root)


def _corpus_files(
    recipe: TrainRecipe, corpus: "Sequence[str | os.PathLike] | None", data_dir: "str | os.PathLike | None"
) -> tuple[list[Path], list[str]]:
    if corpus is not None:
        files = resolve_corpus([str(c) for c in corpus], None)
    else:
        ddir = resolve_data_dir(data_dir)
        if ddir is None and any(not Path(p).is_absolute() for p in recipe.data.corpus):
            raise WorkbenchError(
                "no data directory for the corpus: pass --corpus FILES, --data-dir DIR or set WORKBENCH_DATA_DIR"
            )
        files = resolve_corpus(recipe.data.corpus, ddir)
    return files, [_file_digest(f) for f in files]


def family_id(
    recipe_or_preset: "str | os.PathLike | Mapping[str, Any] | TrainRecipe",
    *,
    corpus: "Sequence[str | os.PathLike] | None" = None,
    data_dir: "str | os.PathLike | None" = None,
) -> str:
    """The identity (sha256 hex) of the family a recipe would build on a corpus: for cache keys.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "c.txt"; _ = p.write_text("a b\\n\\nc d\\n")
    >>> len(family_id("tiny", corpus=[p]))
    64
    """
    recipe = load_train_recipe(recipe_or_preset)
    _, digests = _corpus_files(recipe, corpus, data_dir)
    return recipe_hash(recipe, digests)


def _read_family_yaml(root: Path) -> dict | None:
    fy = root / FAMILY_FILE
    if not fy.is_file():
        return None
    info = parse_yaml(fy.read_text(encoding="utf-8"), str(fy))
    return info if isinstance(info, dict) else {}


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


# ----------------------------------------------------------------------------------------
# in-domain held-out perplexity


def heldout_perplexity(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    text_or_path: "str | os.PathLike",
    *,
    seq_len: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> dict[str, float]:
    """Token-level perplexity on held-out text (documents separated by blank lines).

    Documents are encoded as in training (BOS + text + EOS) and concatenated; the stream is
    cut into non-overlapping windows of ``seq_len`` (default: the model's max positions);
    every token but each window's first is scored. Returns
    ``{"perplexity": .., "nll": .., "tokens": ..}`` (nll = mean negative log-likelihood, nats).

    >>> fam = load_family("runs/tiny")  # doctest: +SKIP
    >>> from workbench.checkpoints import load_model, load_tokenizer  # doctest: +SKIP
    >>> heldout_perplexity(load_model(fam.trajectory[-1]), load_tokenizer(fam.tokenizer), fam.heldout)  # doctest: +SKIP
    {'perplexity': 61.2, 'nll': 4.11, 'tokens': 20345}
    """
    import torch

    if isinstance(text_or_path, str) and "\n" in text_or_path:
        docs = [d.strip("\n") for d in text_or_path.split("\n\n") if d.strip()]
    else:
        path = Path(text_or_path)
        if not path.is_file():
            raise WorkbenchError(f"held-out text {path} not found")
        docs = read_documents([path])
    if not docs:
        raise WorkbenchError(f"held-out text {str(text_or_path)[:60]!r} is empty")
    S = seq_len or int(model.config.max_position_embeddings)
    stream = _encode_stream(tokenizer, docs)
    n = len(stream) // S
    if n == 0:  # shorter than one window: score it as one short window
        n, S = 1, len(stream)
    blocks = torch.tensor(stream[: n * S], dtype=torch.long).view(n, S)
    dev = device or next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            x = blocks[i : i + batch_size].to(dev)
            logits = model(input_ids=x).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            ll = logp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
            total += float(ll.sum())
            count += ll.numel()
    nll = -total / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count}
