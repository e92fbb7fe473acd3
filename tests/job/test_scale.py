"""A 100 000-row day: reading, validation and planning stay linear in time and memory (slow: `make test-all`)."""

import json
import time
import tracemalloc

import pytest

from factory.job.night_plan import plan
from tests.conftest import DATE, with_run, write_skus


def _rows(n):
    cats = ["toys", "food", "shoes", "dress", "electronics"]
    attrs = [
        {"product": "car"},
        {"product": "tea"},
        {"brand": "A", "color": "red"},
        {"style": "a", "color": "b"},
        {"product": "phone"},
    ]
    return [{"sku_id": f"SKU-{i:07d}", "category": cats[i % 5], "attrs": json.dumps(attrs[i % 5])} for i in range(n)]


def _measure(cfg, tmp_path, n):
    path = write_skus(tmp_path / f"{n}.parquet", _rows(n))
    tracemalloc.start()
    t0 = time.perf_counter()
    p = plan(cfg, DATE, path)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(p.tasks) == n and not p.rejected
    return elapsed, peak


@pytest.mark.slow
def test_planning_100k_rows_is_linear(cfg, tmp_path):
    cfg = with_run(cfg, batch_size=16)
    t10, m10 = _measure(cfg, tmp_path, 10_000)
    t100, m100 = _measure(cfg, tmp_path, 100_000)
    print(f"plan 10k: {t10:.2f}s {m10 / 2**20:.0f} MiB; 100k: {t100:.2f}s {m100 / 2**20:.0f} MiB")
    assert t100 < 20 * t10 and m100 < 15 * m10  # ~10x expected; quadratic would be ~100x
