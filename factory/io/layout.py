"""Where a night's outputs live under the output root, and the one place that writes and reads the manifest tables.

```
<output>/
  manifests/approved/run_date=YYYY-MM-DD/part-0.parquet    Hive-partitioned tables, one partition per night
  manifests/review/run_date=YYYY-MM-DD/part-0.parquet
  manifests/rejected/run_date=YYYY-MM-DD/part-0.parquet
  YYYY-MM-DD/images/<category>/<name>.png                  the night's images
  YYYY-MM-DD/run.json                                      what the night did (status ok | failed)
  YYYY-MM-DD/_SUCCESS                                      written last: the night (and its partitions) is final
  YYYY-MM-DD/_parts/<run_id>-pNNNNN.parquet                resume state while a night runs (factory/job/parts.py)
  YYYY-MM-DD/_plan/gNNNN.parquet, plan.json                the night's plan, one row per image (job/plan_table.py)
  YYYY-MM-DD/.lock                                         one run per date
```

Every path is relative to the output root, and so is the manifests' `image_path` (`YYYY-MM-DD/images/...`).
A partition is one file: rewriting it is one atomic rename (local) or one PUT (object stores), so a rerun replaces
it whole. The partition files do not store `run_date` (the directory name carries it, as Hive, Spark and Trino
expect); `read_manifest` adds it back as a date32 column.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.io.records import ADDED_COLUMNS, EMBEDDING_SCHEMA, MANIFEST_SCHEMAS, ImageRecord, RejectedRow
from factory.io.storage import Store

MANIFEST_KINDS = ("approved", "review", "rejected")
PARTITION_COLUMN = "run_date"
PART_FILE = "part-0.parquet"
SUCCESS = "_SUCCESS"
RUN_INFO = "run.json"
PARTS = "_parts"
PLAN = "_plan"
PLAN_INFO = "plan.json"
IMAGES = "images"


def table_dir(kind: str) -> str:
    """The root of one manifest table, relative to the output root (what a data engineer registers)."""
    if kind not in MANIFEST_KINDS:
        raise ValueError(f"unknown manifest {kind!r} (one of {', '.join(MANIFEST_KINDS)})")
    return f"manifests/{kind}"


def partition_path(kind: str, date: str) -> str:
    return f"{table_dir(kind)}/{PARTITION_COLUMN}={date}/{PART_FILE}"


def image_key(date: str, image_relpath: str) -> str:
    """A task's image (`images/<category>/<name>.png`) as a path under the output root: `<date>/images/...`."""
    return f"{date}/{image_relpath}" if date else image_relpath


def success_path(date: str) -> str:
    return f"{date}/{SUCCESS}"


def run_info_path(date: str) -> str:
    return f"{date}/{RUN_INFO}"


def parts_dir(date: str) -> str:
    return f"{date}/{PARTS}"


def plan_dir(date: str) -> str:
    return f"{date}/{PLAN}"


def file_schema(kind: str) -> pa.Schema:
    """The columns stored in a partition file: the manifest's, less the partition column."""
    schema = MANIFEST_SCHEMAS[kind]
    return schema.remove(schema.get_field_index(PARTITION_COLUMN))


def write_manifest(store: Store, kind: str, date: str, rows: list[dict[str, Any]] | pa.Table) -> None:
    """Replace the `kind` partition of `date` with `rows` (dicts, or a table, with the manifest's columns; a column
    they lack is null), atomically."""
    with store.open_output_stream(partition_path(kind, date)) as f:
        pq.write_table(file_table(kind, rows), f, compression="zstd")


def file_table(kind: str, rows: list[dict[str, Any]] | pa.Table) -> pa.Table:
    """`rows` as a partition file's table (a column they lack is null)."""
    schema = file_schema(kind)
    if isinstance(rows, pa.Table):
        have = set(rows.column_names)
        columns = [rows[f.name] if f.name in have else pa.nulls(rows.num_rows, f.type) for f in schema]
        return pa.Table.from_arrays(columns, names=schema.names).cast(schema).combine_chunks()
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


EMBEDDINGS_FILE = "embeddings.parquet"  # <date>/: what the next nights' cache hits carry into their checks


class ManifestWriters:
    """The night's approved and review partitions and `<date>/embeddings.parquet`, written a row group at a time
    (rows in manifest order) as finalize goes, each file appearing whole when the block exits normally and not at
    all when it raises; `write_rejected` replaces the rejected partition."""

    def __init__(self, store: Store, date: str):
        self.store, self.date = store, date
        self._stack = contextlib.ExitStack()
        self._writers: dict[str, pq.ParquetWriter] = {}

    def __enter__(self) -> ManifestWriters:
        targets = {
            "approved": (partition_path("approved", self.date), file_schema("approved")),
            "review": (partition_path("review", self.date), file_schema("review")),
            "embeddings": (f"{self.date}/{EMBEDDINGS_FILE}", EMBEDDING_SCHEMA),
        }
        with self._stack:  # on a failed open, whatever was opened is discarded
            for name, (path, schema) in targets.items():
                sink = self._stack.enter_context(self.store.open_output_stream(path))
                self._writers[name] = pq.ParquetWriter(sink, schema, compression="zstd")
            self._stack = self._stack.pop_all()
        return self

    def write(self, approved: pa.Table, review: pa.Table, embeddings: pa.Table) -> None:
        for name, table in (("approved", file_table("approved", approved)), ("review", file_table("review", review))):
            if table.num_rows:
                self._writers[name].write_table(table)
        if embeddings.num_rows:
            self._writers["embeddings"].write_table(embeddings.cast(EMBEDDING_SCHEMA))

    def write_rejected(self, rejected: list[RejectedRow]) -> None:
        write_manifest(self.store, "rejected", self.date, [r.to_row() for r in rejected])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            for w in self._writers.values():
                w.close()  # the parquet footer, before each stream completes (or is discarded, on an error)
        except BaseException as close_exc:  # e.g. a full disk: no file may appear half written
            self._stack.__exit__(type(close_exc), close_exc, close_exc.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)


def with_added_columns(table: pa.Table, added: dict[str, Any]) -> pa.Table:
    """`table` with each column of `added` that it lacks (a file written before the column existed) filled with its
    value for such rows (records.ADDED_COLUMNS: `placement` = "")."""
    for name, value in added.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    return table


def read_manifest(store: Store, kind: str, date: str) -> pa.Table:
    """One night's partition with `run_date` as its first column (date32), in the manifest's schema (a night
    written before a column was added reads with that column's ADDED_COLUMNS value).

    FileNotFoundError if the night wrote no such partition."""
    return _as_manifest(kind, date, pq.read_table(store.open_input_file(partition_path(kind, date))))


def read_manifest_rows(
    store: Store, kind: str, date: str, rows: np.ndarray, columns: list[str] | None = None
) -> pa.Table:
    """Rows `rows` (sorted indices) of one night's partition, as `read_manifest` gives them, reading only the row
    groups they lie in."""
    table = read_rows(store, partition_path(kind, date), rows, columns)
    return _as_manifest(kind, date, table) if columns is None else table


def read_rows(store: Store, path: str, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
    """Rows `rows` (sorted indices) of a parquet file, in that order, reading only the row groups they lie in."""
    with store.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        group = np.searchsorted(starts, rows, side="right") - 1
        tables = []
        for g in np.unique(group):
            table = pf.read_row_group(int(g), columns=columns)
            tables.append(table.take(pa.array(rows[group == g] - starts[g])))
        return (
            pa.concat_tables(tables)
            if tables
            else pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names)
        )


def _as_manifest(kind: str, date: str, table: pa.Table) -> pa.Table:
    day = pa.array([dt.date.fromisoformat(date)] * table.num_rows, pa.date32())
    table = with_added_columns(table.add_column(0, PARTITION_COLUMN, day), _added(kind))
    return table.select(MANIFEST_SCHEMAS[kind].names).cast(MANIFEST_SCHEMAS[kind])


def _added(kind: str) -> dict[str, Any]:
    return {k: v for k, v in ADDED_COLUMNS.items() if k in MANIFEST_SCHEMAS[kind].names}


def read_table(store: Store, kind: str) -> pa.Table:
    """Every night's rows of one table (what a Hive-aware reader sees), `run_date` as date32, sorted by date."""
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.date32())]), flavor="hive")
    dataset = ds.dataset(
        store.path(table_dir(kind)),
        filesystem=store.fs,
        format="parquet",
        partitioning=partitioning,
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )
    # the current columns for every file: a night written before a column existed reads it as null, then its value
    names = set(dataset.schema.names)
    # (nullable: a file without the column has nulls there, until they are filled below)
    schema = pa.schema([f.with_nullable(True) for f in file_schema(kind) if f.name in names or f.name in ADDED_COLUMNS])
    table = dataset.replace_schema(schema.append(pa.field(PARTITION_COLUMN, pa.date32()))).to_table()
    if table.num_rows == 0:
        return MANIFEST_SCHEMAS[kind].empty_table()
    for name, value in _added(kind).items():
        table = table.set_column(table.schema.get_field_index(name), name, pc.fill_null(table[name], value))
    table = table.select(MANIFEST_SCHEMAS[kind].names).cast(MANIFEST_SCHEMAS[kind])
    return table.take(pc.sort_indices(table, [(PARTITION_COLUMN, "ascending")]))


def delete_night(store: Store, date: str) -> None:
    """For --force: the night's manifest partitions, images, parts, plan and run.json (the caller removed
    `_SUCCESS`)."""
    for kind in MANIFEST_KINDS:
        store.delete(partition_path(kind, date))
    for sub in (IMAGES, PARTS, PLAN):
        store.delete_tree(f"{date}/{sub}")
    store.delete(run_info_path(date))


def write_manifests(
    store: Store,
    date: str,
    approved: pa.Table | list[ImageRecord],
    review: pa.Table | list[ImageRecord],
    rejected: list[RejectedRow],
) -> None:
    """Replace the night's partition of each manifest table, each atomically."""
    for kind, rows in (("approved", approved), ("review", review), ("rejected", rejected)):
        write_manifest(store, kind, date, rows if isinstance(rows, pa.Table) else [r.to_row() for r in rows])


def read_success(store: Store, date: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(success_path(date)))
    except (FileNotFoundError, ValueError):
        return None


def write_json(store: Store, relpath: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    store.put_bytes(relpath, text.encode("utf-8"))


def write_success(store: Store, date: str, info: dict[str, Any]) -> None:
    write_json(store, success_path(date), info)


def remove_success(store: Store, date: str) -> None:
    store.delete(success_path(date))


def clear_outputs(store: Store, date: str) -> None:
    """For --force: `_SUCCESS` goes first, so no reader ever sees a marker over half-replaced files."""
    remove_success(store, date)
    delete_night(store, date)
