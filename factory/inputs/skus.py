"""Read a day's SKU parquet (one file or a directory of files) and validate it row by row.

File-level problems (no file, unreadable parquet, missing or mistyped required column) raise `InputError`: the
run stops before writing anything. Row-level problems become `Rejected` rows with a reason code; the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import InputError
from factory.inputs.prompts import Template, clean_value

RESERVED_COLUMNS = {"sku_id", "category", "variants", "attrs"}
MAX_SKU_ID_CHARS = 256  # longer ids are almost certainly corrupt input

# Row-level reason codes (documented in README, column `reason` of rejected.parquet).
MISSING_SKU_ID = "missing_sku_id"
INVALID_SKU_ID = "invalid_sku_id"
DUPLICATE_SKU_ID = "duplicate_sku_id"
UNKNOWN_CATEGORY = "unknown_category"
INVALID_ATTRS = "invalid_attrs"
INVALID_VARIANTS = "invalid_variants"
MISSING_ATTRIBUTE = "missing_attribute"


@dataclass(frozen=True)
class Sku:
    sku_id: str
    category: str
    attrs: dict[str, str]
    variants: int
    source_file: str
    source_row: int


@dataclass(frozen=True)
class Rejected:
    sku_id: str | None
    category: str | None
    source_file: str
    source_row: int
    reason: str
    detail: str


def day_input_path(skus_root: str | Path, date: str) -> Path:
    """`<root>/<date>.parquet` if it exists, else the directory `<root>/<date>/`."""
    root = Path(skus_root)
    file = root / f"{date}.parquet"
    return file if file.exists() or not (root / date).is_dir() else root / date


def read_tables(path: str | Path) -> list[tuple[str, pa.Table]]:
    """Read one parquet file, or every *.parquet in a directory (sorted, so row numbers are stable)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise InputError(f"{path}: directory contains no .parquet files")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"{path}: SKU file not found (expected <skus>/<date>.parquet or a directory <skus>/<date>/)")
    tables = []
    for f in files:
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{f}: not a readable parquet file ({_first_line(exc)})") from None
        _check_schema(f, table.schema)
        tables.append((str(f), table))
    return tables


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def _check_schema(f: Path, schema: pa.Schema) -> None:
    for name in ("sku_id", "category"):
        if name not in schema.names:
            raise InputError(f"{f}: missing required column '{name}' (columns: {', '.join(schema.names) or 'none'})")
        if not _is_text(schema.field(name).type):
            raise InputError(f"{f}: column '{name}' must be string, found {schema.field(name).type}")
    if "variants" in schema.names and not (
        pa.types.is_integer(schema.field("variants").type) or pa.types.is_null(schema.field("variants").type)
    ):
        raise InputError(f"{f}: column 'variants' must be an integer, found {schema.field('variants').type}")
    if "attrs" in schema.names:
        t = schema.field("attrs").type
        if not (_is_text(t) or pa.types.is_map(t) or pa.types.is_struct(t)):
            raise InputError(f"{f}: column 'attrs' must be map<string,string>, struct or a JSON string, found {t}")


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return json.dumps(value, ensure_ascii=False, default=str)


def _parse_attrs(value: Any) -> dict[str, str | None]:
    """An `attrs` cell: a map (list of pairs), a struct (dict) or a JSON object string. Raises ValueError."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"attrs is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError("attrs JSON must be an object of attribute names to values")
    if isinstance(value, list):  # pyarrow map -> [(key, value), ...]
        value = dict(value)
    return {str(k): _to_text(v) for k, v in value.items()}


def validate_rows(
    tables: list[tuple[str, pa.Table]], templates: dict[str, Template], max_variants: int
) -> tuple[list[Sku], list[Rejected]]:
    """Turn raw rows into valid SKUs and rejected rows. Every input row ends in exactly one of the two lists."""
    skus: list[Sku] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for source, table in tables:
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        attr_cols = [n for n in table.column_names if n not in RESERVED_COLUMNS]
        for row in range(table.num_rows):
            sku_id, category = cols["sku_id"][row], cols["category"][row]
            outcome = _check_row(cols, attr_cols, row, templates, max_variants, seen)
            if isinstance(outcome[0], str):  # (reason, detail)
                rejected.append(Rejected(sku_id, category, source, row, *outcome))
            else:
                attrs, variants = outcome
                skus.append(Sku(sku_id, category, attrs, variants, source, row))
    return skus, rejected


def _check_row(
    cols: dict[str, list[Any]],
    attr_cols: list[str],
    row: int,
    templates: dict[str, Template],
    max_variants: int,
    seen: set[str],
) -> tuple[str, str] | tuple[dict[str, str], int]:
    """(reason, detail) for a bad row, else (attrs, variants). Marks the sku_id as seen."""
    sku_id, category = cols["sku_id"][row], cols["category"][row]
    if sku_id is None or not sku_id.strip():
        return MISSING_SKU_ID, "sku_id is null or blank"
    if len(sku_id) > MAX_SKU_ID_CHARS or clean_value(sku_id) != sku_id:
        return INVALID_SKU_ID, f"sku_id has control characters, edge whitespace or over {MAX_SKU_ID_CHARS} chars"
    if sku_id in seen:
        return DUPLICATE_SKU_ID, "sku_id already seen in an earlier row; the first row is kept"
    seen.add(sku_id)
    if category not in templates:
        return UNKNOWN_CATEGORY, f"no template for category {category!r}"
    attrs = {name: _to_text(cols[name][row]) for name in attr_cols}
    if "attrs" in cols:
        try:
            attrs.update({k: v for k, v in _parse_attrs(cols["attrs"][row]).items() if v is not None})
        except ValueError as exc:
            return INVALID_ATTRS, str(exc)
    variants = cols["variants"][row] if "variants" in cols else None
    variants = 1 if variants is None else variants
    if not 1 <= variants <= max_variants:
        return INVALID_VARIANTS, f"variants must be between 1 and {max_variants}, got {variants}"
    missing = templates[category].missing(attrs)
    if missing:
        return MISSING_ATTRIBUTE, f"missing required attribute(s): {', '.join(missing)}"
    return {k: v for k, v in attrs.items() if v is not None}, variants
