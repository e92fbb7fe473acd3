"""The driver's memory does not grow with the night: a 20 k- and a 60 k-image night through the whole of `run()`
(plan, keys, resume, cross-day cache, dispatch, part files, the range-sorted finalize, manifests, run.json) reach
about the same peak. Each night runs in its own process (peaks cannot be reset), which reports two peaks: traced
Python memory (a Task, key or record held per image would show here) and Arrow's memory pool (the system allocator,
so every Arrow buffer is counted: a whole-night table would show here). A stand-in worker takes the batches without
a model or PNGs, so the driver is all that is measured."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

from factory.config import load_config
from factory.generation.runtime import resolve
from factory.generation.worker import BatchResult
from factory.io.records import ImageRecord
from factory.modes import NULL_PIPELINE
from factory.tools.benchmarks.scale_bench import BENCH_DATE, synthetic_day

REPO = Path(__file__).resolve().parents[2]


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
        records = [
            ImageRecord(sku_id=t.sku_id, category=t.category, variant=t.variant, placement=t.placement)
            for t in batch.tasks
        ]
        return BatchResult(batch.batch_id, records, {})


def night_peaks(rows: int, workdir: Path) -> dict[str, int]:
    """Run one null night of `rows` SKU rows in this process; its images and peaks (bytes). The bounded buffers
    (plan row groups per group, finalize ranges) are made small, so that both nights fill them."""
    import pyarrow as pa

    from factory.job import night_sort, plan_table
    from factory.job.run import run

    plan_table.ROW_GROUP, night_sort.RANGE_ROWS = 2048, 4096

    base = load_config(REPO / "factory.toml")
    cfg = dataclasses.replace(
        base,
        paths=dataclasses.replace(base.paths, output=str(workdir / "out"), templates=str(REPO / "templates")),
        model=dataclasses.replace(base.model, pipeline=NULL_PIPELINE, lora=""),
        run=dataclasses.replace(base.run, executor="local", batch_size=16),
        cache=dataclasses.replace(base.cache, enabled=True),  # nothing to find on a first night: the lookup runs
    )
    skus = synthetic_day(workdir / "skus.parquet", rows, row_group_rows=8192)  # what one read holds: bounded
    worker = TakesBatches(cfg)
    tracemalloc.start()
    run(cfg, BENCH_DATE, skus, worker=worker)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"images": worker.images, "python": python_peak, "arrow": pa.default_memory_pool().max_memory()}


def _in_child(rows: int, workdir: Path) -> dict[str, int]:
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "PYTHONPATH": str(REPO)}
    code = (
        "import json, pathlib; from tests.job.test_driver_memory import night_peaks; "
        f"print(json.dumps(night_peaks({rows}, pathlib.Path({str(workdir)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_driver_peak_does_not_grow_with_the_night(tmp_path):
    # both past one planning batch (night_plan.PLAN_BATCH_ROWS), one plan row group (plan_table.ROW_GROUP) and one
    # finalize range (night_sort.RANGE_ROWS): the bounded buffers are full in both, what is left is per-image state
    small, large = _in_child(16_000, tmp_path / "small"), _in_child(48_000, tmp_path / "large")
    assert 18_000 < small["images"] < 22_000 and 55_000 < large["images"] < 65_000  # ~1.22 images a row
    extra = large["images"] - small["images"]
    slopes = {k: (large[k] - small[k]) / extra for k in ("python", "arrow")}
    print(
        f"peaks: {small['images']} images python {small['python'] / 2**20:.1f} MiB arrow "
        f"{small['arrow'] / 2**20:.1f} MiB; {large['images']} images python {large['python'] / 2**20:.1f} MiB arrow "
        f"{large['arrow'] / 2**20:.1f} MiB; slope python {slopes['python']:.0f} B, arrow {slopes['arrow']:.0f} B "
        "an image"
    )
    assert slopes["python"] < 40  # bytes an image: a byte of todo flag is fine, a Python object per image is not
    # Arrow: the narrow sort index of finalize (key columns, ranks; ~100 B an image) is the only per-image state;
    # a whole-night table of rows (~1 KB an image) is not
    assert slopes["arrow"] < 250, slopes
