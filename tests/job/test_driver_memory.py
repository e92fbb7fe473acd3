"""The driver's memory does not grow with the night: a 20 k- and a 60 k-image night through `run()` (plan,
keys, resume, cross-day cache, dispatch, part files) reach the same peak of traced Python memory. Arrow buffers are
not Python objects (tracemalloc does not see them); a Task, key or record held per image for the night is, and it
is what made a night's driver grow. A stand-in worker takes the batches without a model or PNGs, so the driver is
all that is measured; the peak is read when finalize begins."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from factory.generation.runtime import resolve
from factory.generation.worker import BatchResult
from factory.io.records import ImageRecord
from factory.job import run as run_module
from factory.modes import NULL_PIPELINE
from factory.tools.benchmarks.scale_bench import BENCH_DATE, synthetic_day
from tests.conftest import with_run


class TakesBatches:
    """A loaded worker's interface, with records that carry no image (the driver's work per batch only)."""

    def __init__(self, cfg):
        self.runtime = resolve(cfg, "cpu", None)
        self.startup: dict[str, float] = {}
        self.images = 0

    def target(self, cfg, date: str) -> None:
        pass

    def process(self, batch) -> BatchResult:
        self.images += len(batch.tasks)
        records = [ImageRecord(sku_id=t.sku_id, category=t.category, variant=t.variant) for t in batch.tasks]
        return BatchResult(batch.batch_id, records, {})


class Finalized(Exception):
    """Raised instead of finalizing: the peak so far is the plan-to-dispatch driver's."""


def _peak(cfg, tmp_path, rows: int, monkeypatch) -> tuple[int, int]:
    skus = synthetic_day(tmp_path / f"skus-{rows}.parquet", rows)
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(tmp_path / f"out-{rows}")))
    worker = TakesBatches(cfg)
    seen = {}

    def finalize_now(*args, **kwargs):
        seen["peak"] = tracemalloc.get_traced_memory()[1]
        raise Finalized

    monkeypatch.setattr(run_module, "_finalize", finalize_now)
    tracemalloc.start()
    try:
        with pytest.raises(Finalized):
            run_module.run(cfg, BENCH_DATE, skus, worker=worker)
    finally:
        tracemalloc.stop()
    return worker.images, seen["peak"]


def test_the_driver_peak_does_not_grow_with_the_night(cfg, tmp_path, monkeypatch):
    cfg = with_run(cfg, executor="local", batch_size=16)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE, lora=""))
    _peak(cfg, tmp_path, 200, monkeypatch)  # imports and first-use caches: not the night's
    # both past one planning batch (night_plan.PLAN_BATCH_ROWS) and one plan row group (plan_table.ROW_GROUP):
    # the bounded buffers are full in both, so what is left of the slope is per-image state
    small, peak_small = _peak(cfg, tmp_path, 16_000, monkeypatch)
    large, peak_large = _peak(cfg, tmp_path, 48_000, monkeypatch)
    assert 18_000 < small < 22_000 and 55_000 < large < 65_000  # ~1.22 images a row
    slope = (peak_large - peak_small) / (large - small)
    print(
        f"peak traced memory: {small} images {peak_small / 2**20:.1f} MiB, {large} images "
        f"{peak_large / 2**20:.1f} MiB ({slope:.0f} B an image)"
    )
    assert peak_large < 1.3 * peak_small, (peak_small, peak_large)
    assert slope < 40  # bytes an image: a byte of todo flag is fine, a Python object per image is not
