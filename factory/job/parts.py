"""Rolling part files: what makes a run resumable and its final manifests atomic.

While a run goes, the driver hands each finished batch's rows to a `PartRoller`, which keeps them as Arrow and
writes one part, `<date>/_parts/<run_id>-pNNNNN.parquet` (atomically, through the output Store), per
`run.part_images` images or `run.part_seconds` seconds, whichever comes first, and whatever it holds whenever
execution ends (normally, on an exception, Ctrl-C or SIGTERM). A SIGKILL loses at most the unwritten window: a
rerun regenerates those images (same bytes). A rerun loads the parts, keeps every row whose task is unchanged
(same `task_key`, joined against the night's plan file) and whose image exists in the store, and generates only
the rest. At the end the rows go into the manifest partitions (factory.io.layout), and `_SUCCESS` is written last:
readers wait for `_SUCCESS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.io import layout
from factory.io.records import ADDED_COLUMNS, IMAGE_KEY, PART_SCHEMA, ImageRecord
from factory.io.storage import Store

log = logging.getLogger(__name__)


def records_table(records: list[ImageRecord]) -> pa.Table:
    """Records as a table of the part schema (what the driver keeps instead of the records)."""
    return pa.Table.from_pylist([r.to_row() for r in records], schema=PART_SCHEMA)


def write_part(store: Store, date: str, name: str, table: pa.Table) -> None:
    with store.open_output_stream(f"{layout.parts_dir(date)}/{name}.parquet") as f:
        pq.write_table(table, f, compression="zstd")


@dataclass
class RowFile:
    """Rows of one part file that belong to the night: all of them (`rows` None) or those indices (sorted)."""

    path: str  # relative to the output root
    rows: np.ndarray | None = None

    def read(self, store: Store, columns: list[str] | None = None) -> pa.Table:
        table = read_part(store, self.path, columns)
        return table if self.rows is None else table.take(pa.array(self.rows))


class PartRoller:
    """Buffers finished rows and writes one part per `max_images` rows or `max_seconds`, whichever comes first
    (checked as rows arrive), and the rest on exit from its `with` block, whatever ended it. It keeps what it wrote
    as file names and counts, never the rows: finalize reads them back (`files`)."""

    def __init__(
        self,
        store: Store,
        date: str,
        run_id: str,
        max_images: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        name: str = "p",
    ):
        self.store, self.date, self.run_id, self.name = store, date, run_id, name
        self.max_images, self.max_seconds, self.clock = max_images, max_seconds, clock
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.window_start = 0.0
        self.files: list[RowFile] = []  # every written part, in order
        self.rows = 0  # rows written
        self.errors = 0  # of them, rows with a generation error
        self.first_error: str | None = None
        self.parts = 0

    def __enter__(self) -> PartRoller:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.flush()
            return
        try:  # keep what finished before the stop; never hide why it stopped
            self.flush()
        except Exception as flush_exc:
            log.warning("could not write the last resume part (%s); its images will be regenerated", flush_exc)

    def add(self, table: pa.Table) -> None:
        if not self.pending:
            self.window_start = self.clock()
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.max_images or self.clock() - self.window_start >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        name = f"{self.run_id}-{self.name}{self.parts:05d}"
        write_part(self.store, self.date, name, table)
        self.files.append(RowFile(f"{layout.parts_dir(self.date)}/{name}.parquet"))
        errors = table["error"].filter(has_error(table))
        if len(errors) and self.first_error is None:
            self.first_error = errors[0].as_py()
        self.rows, self.errors, self.parts = self.rows + table.num_rows, self.errors + len(errors), self.parts + 1
        self.pending, self.pending_rows = [], 0

    def table(self) -> pa.Table:
        """Every row written so far, read back as one table (tools, tests)."""
        tables = [f.read(self.store) for f in self.files]
        return pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table()


def has_error(table: pa.Table) -> pa.ChunkedArray:
    """Rows with a (non-empty) generation error."""
    return pc.fill_null(pc.not_equal(table["error"], ""), False)


def part_files(store: Store, date: str) -> list[str]:
    return [p for p in store.list(layout.parts_dir(date)) if p.endswith(".parquet")]


def read_part(store: Store, path: str, columns: list[str] | None = None) -> pa.Table:
    """One part file in the part schema (or `columns` of it); a part from before a column was added reads with its
    ADDED_COLUMNS value. ValueError for a part of an older schema."""
    wanted = columns or PART_SCHEMA.names
    with store.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        if not set(PART_SCHEMA.names) - set(ADDED_COLUMNS) <= have:
            raise ValueError("an old part schema")
        table = pf.read(columns=[c for c in wanted if c in have])
    table = layout.with_added_columns(table, {k: v for k, v in ADDED_COLUMNS.items() if k in wanted})
    return table.select(wanted).cast(pa.schema([PART_SCHEMA.field(c) for c in wanted]))


def _readable_parts(store: Store, date: str, columns: list[str] | None = None) -> list[tuple[str, pa.Table]]:
    out = []
    for f in part_files(store, date):  # sorted
        try:
            out.append((f, read_part(store, f, columns)))
        except (pa.ArrowException, OSError) as exc:  # cannot happen with atomic writes; never fatal
            log.warning("ignoring unreadable part %s (%s)", store.url(f), exc)
        except ValueError:
            log.warning("ignoring part %s with an old schema", store.url(f))
    return out


def load_parts(store: Store, date: str) -> pa.Table:
    """All part rows, one per image (sku_id, variant, placement); later files (run ids start with a UTC timestamp)
    win. The whole table: tools and tests (a night reads `finished_index`)."""
    tables = [t for _, t in _readable_parts(store, date)]
    if not tables:
        return PART_SCHEMA.empty_table()
    rows = pa.concat_tables(tables)
    return rows.take(_last_per_image(rows))


def _last_per_image(rows: pa.Table) -> np.ndarray:
    order = rows.select(IMAGE_KEY).append_column("_i", pa.array(np.arange(rows.num_rows)))
    last = order.group_by(IMAGE_KEY, use_threads=False).aggregate([("_i", "max")])
    return np.sort(last.column("_i_max").to_numpy())


_INDEX_COLUMNS = [*IMAGE_KEY, "task_key", "image_path", "error"]


def finished_index(store: Store, date: str, images: pa.Table) -> tuple[pa.Table, list[str]]:
    """The part rows that still count on resume if their task is unchanged (see `match_plan`), as a narrow table
    (sku_id, variant, placement, task_key, _f: part file index, _r: row in it), and the part files.
    A row counts when it is the image's last (later files win), has no generation error, and its image exists
    (`images`: the date's listing, path and size; an image lost to a power cut, size 0, is regenerated) or none is
    expected. Key columns only: the wide rows stay in the files until finalize reads them."""
    files, tables = [], []
    for f, table in _readable_parts(store, date, _INDEX_COLUMNS):
        size = pc.fill_null(pc.take(images["size"], pc.index_in(table["image_path"], value_set=images["path"])), 0)
        image_ok = pc.or_(pc.is_null(table["image_path"]), pc.greater(size, 0))
        ok = pc.and_(pc.invert(has_error(table)), image_ok)
        n = table.num_rows
        table = table.drop_columns(["error", "image_path"]).append_column("_ok", ok)
        table = table.append_column("_f", pa.repeat(pa.scalar(len(files), pa.int32()), n))
        tables.append(table.append_column("_r", pa.array(np.arange(n, dtype=np.int32))))
        files.append(f)
    if not tables:
        return pa.table({c: [] for c in [*IMAGE_KEY, "task_key", "_f", "_r"]}), files
    rows = pa.concat_tables(tables)
    rows = rows.take(_last_per_image(rows))
    return rows.filter(rows["_ok"]).drop_columns(["_ok"]), files


def selected_files(index: pa.Table, files: list[str]) -> list[RowFile]:
    """The rows of `index` (a finished_index subset) as the part files' row selections, in file order."""
    f, r = (index[c].to_numpy() for c in ("_f", "_r"))
    order = np.lexsort((r, f))
    f, r = f[order], r[order]
    starts = np.flatnonzero(np.diff(f, prepend=-1))
    return [RowFile(files[int(f[a])], r[a:b]) for a, b in zip(starts, [*starts[1:], len(f)])]


def match_plan(rows: pa.Table, plan: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `plan`, indices into `rows`) of the plan rows (sku_id, variant, placement, task_key) that a
    finished part row already made: same image and same task key (thresholds may have moved since)."""
    idx = pc.index_in(plan["task_key"], value_set=rows["task_key"])
    valid = pc.is_valid(idx)
    pos = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
    found = idx.filter(valid).to_numpy(zero_copy_only=False)
    same = [pc.equal(rows[c].take(found), plan[c].take(pos)).to_numpy(zero_copy_only=False) for c in IMAGE_KEY]
    keep = np.logical_and.reduce(same)
    return pos[keep], found[keep]
