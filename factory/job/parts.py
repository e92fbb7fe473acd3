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

from factory.io.records import PART_SCHEMA, ImageRecord
from factory.io.writer import write_json, write_manifest

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
PARTS = "_parts"


def parts_dir(date_dir: Path) -> Path:
    return date_dir / "manifests" / PARTS


def write_part(date_dir: Path, name: str, records: list[ImageRecord]) -> None:
    write_manifest(parts_dir(date_dir) / f"{name}.parquet", [r.to_row() for r in records], PART_SCHEMA)


def load_parts(date_dir: Path) -> dict[tuple[str, int], ImageRecord]:
    """All part records by (sku_id, variant); later files (run ids start with a UTC timestamp) win."""
    records: dict[tuple[str, int], ImageRecord] = {}
    directory = parts_dir(date_dir)
    if not directory.is_dir():
        return records
    for f in sorted(directory.glob("*.parquet")):
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:  # cannot happen with atomic writes; never fatal
            log.warning("ignoring unreadable part %s (%s)", f, exc)
            continue
        if not set(PART_SCHEMA.names) <= set(table.column_names):
            log.warning("ignoring part %s with an old schema", f)
            continue
        for row in table.to_pylist():
            record = ImageRecord.from_row(row)
            records[record.key] = record
    return records


def finished(date_dir: Path, task_keys: dict[tuple[str, int], str]) -> dict[tuple[str, int], ImageRecord]:
    """The records of this date's planned tasks that an earlier (crashed or failed) attempt finished."""
    return {k: r for k, r in load_parts(date_dir).items() if k in task_keys and is_finished(r, task_keys[k], date_dir)}


def is_finished(record: ImageRecord, task_key: str, date_dir: Path) -> bool:
    """A part record still counts on resume if its task is unchanged, it did not error, and its image exists."""
    if record.task_key != task_key or record.error:
        return False
    if record.image_path is None:
        return True
    image = date_dir / record.image_path
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
