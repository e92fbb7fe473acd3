"""Cross-day cache: reuse a previous day's approved image when nothing that determines its pixels changed.

The cache key (factory.job.keys) covers everything that determines the pixels. A hit needs a completed
(`<date>/_SUCCESS`) earlier date under the same output root, within `cache.lookback_days`, whose approved partition
has that key, whose image still exists, and whose stored scores still pass today's thresholds of its category. The
image is copied into today's images through the Store (a hardlink locally, a server-side copy on object stores:
no bytes through the driver) and the row is marked `cached=true` with `cache_source_date`.

Earlier days are found by their `_SUCCESS` marker (one request per day of the lookback), never by listing the
output root (which holds every image of every night).

With `planner.seed_scope = "date"` (the default) the seed changes every day, so a new day never hits: set
`seed_scope = "sku"` to make unchanged SKUs reuse their images.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.config import QualityConfig
from factory.errors import StorageError
from factory.inputs.bucketing import Task
from factory.io import layout
from factory.io.layout import read_success
from factory.io.records import APPROVED_SCHEMA, ImageRecord
from factory.io.storage import Store
from factory.job.plan_table import table_tasks, tasks_table
from factory.quality.gate import failing_checks

log = logging.getLogger(__name__)


@dataclass
class KeyIndex:
    """The earlier nights' approved cache keys, sorted, as fixed-width bytes (a cache key is a 32-hex-digit digest:
    ~50 bytes an image with its night and row), looked up by binary search: no hash table per lookup, no Python
    object per key."""

    keys: np.ndarray  # sorted, one per cache key (bytes)
    day: np.ndarray  # index into the days list
    row: np.ndarray  # row in that night's approved partition

    @classmethod
    def build(cls, keys: list[np.ndarray]) -> KeyIndex:
        """One index over `keys` (one array per night, newest first, rows in file order): on equal keys the earlier
        night, then the earlier row, wins."""
        if not keys:
            return cls(np.zeros(0, "S1"), np.zeros(0, np.int16), np.zeros(0, np.int64))
        width = max(k.dtype.itemsize for k in keys)
        all_keys = np.concatenate([k.astype(f"S{width}") for k in keys])
        order = np.argsort(all_keys, kind="stable")  # equal keys keep night order, then file order
        sorted_keys = all_keys[order]
        del all_keys
        first = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
        day = np.concatenate([np.full(len(k), d, np.int16) for d, k in enumerate(keys)])[order][first]
        row = np.concatenate([np.arange(len(k), dtype=np.int64) for k in keys])[order][first]
        return cls(sorted_keys[first], day, row)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in `keys` found, their night, their row)."""
        q = fixed_bytes(keys)
        if not len(self.keys) or not len(q):
            return np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, np.int64)
        q = q.astype(self.keys.dtype) if q.dtype.itemsize <= self.keys.dtype.itemsize else q
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        pos = np.flatnonzero(self.keys[at] == q)
        return pos, self.day[at[pos]], self.row[at[pos]]


def fixed_bytes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Strings as a numpy fixed-width bytes array, copied straight from the Arrow buffer when all have one length
    (cache keys do); nulls as empty."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n and arr.null_count == 0:
        lo, hi = (v.as_py() for v in pc.min_max(pc.binary_length(arr)).values())
        if lo == hi and lo > 0:
            start = int(np.frombuffer(arr.buffers()[1], np.int32, 1, arr.offset * 4)[0])
            return np.frombuffer(arr.buffers()[2], f"S{lo}", n, start).copy()
    return np.array([v.encode() if v else b"" for v in arr.to_pylist()], dtype="S") if n else np.zeros(0, "S1")


def _keys_of(store: Store, path: str) -> np.ndarray:
    """A partition's cache keys as fixed-width bytes, read one row group at a time (never the whole column)."""
    with store.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        parts = [
            fixed_bytes(pf.read_row_group(i, columns=["cache_key"])["cache_key"]) for i in range(pf.num_row_groups)
        ]
    if not parts:
        return np.zeros(0, "S1")
    width = max(k.dtype.itemsize for k in parts)
    return np.concatenate([k.astype(f"S{width}", copy=False) for k in parts])


def load_previous(store: Store, date: str, lookback_days: int) -> tuple[list[str], KeyIndex]:
    """The earlier completed dates (newest first) and the index of their approved rows' cache keys, one per key: the
    newest date's (then the first in its file) wins. Only the key column is read: the wide rows are read for hits
    only."""
    today = dt.date.fromisoformat(date)
    days, keys = [], []
    for back in range(1, lookback_days + 1):
        name = (today - dt.timedelta(days=back)).isoformat()
        if read_success(store, name) is None:
            continue
        try:
            keys.append(_keys_of(store, layout.partition_path("approved", name)))
        except (pa.ArrowException, OSError, KeyError):  # missing, unreadable, or written by another version
            continue
        days.append(name)
    return days, KeyIndex.build(keys)


_SCORES = ("clip_score", "iqa_mean", "unsafe_score", "pixel_std")


def still_passes(record: ImageRecord, q: QualityConfig) -> bool:
    """Re-apply today's thresholds to the stored scores of a cached image (thresholds may have been raised)."""
    row = record.to_row()
    return all(row[f] is not None for f in _SCORES) and not failing_checks(row, q)


class Previous:
    """The earlier nights' approved rows by cache key (a narrow index; wide rows read for hits only)."""

    def __init__(self, store: Store, date: str, lookback_days: int):
        self.store, self.date = store, date
        self.days, self.index = load_previous(store, date, max(lookback_days, 0))
        self.found = 0  # plan rows whose cache key an earlier night approved (hits or not)
        self.embedded: dict[str, KeyIndex] = {}  # per source night: its embeddings file's cache keys

    def hits(
        self, plan: pa.Table, thresholds: dict[str, QualityConfig]
    ) -> tuple[np.ndarray, list[ImageRecord], pa.ChunkedArray]:
        """(positions in `plan`, records, their CLIP embeddings) for the plan rows (factory.job.plan_table) whose
        image an earlier day already approved; each image is copied into today's images. The records carry the
        source's scores and repair history (not the embedding: a column, kept out of Python objects); the caller
        stamps today's run fields. Sources are read in file order, _HITS_AT_ONCE rows at a time."""
        if not len(self.index) or not plan.num_rows:
            return np.zeros(0, np.int64), [], pa.chunked_array([], _EMBEDDING)
        pos, day, row = self.index.lookup(plan["cache_key"])
        self.found += len(pos)
        order = np.lexsort((row, day))
        pos, day, row = pos[order], day[order], row[order]
        hit_pos, hits, embeddings = [np.zeros(0, np.int64)], [], [pa.array([], _EMBEDDING)]
        for start in range(0, len(pos), _HITS_AT_ONCE):  # row objects for a slice of the hits at a time
            end = start + _HITS_AT_ONCE
            sources = self._sources(day[start:end], row[start:end])
            kept = []
            for i, (src, task) in enumerate(zip(sources.to_pylist(), table_tasks(plan.take(pa.array(pos[start:end]))))):
                record = self._hit(task, src, thresholds[task.category])
                if record is not None:
                    kept.append(i)
                    hits.append(record)
            hit_pos.append(pos[start:end][kept])
            embeddings.append(self._embeddings(sources.take(pa.array(kept, pa.int64()))))
        return np.concatenate(hit_pos), hits, pa.chunked_array(embeddings, _EMBEDDING)

    def _sources(self, day: np.ndarray, row: np.ndarray) -> pa.Table:
        """The approved rows (day index, row), sorted by both, as one table in that order."""
        tables = [
            layout.read_manifest_rows(self.store, "approved", self.days[d], row[day == d]) for d in np.unique(day)
        ]
        return pa.concat_tables(tables) if tables else APPROVED_SCHEMA.empty_table()

    def _hit(self, task: Task, src: dict[str, Any], q: QualityConfig) -> ImageRecord | None:
        if not src["image_path"]:
            return None
        record = ImageRecord.from_row(src)
        if not still_passes(record, q):
            return None
        target = layout.image_key(self.date, task.image_path)
        try:
            self.store.copy(src["image_path"], target)
        except (FileNotFoundError, StorageError) as exc:  # e.g. the source image was deleted since: generate it
            log.warning("cache hit %s not reusable (%s); generating it", src["image_path"], exc)
            return None
        return record.carried_to(task, cached=True, cache_source_date=src["run_date"], image_path=target)

    def _embeddings(self, sources: pa.Table) -> pa.Array:
        """The stored embeddings of these source rows (null where the source night kept none), per source day (the
        rows are in day order: `_sources`)."""
        found, days = [pa.array([], _EMBEDDING)], sources["run_date"]
        for day in pc.unique(days).to_pylist():
            mine = sources.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            found.append(self._stored_embeddings(day.isoformat(), mine["cache_key"]))
        return pa.concat_arrays(found)

    def _stored_embeddings(self, day: str, keys: pa.ChunkedArray) -> pa.Array:
        """The embeddings `day` stored for these cache keys, in their order (null where none): the file's cache
        keys are indexed once per night, then only the matching rows' embeddings are read."""
        path = f"{day}/{layout.EMBEDDINGS_FILE}"
        if day not in self.embedded:
            try:
                self.embedded[day] = KeyIndex.build([_keys_of(self.store, path)])
            except (pa.ArrowException, OSError, KeyError):  # a night that kept no embeddings
                self.embedded[day] = KeyIndex.build([])
        pos, _, row = self.embedded[day].lookup(keys)
        if not len(pos):
            return pa.nulls(len(keys), _EMBEDDING)
        order = np.argsort(row, kind="stable")
        stored = layout.read_rows(self.store, path, row[order], ["clip_embedding"])["clip_embedding"]
        at = np.full(len(keys), -1, np.int64)
        at[pos[order]] = np.arange(len(order))
        return stored.combine_chunks().cast(_EMBEDDING).take(pa.array(np.where(at < 0, 0, at), mask=at < 0))


_EMBEDDING = pa.list_(pa.float32())
_HITS_AT_ONCE = 4096  # source rows as Python objects at a time (an embedding is never one)


def cache_hits(
    store: Store,
    date: str,
    tasks: list[Task],
    keys: dict[tuple[str, int, str], str],
    thresholds: dict[str, QualityConfig],
    lookback_days: int,
) -> list[ImageRecord]:
    """`Previous.hits` for a list of tasks and their cache keys (tools, tests; the night joins its plan file)."""
    if not tasks:
        return []
    plan = tasks_table(tasks).append_column(
        "cache_key", pa.array([keys[t.sku_id, t.variant, t.placement] for t in tasks])
    )
    _, hits, embeddings = Previous(store, date, lookback_days).hits(plan, thresholds)
    return [h.replace(clip_embedding=e) for h, e in zip(hits, embeddings.to_pylist())]
