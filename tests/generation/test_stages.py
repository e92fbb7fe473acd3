"""The pipelined worker (factory/generation/stages.py): ordering, back-pressure, error attribution, overlap of
generation with the host stage, and the same bytes with one or two batches in flight."""

import dataclasses
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from factory.generation.faults import FaultyWorker
from factory.generation.stages import pipelined
from factory.generation.worker import Worker
from factory.io.records import MANIFEST_SCHEMAS
from factory.job.night_plan import local_worker
from factory.job.run import run
from tests.conftest import DATE, SAMPLE_SCHEMA, sample_rows, with_run, write_skus
from tests.generation.test_worker import batch, tasks_for
from tests.job.test_run import image_digests, manifest_rows


@pytest.mark.parametrize("depth", [1, 2])
def test_results_come_in_start_order_with_at_most_depth_in_flight(depth):
    running, peak, lock = [0], [0], threading.Lock()

    def call(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 if i % 2 else 0.05)  # odd items finish first when they overlap an even one
        with lock:
            running[0] -= 1
        if i == 3:
            raise ValueError(f"item {i}")
        return i * 10

    done = []
    pipelined(deque(range(6)), call, depth, lambda i, f: done.append((i, f.exception() or f.result())))
    assert [i for i, _ in done] == list(range(6)) and peak[0] == depth
    assert [r for _, r in done if not isinstance(r, Exception)] == [0, 10, 20, 40, 50]
    assert str(dict(done)[3]) == "item 3"  # the error comes back with its own item


def test_items_pushed_back_by_on_done_run_next():
    items, seen = deque(["ab", "c"]), []

    def on_done(item, future):
        seen.append(item)
        if len(item) > 1:  # a bisected batch: its halves go to the front
            items.extendleft(reversed(list(item)))

    pipelined(items, lambda x: x, 2, on_done)
    assert seen[0] == "ab" and sorted(seen[1:]) == ["a", "b", "c"]


class _Handshake(Worker):
    """Batch "first" cannot finish its host stage until batch "second" has been generated: only a worker that
    generates the next batch while the previous one is in its host stage gets through."""

    second_generated = threading.Event()

    def _generate_timed(self, b):
        out = super()._generate_timed(b)
        if b.batch_id == "second":
            self.second_generated.set()
        return out

    def _finish(self, b, images, timings):
        if b.batch_id == "first":
            assert self.second_generated.wait(60), "the next batch did not generate during this one's host stage"
        return super()._finish(b, images, timings)


def test_the_next_batch_generates_while_this_one_is_finished(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
    worker = local_worker(cfg, str(tmp_path), cls=_Handshake)
    tasks = tasks_for(4)
    results = {}

    def on_done(b, future):
        results[b.batch_id] = future.result()

    pipelined(deque([batch(tasks[:2], "first"), batch(tasks[2:], "second")]), worker.process, 2, on_done)
    assert [r.sku_id for r in results["first"].records] == [t.sku_id for t in tasks[:2]]
    assert all((tmp_path / r.image_path).is_file() for res in results.values() for r in res.records)


def test_a_poison_sku_is_attributed_to_its_batch_with_two_in_flight(cfg, tmp_path):
    cfg = with_run(cfg, fault_injection="raise:W1")
    worker = local_worker(cfg, str(tmp_path), cls=FaultyWorker)
    tasks = tasks_for(4)
    outcomes = {}

    def on_done(b, future):
        outcomes[b.batch_id] = future.exception()

    pipelined(deque([batch(tasks[:2], "has-W1"), batch(tasks[2:], "clean")]), worker.process, 2, on_done)
    assert "W1" in str(outcomes["has-W1"]) and outcomes["clean"] is None
    assert not list(tmp_path.rglob("*W1*.png"))  # the failed batch wrote nothing


def test_same_bytes_and_manifests_with_one_or_two_batches_in_flight(cfg, tmp_path):
    """Repair on (it inpaints under the device lock between generation calls), local executor, batch size 2."""
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, blur_laplacian_var=1e12))  # all blurry
    outs = {}
    for depth in (1, 2):
        c = with_run(cfg, executor="local", batch_size=2, batches_in_flight=depth)
        c = dataclasses.replace(c, paths=dataclasses.replace(c.paths, output=str(tmp_path / f"d{depth}")))
        outs[depth] = run(c, DATE).output
    assert image_digests(Path(outs[1]) / DATE) == image_digests(Path(outs[2]) / DATE)
    for name in MANIFEST_SCHEMAS:
        assert manifest_rows(outs[1], name) == manifest_rows(outs[2], name)
    rows = manifest_rows(outs[2], "approved") + manifest_rows(outs[2], "review")
    assert any(r["attempts"] for r in rows)  # repair ran


class _SplitRepair(Worker):
    repair_placement = "split"  # each inpaint under the device stage, each re-scoring under the host stage


def test_same_bytes_when_repair_takes_each_stage_per_step(cfg, tmp_path):
    """The benchmark's alternative placement (sim_device) changes which locks repair holds, never the bytes."""
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, blur_laplacian_var=1e12))  # all blurry
    outs = {}
    for cls, depth in ((Worker, 1), (_SplitRepair, 2)):
        c = with_run(cfg, executor="local", batch_size=2, batches_in_flight=depth)
        c = dataclasses.replace(c, paths=dataclasses.replace(c.paths, output=str(tmp_path / cls.__name__)))
        worker = local_worker(c, c.paths.output, DATE, cls=cls)
        outs[cls] = run(c, DATE, worker=worker).output
    assert image_digests(Path(outs[Worker]) / DATE) == image_digests(Path(outs[_SplitRepair]) / DATE)
    for name in MANIFEST_SCHEMAS:
        assert manifest_rows(outs[Worker], name) == manifest_rows(outs[_SplitRepair], name)
    rows = manifest_rows(outs[_SplitRepair], "approved") + manifest_rows(outs[_SplitRepair], "review")
    assert sum(r["attempts"] for r in rows) > 1  # repair ran, more than once
