import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.errors import InputError
from factory.inputs import skus as S
from factory.inputs.prompts import load_templates
from tests.conftest import REPO, SAMPLE_SCHEMA, sample_rows, write_skus

TEMPLATES = load_templates(REPO / "templates", {"small", "medium", "large", "poster"})


def validate(tmp_path, rows, schema=None, max_variants=8):
    path = write_skus(tmp_path / "day.parquet", rows, schema)
    return S.validate_rows(S.read_tables(path), TEMPLATES, max_variants)


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    skus, rejected = validate(tmp_path, sample_rows(), SAMPLE_SCHEMA)
    assert [s.sku_id for s in skus] == ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "../../etc/passwd"]
    assert [(r.sku_id, r.source_row, r.reason) for r in rejected] == [
        (None, 8, S.MISSING_SKU_ID),
        ("S9", 9, S.UNKNOWN_CATEGORY),
        ("S10", 10, S.MISSING_ATTRIBUTE),
        ("S1", 11, S.DUPLICATE_SKU_ID),
    ]
    assert skus[0].attrs == {"brand": "Peak", "color": "red"} and skus[0].variants == 2
    assert "brand" in rejected[2].detail


def test_attribute_columns_map_and_struct(tmp_path):
    rows = [{"sku_id": "A", "category": "shoes", "brand": "Peak", "attrs": [("color", "red")]}]
    schema = pa.schema(
        [
            ("sku_id", pa.string()),
            ("category", pa.string()),
            ("brand", pa.string()),
            ("attrs", pa.map_(pa.string(), pa.string())),
        ]
    )
    skus, rejected = validate(tmp_path, rows, schema)
    assert skus[0].attrs == {"brand": "Peak", "color": "red"} and skus[0].variants == 1 and not rejected
    skus, _ = validate(tmp_path, [{"sku_id": "B", "category": "shoes", "attrs": {"brand": "X", "color": "y"}}])
    assert skus[0].attrs == {"brand": "X", "color": "y"}


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"sku_id": "  ", "category": "shoes"}, S.MISSING_SKU_ID),
        ({"sku_id": "", "category": "shoes"}, S.MISSING_SKU_ID),
        ({"sku_id": "a\nb", "category": "shoes"}, S.INVALID_SKU_ID),
        ({"sku_id": "a\x00b", "category": "shoes"}, S.INVALID_SKU_ID),
        ({"sku_id": "x" * 300, "category": "shoes"}, S.INVALID_SKU_ID),
        ({"sku_id": "A", "category": None}, S.UNKNOWN_CATEGORY),
        ({"sku_id": "A", "category": "shoes", "attrs": "{not json"}, S.INVALID_ATTRS),
        ({"sku_id": "A", "category": "shoes", "attrs": "[1, 2]"}, S.INVALID_ATTRS),
        (
            {"sku_id": "A", "category": "shoes", "attrs": json.dumps({"brand": "b", "color": "c"}), "variants": 0},
            S.INVALID_VARIANTS,
        ),
        (
            {"sku_id": "A", "category": "shoes", "attrs": json.dumps({"brand": "b", "color": "c"}), "variants": 99},
            S.INVALID_VARIANTS,
        ),
    ],
)
def test_row_level_problems(tmp_path, row, reason):
    full = {"sku_id": None, "category": None, "attrs": "{}", "variants": 1, **row}
    schema = pa.schema(
        [("sku_id", pa.string()), ("category", pa.string()), ("attrs", pa.string()), ("variants", pa.int64())]
    )
    skus, rejected = validate(tmp_path, [full], schema)
    assert not skus and [r.reason for r in rejected] == [reason]


def test_directory_of_files(tmp_path):
    d = tmp_path / "2026-11-21"
    write_skus(d / "b.parquet", [{"sku_id": "B", "category": "toys", "product": "car"}])
    write_skus(d / "a.parquet", [{"sku_id": "A", "category": "toys", "product": "bear"}])
    assert S.day_input_path(tmp_path, "2026-11-21") == d
    skus, _ = S.validate_rows(S.read_tables(d), TEMPLATES, 8)
    assert [s.sku_id for s in skus] == ["A", "B"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "SKU file not found"),
        (lambda p: p.write_bytes(b""), "not a readable parquet file"),
        (lambda p: p.write_text("sku_id,category\n1,shoes\n"), "not a readable parquet file"),
        (lambda p: write_skus(p, [{"sku": "A", "category": "shoes"}]), "missing required column 'sku_id'"),
        (lambda p: write_skus(p, [{"sku_id": 1, "category": "shoes"}]), "column 'sku_id' must be string"),
        (lambda p: write_skus(p, [{"sku_id": "A", "category": ["shoes"]}]), "column 'category' must be string"),
    ],
)
def test_file_level_problems_are_one_sentence(tmp_path, make, message):
    path = tmp_path / "day.parquet"
    make(path)
    with pytest.raises(S.InputError, match=message) as info:
        S.read_tables(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_parquet(tmp_path):
    path = write_skus(tmp_path / "day.parquet", sample_rows(), SAMPLE_SCHEMA)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="not a readable parquet file"):
        S.read_tables(path)


def test_every_row_is_accounted_for(tmp_path):
    rows = sample_rows()
    skus, rejected = validate(tmp_path, rows, SAMPLE_SCHEMA)
    assert len(skus) + len(rejected) == len(rows)
    assert pq.read_table(tmp_path / "day.parquet").num_rows == len(rows)
