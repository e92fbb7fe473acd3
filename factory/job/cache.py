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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.config import QualityConfig
from factory.errors import StorageError
from factory.inputs.bucketing import Task
from factory.io import layout
from factory.io.layout import read_success
from factory.io.records import APPROVED_SCHEMA, ImageRecord
from factory.io.storage import Store
from factory.job.finalize import read_embeddings
from factory.job.plan_table import table_tasks, tasks_table
from factory.quality.gate import failing_checks

log = logging.getLogger(__name__)


def load_previous(store: Store, date: str, lookback_days: int) -> pa.Table:
    """The approved rows of the earlier completed dates, one per cache key: the newest date's (then the first in its
    file) wins. Arrow, never a row object per image."""
    today = dt.date.fromisoformat(date)
    tables = []
    for back in range(1, lookback_days + 1):
        day = (today - dt.timedelta(days=back)).isoformat()
        if read_success(store, day) is None:
            continue
        try:
            tables.append(layout.read_manifest(store, "approved", day))
        except (pa.ArrowException, OSError, KeyError):  # missing, unreadable, or written by another version
            continue
    if not tables:
        return APPROVED_SCHEMA.empty_table()
    rows = pa.concat_tables(tables, promote_options="permissive")
    order = rows.append_column("_i", pa.array(np.arange(rows.num_rows)))
    first = order.group_by("cache_key", use_threads=False).aggregate([("_i", "min")])
    return rows.take(np.sort(first.column("_i_min").to_numpy()))


_SCORES = ("clip_score", "iqa_mean", "unsafe_score", "pixel_std")


def still_passes(record: ImageRecord, q: QualityConfig) -> bool:
    """Re-apply today's thresholds to the stored scores of a cached image (thresholds may have been raised)."""
    row = record.to_row()
    return all(row[f] is not None for f in _SCORES) and not failing_checks(row, q)


class Previous:
    """The earlier nights' approved rows by cache key, and their embeddings per date (read once, Arrow)."""

    def __init__(self, store: Store, date: str, lookback_days: int):
        self.store, self.date = store, date
        self.rows = load_previous(store, date, lookback_days) if lookback_days > 0 else APPROVED_SCHEMA.empty_table()
        self.days: set[str] = set()  # source dates whose embeddings are in `embedded`
        self.embedded = pa.table({"_key": pa.array([], pa.string()), "clip_embedding": pa.array([], _EMBEDDING)})

    def hits(
        self, plan: pa.Table, thresholds: dict[str, QualityConfig]
    ) -> tuple[np.ndarray, list[ImageRecord], pa.ChunkedArray]:
        """(positions in `plan`, records, their CLIP embeddings) for the plan rows (factory.job.plan_table) whose
        image an earlier day already approved; each image is copied into today's images. The records carry the
        source's scores and repair history (not the embedding: a column, kept out of Python objects); the caller
        stamps today's run fields."""
        if not self.rows.num_rows or not plan.num_rows:
            return np.zeros(0, np.int64), [], pa.chunked_array([], _EMBEDDING)
        idx = pc.index_in(plan["cache_key"], value_set=self.rows["cache_key"])
        pos = np.flatnonzero(pc.is_valid(idx).to_numpy(zero_copy_only=False))
        hit_pos, hits, embeddings = [np.zeros(0, np.int64)], [], [pa.array([], _EMBEDDING)]
        for start in range(0, len(pos), _HITS_AT_ONCE):  # row objects for a slice of the hits at a time
            some = pos[start : start + _HITS_AT_ONCE]
            sources = self.rows.take(idx.take(pa.array(some)))
            kept = []
            for i, (src, task) in enumerate(zip(sources.to_pylist(), table_tasks(plan.take(pa.array(some))))):
                record = self._hit(task, src, thresholds[task.category])
                if record is not None:
                    kept.append(i)
                    hits.append(record)
            hit_pos.append(some[kept])
            embeddings.append(self._embeddings(sources.take(pa.array(kept, pa.int64()))))
        return np.concatenate(hit_pos), hits, pa.chunked_array(embeddings, _EMBEDDING)

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
        """The stored embeddings of these source rows (null where the source night kept none)."""
        for day in pc.unique(sources["run_date"]).to_pylist():
            if day.isoformat() not in self.days:
                self.days.add(day.isoformat())
                table = read_embeddings(self.store, day.isoformat())
                table = table.append_column("_key", _emb_keys(pa.array([day] * table.num_rows, pa.date32()), table))
                self.embedded = pa.concat_tables([self.embedded, table.select(["_key", "clip_embedding"])])
        found = pc.index_in(_emb_keys(sources["run_date"], sources), value_set=self.embedded["_key"])
        return self.embedded["clip_embedding"].take(found).combine_chunks()


def _emb_keys(dates: pa.Array | pa.ChunkedArray, table: pa.Table) -> pa.Array:
    """`date\0sku_id\0variant\0placement`: one string key per row for a hashed lookup."""
    parts = [pc.cast(dates, pa.string()), table["sku_id"], pc.cast(table["variant"], pa.string()), table["placement"]]
    return pc.binary_join_element_wise(*parts, "\x00")


_EMBEDDING = pa.list_(pa.float32())
_HITS_AT_ONCE = 16_384  # rows as Python objects at a time (an embedding is never one)


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
