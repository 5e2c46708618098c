"""Evaluate a model on tasks: :func:`evaluate` and the model fingerprint results are cached by."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.eval.result import EvalResult
from workbench.eval.tasks.common import TaskContext
from workbench.eval.tasks.registry import parse_tasks, task_spec
from workbench.eval.tasks.settings import EvalSettings
from workbench.eval.tasks.tokenizer import TokenizerFacts, _Tok, resolve_max_length
from workbench.io.datadir import resolve_data_dir

if TYPE_CHECKING:
    import torch

DEFAULT_BATCH_SIZE = 64


def model_fingerprint_of(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's parameters and buffers."""
    from workbench.fingerprints import tensor_bytes, tensor_digest

    return tensor_digest(
        ((name, t.dtype, tuple(t.shape), tensor_bytes(t)) for name, t in model.state_dict().items()),
        trailer=type(model).__name__,
    )


def model_dtype_of(model: Any) -> str:
    """The dtype results record and are keyed by: that of the floating-point parameters, or
    several joined by ``+`` (most elements first) when a model keeps some modules in another
    dtype; ``"none"`` without any.

    The key needs it even though a model fingerprint computed from the weights covers the
    dtype: callers may key by a checkpoint's file fingerprint, which is the same whatever
    dtype the weights are loaded and computed in.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    >>> model_dtype_of(m)
    'torch.bfloat16'
    >>> _ = m[1].float()
    >>> model_dtype_of(m)
    'torch.bfloat16+torch.float32'
    """
    counts: dict[str, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[str(p.dtype)] = counts.get(str(p.dtype), 0) + p.numel()
    if not counts:
        return str(next((p.dtype for p in model.parameters()), "none"))
    return "+".join(sorted(counts, key=lambda d: (-counts[d], d)))


def _to_device(model: Any, device: str | torch.device | None) -> Any:
    """Put the model in eval mode on ``device`` (where it is when None); the device it runs on."""
    import torch

    from workbench.eval.scoring import model_device

    if device is not None:
        device = torch.device(device)
        if any(True for _ in model.parameters()) and model_device(model) != device:
            model.to(device)
    dev = device if device is not None else model_device(model)
    if hasattr(model, "eval"):
        model.eval()
    return dev


def _run_task(ctx: TaskContext, settings: EvalSettings, task: str) -> EvalResult:
    """Load, select and score one task; its result carries its settings."""
    ctx.shared_prefixes = False
    spec = task_spec(task)
    data = spec.load(task, settings.data_dir, settings.split_for(task))
    r = spec.run(ctx, task, data, settings.limit_for(task), settings.seed, settings.item_ids_for(task))
    r.settings = settings.record(task)
    # float rounding only; recorded next to the numbers
    r.settings["per_task"][task]["prefix_sharing"] = ctx.shared_prefixes
    return r


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | Iterable[str],
    *,
    data_dir: str | Path | None = None,
    limit: float | Mapping[str, float | None] | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = True,
    store: Any = None,
    model_fingerprint: str | None = None,
    item_ids: Collection[str] | Mapping[str, Collection[str]] | None = None,
    max_length: int | None = None,
    arc_split: str = "validation",
    wikitext_split: str = "test",
    share_prefixes: bool | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``tasks`` with lm-eval 0.4.13 conventions; per-item results.

    ``model`` is any module whose ``model(input_ids=..., attention_mask=..., [position_ids=...])`` returns
    an object with ``.logits``; ``tokenizer`` a Hugging Face tokenizer. Data comes from
    ``data_dir`` (or ``$WORKBENCH_DATA_DIR``, else the Hub). With a ``store``
    (:class:`workbench.store.ResultStore`) each task's result is cached under the model
    fingerprint (computed from the weights when not given), the task and the settings
    (:meth:`EvalSettings.key <workbench.eval.tasks.settings.EvalSettings.key>`).
    ``item_ids`` restricts the items (a collection, or a mapping task -> collection).
    ``limit`` is one subsample size for every task, or a mapping task -> size (a task
    missing from the mapping is evaluated on all its items).
    ``share_prefixes`` is the scorer's prefix sharing (see
    :func:`workbench.eval.scoring.score_requests`; ``None`` = auto); whether it was
    used is recorded per task in ``settings["per_task"][task]["prefix_sharing"]``.

    Example (a data directory laid out like the reference data)::

        res = evaluate(model, tok, "blimp,arc_easy", data_dir="../shared/data", limit=100)
        res.summary["blimp"]["acc,none"], res.items.head()
    """
    task_list = parse_tasks(tasks)
    ddir = resolve_data_dir(data_dir)
    if tokenizer is None:
        raise WorkbenchError("no tokenizer given: the model directory has no tokenizer files")
    tok = _Tok(tokenizer)
    mlen = int(max_length) if max_length is not None else resolve_max_length(model, tokenizer)
    dev = _to_device(model, device)
    settings = EvalSettings.create(
        tokenizer=TokenizerFacts.of(tok),
        max_length=mlen,
        model_dtype=model_dtype_of(model),
        data_dir=ddir,
        limit=limit,
        seed=seed,
        item_ids=item_ids,
        arc_split=arc_split,
        wikitext_split=wikitext_split,
    )
    fp = model_fingerprint
    if store is not None and fp is None:
        fp = model_fingerprint_of(model)
    ctx = TaskContext(model, tok, mlen, batch_size, dev, progress, share_prefixes)
    results = []
    for task in task_list:
        key = settings.key(fp, task) if store is not None else None
        cached = store.get(key) if store is not None else None
        if cached is not None:
            results.append(cached)
            continue
        r = _run_task(ctx, settings, task)
        r.settings.update(model_fingerprint=fp, device=str(dev), batch_size=batch_size)
        if store is not None:
            store.put(key, r)
        results.append(r)
    out = EvalResult.concat(results)
    out.settings["tasks"] = task_list
    return out
