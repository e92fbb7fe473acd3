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

import pyarrow as pa

from factory.config import QualityConfig
from factory.errors import StorageError
from factory.inputs.bucketing import Task
from factory.io import layout
from factory.io.layout import read_success
from factory.io.records import ImageRecord
from factory.io.storage import Store
from factory.job.finalize import read_embeddings
from factory.quality.gate import failing_checks

log = logging.getLogger(__name__)


def load_previous(store: Store, date: str, lookback_days: int) -> dict[str, dict[str, Any]]:
    """cache_key -> approved row, from the newest earlier completed dates first."""
    today = dt.date.fromisoformat(date)
    found: dict[str, dict[str, Any]] = {}
    for back in range(1, lookback_days + 1):
        day = (today - dt.timedelta(days=back)).isoformat()
        if read_success(store, day) is None:
            continue
        try:
            table = layout.read_manifest(store, "approved", day)
        except (pa.ArrowException, OSError, KeyError):  # missing, unreadable, or written by another version
            continue
        for row in table.to_pylist():
            found.setdefault(row["cache_key"], row)
    return found


_SCORES = ("clip_score", "iqa_mean", "unsafe_score", "pixel_std")


def still_passes(record: ImageRecord, q: QualityConfig) -> bool:
    """Re-apply today's thresholds to the stored scores of a cached image (thresholds may have been raised)."""
    row = record.to_row()
    return all(row[f] is not None for f in _SCORES) and not failing_checks(row, q)


def cache_hits(
    store: Store,
    date: str,
    tasks: list[Task],
    keys: dict[tuple[str, int], str],
    thresholds: dict[str, QualityConfig],
    lookback_days: int,
) -> list[ImageRecord]:
    """Records for tasks whose image an earlier day already approved; the image is copied into today's images.

    The records carry the source's scores and repair history; the caller stamps today's run fields."""
    if not tasks or lookback_days <= 0:
        return []
    previous = load_previous(store, date, lookback_days)
    embeddings: dict[str, dict[tuple[str, int], list[float]]] = {}  # per source date, read once
    hits = []
    for t in tasks:
        src = previous.get(keys[(t.sku_id, t.variant)])
        if src is None or not src["image_path"]:
            continue
        record = ImageRecord.from_row(src)
        if not still_passes(record, thresholds[t.category]):
            continue
        target = layout.image_key(date, t.image_path)
        try:
            store.copy(src["image_path"], target)
        except (FileNotFoundError, StorageError) as exc:  # e.g. the source image was deleted since: generate it
            log.warning("cache hit %s not reusable (%s); generating it", src["image_path"], exc)
            continue
        day = src["run_date"].isoformat()
        if day not in embeddings:
            embeddings[day] = read_embeddings(store, day)
        embedding = embeddings[day].get((src["sku_id"], src["variant"]))
        hits.append(
            record.carried_to(
                t, cached=True, cache_source_date=src["run_date"], image_path=target, clip_embedding=embedding
            )
        )
    return hits
