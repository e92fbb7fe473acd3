"""A worker's two stages, so that the device never waits on the host: batch N+1 generates while batch N is scored,
repaired and encoded/written.

`Worker.process(batch)` runs a batch through both stages in order, each under its own lock, then waits for its
writes under neither:
  device  the pipeline call (and repair's inpainting, which also runs on the device and uses the batch's adapters)
  host    CLIP scoring and pixel checks on the device tensor, repair's re-scoring, submitting the PNG writes
  writes  stamping, PNG encoding and the puts on the worker's writer pool (parallel: zlib and PIL release the GIL);
          the batch's call waits for its own, so batch N's PNGs encode while batch N+1 is scored
Two callers (the local executor's two batch threads, or a Ray actor with `max_concurrency = 2`) therefore keep one
batch in each stage. `run.batches_in_flight` (1 or 2) bounds the callers, which is the back-pressure: a third batch
is not started before the oldest returned. Every guarantee of a serial worker holds per call: a batch's records come
back only after its own writes, an exception is raised by the call of the batch it belongs to, and the bytes of an
image depend only on its task (per-sample seeds; repair runs with the batch's own adapters, under the device lock).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class StageLocks:
    """The device and host locks of one worker. Lock order, where both are held: host, then device (repair)."""

    def __init__(self) -> None:
        self.device = threading.Lock()
        self.host = threading.Lock()


def pipelined(
    items: deque[T],
    call: Callable[[T], R],
    depth: int,
    on_done: Callable[[T, Future[R]], None],
    pending: Iterator[T] | None = None,
) -> None:
    """Run `call` on the items of `items`, then of `pending` (taken only as they are started: the plan's batches are
    built on demand), with at most `depth` calls in flight, handing each finished call to `on_done(item, future)` in
    the order the items were started. `on_done` may push items back onto the front of `items` (bisection of a failed
    batch); they are started next. Depth 1 calls in this thread, one at a time."""
    rest = pending if pending is not None else iter(())

    def take() -> T | None:
        return items.popleft() if items else next(rest, None)

    if depth <= 1:
        while (item := take()) is not None:
            on_done(item, _called(call, item))
        return
    inflight: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="batch") as pool:
        while True:
            while len(inflight) < depth and (item := take()) is not None:
                inflight.append((item, pool.submit(call, item)))
            if not inflight:
                return
            item, future = inflight.popleft()
            future.exception()  # waits; the result or the error goes to on_done with its own item
            on_done(item, future)


def _called(call: Callable[[T], R], item: T) -> Future[R]:
    future: Future[Any] = Future()
    try:
        future.set_result(call(item))
    except Exception as exc:
        future.set_exception(exc)
    return future
