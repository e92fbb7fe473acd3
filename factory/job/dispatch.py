"""What is left to generate, and the batches of it, streamed from the keyed plan (factory.job.plan_table).

`Todo` keeps one flag per plan row (a byte an image) saying whether it still needs an image; resume and the
cross-day cache clear flags as they find rows done. `Batches` cuts the rows still flagged exactly as
`factory.inputs.bucketing.make_batches` cuts the same tasks (same ids, sizes, steps, order and padding = "size"
promotions), but builds each Batch only when the executor asks for the next one, reading the plan one row group at
a time (a row group a promotion does not reach is not read). It keeps the keys of the images it has handed out
until their records come back, so the driver stamps a result without a per-image dict for the night.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from factory.config import Bucket
from factory.inputs.bucketing import Batch, Task, batch_id, count_batches, promotions
from factory.io.storage import Store
from factory.job.plan_table import ROW_GROUP, TASKS_AT_ONCE, PlanGroup, read_chunks, row_group_sizes, table_tasks


@dataclass
class Todo:
    """Per plan group, one flag per plan row (file order): True while the row still needs an image."""

    groups: list[PlanGroup]
    masks: list[np.ndarray]

    @classmethod
    def everything(cls, groups: list[PlanGroup]) -> Todo:
        return cls(groups, [np.ones(g.rows, dtype=bool) for g in groups])

    def counts(self) -> list[int]:
        return [int(m.sum()) for m in self.masks]

    def chunks(
        self, store: Store, columns: list[str] | None = None, rows: int = ROW_GROUP, todo_only: bool = False
    ) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
        """(group index, plan-row positions, rows) over the plan, about `rows` at a time (whole row groups);
        `todo_only`: only the rows still flagged (a group without one is not read)."""
        for gi, g in enumerate(self.groups):
            if todo_only and not self.masks[gi].any():
                continue
            start, held, first = 0, [], 0
            for table in read_chunks(store, g, columns):
                held.append(table)
                start += table.num_rows
                if start - first >= rows:
                    yield self._chunk(gi, first, start, held, todo_only)
                    held, first = [], start
            if held:
                yield self._chunk(gi, first, start, held, todo_only)

    def _chunk(
        self, gi: int, first: int, end: int, held: list[pa.Table], todo_only: bool
    ) -> tuple[int, np.ndarray, pa.Table]:
        table = pa.concat_tables(held)
        if not todo_only:
            return gi, np.arange(first, end), table
        keep = self.masks[gi][first:end]
        return gi, first + np.flatnonzero(keep), table.filter(pa.array(keep))

    def clear(self, gi: int, positions: np.ndarray) -> None:
        self.masks[gi][positions] = False


Segment = tuple[int, int, int]  # (group index, first, end) in the group's todo order (the n-th row still flagged)


class Batches:
    """The todo rows as Batches, built one at a time as the executor takes them (an iterable with a length)."""

    def __init__(
        self,
        store: Store,
        todo: Todo,
        batch_size: int,
        buckets: list[Bucket],
        padding: str,
        written: frozenset[str] = frozenset(),
    ):
        self.store, self.todo, self.batch_size, self.buckets, self.padding = store, todo, batch_size, buckets, padding
        self.written = written  # image paths an earlier attempt wrote: the worker tries to adopt them
        self.counts = todo.counts()
        self.sets = sorted({g.adapters for g in todo.groups})
        # (sku_id, variant, placement) -> (cache key, task key)
        self.inflight: dict[tuple[str, int, str], tuple[str, str]] = {}

    def _sizes(self, adapters: tuple[str, ...]) -> dict[str, int]:
        sizes = {b.name: 0 for b in self.buckets}
        for g, n in zip(self.todo.groups, self.counts):
            if g.adapters == adapters:
                sizes[g.bucket] = n
        return sizes

    def __len__(self) -> int:
        return sum(count_batches(self._sizes(s), self.batch_size, self.buckets, self.padding) for s in self.sets)

    def keys(self, key: tuple[str, int, str]) -> tuple[str, str]:
        """The (cache key, task key) of a handed-out image (`ImageRecord.key`), forgotten once asked for (its
        record came back)."""
        return self.inflight.pop(key)

    def __iter__(self) -> Iterator[Batch]:
        for adapters in self.sets:
            for bucket, segments in self._contents(adapters):
                for i, (tasks, keys) in enumerate(self._cut(segments)):
                    self.inflight.update(zip(((t.sku_id, t.variant, t.placement) for t in tasks), keys))
                    adopt = frozenset(t.image_path for t in tasks if t.image_path in self.written)
                    yield Batch(
                        batch_id(adapters, bucket, i), bucket.width, bucket.height, bucket.steps, tasks, adapters, adopt
                    )

    def _contents(self, adapters: tuple[str, ...]) -> list[tuple[Bucket, list[Segment]]]:
        """Each bucket's rows as segments, after padding = "size" moved a remainder up (as make_batches does)."""
        sizes = self._sizes(adapters)
        index = {g.bucket: gi for gi, g in enumerate(self.todo.groups) if g.adapters == adapters}
        content: dict[str, list[Segment]] = {b: [(index[b], 0, n)] if n else [] for b, n in sizes.items()}
        if self.padding == "size":
            for small, bigger, rest in promotions(sizes, self.batch_size, self.buckets):
                content[bigger] += _take_tail(content[small], rest)
        return [(b, content[b.name]) for b in self.buckets if content[b.name]]

    def _cut(self, segments: list[Segment]) -> Iterator[tuple[tuple[Task, ...], list[tuple[str, str]]]]:
        n = self.batch_size
        tasks: list[Task] = []
        keys: list[tuple[str, str]] = []
        rows = (t.slice(i, TASKS_AT_ONCE) for seg in segments for t in self._read(seg) for i in _starts(t))
        for table in rows:
            tasks += table_tasks(table)
            keys += zip(table.column("cache_key").to_pylist(), table.column("task_key").to_pylist())
            full = len(tasks) - len(tasks) % n
            for s in range(0, full, n):
                yield tuple(tasks[s : s + n]), keys[s : s + n]
            tasks, keys = tasks[full:], keys[full:]
        if tasks:
            yield tuple(tasks), keys

    def _read(self, segment: Segment) -> Iterator[pa.Table]:
        """The flagged rows `first`..`end` (in todo order) of a group, reading only the row groups they lie in."""
        gi, first, end = segment
        group, mask = self.todo.groups[gi], self.todo.masks[gi]
        row, seen = 0, 0  # plan rows and flagged rows before the current row group
        sizes = row_group_sizes(self.store, group)
        wanted = []
        for i, size in enumerate(sizes):
            flagged = int(mask[row : row + size].sum())
            if seen + flagged > first and seen < end:
                wanted.append((i, row, size, seen))
            row, seen = row + size, seen + flagged
        for (_, row, size, seen), table in zip(wanted, _row_groups(self.store, group, [w[0] for w in wanted])):
            kept = table.filter(pa.array(mask[row : row + size]))
            yield kept.slice(max(first - seen, 0), end - max(first, seen))


def _row_groups(store: Store, group: PlanGroup, indices: list[int]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    with store.open_input_file(group.file) as f:
        pf = pq.ParquetFile(f)
        for i in indices:
            yield pf.read_row_group(i)


def _starts(table: pa.Table) -> range:
    return range(0, table.num_rows, TASKS_AT_ONCE)


def _take_tail(segments: list[Segment], rest: int) -> list[Segment]:
    """Remove the last `rest` rows from `segments` (in place) and return them as segments, in order."""
    moved: list[Segment] = []
    while rest:
        gi, first, end = segments[-1]
        k = min(rest, end - first)
        if k == end - first:
            segments.pop()
        else:
            segments[-1] = (gi, first, end - k)
        moved.insert(0, (gi, end - k, end))
        rest -= k
    return moved
