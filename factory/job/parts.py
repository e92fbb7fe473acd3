"""Per-batch part files: what makes a run resumable and its final manifests atomic.

While a run goes, the driver writes each finished batch's rows to `manifests/_parts/<run_id>-<batch>.parquet`
(atomically). A rerun after a crash loads the parts, keeps every row whose task is unchanged (same `task_key`) and
whose image is on disk, and plans only the rest. At the end all parts are merged into approved/review.parquet,
and `_SUCCESS` is written last: readers wait for `_SUCCESS`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.io.writer import MANIFEST_SCHEMAS, write_json, write_manifest

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
PARTS = "_parts"

# The review schema (a superset of approved) plus the raw decision inputs.
PART_SCHEMA = pa.schema(
    [f for f in MANIFEST_SCHEMAS["review"] if f.name not in ("reason", "detail")]
    + [
        pa.field("error", pa.string(), nullable=True),
        pa.field("task_key", pa.string(), nullable=False),
    ]
)


def parts_dir(date_dir: Path) -> Path:
    return date_dir / "manifests" / PARTS


def write_part(date_dir: Path, name: str, rows: list[dict[str, Any]]) -> None:
    write_manifest(parts_dir(date_dir) / f"{name}.parquet", rows, PART_SCHEMA)


def load_parts(date_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """All part rows by (sku_id, variant); later files (run ids start with a UTC timestamp) win."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    directory = parts_dir(date_dir)
    if not directory.is_dir():
        return rows
    for f in sorted(directory.glob("*.parquet")):
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:  # cannot happen with atomic writes; never fatal
            log.warning("ignoring unreadable part %s (%s)", f, exc)
            continue
        if not set(PART_SCHEMA.names) <= set(table.column_names):
            log.warning("ignoring part %s with an old schema", f)
            continue
        for r in table.to_pylist():
            rows[(r["sku_id"], r["variant"])] = r
    return rows


def is_finished(row: dict[str, Any], task_key: str, date_dir: Path) -> bool:
    """A part row still counts on resume if its task is unchanged, it did not error, and its image exists."""
    if row["task_key"] != task_key or row["error"]:
        return False
    if row["image_path"] is None:
        return True
    image = date_dir / row["image_path"]
    return image.is_file() and image.stat().st_size > 0  # an image lost to a power cut is regenerated


def success_path(date_dir: Path) -> Path:
    return date_dir / SUCCESS


def read_success(date_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(success_path(date_dir).read_text())
    except (OSError, ValueError):
        return None


def write_success(date_dir: Path, info: dict[str, Any]) -> None:
    write_json(success_path(date_dir), info)


def clear_outputs(date_dir: Path) -> None:
    """For --force: `_SUCCESS` goes first, so no reader ever sees a marker over half-replaced files."""
    import shutil

    success_path(date_dir).unlink(missing_ok=True)
    for sub in ("manifests", "images"):
        shutil.rmtree(date_dir / sub, ignore_errors=True)
    (date_dir / "run.json").unlink(missing_ok=True)
