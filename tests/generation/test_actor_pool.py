"""The Ray dispatch loop with real actors on the session's Ray cluster: a batch that kills every worker it reaches
is isolated by bisection while the rest of the night is delivered exactly once, lost actors are replaced within the
night's budget, and with no worker left the night fails in one sentence. (Node loss and a SIGKILLed worker on a
real two-node cluster: tests/jobs/test_chaos.py, make test-all.)"""

from __future__ import annotations

import os

import pytest
import ray

from factory.errors import FactoryError
from factory.generation.actor_pool import ActorPool
from factory.inputs.bucketing import Batch, Task


class Skus:
    """Returns a batch's SKU ids; its process exits hard on a batch holding SKU "X" (a segfault, an OOM kill)."""

    def process(self, batch: Batch) -> list[str]:
        ids = [t.sku_id for t in batch.tasks]
        if "X" in ids:
            os._exit(17)
        return ids


def batch(batch_id: str, *skus: str) -> Batch:
    tasks = tuple(
        Task(s, "toys", 0, "p", "", 1, "small", 64, 64, 2, f"{s}.png", "v1", "day.parquet", i)
        for i, s in enumerate(skus)
    )
    return Batch(batch_id, 64, 64, 2, tasks)


def night(replacements: int) -> tuple[ActorPool, list]:
    remote = ray.remote(Skus).options(num_cpus=0, max_restarts=0, max_task_retries=0)
    results: list = []
    batches = [batch("b1", "A", "B", "X", "C"), batch("b2", "D", "E")]
    pool = ActorPool([remote.remote()], remote.remote, batches, results.append, 1, replacements)
    return pool, results


def delivered(results: list) -> tuple[list[str], list[str]]:
    """(SKUs with an image, SKUs failed): worker results are id lists, bisection's failures BatchResults."""
    ok = [s for r in results if isinstance(r, list) for s in r]
    failed = [rec.sku_id for r in results if not isinstance(r, list) for rec in r.records]
    return sorted(ok), failed


def test_a_batch_that_kills_its_workers_is_isolated_and_the_rest_delivered_once(ray_cluster):
    pool, results = night(replacements=3)  # three deaths: the batch, its half [X, C], then [X] alone
    pool.drain()
    ok, failed = delivered(results)
    assert ok == ["A", "B", "C", "D", "E"] and failed == ["X"]
    assert pool.lost == 3 and pool.replacements == 0 and len(pool.actors) == 1
    ray.kill(pool.actors[0])


def test_with_no_worker_left_the_night_fails_in_one_sentence(ray_cluster):
    pool, results = night(replacements=0)
    with pytest.raises(FactoryError) as caught:
        pool.drain()
    msg = str(caught.value)
    assert msg.startswith("every Ray worker was lost (1 lost;") and "rerun" in msg and "\n" not in msg
    ok, failed = delivered(results)
    assert "X" not in ok and not failed  # nothing was blamed; what was delivered stays delivered
