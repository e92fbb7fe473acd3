"""Cross-day cache: reuse a previous day's approved image when nothing that determines its pixels changed.

The cache key (factory.job.keys) covers everything that determines the pixels. A hit needs a completed
(`_SUCCESS`) earlier date under the same output root whose approved.parquet has that key, whose image file still
exists, and whose stored scores still pass today's thresholds of its category. The image is hardlinked (or copied) into
today's directory and the row is marked `cached=true` with `cache_source_date`.

With `planner.seed_scope = "date"` (the default) the seed changes every day, so a new day never hits: set
`seed_scope = "sku"` to make unchanged SKUs reuse their images.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.config import QualityConfig
from factory.inputs.planner import Task
from factory.io.paths import safe_join
from factory.io.records import ImageRecord
from factory.io.writer import link_or_copy
from factory.job.finalize import EMBEDDINGS_FILE
from factory.job.parts import read_success
from factory.quality.gate import failing_checks

log = logging.getLogger(__name__)


def load_previous(output_root: Path, date: str, lookback_days: int) -> dict[str, dict[str, Any]]:
    """cache_key -> approved row (with `date_dir`) from the newest earlier completed dates first."""
    today = dt.date.fromisoformat(date)
    found: dict[str, dict[str, Any]] = {}
    if lookback_days <= 0 or not output_root.is_dir():
        return found
    candidates = []
    for d in output_root.iterdir():
        try:
            day = dt.date.fromisoformat(d.name)
        except ValueError:
            continue
        if today - dt.timedelta(days=lookback_days) <= day < today and read_success(d) is not None:
            candidates.append((day, d))
    for _, d in sorted(candidates, reverse=True):
        path = d / "manifests" / "approved.parquet"
        try:
            table = pq.read_table(path, columns=None)
        except (pa.ArrowException, OSError):
            continue
        if "cache_key" not in table.column_names:
            continue
        for row in table.to_pylist():
            if row["cache_key"] not in found:
                found[row["cache_key"]] = {**row, "date_dir": d}
    return found


_SCORES = ("clip_score", "iqa_mean", "unsafe_score", "pixel_std")


def still_passes(record: ImageRecord, q: QualityConfig) -> bool:
    """Re-apply today's thresholds to the stored scores of a cached image (thresholds may have been raised)."""
    row = record.to_row()
    return all(row[f] is not None for f in _SCORES) and not failing_checks(row, q)


def cache_hits(
    output_root: Path,
    date: str,
    date_dir: Path,
    tasks: list[Task],
    keys: dict[tuple[str, int], str],
    thresholds: dict[str, QualityConfig],
    lookback_days: int,
) -> list[ImageRecord]:
    """Records for tasks whose image an earlier day already approved; the image is linked into today's dir.

    The records carry the source's scores and repair history; the caller stamps today's run fields."""
    if not tasks:
        return []
    previous = load_previous(output_root, date, lookback_days)
    hits = []
    for t in tasks:
        src = previous.get(keys[(t.sku_id, t.variant)])
        if src is None:
            continue
        record = ImageRecord.from_row(src)
        src_path = src["date_dir"] / src["image_path"]
        if not still_passes(record, thresholds[t.category]) or not src_path.is_file():
            continue
        link_or_copy(src_path, safe_join(date_dir, t.image_path))
        embedding = _embeddings(src["date_dir"]).get((src["sku_id"], src["variant"]))
        hits.append(record.carried_to(t, cached=True, cache_source_date=src["run_date"], clip_embedding=embedding))
    return hits


@functools.lru_cache(maxsize=16)
def _embeddings(date_dir: Path) -> dict[tuple[str, int], list[float]]:
    """A completed date's CLIP image embeddings (finalize writes them), so cache hits join the night's
    near-duplicate and reference checks; {} for dates from before embeddings were kept."""
    path = date_dir / "manifests" / EMBEDDINGS_FILE
    try:
        rows = pq.read_table(path, columns=["sku_id", "variant", "clip_embedding"]).to_pylist()
    except (pa.ArrowException, OSError):
        return {}
    return {(r["sku_id"], r["variant"]): r["clip_embedding"] for r in rows}
