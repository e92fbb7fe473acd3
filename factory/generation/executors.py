"""Executors: run planned batches through Worker instances, in-process ("local") or on a Ray cluster ("ray").

An executor is opened before the night's keys are computed, because it knows where the workers run: its
`device()` (a local CUDA device, or GPUs in the Ray cluster) is what `runtime.resolve` turns "auto" into. Both
executors call the same `Worker.process`; results stream back to `on_result` in completion order (the driver sorts
manifest rows, so order never matters).

Ray design: a fixed pool of actors (not Ray Data), because the unit of work is an already-planned,
resolution-homogeneous batch: an actor loads the pipeline and CLIP once and then takes whole batches from the
driver, `run.batches_in_flight` at a time (a threaded actor: one batch generating while the previous one is
scored and written, factory.generation.stages), so a fast worker takes more batches. Actors are created with
`max_restarts` and `max_task_retries`: a worker process that dies (OOM, kill) is restarted and its batch re-run; the
worker's writes are idempotent. A batch that still fails is reported as `generation_error` records, never dropped.

A failure of the environment (factory.io.faults: the output full or read-only, the object store gone) is not a
poison SKU: it is not bisected and blames no SKU. The executor stops dispatching, lets the batches in flight finish
(their rows are kept), and raises the EnvironmentFault: the night fails with one sentence naming the cause.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from factory import logs
from factory.config import FactoryConfig, QualityConfig
from factory.errors import ConfigError, EnvironmentFault, FactoryError
from factory.generation.stages import pipelined
from factory.inputs.bucketing import Batch
from factory.io.faults import environment_fault

if TYPE_CHECKING:
    from factory.generation.runtime import Runtime
    from factory.generation.worker import BatchResult, Worker

log = logging.getLogger(__name__)

OnResult = Callable[["BatchResult"], None]
Thresholds = dict[str, QualityConfig]


def open_executor(cfg: FactoryConfig, worker: Worker | None = None) -> LocalExecutor | RayExecutor:
    """The executor named by `run.executor`; use it as a context manager. `worker` (local only) reuses loaded
    models (the bench, a notebook)."""
    if cfg.run.executor == "ray":
        return RayExecutor(cfg)
    return LocalExecutor(cfg, worker)


def failed_batch(batch: Batch, error: str) -> BatchResult:
    """Every task of a batch that could not be generated, as records for review."""
    from factory.generation.worker import BatchResult
    from factory.io.records import ImageRecord

    return BatchResult(batch.batch_id, [ImageRecord.failed(t, error) for t in batch.tasks], {})


def _on_failure(batch: Batch, error: str, queue: deque[Batch]) -> BatchResult | None:
    """A failed batch is split in halves and both are retried, until the failing (poison) SKU is alone: that one
    becomes a `generation_error` record and every other SKU of the batch still gets its image."""
    if len(batch.tasks) > 1:
        log.warning("batch %s failed (%s); splitting it to isolate the failing SKU", batch.batch_id, error)
        queue.extendleft(reversed(batch.split(len(batch.tasks) // 2)))
        return None
    log.warning("sku %r failed: %s", batch.tasks[0].sku_id, error)
    return failed_batch(batch, error)


def _next_batch(queue: deque[Batch], pending: Iterator[Batch]) -> Batch | None:
    """Split halves first, then the next planned batch: the plan's batches are taken as they are needed (the
    driver builds each one from the plan file only when asked), never held as a list."""
    return queue.popleft() if queue else next(pending, None)


class LocalExecutor:
    """In-process, one worker."""

    def __init__(self, cfg: FactoryConfig, worker: Worker | None = None):
        self.cfg, self.worker = cfg, worker

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def device(self) -> tuple[str, tuple[int, int] | None]:
        from factory.generation.runtime import local_device

        return local_device(self.cfg)

    def free_memory(self) -> int | None:
        """Bytes free on this process's CUDA device (run.batch_size_mode "auto"); None without one."""
        return _free_memory() if self.cfg.model.device != "cpu" and _has_cuda() else None

    def run(
        self, batches: Iterable[Batch], runtime: Runtime, thresholds: Thresholds, date: str, on_result: OnResult
    ) -> dict[str, Any]:
        import time

        from factory.generation.faults import worker_class

        worker = self.worker or worker_class(self.cfg)(self.cfg, runtime, thresholds, date)
        worker.target(self.cfg, date)
        ready_at = time.perf_counter()  # the worker's models are loaded: start-up ends here
        queue: deque[Batch] = deque()  # split halves, ahead of the rest of the plan
        pending = iter(batches)

        def done(batch: Batch, future: Future) -> None:
            try:
                result = future.result()
            except Exception as exc:  # one bad SKU must not lose the rest of the night
                fault = environment_fault(exc)
                if fault is not None:  # stop: a batch still in flight finishes its writes first (a rerun adopts them)
                    log.error("stopping the night: %s", fault)
                    raise fault from exc
                result = _on_failure(batch, f"{type(exc).__name__}: {exc}", queue)
            if result is not None:
                on_result(result)

        # two batch threads: one generating, one being scored and written (factory.generation.stages)
        pipelined(queue, worker.process, self.cfg.run.batches_in_flight, done, pending)
        return {"executor": "local", "workers": 1, "ready_at": ready_at, "worker_startup": worker.startup}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _free_memory() -> int:
    import torch

    return int(torch.cuda.mem_get_info()[0])


def _cuda_capability() -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


class RayExecutor:
    """A pool of Ray actors, one Worker each (one GPU each when the cluster has them)."""

    def __init__(self, cfg: FactoryConfig):
        self.cfg = cfg
        self.started = False
        self.actors: list[Any] = []

    def __enter__(self) -> RayExecutor:
        from factory.generation.cluster import connect

        self.started = connect(self.cfg)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started:
            ray.shutdown()

    def device(self) -> tuple[str, tuple[int, int] | None]:
        """cuda when the cluster has GPUs (and the config allows them); the capability is read on a GPU node."""
        import ray

        has_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        if self.cfg.model.device == "cuda" and not has_gpus:
            raise ConfigError("model.device is 'cuda' but the Ray cluster has no GPUs")
        if self.cfg.model.device == "cpu" or not has_gpus:
            return "cpu", None
        return "cuda", ray.get(ray.remote(num_gpus=1)(_cuda_capability).remote())

    def free_memory(self) -> int | None:
        """Bytes free on a GPU of the cluster, read there before the actors start (None without GPUs)."""
        import ray

        if self.cfg.model.device == "cpu" or ray.cluster_resources().get("GPU", 0) < 1:
            return None
        return ray.get(ray.remote(num_gpus=1)(_free_memory).remote())

    def run(
        self, batches: Iterable[Batch], runtime: Runtime, thresholds: Thresholds, date: str, on_result: OnResult
    ) -> dict[str, Any]:
        """`batches`: an iterable with a length (the driver's plan dispatch, or a list)."""
        n = max(1, min(self.cfg.run.workers, len(batches)))
        remote, gpus = self._actor_class(n, runtime)
        args = (self.cfg, runtime, thresholds, date)  # each actor opens its own Store on cfg.paths.output
        self.actors = [remote.remote(*args) for _ in range(n)]
        depth = self.cfg.run.batches_in_flight
        _Dispatch(self.actors, lambda: remote.remote(*args), batches, on_result, depth).drain()
        return {"executor": "ray", "workers": n, "gpus_per_worker": gpus}

    def _actor_class(self, n: int, runtime: Runtime) -> tuple[Any, int]:
        import ray

        from factory.generation.faults import worker_class

        run, cpus = self.cfg.run, ray.cluster_resources().get("CPU", 0)
        if n * run.cpus_per_worker > cpus:
            raise ConfigError(
                f"run.workers ({n}) x run.cpus_per_worker ({run.cpus_per_worker}) exceeds the cluster's "
                f"{cpus:g} CPUs; lower them"
            )
        gpus = 1 if runtime.device == "cuda" else 0  # one GPU per worker
        if gpus and n > ray.cluster_resources().get("GPU", 0):
            raise ConfigError(f"run.workers ({n}) exceeds the cluster's {ray.cluster_resources()['GPU']:g} GPUs")
        # --verbose reaches the workers of a joined cluster too (a local one inherits it): no filters there either
        remote = ray.remote(worker_class(self.cfg)).options(
            num_cpus=run.cpus_per_worker,
            num_gpus=gpus,
            max_restarts=run.max_restarts,
            max_task_retries=run.max_restarts,
            max_concurrency=run.batches_in_flight,  # a threaded actor: one batch per stage (generation.stages)
            **({"runtime_env": {"env_vars": {logs.VERBOSE_ENV: "1"}}} if logs.verbose() else {}),
        )
        return remote, gpus


class _Dispatch:
    """Feeds batches to actors, `depth` at a time each; failed batches are bisected, dead actors replaced."""

    def __init__(
        self,
        actors: list[Any],
        new_actor: Callable[[], Any],
        batches: Iterable[Batch],
        on_result: OnResult,
        depth: int = 1,
    ):
        self.actors, self.new_actor, self.on_result, self.depth = actors, new_actor, on_result, depth
        self.queue: deque[Batch] = deque()  # split halves, ahead of the rest
        self.pending = iter(batches)
        self.inflight: dict[Any, tuple[Any, Batch]] = {}
        self.replaced: dict[Any, Any] = {}  # a dead actor's replacement (its other in-flight batch fails too)
        self.fault: EnvironmentFault | None = None  # set: no new batches; the night fails once in-flight ones end

    def submit(self, actor: Any) -> None:
        batch = _next_batch(self.queue, self.pending) if self.fault is None else None
        if batch is not None:
            self.inflight[actor.process.remote(batch)] = (actor, batch)

    def drain(self) -> None:
        import ray

        for actor in self.actors:
            for _ in range(self.depth):
                self.submit(actor)
        while self.inflight:
            [ref], _ = ray.wait(list(self.inflight), num_returns=1)
            actor, batch = self.inflight.pop(ref)
            actor, result = self._collect(ref, actor, batch)
            if result is not None:
                self._deliver(result)
            busy = Counter(v[0] for v in self.inflight.values())
            for idle in self.actors:  # split halves may have refilled the queue after other actors went idle
                for _ in range(self.depth - busy[idle]):
                    self.submit(idle)
        if self.fault is not None:
            raise self.fault

    def _deliver(self, result: BatchResult) -> None:
        try:
            self.on_result(result)
        except EnvironmentFault as fault:  # the driver's own write (a resume part) failed: stop the same way
            self._stop(fault)

    def _stop(self, fault: EnvironmentFault) -> None:
        if self.fault is None:
            log.error("stopping the night: %s (%d batches in flight finish first)", fault, len(self.inflight))
            self.fault = fault

    def _collect(self, ref: Any, actor: Any, batch: Batch) -> tuple[Any, BatchResult | None]:
        import ray

        try:
            return actor, ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the batch raised inside the worker
            fault = environment_fault(exc)
            if fault is not None:
                self._stop(fault)
                return actor, None
            return actor, _on_failure(batch, _ray_error_line(exc), self.queue)
        except ray.exceptions.RayActorError as exc:  # the worker died and used up its restarts
            if _is_init_failure(exc):
                raise FactoryError(f"a Ray worker could not start: {_ray_error_line(exc)}") from exc
            if actor not in self.replaced:
                log.warning("worker died on batch %s after its restarts; replacing it", batch.batch_id)
                self.actors.remove(actor)
                self.replaced[actor] = self.new_actor()
                self.actors.append(self.replaced[actor])
            actor = self.replaced[actor]
            return actor, _on_failure(batch, f"worker died: {_ray_error_line(exc)}", self.queue)


def _ray_error_line(exc: BaseException) -> str:
    """The innermost exception line of a Ray error (Ray wraps the worker's traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln.split(":")[0]]
    return (errs[-1] if errs else lines[-1] if lines else type(exc).__name__)[:500]


def _is_init_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "__init__" in text or "creation task" in text
