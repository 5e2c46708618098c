"""Training recipes: the schema (:class:`TrainRecipe`), the presets and a recipe's identity.

Recipes are YAML files validated by :class:`TrainRecipe` (unknown keys are errors); the presets
``tiny`` (seconds, for tests) and ``demo`` (minutes, for the demo) live in
``workbench/presets/``.

>>> load_train_recipe("tiny").trajectory.schedule
'constant'
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workbench.errors import WorkbenchError
from workbench.io.yaml import parse_yaml

__all__ = [
    "PRESETS",
    "PRESETS_DIR",
    "TRAINER_VERSION",
    "TrainRecipe",
    "load_train_recipe",
    "recipe_hash",
    "validate_recipe",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
PRESETS = ("tiny", "demo")
# bump when the factory changes the bytes a recipe produces (corpus split, tokenizer, schedule,
# training): it is part of every family's identity, so cached families are rebuilt
TRAINER_VERSION = 1


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
                "siblings.branch_step must be a multiple of trajectory.checkpoint_every and at most trajectory.steps"
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
        """Trajectory step the siblings branch from (default: the first kept checkpoint)."""
        return self.siblings.branch_step or self.window_start()

    def sibling_steps(self) -> int:
        """Steps each sibling trains after the branch (default: to the trajectory's end)."""
        return self.siblings.steps or max(self.trajectory.steps - self.branch_step(), self.trajectory.checkpoint_every)

    def annealed_steps(self) -> int:
        """Steps of the annealed control (default: the soup window)."""
        return self.annealed.steps or (self.trajectory.steps - self.window_start())

    def independent_steps(self) -> int:
        """Steps of each independent run (default: the trajectory's steps)."""
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
        return validate_recipe(dict(path_or_preset), "<dict>")
    text = str(path_or_preset)
    path = Path(text)
    if text in PRESETS and not path.exists():
        path = PRESETS_DIR / f"{text}.yaml"
    if not path.is_file():
        raise WorkbenchError(f"training recipe {text}: no such file (presets: {', '.join(PRESETS)})")
    data = parse_yaml(path.read_text(encoding="utf-8"), f"training recipe {path}")
    if not isinstance(data, dict):
        raise WorkbenchError(f"training recipe {path}: expected a mapping at the top level")
    return validate_recipe(data, str(path))


def validate_recipe(data: dict, where: str) -> TrainRecipe:
    """Validate a recipe mapping; one WorkbenchError naming ``where`` and every bad field.

    >>> validate_recipe({"seed": "x"}, "r.yaml")
    Traceback (most recent call last):
    workbench.errors.WorkbenchError: training recipe r.yaml: seed: Input should be a valid integer, unable to parse string as an integer
    """
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
