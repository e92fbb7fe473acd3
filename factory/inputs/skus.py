"""Read a day's SKU parquet (one file or a directory of files) and validate it row by row.

File-level problems (no file, unreadable parquet, missing or mistyped required column) raise `InputError`: the
run stops before writing anything. Row-level problems become `Rejected` rows with a reason code; the run goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from factory.config import StorageConfig
from factory.errors import InputError
from factory.inputs.prompts import Template, clean_value
from factory.io.paths import looks_like_uri
from factory.io.storage import open_store

RESERVED_COLUMNS = {"sku_id", "category", "variants", "attrs", "adapters", "placements"}
MAX_SKU_ID_CHARS = 256  # longer ids are almost certainly corrupt input

# Row-level reason codes (documented in docs/outputs.md, column `reason` of rejected.parquet).
MISSING_SKU_ID = "missing_sku_id"
INVALID_SKU_ID = "invalid_sku_id"
DUPLICATE_SKU_ID = "duplicate_sku_id"
UNKNOWN_CATEGORY = "unknown_category"
INVALID_ATTRS = "invalid_attrs"
INVALID_VARIANTS = "invalid_variants"
MISSING_ATTRIBUTE = "missing_attribute"
UNKNOWN_ADAPTER = "unknown_adapter"
UNKNOWN_PLACEMENT = "unknown_placement"


@dataclass(frozen=True)
class Sku:
    sku_id: str
    category: str
    attrs: dict[str, str]
    variants: int
    source_file: str
    source_row: int
    adapters: tuple[str, ...] = ()  # per-SKU style adapters (the `adapters` column), sorted, no duplicates
    placements: tuple[str, ...] = ()  # the `placements` column (config order, no duplicates); () = the template's


@dataclass(frozen=True)
class Rejected:
    sku_id: str | None
    category: str | None
    source_file: str
    source_row: int
    reason: str
    detail: str


def day_input_path(skus_root: str | Path, date: str, storage: StorageConfig | None = None) -> str | Path:
    """`<root>/<date>.parquet` if it exists, else the directory `<root>/<date>/`; `root` may be a URI (s3://...)."""
    if looks_like_uri(str(skus_root)):
        store = open_store(str(skus_root), storage, "paths.skus")
        name = f"{date}.parquet"
        return store.url(name) if store.exists(name) or not store.list(date) else store.url(date)
    root = Path(skus_root)
    file = root / f"{date}.parquet"
    return file if file.exists() or not (root / date).is_dir() else root / date


def input_files(path: str | Path, storage: StorageConfig | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """(name, open) for each of the day's parquet files: `path` itself, or every *.parquet in the directory `path`
    (sorted, so row numbers are stable); a local path or a URI (a file or a directory in a store). In a directory,
    names starting with `.` or `_` are skipped: Spark and pyarrow use them for in-progress, checksum and metadata
    files (`_SUCCESS`, `_temporary`, `.part-0.parquet.crc`)."""
    if looks_like_uri(str(path)):
        store = open_store(str(path), storage, "--skus")
        if store.info("").type == pafs.FileType.File:
            return [(store.url(""), lambda: store.open_input_file(""))]
        names = [n for n in store.list("") if "/" not in n and n.endswith(".parquet") and not n.startswith((".", "_"))]
        if not names:
            raise InputError(f"{store.url('')}: no .parquet files there (names starting with . or _ are skipped)")
        return [(store.url(n), lambda n=n: store.open_input_file(n)) for n in names]
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
        if not files:
            raise InputError(f"{path}: directory contains no .parquet files (names starting with . or _ are skipped)")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: SKU file not found (expected <skus>/<date>.parquet or a directory <skus>/<date>/)")
    return [(str(f), lambda f=f: f) for f in files]


def _unreadable(f: str, exc: BaseException) -> InputError:
    if isinstance(exc, UnicodeDecodeError):
        return InputError(f"{f}: not a readable parquet file (a column name is not valid UTF-8)")
    return InputError(f"{f}: not a readable parquet file ({_first_line(exc)})")


def read_tables(path: str | Path, storage: StorageConfig | None = None) -> list[tuple[str, pa.Table]]:
    """Each file of the day (see `input_files`) as one table: `iter_tables`' batches put back together."""
    files: dict[str, list[pa.Table]] = {}
    for source, _, table in iter_tables(path, empty_files=True, storage=storage):
        files.setdefault(source, []).append(table)
    return [(source, pa.concat_tables(tables)) for source, tables in files.items()]


def iter_tables(
    path: str | Path, batch_rows: int = 65_536, empty_files: bool = False, storage: StorageConfig | None = None
) -> Iterator[tuple[str, int, pa.Table]]:
    """The day as (file, first row number, table of at most `batch_rows` rows), read in record batches: memory
    holds one batch, not the day. Every file's schema is checked before the first batch is yielded. A file without
    rows yields nothing, or one empty table with `empty_files`."""
    files = []
    for f, opener in input_files(path, storage):
        try:
            pf = pq.ParquetFile(opener())
            pf.schema_arrow.names  # noqa: B018 (a non-UTF-8 column name fails here)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise _unreadable(f, exc) from None
        _check_schema(f, pf.schema_arrow)
        files.append((f, pf))
    for f, pf in files:
        offset = 0
        try:
            for group in range(pf.num_row_groups):  # one row group's column chunks buffered at a time, not the file's
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
                    yield f, offset, pa.Table.from_batches([batch])
                    offset += batch.num_rows
            if offset == 0 and empty_files:
                yield f, 0, pf.schema_arrow.empty_table()
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(f, exc) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _plain_type(t: pa.DataType) -> pa.DataType:
    """The value type of a dictionary-encoded column (pandas `category`, Spark/Arrow dictionary pages)."""
    return _plain_type(t.value_type) if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    t = _plain_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def _is_number(t: pa.DataType) -> bool:
    t = _plain_type(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


def _check_schema(f: str | Path, schema: pa.Schema) -> None:
    twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if twice:  # which one holds the data is anyone's guess: refuse the file (found by tests/inputs/test_properties)
        raise InputError(f"{f}: column '{twice[0]}' appears more than once; give each column its own name")
    for name in ("sku_id", "category"):
        if name not in schema.names:
            raise InputError(f"{f}: missing required column '{name}' (columns: {', '.join(schema.names) or 'none'})")
        if not _is_text(schema.field(name).type):
            raise InputError(f"{f}: column '{name}' must be string, found {schema.field(name).type}")
    # pandas writes an integer column with a missing value as float64: whole floats are checked per row
    if "variants" in schema.names and not _is_number(schema.field("variants").type):
        raise InputError(f"{f}: column 'variants' must be an integer, found {schema.field('variants').type}")
    if "attrs" in schema.names:
        t = _plain_type(schema.field("attrs").type)
        if not (_is_text(t) or pa.types.is_map(t) or pa.types.is_struct(t)):
            raise InputError(f"{f}: column 'attrs' must be map<string,string>, struct or a JSON string, found {t}")
    for name in ("adapters", "placements"):
        if name in schema.names:
            t = _plain_type(schema.field(name).type)
            is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
            if not (_is_text(t) or (is_list and _is_text(t.value_type))):
                raise InputError(f"{f}: column '{name}' must be list<string> or a comma-separated string, found {t}")


@dataclass(frozen=True)
class Undecodable:
    """A cell whose bytes are not valid UTF-8; `text` is a lossy rendering (for the rejected manifest)."""

    text: str | None


def column_values(column: pa.ChunkedArray) -> list[Any]:
    """Python values of a column. A cell that is not valid UTF-8 becomes `Undecodable` (its row is rejected)."""
    if pa.types.is_float16(column.type) or pa.types.is_float32(column.type):
        # via the shortest text of the narrow float, so float32 1.1 renders as 1.1, not 1.100000023841858
        column = column.cast(pa.string()).cast(pa.float64())
    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # rare: decode cell by cell to find the bad ones
        return [_cell(v) for chunk in column.chunks for v in chunk]


def _cell(scalar: pa.Scalar) -> Any:
    try:
        return scalar.as_py()
    except UnicodeDecodeError:
        as_buffer = getattr(scalar, "as_buffer", None)  # string scalars; nested ones (map, struct) have none
        return Undecodable(as_buffer().to_pybytes().decode("utf-8", errors="replace") if as_buffer else None)


def _plain_value(value: Any) -> Any:
    return value.text if isinstance(value, Undecodable) else value


_TEXT_KINDS = "text, numbers, booleans, decimals, dates, times or timestamps"


def to_text(value: Any) -> str | None:
    """One attribute value as prompt text (None: missing). Raises ValueError for a value with no plain text form."""
    if value is None:
        return None
    if type(value) is str and value.isascii():  # the common case, and ASCII is always encodable
        return value
    if isinstance(value, Undecodable):
        raise ValueError("is not valid UTF-8")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("is binary, not UTF-8 text") from None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"is {'NaN' if math.isnan(value) else 'infinite'} (not a value)")
        # a whole float is usually an integer column pandas widened to float64 for its missing values
        text = str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"is {'NaN' if value.is_nan() else 'infinite'} (not a value)")
        text = format(value, "f")  # keeps the scale: 1.50 stays 1.50
    elif isinstance(value, (dt.date, dt.time)):  # datetime is a date: str() gives `2026-11-21 10:00:00`
        text = str(value)
    else:
        kind = {"list": "a list", "tuple": "a list", "dict": "a nested object"}.get(type(value).__name__)
        raise ValueError(f"is {kind or 'a ' + type(value).__name__}; attributes must be {_TEXT_KINDS}")
    _check_encodable(text, "value")
    return text


def _check_encodable(text: str, what: str) -> None:
    """Reject text Python holds but UTF-8 cannot (a lone surrogate from a JSON `\\ud800` escape)."""
    try:
        text.isascii() or text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not encodable text (a lone surrogate such as a JSON \\ud800 escape)") from None


def _parse_attrs(value: Any) -> dict[str, Any]:
    """An `attrs` cell: a map (list of pairs), a struct (dict) or a JSON object string. Raises ValueError."""
    if value is None:
        return {}
    if isinstance(value, Undecodable):
        raise ValueError("attrs is not valid UTF-8")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"attrs is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError("attrs JSON must be an object of attribute names to values")
    if isinstance(value, list):  # pyarrow map -> [(key, value), ...]
        value = dict(value)
    for key in value:
        _check_encodable(str(key), "an attribute name in attrs")
    return {str(k): v for k, v in value.items()}


def _row_attrs(cols: dict[str, list[Any]], attr_cols: list[str], row: int) -> dict[str, str]:
    """Attribute columns, then `attrs` (which wins). Raises ValueError naming the attribute that is not text."""
    raw = {name: cols[name][row] for name in attr_cols}
    if "attrs" in cols:
        raw.update({k: v for k, v in _parse_attrs(cols["attrs"][row]).items() if v is not None})
    attrs = {}
    for name, value in raw.items():
        try:
            text = to_text(value)
        except ValueError as exc:
            raise ValueError(f"attribute {name!r} {exc}") from None
        if text is not None:
            attrs[name] = text
    return attrs


def _variants(value: Any, max_variants: int) -> int:
    """`variants` of a row: null is the default 1; a whole float (pandas' int-with-nulls) counts as an integer."""
    if value is None:
        return 1
    if isinstance(value, (float, Decimal)):
        if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)) or value != int(value):
            raise ValueError(f"variants must be a whole number, got {value}")
        value = int(value)
    if not 1 <= value <= max_variants:
        raise ValueError(f"variants must be between 1 and {max_variants}, got {value}")
    return value


def _row_names(value: Any, known: Collection[str], column: str, section: str) -> tuple[str, ...]:
    """An `adapters` / `placements` cell: a list of names or a comma-separated string (blanks ignored), as the
    known names it holds in `known`'s order. Raises ValueError naming the first unknown one."""
    if value is None:
        return ()
    if isinstance(value, Undecodable) or (isinstance(value, list) and any(isinstance(v, Undecodable) for v in value)):
        raise ValueError(f"{column} is not valid UTF-8")
    names = value.split(",") if isinstance(value, str) else [v for v in value if v is not None]
    names = {n.strip() for n in names if n.strip()}
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"unknown {column[:-1]} {clean_value(unknown[0])[:64]!r} (not in {section})")
    return tuple(n for n in known if n in names)


def _row_adapters(value: Any, known: Collection[str]) -> tuple[str, ...]:
    """The `adapters` cell, sorted by name. Raises ValueError."""
    return tuple(sorted(_row_names(value, known, "adapters", "[lora.adapters]")))


class KeptIds:
    """The sku_ids that valid rows claimed, as a mapping sku_id -> where its valid row is ("row N of FILE"). The
    earlier tables' ids are Arrow chunks (id, file index, row: ~30 bytes a SKU, never copied as they grow) and the
    current table's a dict: `begin` looks a new table's ids up against the earlier ones in one hashed lookup, so a
    day of any size keeps no Python object per SKU between tables."""

    def __init__(self) -> None:
        self.ids: list[pa.Array] = []
        self.files: list[pa.Array] = []  # index into file_names
        self.rows: list[pa.Array] = []
        self.file_names: list[str] = []
        self.current: dict[str, tuple[str, int]] = {}  # claimed by the table being validated
        self.earlier: dict[str, tuple[str, int]] = {}  # ids of that table that an earlier table claimed

    def begin(self, sku_ids: list[Any]) -> None:
        """A new table: the last one's claims join the arrays; `sku_ids` (its Python values) are looked up."""
        if self.current:
            self._keep_current()
        self.earlier = {}
        if not self.ids:
            return
        ids = pa.array([v if isinstance(v, str) else None for v in sku_ids], pa.string())
        idx = pc.index_in(ids, value_set=pa.chunked_array(self.ids, pa.string()))
        hit = pc.is_valid(idx)
        at = idx.filter(hit)
        files = pa.chunked_array(self.files, pa.int32()).take(at).to_pylist()
        rows = pa.chunked_array(self.rows, pa.int64()).take(at).to_pylist()
        self.earlier = {i: (self.file_names[f], r) for i, f, r in zip(ids.filter(hit).to_pylist(), files, rows)}

    def _keep_current(self) -> None:
        names = {n: i for i, n in enumerate(self.file_names)}
        for name, _ in self.current.values():
            if name not in names:
                names[name] = len(self.file_names)
                self.file_names.append(name)
        self.ids.append(pa.array(list(self.current), pa.string()))
        self.files.append(pa.array([names[n] for n, _ in self.current.values()], pa.int32()))
        self.rows.append(pa.array([r for _, r in self.current.values()], pa.int64()))
        self.current = {}

    def __contains__(self, sku_id: object) -> bool:
        return sku_id in self.current or sku_id in self.earlier

    def __getitem__(self, sku_id: str) -> str:
        name, row = self.current[sku_id] if sku_id in self.current else self.earlier[sku_id]
        return f"row {row} of {name}"

    def __setitem__(self, sku_id: str, where: tuple[str, int]) -> None:
        self.current[sku_id] = where


class RowValidator:
    """Validates a day's rows table by table (a whole file, or one record batch of it), keeping across tables
    which `sku_id`s valid rows claimed. Only a valid row claims its id: a later row with the same id is a duplicate
    of that one, and a rejected row never shadows a valid one that follows it. `adapter_names`: the configured
    [lora.adapters] (an `adapters` cell naming another one rejects the row)."""

    def __init__(
        self,
        templates: dict[str, Template],
        max_variants: int,
        adapter_names: Collection[str] = (),
        placement_names: Collection[str] = (),
    ):
        self.templates, self.max_variants, self.adapter_names = templates, max_variants, adapter_names
        self.placement_names = tuple(placement_names)  # [placements.sizes], in config order
        self.kept = KeptIds()  # sku_id -> where its valid row is

    def validate(self, source: str, table: pa.Table, offset: int = 0) -> tuple[list[Sku], list[Rejected]]:
        """Rows `offset`.. of `source`: every row ends in exactly one of the two lists."""
        skus: list[Sku] = []
        rejected: list[Rejected] = []
        file_name = Path(source).name
        cols = {name: column_values(table.column(name)) for name in table.column_names}
        attr_cols = [n for n in table.column_names if n not in RESERVED_COLUMNS]
        plain = _plain_ids(table.column("sku_id"))
        self.kept.begin(cols["sku_id"])
        for i in range(table.num_rows):
            row = offset + i
            sku_id, category = cols["sku_id"][i], cols["category"][i]
            outcome = _check_row(
                cols, attr_cols, i, self.templates, self.max_variants, self.kept, self.adapter_names, plain[i]
            )
            if len(outcome) == 3 and "placements" in cols:
                outcome = _with_placements(outcome, cols["placements"][i], self.placement_names)
            if len(outcome) == 2:  # (reason, detail)
                rejected.append(Rejected(_plain_value(sku_id), _plain_value(category), source, row, *outcome))
            else:
                attrs, variants, adapters, *placements = outcome
                self.kept[sku_id] = (file_name, row)
                skus.append(Sku(sku_id, category, attrs, variants, source, row, adapters, *placements))
        return skus, rejected


def validate_rows(
    tables: list[tuple[str, pa.Table]],
    templates: dict[str, Template],
    max_variants: int,
    adapter_names: Collection[str] = (),
) -> tuple[list[Sku], list[Rejected]]:
    """Turn raw rows into valid SKUs and rejected rows. Every input row ends in exactly one of the two lists."""
    validator = RowValidator(templates, max_variants, adapter_names)
    skus: list[Sku] = []
    rejected: list[Rejected] = []
    for source, table in tables:
        s, r = validator.validate(source, table)
        skus += s
        rejected += r
    return skus, rejected


# An id of printable ASCII without edge spaces, at most MAX_SKU_ID_CHARS long, passes every sku_id check but the
# duplicate one: decided for a whole batch at once (the per-row checks then run only on the other ids).
_PLAIN_ID = "^[!-~]([ -~]{0," + str(MAX_SKU_ID_CHARS - 2) + "}[!-~])?$"


def _plain_ids(column: pa.ChunkedArray) -> list[bool]:
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        return [False] * len(column)  # dictionary, view or null columns: the per-row checks decide
    try:
        return pc.fill_null(pc.match_substring_regex(column, _PLAIN_ID), False).to_pylist()
    except pa.ArrowInvalid:  # bytes that are not UTF-8: the per-row checks find the bad cells
        return [False] * len(column)


def _check_row(
    cols: dict[str, list[Any]],
    attr_cols: list[str],
    row: int,
    templates: dict[str, Template],
    max_variants: int,
    kept: KeptIds | dict[str, str],
    adapter_names: Collection[str],
    plain_id: bool = False,
) -> tuple[str, str] | tuple[dict[str, str], int, tuple[str, ...]]:
    """(reason, detail) for a bad row, else (attrs, variants, adapters). `plain_id`: the id is known to pass its own
    checks."""
    sku_id, category = cols["sku_id"][row], cols["category"][row]
    problem = None if plain_id else _sku_id_problem(sku_id)
    if problem:
        return problem
    if sku_id in kept:
        return DUPLICATE_SKU_ID, f"sku_id already used by {kept[sku_id]}, which is kept"
    if isinstance(category, Undecodable):
        return UNKNOWN_CATEGORY, "category is not valid UTF-8"
    if category not in templates:
        return UNKNOWN_CATEGORY, f"no template for category {category!r}"
    try:
        attrs = _row_attrs(cols, attr_cols, row)
    except ValueError as exc:
        return INVALID_ATTRS, str(exc)
    try:
        variants = _variants(cols["variants"][row] if "variants" in cols else None, max_variants)
    except ValueError as exc:
        return INVALID_VARIANTS, str(exc)
    missing = templates[category].missing(attrs)
    if missing:
        return MISSING_ATTRIBUTE, f"missing required attribute(s): {', '.join(missing)}"
    try:
        adapters = _row_adapters(cols["adapters"][row] if "adapters" in cols else None, adapter_names)
    except ValueError as exc:
        return UNKNOWN_ADAPTER, str(exc)
    return attrs, variants, adapters


def _with_placements(
    outcome: tuple[dict[str, str], int, tuple[str, ...]], cell: Any, known: tuple[str, ...]
) -> tuple[str, str] | tuple[dict[str, str], int, tuple[str, ...], tuple[str, ...]]:
    """A valid row's outcome plus its `placements` cell, or the rejection of an unknown placement."""
    try:
        return (*outcome, _row_names(cell, known, "placements", "[placements.sizes]"))
    except ValueError as exc:
        return UNKNOWN_PLACEMENT, str(exc)


def _sku_id_problem(sku_id: Any) -> tuple[str, str] | None:
    if isinstance(sku_id, Undecodable):
        return INVALID_SKU_ID, "sku_id is not valid UTF-8"
    if sku_id is None or not sku_id.strip():
        return MISSING_SKU_ID, "sku_id is null or blank"
    if len(sku_id) > MAX_SKU_ID_CHARS or clean_value(sku_id) != sku_id:
        return (
            INVALID_SKU_ID,
            f"sku_id has control characters, line breaks, edge whitespace or over {MAX_SKU_ID_CHARS} chars",
        )
    return None
