"""The training loop of the factory: tiny Llama models, AdamW, resumable runs.

A :class:`Run` says what one run trains (seeds, steps, schedule) and where it writes
(checkpoint directories, resume state); :class:`Trainer` trains runs on one set of token
blocks. Every run resumes from its saved state; a branch starts from another run's state.
Training arithmetic, random-number use and data order fix the bytes a recipe produces (see
``TRAINER_VERSION`` in :mod:`workbench.factory.recipe`).

>>> Run("r", 0, 0, 0, 10, lambda s: 1e-3, save_steps={}, state_steps=set()).end_step
10
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.factory.recipe import TrainRecipe
from workbench.factory.schedule import batch_order

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

__all__ = ["Run", "Trainer", "llama_config", "loss_curve", "param_count"]

LOG_EVERY = 10  # steps per point of a loss curve, and at most this many steps between loss syncs


def llama_config(recipe: TrainRecipe, tokenizer: PreTrainedTokenizerBase) -> dict:
    """The ``LlamaConfig`` keyword arguments of a recipe's model (tied embeddings, no dropout)."""
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


def _new_model(config: dict, seed: int, device: str) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    return model.to(device)


def param_count(config: dict) -> int:
    """Parameters of the model ``config`` describes (built on the meta device: no memory,
    no initialisation, the global random state untouched)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**config)).parameters())


def _new_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    import torch

    o = recipe.optim
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8, foreach=True)


def _save_checkpoint(model: torch.nn.Module, tokenizer_dir: Path, out: Path, *, meta: dict) -> None:
    """Write one full HF model dir (config, safetensors, tokenizer files) atomically."""
    from safetensors.torch import save_file

    from workbench.checkpoints import copy_tokenizer_files
    from workbench.io.atomic import atomic_output_dir

    with atomic_output_dir(out, overwrite=True) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        state.pop("lm_head.weight", None)  # tied to the embeddings
        model.config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer_files(tokenizer_dir, tmp)
        (tmp / "workbench_checkpoint.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    import io

    import torch

    from workbench.io.atomic import write_bytes_atomic

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


def _load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    import torch

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
    except Exception as err:
        raise WorkbenchError(f"{path}: cannot resume from this training state ({err}); delete it to restart") from None
    return int(st["step"]), [float(x) for x in st["losses"]]


def loss_curve(losses: list[float], start_step: int, every: int = LOG_EVERY) -> list[list[float]]:
    """Mean loss per ``every`` steps, as [end step, mean] pairs.

    >>> loss_curve([4.0, 2.0, 1.0], 10, every=2)
    [[12, 3.0], [13, 1.0]]
    """
    out = []
    for i in range(0, len(losses), every):
        chunk = losses[i : i + every]
        out.append([start_step + i + len(chunk), round(sum(chunk) / len(chunk), 5)])
    return out


@dataclass
class Run:
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


class Trainer:
    """Trains :class:`Run` s of one recipe on one set of token blocks, under ``root``.

    Resume states live in ``root/.state``; ``timings`` and ``tokens_per_s`` record each run's
    wall time and throughput (of the steps trained in this process).
    """

    def __init__(
        self,
        recipe: TrainRecipe,
        blocks: torch.Tensor,
        config: dict,
        tokenizer_dir: Path,
        root: Path,
        device: str,
        progress: bool,
    ):
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

    def run(self, run: Run) -> list[float]:
        """Train one run (resuming from its saved state); returns its per-step losses."""
        model, opt, step, losses = self._start(run)
        if step >= run.end_step and all(p.is_dir() for p in run.save_steps.values()):
            return losses
        r = self.recipe
        tokens_per_step = r.optim.batch_size * r.optim.seq_len
        bar = self._progress_bar(run, step)
        t0, first = time.perf_counter(), step
        try:
            step = self._train(run, model, opt, step, losses, bar)
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        done_tokens = (step - first) * tokens_per_step
        self.timings[run.name] = round(dt, 3)
        if dt > 0 and done_tokens:
            self.tokens_per_s[run.name] = round(done_tokens / dt, 1)
        _save_state(self._state_file(run), model, opt, step, losses)
        return losses

    def _state_file(self, run: Run) -> Path:
        return self.state_dir / f"{run.name}.pt"

    def _start(self, run: Run) -> tuple[Any, Any, int, list[float]]:
        """A fresh model and optimiser, moved to the run's saved state or its branch point."""
        model = _new_model(self.config, run.init_seed, self.device)
        model.train()
        opt = _new_optimizer(model, self.recipe)
        state_file = self._state_file(run)
        step, losses = run.start_step, []
        if state_file.is_file():
            step, losses = _load_state(state_file, model, opt)
        elif run.branch_from is not None:
            step, _ = _load_state(run.branch_from, model, opt)
            if step != run.start_step:
                raise WorkbenchError(f"{run.branch_from}: branch state is at step {step}, expected {run.start_step}")
            losses = []
        return model, opt, step, losses

    def _progress_bar(self, run: Run, step: int) -> Any:
        from tqdm.auto import tqdm

        r = self.recipe
        tokens_per_step = r.optim.batch_size * r.optim.seq_len
        return tqdm(
            total=(run.end_step - run.start_step) * tokens_per_step,
            initial=(step - run.start_step) * tokens_per_step,
            unit="tok",
            unit_scale=True,
            desc=f"{r.name}:{run.name}",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )

    def _train(self, run: Run, model: Any, opt: Any, step: int, losses: list[float], bar: Any) -> int:
        """The optimisation steps from ``step`` to the run's end; returns the step reached."""
        import torch

        r = self.recipe
        B, S = r.optim.batch_size, r.optim.seq_len
        n_blocks = self.blocks.shape[0]
        clip = r.optim.grad_clip
        params = [p for p in model.parameters()]
        pending: list = []
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
            bar.update(B * S)
            if (
                step % LOG_EVERY == 0 or step == run.end_step or step in run.save_steps or step in run.state_steps
            ):  # one device sync per few steps, not per step
                self._collect(run, step, pending, losses)
                bar.set_postfix(step=step, loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", lr=f"{lr:.2g}")
            self._save_due(run, model, opt, step, losses)
        return step

    def _collect(self, run: Run, step: int, pending: list, losses: list[float]) -> None:
        """Move the pending losses to ``losses`` (one device sync); a non-finite loss stops the run."""
        import torch

        values = torch.stack(pending).float().cpu()
        pending.clear()
        if not bool(torch.isfinite(values).all()):
            raise WorkbenchError(
                f"{self.recipe.name}:{run.name}: the loss became {values[-1].item()} by step {step}; lower optim.lr"
            )
        losses.extend(values.tolist())

    def _save_due(self, run: Run, model: Any, opt: Any, step: int, losses: list[float]) -> None:
        """Write what the run keeps at ``step``: a checkpoint, a branch state, the resume state."""
        B, S = self.recipe.optim.batch_size, self.recipe.optim.seq_len
        if step in run.save_steps:
            _save_checkpoint(
                model,
                self.tokenizer_dir,
                run.save_steps[step],
                meta={
                    "family": self.recipe.name,
                    "run": run.name,
                    "step": step,
                    "tokens": step * B * S,
                    "init_seed": run.init_seed,
                    "data_seed": run.data_seed,
                },
            )
        if step in run.extra_state:
            _save_state(run.extra_state[step], model, opt, step, [])
        if step in run.state_steps and step < run.end_step:
            _save_state(self._state_file(run), model, opt, step, losses)
