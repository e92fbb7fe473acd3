"""The cross-day cache through the Store: earlier nights found by `_SUCCESS`, hits copied server-side on S3."""

from __future__ import annotations

import dataclasses
import datetime as dt

from factory.config import QualityConfig
from factory.inputs.bucketing import Task
from factory.io import layout
from factory.io.records import ImageRecord
from factory.io.storage import open_store
from factory.job import cache
from tests.io.test_storage import _metrics_after

SCORES = dict(
    clip_score=0.9,
    iqa_mean=0.9,
    unsafe_score=0.0,
    pixel_std=50.0,
    overexposed_frac=0.0,
    underexposed_frac=0.0,
    laplacian_var=5000.0,
    saturation_mean=0.3,
)


def task(sku: str) -> Task:
    return Task(sku, "toys", 0, "p", "n", 1, "small", 64, 64, 2, f"images/toys/{sku}-v0.png", "t1", "f", 0)


def earlier_night(store, date: str, skus: list[str], success: bool) -> None:
    rows = []
    for sku in skus:
        path = layout.image_key(date, task(sku).image_path)
        store.put_bytes(path, f"png of {sku}".encode())
        record = ImageRecord.from_task(task(sku), **SCORES, image_path=path, cache_key=f"key-{sku}")
        rows.append(record.replace(run_date=dt.date.fromisoformat(date)).to_row())
    layout.write_manifest(store, "approved", date, rows)
    if success:
        layout.write_success(store, date, {"run_id": "r"})


def test_s3_cache_hits_copy_server_side_and_skip_unfinished_nights(s3_uri, s3_server):
    store = open_store(s3_uri)
    earlier_night(store, "2026-11-19", ["A", "B"], success=True)
    earlier_night(store, "2026-11-20", ["C"], success=False)  # no _SUCCESS: not a cache source
    tasks = [task("A"), task("C")]
    keys = {(t.sku_id, t.variant, t.placement): f"key-{t.sku_id}" for t in tasks}
    copies = 'SeaweedFS_s3_request_total{bucket="adfactory",code="200",type="COPY"}'
    before = s3_server.metrics().get(copies, 0)
    hits = cache.cache_hits(store, "2026-11-21", tasks, keys, {"toys": QualityConfig()}, lookback_days=3)
    assert [(h.sku_id, h.image_path, str(h.cache_source_date)) for h in hits] == [
        ("A", "2026-11-21/images/toys/A-v0.png", "2026-11-19")
    ]
    assert store.get_bytes("2026-11-21/images/toys/A-v0.png") == b"png of A"
    assert _metrics_after(s3_server, copies, before + 1).get(copies, 0) >= before + 1  # a server-side COPY
    # outside the lookback, or failing today's thresholds: no hit
    assert not cache.cache_hits(store, "2026-11-21", tasks, keys, {"toys": QualityConfig()}, lookback_days=1)
    strict = dataclasses.replace(QualityConfig(), clip_threshold=0.95)
    assert not cache.cache_hits(store, "2026-11-21", tasks, keys, {"toys": strict}, lookback_days=3)


def test_the_key_index_finds_exactly_the_earlier_keys_newest_night_first():
    import numpy as np
    import pyarrow as pa

    new, old = cache.fixed_bytes(pa.array(["b" * 32, "a" * 32])), cache.fixed_bytes(pa.array(["a" * 32, "c" * 32]))
    keys = np.concatenate([new, old])
    order = np.argsort(keys, kind="stable")
    first = np.concatenate([[True], keys[order][1:] != keys[order][:-1]])
    index = cache.KeyIndex(
        keys[order][first], np.array([0, 0, 1, 1])[order][first], np.array([0, 1, 0, 1])[order][first]
    )
    pos, day, row = index.lookup(pa.chunked_array([pa.array(["c" * 32, "x" * 32]), pa.array(["a" * 32])]))
    assert pos.tolist() == [0, 2] and day.tolist() == [1, 0] and row.tolist() == [1, 1]  # "a": the newer night's
    assert cache.fixed_bytes(pa.array(["ab", None, "abc"])).tolist() == [b"ab", b"", b"abc"]  # no fixed width
