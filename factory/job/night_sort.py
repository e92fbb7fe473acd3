"""The night's image rows in (sku_id, variant, placement) order without holding them: an external range sort.

Finalize needs every row of the night in that order (the manifests' order, and "earlier" for near-duplicates), but
the rows live in part files (resumed, cached, generated), in completion order. Pass 1 reads only their key columns
into a narrow index (tens of bytes an image), sorts it, and cuts the sorted keys into ranges of at most RANGE_ROWS
rows at SKU boundaries: a SKU's images (variants, placements) never straddle two ranges, so approve / review is
decided range by range. Pass 2 reads each part once and appends its rows, with their rank, to their range's local
spill (Arrow IPC, lz4). A range is then read back whole (bounded by RANGE_ROWS), in rank order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory.io.records import IMAGE_KEY, PART_SCHEMA
from factory.io.storage import Store
from factory.job.parts import RowFile

# Wide rows held at once by finalize (with a 768-d embedding ~4 KB a row); nights of more than MAX_RANGES ranges
# get longer ones (a spill file is open per range while spilling). A SKU larger than a range is a range of its own.
RANGE_ROWS = 8192
MAX_RANGES = 256
RANK = "_rank"
_SPILL_SCHEMA = PART_SCHEMA.append(pa.field(RANK, pa.int64()))
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")


@dataclass
class SortedRows:
    """The night's rows as ranges of ranks, each a local spill file; `keys` is the sorted narrow index."""

    keys: pa.Table  # sku_id, variant, placement, sorted: row `rank` of the night
    starts: np.ndarray  # each range's first rank, then the row count
    paths: list[Path]  # each range's spill file

    @property
    def rows(self) -> int:
        return self.keys.num_rows

    def ranges(self) -> Iterator[pa.Table]:
        """Each range's rows (part schema plus `_rank`), in rank order, one range at a time."""
        for path in self.paths:  # every range has rows, so every range was spilled
            with pa.OSFile(str(path), "rb") as f:
                table = pa.ipc.open_stream(f).read_all()
            yield table.take(pc.sort_indices(table[RANK]))


def sku_codes(sku: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row of sku_id-sorted rows, a number that changes exactly where the sku_id does."""
    if len(sku) < 2:
        return np.zeros(len(sku), np.int64)
    changed = pc.not_equal(sku.slice(1), sku.slice(0, len(sku) - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(changed)])


def sort_night(store: Store, files: list[RowFile], directory: Path, range_rows: int | None = None) -> SortedRows:
    """Index, sort and spill the rows of `files` (each read twice: its key columns, then whole) into ranges of
    `range_rows` (default RANGE_ROWS)."""
    keys, offsets = _index(store, files)
    range_rows = range_rows or max(RANGE_ROWS, -(-keys.num_rows // MAX_RANGES))
    order = pc.sort_indices(keys, [(c, "ascending") for c in IMAGE_KEY]).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    keys = keys.take(pa.array(order))
    del order
    starts = _cut(keys["sku_id"], range_rows)
    paths = [directory / f"range-{i:05d}.arrows" for i in range(len(starts) - 1)]
    _spill(store, files, rank, offsets, starts, paths)
    return SortedRows(keys, starts, paths)


def _index(store: Store, files: list[RowFile]) -> tuple[pa.Table, list[int]]:
    tables, offsets = [], [0]
    for f in files:
        table = f.read(store, IMAGE_KEY)
        tables.append(table)
        offsets.append(offsets[-1] + table.num_rows)
    keys = pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table().select(IMAGE_KEY)
    return keys.combine_chunks(), offsets


def _cut(sku: pa.ChunkedArray, range_rows: int) -> np.ndarray:
    """Range starts (then the row count) of at most `range_rows` sorted rows each, at SKU boundaries."""
    n = len(sku)
    if n == 0:
        return np.array([0], np.int64)
    changed = pc.not_equal(sku.slice(1), sku.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], 1 + np.flatnonzero(changed), [n]])  # where a SKU starts, then n
    starts, at = [0], 0
    while at < n:
        nxt = bounds[np.searchsorted(bounds, at + range_rows, side="right") - 1]  # the last SKU start in reach
        at = int(nxt) if nxt > at else int(bounds[np.searchsorted(bounds, at, side="right")])  # a SKU > range
        starts.append(at)
    return np.array(starts, np.int64)


def _spill(
    store: Store, files: list[RowFile], rank: np.ndarray, offsets: list[int], starts: np.ndarray, paths: list[Path]
) -> None:
    """Each file's rows appended to their range's spill file (opened on first use, all closed at the end)."""
    writers: dict[int, tuple[pa.OSFile, pa.ipc.RecordBatchStreamWriter]] = {}
    try:
        for i, f in enumerate(files):
            ranks = rank[offsets[i] : offsets[i + 1]]
            table = f.read(store).append_column(RANK, pa.array(ranks))
            which = np.searchsorted(starts, ranks, side="right") - 1
            for r in np.unique(which):
                if int(r) not in writers:
                    sink = pa.OSFile(str(paths[r]), "wb")
                    writers[int(r)] = (sink, pa.ipc.new_stream(sink, _SPILL_SCHEMA, options=_IPC))
                writers[int(r)][1].write_table(table.filter(pa.array(which == r)))
    finally:
        for sink, writer in writers.values():
            writer.close()
            sink.close()
