"""Executors: run planned batches through Worker instances, in-process ("local") or on a Ray cluster ("ray").

Both call the same `Worker.process`; results stream back to `on_result` in completion order (the driver sorts
manifest rows, so order never matters).

Ray design: a fixed pool of actors (not Ray Data), because the unit of work is an already-planned,
resolution-homogeneous batch: an actor loads the pipeline and CLIP once and then takes whole batches from the
driver, one at a time, so a fast worker takes more batches. Actors are created with `max_restarts` and
`max_task_retries`: a worker process that dies (OOM, kill) is restarted and its batch re-run; the worker's writes
are idempotent. A batch that still fails is reported as `generation_error` rows, never dropped.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig
from factory.errors import ConfigError, FactoryError
from factory.generation.worker import BatchResult, Worker, split_batch
from factory.inputs.planner import Batch

log = logging.getLogger(__name__)

GENERATION_ERROR = "generation_error"
OnResult = Callable[[BatchResult], None]


def failed_batch(batch: Batch, error: str) -> BatchResult:
    """Every task of a batch that could not be generated, as rows for review.parquet."""
    import dataclasses

    rows = [
        {
            **dataclasses.asdict(t),
            "reasons": [GENERATION_ERROR],
            "initial_reasons": [GENERATION_ERROR],
            "repaired": False,
            "attempts": 0,
            "error": error,
        }
        for t in batch.tasks
    ]
    return BatchResult(batch.batch_id, rows, {})


def run_local(
    batches: list[Batch], cfg: FactoryConfig, date_dir: str, on_result: OnResult, worker: Worker | None = None
) -> dict[str, Any]:
    """In-process. `worker` lets a caller that runs many days (the bench, a notebook) reuse loaded models."""
    if worker is None:
        worker = Worker(cfg, date_dir)
    worker.date_dir = Path(date_dir)
    queue = deque(batches)
    while queue:
        batch = queue.popleft()
        try:
            result = worker.process(batch)
        except Exception as exc:  # one bad SKU must not lose the rest of the night
            result = _on_failure(batch, f"{type(exc).__name__}: {exc}", queue)
        if result is not None:
            on_result(result)
    return {"executor": "local", "workers": 1}


def _on_failure(batch: Batch, error: str, queue: deque[Batch]) -> BatchResult | None:
    """A failed batch is split in halves and both are retried, until the failing (poison) SKU is alone: that one
    becomes a `generation_error` row and every other SKU of the batch still gets its image."""
    if len(batch.tasks) > 1:
        log.warning("batch %s failed (%s); splitting it to isolate the failing SKU", batch.batch_id, error)
        queue.extendleft(reversed(split_batch(batch, len(batch.tasks) // 2)))
        return None
    log.warning("sku %r failed: %s", batch.tasks[0].sku_id, error)
    return failed_batch(batch, error)


def _init_ray(cfg: FactoryConfig) -> bool:
    """Join $RAY_ADDRESS / run.ray_address if given, else start a local cluster. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        needed = cfg.run.workers * cfg.run.cpus_per_worker
        ray.init(
            num_cpus=max(os.cpu_count() or 1, needed),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    return True


def run_ray(batches: list[Batch], cfg: FactoryConfig, date_dir: str, on_result: OnResult) -> dict[str, Any]:
    import ray

    started = _init_ray(cfg)
    actors: list[Any] = []
    try:
        resources = ray.cluster_resources()
        n = max(1, min(cfg.run.workers, len(batches)))
        if n * cfg.run.cpus_per_worker > resources.get("CPU", 0):
            raise ConfigError(
                f"run.workers ({n}) x run.cpus_per_worker ({cfg.run.cpus_per_worker}) exceeds the cluster's "
                f"{resources.get('CPU', 0):g} CPUs; lower them"
            )
        gpus = 1 if resources.get("GPU", 0) >= n else 0  # one GPU per worker when the cluster has them
        remote = ray.remote(Worker).options(
            num_cpus=cfg.run.cpus_per_worker,
            num_gpus=gpus,
            max_restarts=cfg.run.max_restarts,
            max_task_retries=cfg.run.max_restarts,
        )
        actors = [remote.remote(cfg, date_dir) for _ in range(n)]
        queue = deque(batches)
        inflight: dict[Any, tuple[Any, Batch]] = {}

        def submit(actor: Any) -> None:
            if queue:
                batch = queue.popleft()
                inflight[actor.process.remote(batch)] = (actor, batch)

        for actor in actors:
            submit(actor)
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            actor, batch = inflight.pop(ref)
            result: BatchResult | None
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the batch raised inside the worker
                result = _on_failure(batch, _ray_error_line(exc), queue)
            except ray.exceptions.RayActorError as exc:  # the worker died and used up its restarts
                if _is_init_failure(exc):
                    raise FactoryError(f"a Ray worker could not start: {_ray_error_line(exc)}") from exc
                log.warning("worker died on batch %s after its restarts; replacing it", batch.batch_id)
                result = _on_failure(batch, f"worker died: {_ray_error_line(exc)}", queue)
                actors.remove(actor)
                actor = remote.remote(cfg, date_dir)
                actors.append(actor)
            if result is not None:
                on_result(result)
            submit(actor)
            for idle in [a for a in actors if a not in {v[0] for v in inflight.values()}]:
                submit(idle)  # split halves may have refilled the queue after other actors went idle
        return {"executor": "ray", "workers": n, "gpus_per_worker": gpus}
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


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


EXECUTORS = {"local": run_local, "ray": run_ray}
