"""The night's plan as data: one Arrow row per image, in parquet files per (adapter set, bucket) group.

A night of any size passes through one driver because no step holds a Python object per image for the whole night:
planning streams over the SKU file's record batches into a local spill (one file per group, rows in input order);
once the runtime is known the spill is read back in row groups, each row gets its cache and task keys
(factory.job.keys), and the keyed plan is written under the output root, `<date>/_plan/gNNNN.parquet` (atomic,
through the Store) with `_plan/plan.json` listing the groups in dispatch order: no adapters first, then by adapter
set, then by bucket in config order (the order `make_batches` cuts). Resume, the cross-day cache and dispatch read
the plan back one row group at a time; `Task` objects exist only for the rows in hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.inputs.bucketing import Task
from factory.io import layout
from factory.io.storage import Store

ROW_GROUP = 16_384  # plan rows per parquet row group: the unit every streaming step reads (as Arrow)
TASKS_AT_ONCE = 1024  # plan rows turned into Task objects at a time (keys, dispatch)
# cache_key is not a planned field: the keyed plan carries it as a key column (KEY_COLUMNS)
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task) if f.name != "cache_key")
_WIDE = {"seed": pa.int64(), "source_row": pa.int64(), "adapters": pa.list_(pa.string())}  # the manifests' types
TASK_SCHEMA = pa.schema(
    [
        (f.name, _WIDE.get(f.name, pa.int32() if f.type == "int" else pa.string()))
        for f in dataclasses.fields(Task)
        if f.name in TASK_FIELDS
    ]
)
PLAN_SCHEMA = TASK_SCHEMA.append(pa.field("cache_key", pa.string())).append(pa.field("task_key", pa.string()))
KEY_COLUMNS = ["sku_id", "variant", "placement", "task_key"]
GroupKey = tuple[tuple[str, ...], str]  # (adapter set, bucket)
KeyFn = Callable[[list[Task]], tuple[list[str], list[str]]]  # tasks -> (cache keys, task keys)


@dataclass
class PlanGroup:
    """One (adapter set, bucket) group of the plan: its images batch together."""

    adapters: tuple[str, ...]
    bucket: str
    rows: int
    file: str  # the local spill file while planning; the keyed plan file (relative to the output root) after


def tasks_table(tasks: list[Task]) -> pa.Table:
    """Tasks as plan rows (without keys)."""
    cols = {f: [getattr(t, f) for t in tasks] for f in TASK_FIELDS}
    cols["adapters"] = [list(a) for a in cols["adapters"]]
    return pa.table(cols, schema=TASK_SCHEMA)


def table_tasks(table: pa.Table) -> list[Task]:
    """Plan rows as Tasks (column by column: cheaper than a dict per row), with their cache key once the plan is
    keyed (it is stamped into the PNG, so a rerun can adopt the file)."""
    cols = {f: table.column(f).to_pylist() for f in TASK_FIELDS}
    cols["adapters"] = [tuple(a) for a in cols["adapters"]]
    keyed = "cache_key" in table.column_names
    cache_keys = table.column("cache_key").to_pylist() if keyed else [""] * table.num_rows
    return [Task(*values, cache_key=k) for *values, k in zip(*cols.values(), cache_keys)]


class Spill:
    """Planned tasks into one local parquet file per group (input order kept): each call's tasks become Arrow at
    once, buffered per group up to ROW_GROUP rows, so Task objects live for one input batch only."""

    def __init__(self, directory: Path, bucket_order: list[str]):
        self.directory, self.order = directory, {b: i for i, b in enumerate(bucket_order)}
        self.pending: dict[GroupKey, list[pa.Table]] = {}
        self.writers: dict[GroupKey, pq.ParquetWriter] = {}
        self.paths: dict[GroupKey, str] = {}
        self.rows: dict[GroupKey, int] = {}

    def add(self, tasks: list[Task]) -> None:
        by_group: dict[GroupKey, list[Task]] = {}
        for t in tasks:
            by_group.setdefault((t.adapters, t.bucket), []).append(t)
        for key, some in by_group.items():
            self.pending.setdefault(key, []).append(tasks_table(some))
            self.rows[key] = self.rows.get(key, 0) + len(some)
            if sum(t.num_rows for t in self.pending[key]) >= ROW_GROUP:
                self._write(key)

    def _write(self, key: GroupKey) -> None:
        if not self.pending.get(key):
            return
        if key not in self.writers:
            self.paths[key] = str(self.directory / f"spill-{len(self.writers):04d}.parquet")
            self.writers[key] = pq.ParquetWriter(self.paths[key], TASK_SCHEMA, compression="zstd")
        self.writers[key].write_table(pa.concat_tables(self.pending[key]), row_group_size=ROW_GROUP)
        self.pending[key] = []

    def close(self) -> list[PlanGroup]:
        """The groups in dispatch order (no adapters first, then by set; buckets in config order)."""
        for key in list(self.pending):
            self._write(key)
        for w in self.writers.values():
            w.close()
        keys = sorted(self.writers, key=lambda k: (k[0], self.order[k[1]]))
        return [PlanGroup(a, b, self.rows[a, b], self.paths[a, b]) for a, b in keys]


def write_keyed(store: Store, date: str, spilled: list[PlanGroup], key_fn: KeyFn) -> list[PlanGroup]:
    """The spill with each row's keys, as `<date>/_plan/` under the output root (a stale plan removed first).
    Keys are computed TASKS_AT_ONCE rows at a time and written in row groups of ROW_GROUP rows."""
    store.delete_tree(layout.plan_dir(date))
    out = []
    for i, g in enumerate(spilled):
        name = f"{layout.plan_dir(date)}/g{i:04d}.parquet"
        with store.open_output_stream(name) as f, pq.ParquetWriter(f, PLAN_SCHEMA, compression="zstd") as w:
            held: list[pa.Table] = []
            for batch in pq.ParquetFile(g.file).iter_batches(batch_size=TASKS_AT_ONCE):
                table = pa.Table.from_batches([batch])
                cache_keys, task_keys = key_fn(table_tasks(table))
                table = table.append_column("cache_key", pa.array(cache_keys, pa.string()))
                held.append(table.append_column("task_key", pa.array(task_keys, pa.string())))
                if len(held) * TASKS_AT_ONCE >= ROW_GROUP:
                    w.write_table(pa.concat_tables(held), row_group_size=ROW_GROUP)
                    held = []
            if held:
                w.write_table(pa.concat_tables(held), row_group_size=ROW_GROUP)
        out.append(PlanGroup(g.adapters, g.bucket, g.rows, name))
    groups = [{"adapters": list(g.adapters), "bucket": g.bucket, "rows": g.rows, "file": g.file} for g in out]
    layout.write_json(store, f"{layout.plan_dir(date)}/{layout.PLAN_INFO}", {"date": date, "groups": groups})
    return out


def read_chunks(store: Store, group: PlanGroup, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A keyed plan file, one row group at a time (each ROW_GROUP rows or fewer), in file order."""
    with store.open_input_file(group.file) as f:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns)


def row_group_sizes(store: Store, group: PlanGroup) -> list[int]:
    with store.open_input_file(group.file) as f:
        meta = pq.ParquetFile(f).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
