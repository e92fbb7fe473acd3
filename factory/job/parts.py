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


class PartRoller:
    """Buffers finished rows and writes one part per `max_images` rows or `max_seconds`, whichever comes first
    (checked as rows arrive), and the rest on exit from its `with` block, whatever ended it. `tables` keeps every
    written part's rows (Arrow, not per-image objects) for the night's finalize."""

    def __init__(
        self,
        store: Store,
        date: str,
        run_id: str,
        max_images: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.date, self.run_id = store, date, run_id
        self.max_images, self.max_seconds, self.clock = max_images, max_seconds, clock
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.window_start = 0.0
        self.tables: list[pa.Table] = []  # every written part, in order
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
        write_part(self.store, self.date, f"{self.run_id}-p{self.parts:05d}", table)
        self.tables.append(table)
        self.parts += 1
        self.pending, self.pending_rows = [], 0

    def table(self) -> pa.Table:
        """Every row written so far, as one table."""
        return pa.concat_tables(self.tables) if self.tables else PART_SCHEMA.empty_table()


def part_files(store: Store, date: str) -> list[str]:
    return [p for p in store.list(layout.parts_dir(date)) if p.endswith(".parquet")]


def load_parts(store: Store, date: str) -> pa.Table:
    """All part rows, one per image (sku_id, variant, placement); later files (run ids start with a UTC timestamp)
    win."""
    tables = []
    for f in part_files(store, date):  # sorted
        try:
            table = pq.read_table(store.open_input_file(f))
        except (pa.ArrowException, OSError) as exc:  # cannot happen with atomic writes; never fatal
            log.warning("ignoring unreadable part %s (%s)", store.url(f), exc)
            continue
        table = layout.with_added_columns(table, ADDED_COLUMNS)  # a part from before a column was added
        if not set(PART_SCHEMA.names) <= set(table.column_names):
            log.warning("ignoring part %s with an old schema", store.url(f))
            continue
        tables.append(table.select(PART_SCHEMA.names).cast(PART_SCHEMA))
    if not tables:
        return PART_SCHEMA.empty_table()
    rows = pa.concat_tables(tables)
    order = rows.append_column("_i", pa.array(np.arange(rows.num_rows)))
    last = order.group_by(IMAGE_KEY, use_threads=False).aggregate([("_i", "max")])
    return rows.take(np.sort(last.column("_i_max").to_numpy()))


def finished_rows(store: Store, date: str, images: dict[str, int]) -> pa.Table:
    """The part rows that still count on resume if their task is unchanged (see `match_plan`): no generation
    error, and an image that exists (one listing of the date's images, not one request per image; an image lost to
    a power cut, size 0, is regenerated) or none expected. `images`: that listing (the run makes it once)."""
    rows = load_parts(store, date)
    if not rows.num_rows:
        return rows
    paths = pa.array(list(images), pa.string())
    sizes = pa.array(list(images.values()), pa.int64())
    size = pc.fill_null(pc.take(sizes, pc.index_in(rows["image_path"], value_set=paths)), 0)
    image_ok = pc.or_(pc.is_null(rows["image_path"]), pc.greater(size, 0))
    no_error = pc.invert(pc.fill_null(pc.not_equal(rows["error"], ""), False))
    return rows.filter(pc.and_(no_error, image_ok))


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
