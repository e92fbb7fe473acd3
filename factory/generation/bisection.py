"""What both executors do with a batch that failed for its content: split it until the failing (poison) SKU is alone.

The split halves go to the front of a queue, ahead of the rest of the plan; the plan's batches are taken as they are
needed (the driver builds each one from the plan file only when asked), never held as a list.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from factory.inputs.bucketing import Batch

if TYPE_CHECKING:
    from factory.generation.worker import BatchResult

log = logging.getLogger(__name__)

OnResult = Callable[["BatchResult"], None]


def failed_batch(batch: Batch, error: str) -> BatchResult:
    """Every task of a batch that could not be generated, as records for review."""
    from factory.generation.worker import BatchResult
    from factory.io.records import ImageRecord

    return BatchResult(batch.batch_id, [ImageRecord.failed(t, error) for t in batch.tasks], {})


def on_failure(batch: Batch, error: str, queue: deque[Batch]) -> BatchResult | None:
    """A failed batch is split in halves and both are retried, until the failing (poison) SKU is alone: that one
    becomes a `generation_error` record and every other SKU of the batch still gets its image."""
    if len(batch.tasks) > 1:
        log.warning("batch %s failed (%s); splitting it to isolate the failing SKU", batch.batch_id, error)
        queue.extendleft(reversed(batch.split(len(batch.tasks) // 2)))
        return None
    log.warning("sku %r failed: %s", batch.tasks[0].sku_id, error)
    return failed_batch(batch, error)


def next_batch(queue: deque[Batch], pending: Iterator[Batch]) -> Batch | None:
    """Split halves (and re-queued batches) first, then the next planned batch."""
    return queue.popleft() if queue else next(pending, None)
