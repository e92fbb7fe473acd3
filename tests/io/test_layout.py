"""The manifest tables: Hive partitions per night, replaced whole on rerun, read by pyarrow and DuckDB as documented."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow.parquet as pq
import pytest

from factory.io import layout
from factory.io.records import MANIFEST_SCHEMAS, ImageRecord, RejectedRow
from factory.io.storage import open_store
from tests.conftest import REPO


def image_rows(date: str, ids: list[str]) -> list[dict]:
    day = dt.date.fromisoformat(date)
    return [
        ImageRecord(
            run_date=day, run_id=f"run-{date}", sku_id=s, category="toys", image_path=f"{date}/images/t/{s}.png"
        ).to_row()
        for s in ids
    ]


def write_night(store, date: str, approved: list[str], rejected: int = 0) -> None:
    day = dt.date.fromisoformat(date)
    layout.write_manifest(store, "approved", date, image_rows(date, approved))
    layout.write_manifest(store, "review", date, [])
    rows = [RejectedRow(run_date=day, sku_id=f"bad{i}", reason="missing_sku_id").to_row() for i in range(rejected)]
    layout.write_manifest(store, "rejected", date, rows)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    uri = request.getfixturevalue("s3_uri") if request.param == "s3" else str(tmp_path / "out")
    return open_store(uri)


def test_partitions_per_night_replaced_whole_on_rerun(store):
    write_night(store, "2026-11-20", ["A", "B"], rejected=1)
    write_night(store, "2026-11-21", ["C", "D", "E"])
    write_night(store, "2026-11-21", ["C"])  # a rerun replaces the night's partition, it does not append
    assert store.list("manifests") == sorted(
        f"manifests/{kind}/run_date={d}/part-0.parquet"
        for kind in layout.MANIFEST_KINDS
        for d in ("2026-11-20", "2026-11-21")
    )
    table = layout.read_table(store, "approved")
    assert table.schema.equals(MANIFEST_SCHEMAS["approved"], check_metadata=False)
    assert [(str(r["run_date"]), r["sku_id"]) for r in table.to_pylist()] == [
        ("2026-11-20", "A"),
        ("2026-11-20", "B"),
        ("2026-11-21", "C"),
    ]
    night = layout.read_manifest(store, "rejected", "2026-11-20")
    assert night.schema.equals(MANIFEST_SCHEMAS["rejected"], check_metadata=False) and night.num_rows == 1
    # the partition column lives in the directory name only, as Hive/Spark/Trino expect
    assert (
        "run_date" not in pq.read_schema(store.open_input_file(layout.partition_path("approved", "2026-11-20"))).names
    )


def test_empty_nights_have_explicit_schemas(tmp_path):
    store = open_store(str(tmp_path))
    write_night(store, "2026-11-21", [])
    for kind, schema in MANIFEST_SCHEMAS.items():
        table = layout.read_manifest(store, kind, "2026-11-21")
        assert table.num_rows == 0 and table.schema.equals(schema, check_metadata=False)


def test_the_documented_pyarrow_and_duckdb_queries(tmp_path):
    out = tmp_path / "out"
    store = open_store(str(out))
    write_night(store, "2026-11-20", ["A", "B"])
    write_night(store, "2026-11-21", ["C"])
    # docs/outputs.md "For data engineers": pyarrow with partitioning="hive" (run_date comes back from the path)
    table = pq.read_table(out / "manifests" / "approved", partitioning="hive")
    assert sorted(zip(map(str, table.column("run_date").to_pylist()), table.column("sku_id").to_pylist())) == [
        ("2026-11-20", "A"),
        ("2026-11-20", "B"),
        ("2026-11-21", "C"),
    ]
    # ... and DuckDB, which types run_date as DATE; image_path resolves from the output root
    sql = (
        f"SELECT run_date, count(*) AS images, min(image_path) AS first FROM read_parquet("
        f"'{out}/manifests/approved/*/*.parquet', hive_partitioning=true) GROUP BY run_date ORDER BY run_date"
    )
    rows = duckdb.sql(sql).fetchall()
    assert rows == [
        (dt.date(2026, 11, 20), 2, "2026-11-20/images/t/A.png"),
        (dt.date(2026, 11, 21), 1, "2026-11-21/images/t/C.png"),
    ]
    # the query of docs/outputs.md ("For data engineers"), verbatim but for the output root
    page = (REPO / "docs" / "outputs.md").read_text()
    documented = page.split("**DuckDB**")[1].split("```sql\n")[1].split("```")[0]
    assert "data/output/manifests/approved/*/*.parquet" in documented and "GROUP BY ALL" in documented
    query = documented.replace("data/output", str(out))
    assert duckdb.sql(query).fetchall() == [(dt.date(2026, 11, 21), "toys", 1)]


def test_nights_written_before_placements_read_with_an_empty_placement(tmp_path):
    store = open_store(str(tmp_path))
    write_night(store, "2026-11-20", ["A", "B"])  # the older night: rewritten below without the column
    path = layout.partition_path("approved", "2026-11-20")
    old = pq.read_table(store.open_input_file(path))
    with store.open_output_stream(path) as f:
        pq.write_table(old.drop_columns(["placement"]), f)
    layout.write_manifest(
        store, "approved", "2026-11-21", [{**r, "placement": "story"} for r in image_rows("2026-11-21", ["C"])]
    )
    night = layout.read_manifest(store, "approved", "2026-11-20")
    assert night.schema.equals(MANIFEST_SCHEMAS["approved"], check_metadata=False)
    assert night["placement"].to_pylist() == ["", ""]
    table = layout.read_table(store, "approved")  # the old night's file is the first a dataset inspects
    assert table.schema.equals(MANIFEST_SCHEMAS["approved"], check_metadata=False)
    assert [(r["sku_id"], r["placement"]) for r in table.to_pylist()] == [("A", ""), ("B", ""), ("C", "story")]
