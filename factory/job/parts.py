"""Per-batch part files: what makes a run resumable and its final manifests atomic.

While a run goes, the driver writes each finished batch's rows to `<date>/_parts/<run_id>-<batch>.parquet`
(atomically, through the output Store). A rerun after a crash loads the parts, keeps every row whose task is
unchanged (same `task_key`) and whose image exists in the store, and plans only the rest. At the end the rows go
into the manifest partitions (factory.io.layout), and `_SUCCESS` is written last: readers wait for `_SUCCESS`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.io import layout
from factory.io.records import PART_SCHEMA, ImageRecord
from factory.io.storage import Store

log = logging.getLogger(__name__)


def write_part(store: Store, date: str, name: str, records: list[ImageRecord]) -> None:
    table = pa.Table.from_pylist([r.to_row() for r in records], schema=PART_SCHEMA)
    with store.open_output_stream(f"{layout.parts_dir(date)}/{name}.parquet") as f:
        pq.write_table(table, f, compression="zstd")


def part_files(store: Store, date: str) -> list[str]:
    return [p for p in store.list(layout.parts_dir(date)) if p.endswith(".parquet")]


def load_parts(store: Store, date: str) -> dict[tuple[str, int], ImageRecord]:
    """All part records by (sku_id, variant); later files (run ids start with a UTC timestamp) win."""
    records: dict[tuple[str, int], ImageRecord] = {}
    for f in part_files(store, date):
        try:
            table = pq.read_table(store.open_input_file(f))
        except (pa.ArrowException, OSError) as exc:  # cannot happen with atomic writes; never fatal
            log.warning("ignoring unreadable part %s (%s)", store.url(f), exc)
            continue
        if not set(PART_SCHEMA.names) <= set(table.column_names):
            log.warning("ignoring part %s with an old schema", store.url(f))
            continue
        for row in table.to_pylist():
            record = ImageRecord.from_row(row)
            records[record.key] = record
    return records


def finished(store: Store, date: str, task_keys: dict[tuple[str, int], str]) -> dict[tuple[str, int], ImageRecord]:
    """The records of this date's planned tasks that an earlier (crashed or failed) attempt finished.

    One listing of the date's images (not one request per image) tells which images exist."""
    parts = load_parts(store, date)
    if not parts:
        return {}
    images = store.sizes(f"{date}/{layout.IMAGES}")
    return {k: r for k, r in parts.items() if k in task_keys and is_finished(r, task_keys[k], images)}


def is_finished(record: ImageRecord, task_key: str, images: dict[str, int]) -> bool:
    """A part record still counts on resume if its task is unchanged, it did not error, and its image exists
    (`images`: path -> size under the output root; an image lost to a power cut, size 0, is regenerated)."""
    if record.task_key != task_key or record.error:
        return False
    return record.image_path is None or images.get(record.image_path, 0) > 0


def read_success(store: Store, date: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(layout.success_path(date)))
    except (FileNotFoundError, ValueError):
        return None


def write_json(store: Store, relpath: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    store.put_bytes(relpath, text.encode("utf-8"))


def write_success(store: Store, date: str, info: dict[str, Any]) -> None:
    write_json(store, layout.success_path(date), info)


def remove_success(store: Store, date: str) -> None:
    store.delete(layout.success_path(date))


def clear_outputs(store: Store, date: str) -> None:
    """For --force: `_SUCCESS` goes first, so no reader ever sees a marker over half-replaced files."""
    remove_success(store, date)
    layout.delete_night(store, date)
