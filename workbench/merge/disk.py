"""Merge streaming to disk: memory stays around a few tensors' worth, whatever the model size.

:func:`merge_to_disk` reads each input tensor with plain file reads (in chunks for large
tensors, one unit ahead of the math), merges it and streams it into the output safetensors
file, inside an atomic output directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from workbench.checkpoints import Checkpoint, copy_tokenizer_files
from workbench.errors import WorkbenchError
from workbench.io.atomic import atomic_output_dir
from workbench.io.safetensors import SafetensorsWriter
from workbench.merge import spherical as _sph
from workbench.merge.execute import (
    GRAM_METHODS,
    apply_method,
    check_finite,
    check_gram_finite,
    compute_dtype,
    gram_coefficients,
    numel,
    round_to,
    torch_device,
)
from workbench.merge.plan import MergePlan, TensorJob, plan_merge
from workbench.merge.recipe import MergeRecipe

__all__ = ["CHUNK_ELEMENTS", "merge_to_disk"]

#: elements per input row held in the disk path's buffers; larger tensors are streamed in
#: chunks (one pass for the Gram matrix, one for the result), so memory does not grow with them
CHUNK_ELEMENTS = 1 << 21

_Unit = tuple[TensorJob, str, int, int]  # job, kind ("generic", "full", "gram", "emit"), start, stop


def _merge_yaml(plan: MergePlan) -> str:
    from workbench import __version__

    head = [f"# written by workbench {__version__}: the recipe this model was merged from"]
    head += [f"# note: {n}" for n in plan.notes]
    return "\n".join(head) + "\n" + plan.recipe.to_yaml()


def _read_inputs(plan: MergePlan, job: TensorJob, allow_nonfinite: bool) -> list[torch.Tensor]:
    """Read one job's inputs with plain file reads (no memory map), in their stored dtype."""
    xs = []
    for m, n in job.inputs:
        ck = plan.checkpoints[m]
        x = torch.empty(ck.shape(n), dtype=ck.dtype(n))
        ck.read_into(n, x.reshape(-1))
        if not allow_nonfinite:
            check_finite(x, ck, n)
        xs.append(x)
    return xs


def _run_job(plan: MergePlan, job: TensorJob, device: torch.device, allow_nonfinite: bool) -> torch.Tensor:
    """One tensor of a method outside GRAM_METHODS (or a copied non-float tensor), whole."""
    xs = _read_inputs(plan, job, allow_nonfinite)
    if job.copy:
        return xs[job.base_index or 0].to(device)
    xs = [x.to(device) for x in xs]
    if plan.in_dtype is not None:
        xs = [x.to(plan.in_dtype) for x in xs]
    return apply_method(plan.recipe.merge_method, job, xs).to(job.out_dtype)


class _GramStream:
    """Disk-path executor for GRAM_METHODS with bounded, reusable buffers.

    Each unit reads the M inputs' elements ``start:stop`` with ``preadv`` straight into the
    rows of a float32 buffer (two buffers: the next unit is read while this one computes).
    A tensor that fits one chunk is merged at once: ``X X^T`` gives norms and dots (and the
    NaN/Inf check), ``coef @ X`` the result. Larger tensors take two passes over chunks.
    """

    def __init__(self, plan: MergePlan, jobs: list[TensorJob], device: torch.device, allow_nonfinite: bool):
        self.plan, self.device, self.allow_nonfinite = plan, device, allow_nonfinite
        self.method = plan.recipe.merge_method
        m = max(len(j.inputs) for j in jobs)
        self.chunk = max(1, min(max(numel(j.shape) for j in jobs), CHUNK_ELEMENTS))
        dt = torch.float64 if any(compute_dtype(plan, j) == torch.float64 for j in jobs) else torch.float32
        self.x = [torch.empty((m, self.chunk), dtype=dt) for _ in range(2)]
        if device.type != "cpu":
            self.xd = [torch.empty_like(self.x[0], device=device) for _ in range(2)]
        self.out = [torch.empty(self.chunk, dtype=dt) for _ in range(3)]
        self.g: torch.Tensor | None = None
        self.coef: torch.Tensor | None = None

    def units(self, job: TensorJob) -> list[tuple[str, int, int]]:
        n = numel(job.shape)
        if n <= self.chunk:
            return [("full", 0, n)]
        spans = [(s, min(n, s + self.chunk)) for s in range(0, n, self.chunk)]
        return [("gram", a, b) for a, b in spans] + [("emit", a, b) for a, b in spans]

    def read(self, job: TensorJob, start: int, stop: int, slot: int) -> torch.Tensor:
        n = stop - start
        x = self.x[slot][: len(job.inputs)]
        for i, (m, name) in enumerate(job.inputs):
            self.plan.checkpoints[m].read_into(name, x[i, :n], start)
        xv = x[:, :n]
        round_to(xv, self.plan.in_dtype)
        if self.device.type != "cpu":
            xd = self.xd[slot][: xv.shape[0], :n]
            xd.copy_(xv)
            if xd.is_cuda:
                torch.cuda.current_stream().synchronize()
            xv = xd
        return xv

    def _finish_gram(self, job: TensorJob, g: torch.Tensor) -> None:
        if not self.allow_nonfinite:
            # the chunks are gone by now: a suspect input is scanned whole, from its file
            def whole(_b: int, m: int) -> torch.Tensor:
                model, name = job.inputs[m]
                return self.plan.checkpoints[model].get(name)

            check_gram_finite(g, self.plan, [job], whole)
        self.coef = gram_coefficients(self.method, [job], g.unsqueeze(0))[0]

    def process(self, job: TensorJob, kind: str, start: int, xv: torch.Tensor, slot: int) -> torch.Tensor | None:
        """Handle one unit; returns the result part to write, or None (Gram pass)."""
        if kind in ("full", "gram"):
            g = _sph.gram(xv)
            self.g = g if (kind == "full" or start == 0) else self.g + g
            if kind == "gram":
                return None
            self._finish_gram(job, self.g)
        elif start == 0:
            self._finish_gram(job, self.g)
        n = xv.shape[1]
        if self.device.type != "cpu":
            res = _sph.combine(self.coef, xv).to("cpu")
        else:
            res = _sph.combine(self.coef, xv, out=self.out[slot][:n])
        if kind == "full":
            res = res.reshape(job.shape)
        return res if job.out_dtype == res.dtype else res.to(job.out_dtype)


@contextlib.contextmanager
def _math_threads(device: torch.device) -> Iterator[None]:
    """Leave two cores to the reader and writer threads while the math runs on CPU.

    The per-chunk math is short and memory-bound; with every core also claimed by torch's
    intra-op pool, its threads wait on each other behind the I/O threads (measured 8x slower
    on 2 cores). The caller's setting is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(before, cores - 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _work_units(plan: MergePlan, stream: _GramStream | None) -> list[_Unit]:
    """A whole tensor, or chunks of a large one (Gram pass, then result pass), in output order."""
    units: list[_Unit] = []
    for job in plan.jobs:
        if stream is not None and not job.copy:
            units += [(job, kind, a, b) for kind, a, b in stream.units(job)]
        else:
            units.append((job, "generic", 0, 0))
    return units


def _stream_units(
    plan: MergePlan,
    stream: _GramStream | None,
    writer: SafetensorsWriter,
    dev: torch.device,
    *,
    allow_nonfinite: bool,
    progress: bool,
) -> BaseException | None:
    """Merge every unit into ``writer``: reads run one unit ahead on a thread, writes on another.

    Returns the writer thread's failure, if any (the caller names the output in the error).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    units = _work_units(plan, stream)
    q: queue.Queue = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def drain() -> None:
        while True:
            item = q.get()
            if item is None:
                return
            if failure:
                continue
            try:
                writer.add_part(*item)
            except BaseException as err:  # pragma: no cover - disk full etc.
                failure.append(err)

    def load(k: int) -> torch.Tensor | None:
        job, kind, a, b = units[k]
        return None if kind == "generic" else stream.read(job, a, b, k % 2)

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    pool = ThreadPoolExecutor(max_workers=1)
    bar = tqdm(total=len(plan.jobs), desc="merge", unit="tensor", disable=not progress, leave=False)
    try:
        pending = pool.submit(load, 0) if units else None
        emitted = 0  # result buffers rotate over emitted parts: 3 buffers, at most 2 with the writer
        for k, (job, kind, a, b) in enumerate(units):
            if failure:
                break
            xv = pending.result()
            # read the next unit into the other buffer (slot (k+1) % 2) while this one computes
            if k + 1 < len(units):
                pending = pool.submit(load, k + 1)
            if kind == "generic":
                res = _run_job(plan, job, dev, allow_nonfinite)
            else:
                res = stream.process(job, kind, a, xv, emitted % 3)
            if res is not None:
                q.put((job.name, res))
                emitted += 1
            if kind in ("generic", "full") or (kind == "emit" and b == numel(job.shape)):
                bar.update(1)
    finally:
        pool.shutdown(wait=True)
        q.put(None)
        th.join()
        bar.close()
    return failure[0] if failure else None


def merge_to_disk(
    recipe: MergeRecipe | str | os.PathLike | dict,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    allow_extrapolation: bool = False,
    progress: bool = True,
    checkpoints: Mapping[str, Checkpoint] | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Merge tensor by tensor into a Hugging Face model directory at ``out_dir``.

    Writes (atomically) sharded safetensors (+ index when more than one shard), the base's
    ``config.json`` (layer count, per-layer metadata, vocabulary size and dtype updated), the
    tokenizer (the base's files, or the one the recipe builds) and ``workbench_merge.yaml``
    (the recipe). Inputs are read with plain file reads into a few
    reusable buffers (no memory maps), one tensor ahead of the math, and results are written
    by a second thread: memory stays bounded by a few of the largest tensor, whatever the
    model size. Non-float tensors are copied from the base and reported in
    ``workbench_merge.yaml``.
    """
    dev = torch_device(device)
    out = Path(out_dir)
    plan = plan_merge(recipe, checkpoints=checkpoints, allow_extrapolation=allow_extrapolation)
    target = out.resolve()
    for ck in plan.checkpoints.values():
        if target == ck.path or target in ck.path.parents:
            raise WorkbenchError(f"output directory {out} would overwrite input model {ck.path}")
    method = plan.recipe.merge_method
    fast = [j for j in plan.jobs if method in GRAM_METHODS and not j.copy]
    stream = _GramStream(plan, fast, dev, allow_nonfinite) if fast else None

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(
            tmp,
            [(j.name, j.out_dtype, j.shape) for j in plan.jobs],
            max_shard_bytes=max_shard_bytes,
            metadata={"workbench_merge_method": method},
        )
        with _math_threads(dev):
            failure = _stream_units(plan, stream, writer, dev, allow_nonfinite=allow_nonfinite, progress=progress)
        if failure is not None:
            raise WorkbenchError(f"{out}: writing the merged tensors failed ({failure})")
        writer.close()
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
        if plan.tokenizer is not None:  # built by the recipe (tokenizer source, chat template)
            plan.tokenizer.save_pretrained(str(tmp))
        else:
            copy_tokenizer_files(plan.checkpoints[plan.tokenizer_source].path, tmp)
        (tmp / "workbench_merge.yaml").write_text(_merge_yaml(plan))
    if plan.notes and progress:
        for n in plan.notes:
            print(f"note: {n}")
    return out
