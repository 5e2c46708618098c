"""Running points: the same code in-process (local backend) and in a Ray worker.

A :class:`Job` is a picklable description of one point; :func:`compute_point` merges it in
memory and evaluates it with this process's cache of opened ingredients and tokenizers;
:func:`run_local` and :func:`run_ray` yield a :class:`PointOutcome` per job as it finishes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.sweep.spec import Resources


@dataclass(frozen=True)
class Job:
    """What one worker needs to compute one point: a picklable, self-contained description."""

    index: int
    recipe: dict[str, Any]
    fingerprint: str
    tokenizer: str
    tasks: tuple[str, ...]
    data_dir: str | None
    limit: int | None
    seed: int
    batch_size: int | None
    device: str | None
    #: task -> the item ids to score (a search's dev subset); None: every item ``limit`` selects
    item_ids: Mapping[str, tuple[str, ...]] | None = None


class _WorkerState:
    """Per-process cache: opened ingredients and tokenizers, loaded once and reused by every point.

    The local backend uses one (in the driver); each Ray worker process holds its own, so a
    worker that runs several points opens each ingredient once (the merge engine also keeps
    their float32 tensors on the device between points).
    """

    def __init__(self) -> None:
        self.checkpoints: dict[str, Any] = {}
        self.tokenizers: dict[str, Any] = {}
        self.points_run = 0
        self.opens = 0

    def checkpoint(self, path: str) -> Any:
        if path not in self.checkpoints:
            from workbench.checkpoints import open_checkpoint

            self.checkpoints[path] = open_checkpoint(path)
            self.opens += 1
        return self.checkpoints[path]

    def checkpoints_for(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        from workbench.merge.recipe import model_refs

        return {ref: self.checkpoint(ref) for ref in model_refs(recipe)}

    def tokenizer(self, path: str) -> Any:
        if path not in self.tokenizers:
            from workbench.checkpoints import load_tokenizer

            self.tokenizers[path] = load_tokenizer(path)
        return self.tokenizers[path]


#: this process's cache (the driver's, or a Ray worker's)
STATE = _WorkerState()


def compute_point(job: Job) -> dict[str, Any]:
    """Merge one point in memory and evaluate it on ``job.tasks``: task -> EvalResult.

    Ingredients and tokenizers come from this process's cache; nothing is written to disk.
    """
    from workbench.devices import resolve_device
    from workbench.eval import evaluate
    from workbench.merge import merged_model

    device = resolve_device(job.device)
    model = merged_model(job.recipe, device=device, checkpoints=STATE.checkpoints_for(job.recipe))
    tokenizer = STATE.tokenizer(job.tokenizer)
    kwargs: dict[str, Any] = {"data_dir": job.data_dir, "limit": job.limit, "seed": job.seed}
    if job.batch_size is not None:
        kwargs["batch_size"] = job.batch_size
    if job.item_ids is not None:
        kwargs["item_ids"] = {task: list(ids) for task, ids in job.item_ids.items()}
    results = {}
    for task in job.tasks:
        results[task] = evaluate(
            model, tokenizer, [task], **kwargs, device=device, progress=False, model_fingerprint=job.fingerprint
        )
    STATE.points_run += 1
    del model
    return results


@dataclass
class PointOutcome:
    """What came back for one computed point: results per task, time, and which worker."""

    job: Job
    results: dict[str, Any]
    seconds: float
    worker: int
    opens: int


def _timed_point(job: Job) -> PointOutcome:
    start = time.perf_counter()
    results = compute_point(job)
    return PointOutcome(job, results, time.perf_counter() - start, os.getpid(), STATE.opens)


def run_local(jobs: Sequence[Job]) -> Iterator[PointOutcome]:
    """Compute the jobs one after the other in this process."""
    for job in jobs:
        yield _timed_point(job)


# --- Ray --------------------------------------------------------------------------------------

_REMOTE: Any = None


def _parse_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` -> (host, port); None for ``auto``/``local``.

    >>> _parse_address("127.0.0.1:6379"), _parse_address("ray://head:10001"), _parse_address("auto")
    (('127.0.0.1', 6379), ('head', 10001), None)
    """
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WorkbenchError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def probe_ray_address(address: str, timeout: float) -> None:
    """A TCP connection to a Ray address, or WorkbenchError saying nothing answers there."""
    target = _parse_address(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        raise WorkbenchError(
            f"Ray address {address}: nothing answers ({err.strerror or err}); start a cluster "
            "there (ray start --head) or leave out --ray-address to run Ray on this machine"
        ) from None


def connect_ray(address: str | None = None, *, timeout: float = 60.0, num_cpus: int | None = None) -> bool:
    """Connect to the Ray cluster at ``address`` (or start one on this machine when None).

    Returns True when this call initialised Ray (the caller then shuts it down), False when
    Ray was already initialised. A cluster started here listens on loopback only. An address
    where nothing answers raises :class:`WorkbenchError` after at most ``timeout`` seconds (a
    TCP probe first, then the connection itself in a watched thread), never hangs; any other
    Ray failure is one WorkbenchError too.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:  # pragma: no cover - optional dependency
        raise WorkbenchError("the ray backend needs Ray: pip install 'workbench[ray]'") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if not address:
        # Started from the calling thread: a cluster that ray.init starts from a helper thread
        # loses its GCS connection under load ("Failed to connect to GCS within 60 seconds",
        # then the process exits), and starting one has its own timeouts.
        try:
            with _loopback_only():
                ray.init(include_dashboard=False, num_cpus=num_cpus, **kwargs)
        except Exception as err:
            raise WorkbenchError(f"Ray: cannot start a local cluster ({type(err).__name__}: {err})") from None
        return True
    probe_ray_address(address, min(5.0, timeout))
    box: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as err:  # reported to the caller below
            box["error"] = err

    # connecting to a cluster may hang (a port that accepts TCP but is not Ray): a watched thread
    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise WorkbenchError(
            f"Ray address {address}: no answer within {timeout:.0f} s (is it a Ray head node? a cluster "
            "with token authentication also needs RAY_AUTH_MODE=token here)"
        )
    if "error" in box:
        err = box["error"]
        raise WorkbenchError(f"Ray address {address}: cannot connect ({type(err).__name__}: {err})")
    return True


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local cluster starts: make it listen on 127.0.0.1 only.

    Ray binds a new local cluster to the host's outward address, which need not route back to
    this machine. Its own switch for a loopback-only cluster is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read from the environment by the GCS, raylet and worker processes it starts, and from
    ``ray_constants`` by this process. Both are restored afterwards, so a later connection to a
    remote cluster from this process uses its real address again.
    """
    import ray._private.ray_constants as ray_constants

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env, saved_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def _remote_point(job: Job) -> PointOutcome:
    """The Ray task body: one point, computed with this worker process's ingredient cache."""
    return _timed_point(job)


def run_ray(
    jobs: Sequence[Job], *, address: str | None, resources: Resources, timeout: float = 60.0
) -> Iterator[PointOutcome]:
    """Compute the jobs as Ray tasks (each declaring ``resources``) on the cluster at ``address``
    (a new local one when None), yielding each outcome as it arrives; a worker's failure is
    one WorkbenchError naming the point."""
    import ray

    global _REMOTE
    started = connect_ray(address, timeout=timeout)
    try:
        if _REMOTE is None:
            # max_calls=0: worker processes are reused, so each keeps its opened ingredients
            _REMOTE = ray.remote(max_calls=0)(_remote_point)
        fn = _REMOTE.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        pending = {fn.remote(job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, WorkbenchError):
                        raise WorkbenchError(str(cause)) from None
                    raise WorkbenchError(f"point {job.index}: failed on a Ray worker: {cause or err}") from None
                except ray.exceptions.RayError as err:
                    raise WorkbenchError(
                        f"point {job.index}: Ray could not run it ({type(err).__name__}: {err})"
                    ) from None
    finally:
        if started:
            ray.shutdown()
