"""SKU input by URI: a file, a directory (Spark-style side files skipped) and `paths.skus` as a root, on real S3."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.errors import InputError
from factory.inputs.skus import day_input_path, read_tables
from factory.io.storage import open_store


def parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def test_skus_from_s3_file_directory_and_root(s3_uri):
    store = open_store(s3_uri)
    store.put_bytes("skus/2026-11-20.parquet", parquet([{"sku_id": "A", "category": "toys"}]))
    store.put_bytes("skus/2026-11-21/part-1.parquet", parquet([{"sku_id": "C", "category": "toys"}]))
    store.put_bytes("skus/2026-11-21/part-0.parquet", parquet([{"sku_id": "B", "category": "toys"}]))
    store.put_bytes("skus/2026-11-21/_SUCCESS", b"")
    store.put_bytes("skus/2026-11-21/.part-2.parquet.crc", b"junk")
    store.put_bytes("skus/2026-11-21/_temporary/0.parquet", b"junk")

    assert day_input_path(f"{s3_uri}/skus", "2026-11-20") == f"{s3_uri}/skus/2026-11-20.parquet"
    assert day_input_path(f"{s3_uri}/skus", "2026-11-21") == f"{s3_uri}/skus/2026-11-21"
    [(name, table)] = read_tables(f"{s3_uri}/skus/2026-11-20.parquet")
    assert name == f"{s3_uri}/skus/2026-11-20.parquet" and table.column("sku_id").to_pylist() == ["A"]
    tables = read_tables(f"{s3_uri}/skus/2026-11-21")
    assert [n.rsplit("/", 1)[1] for n, _ in tables] == ["part-0.parquet", "part-1.parquet"]
    with pytest.raises(InputError, match="no .parquet files"):
        read_tables(f"{s3_uri}/skus/2026-11-22")
    store.put_bytes("skus/bad.parquet", b"not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable parquet file"):
        read_tables(f"{s3_uri}/skus/bad.parquet")
