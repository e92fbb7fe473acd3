"""Cross-day cache: reuse a previous day's approved image when nothing that determines its pixels changed.

Cache key = sha256 over: rendered prompt, negative prompt, seed, width, height, steps, model key (weights
fingerprint + LoRA + quantization + dtype + determinism + guidance scale) and template version. A hit needs a
completed (`_SUCCESS`) earlier date under the same output root whose approved.parquet has that key, whose image file
still exists, and whose clip_score still passes today's threshold. The image is hardlinked (or copied) into
today's directory and the row is marked `cached=true` with `cache_source_date`.

With `planner.seed_scope = "date"` (the default) the seed changes every day, so a new day never hits: set
`seed_scope = "sku"` to make unchanged SKUs reuse their images.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.inputs.planner import Task
from factory.job.parts import read_success

log = logging.getLogger(__name__)


def cache_key(task: Task, model_key: str) -> str:
    fields = [
        task.prompt,
        task.negative_prompt,
        task.seed,
        task.width,
        task.height,
        task.steps,
        model_key,
        task.template_version,
    ]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:32]


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
