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
worker's writes are idempotent. An actor lost for good (its node gone, its restarts used up) is dropped and, while
the cluster has room, replaced; its batches go to the live actors (factory.generation.actor_pool). A batch that
still fails is reported as `generation_error` records, never dropped.

A failure of the environment (factory.io.faults: the output full or read-only, the object store gone) is not a
poison SKU: it is not bisected and blames no SKU. The executor stops dispatching, lets the batches in flight finish
(their rows are kept), and raises the EnvironmentFault: the night fails with one sentence naming the cause.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from factory import logs
from factory.config import FactoryConfig, QualityConfig
from factory.errors import ConfigError
from factory.generation.actor_pool import ActorPool
from factory.generation.bisection import OnResult, on_failure
from factory.generation.stages import pipelined
from factory.inputs.bucketing import Batch
from factory.io.faults import environment_fault

if TYPE_CHECKING:
    from factory.generation.runtime import Runtime
    from factory.generation.worker import Worker

log = logging.getLogger(__name__)

Thresholds = dict[str, QualityConfig]


def open_executor(cfg: FactoryConfig, worker: Worker | None = None) -> LocalExecutor | RayExecutor:
    """The executor named by `run.executor`; use it as a context manager. `worker` (local only) reuses loaded
    models (the bench, a notebook)."""
    if cfg.run.executor == "ray":
        return RayExecutor(cfg)
    return LocalExecutor(cfg, worker)


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
                result = on_failure(batch, f"{type(exc).__name__}: {exc}", queue)
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
        self.actors: list[Any] = []  # every actor the night created (the pool's replacements too): killed on exit

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

        def new_actor() -> Any:
            self.actors.append(remote.remote(*args))
            return self.actors[-1]

        run = self.cfg.run
        room = lambda: has_room(run.cpus_per_worker, gpus)  # noqa: E731
        pool = ActorPool(
            list(self.actors), new_actor, batches, on_result, run.batches_in_flight, run.max_restarts * n, room
        )
        pool.drain()
        return {"executor": "ray", "workers": n, "gpus_per_worker": gpus, "workers_lost": pool.lost}

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


def has_room(cpus: int, gpus: int) -> bool:
    """Whether the cluster has a free slot for one more worker now."""
    import ray

    free = ray.available_resources()
    return free.get("CPU", 0) >= cpus and free.get("GPU", 0) >= gpus
