"""Input the real world sends (issue 9, items 9-15): pandas and Spark quirks, broken bytes, odd attribute types,
Unicode line breaks, directory conventions, date forms and an output root that is a file.

Every file here is real parquet written by pandas or pyarrow; bad bytes are made with a binary array viewed as
string (what a buggy writer produces), never by mocking the reader.
"""

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.errors import InputError
from factory.inputs import skus as S
from factory.inputs.arguments import parse_date
from factory.inputs.prompts import load_templates
from factory.job.night_plan import plan
from factory.job.run import run
from tests.conftest import DATE, REPO, cli, demo_config_file, read_manifests, with_run

TEMPLATES = load_templates(REPO / "templates", {"small", "medium", "large", "poster"})


def _validate(path: Path) -> tuple[list[S.Sku], list[S.Rejected]]:
    whole = S.validate_rows(S.read_tables(path), TEMPLATES, 8)
    assert streamed(path) == whole  # what `run` does: record batches (of 2 rows here), one validator
    return whole


def streamed(path: Path, batch_rows: int = 2) -> tuple[list[S.Sku], list[S.Rejected]]:
    validator, skus, rejected = S.RowValidator(TEMPLATES, 8), [], []
    for source, offset, table in S.iter_tables(path, batch_rows):
        s, r = validator.validate(source, table, offset)
        skus += s
        rejected += r
    return skus, rejected


def _write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _bad_utf8(values: list[bytes], type_: pa.DataType = pa.string()) -> pa.Array:
    """A string column holding bytes that are not UTF-8 (viewed, not validated: as a buggy writer leaves them)."""
    binary = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary(), pa.string_view(): pa.binary_view()}
    return pa.array(values, binary[type_]).view(type_)


# --- item 9: pandas' float64 integer columns -------------------------------------------------------------------


def test_readme_pandas_example_runs(cfg, tmp_path, loaded_worker):
    path = Path(cfg.paths.skus) / f"{DATE}.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame(  # docs/inputs.md's example verbatim: `variants` is missing in the first row, so pandas writes float64
        [
            {"sku_id": "SKU-1001", "category": "shoes", "brand": "Peak", "attrs": '{"color": "white"}'},
            {
                "sku_id": "SKU-1002",
                "category": "promo",
                "attrs": '{"event": "Double 11 sale", "product": "sneakers"}',
                "variants": 2,
            },
        ]
    ).to_parquet(path)
    assert pq.read_schema(path).field("variants").type == pa.float64()
    s = run(with_run(cfg, executor="local"), DATE, worker=loaded_worker)
    m = read_manifests(s.output)
    rows = m["approved"] + m["review"]
    assert sorted((r["sku_id"], r["variant"]) for r in rows) == [("SKU-1001", 0), ("SKU-1002", 0), ("SKU-1002", 1)]
    assert s.counts["rejected_rows"] == 0


@pytest.mark.parametrize(
    "type_, values, expected",
    [
        (pa.float64(), [2.0, None, 3.0], [2, 1, 3]),
        (pa.float32(), [1.0, 4.0, None], [1, 4, 1]),
        (pa.decimal128(4, 1), [Decimal("2.0"), None, Decimal("8.0")], [2, 1, 8]),
        (pa.int8(), [2, None, 1], [2, 1, 1]),
    ],
)
def test_whole_number_variants_of_any_numeric_type(tmp_path, type_, values, expected):
    n = len(values)
    table = pa.table(
        {
            "sku_id": [f"V{i}" for i in range(n)],
            "category": ["toys"] * n,
            "product": ["car"] * n,
            "variants": pa.array(values, type_),
        }
    )
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.variants for s in skus] == expected and not rejected


def test_fractional_or_nan_variants_reject_only_their_row(tmp_path):
    table = pa.table(
        {
            "sku_id": ["A", "B", "C", "D"],
            "category": ["toys"] * 4,
            "product": ["car"] * 4,
            "variants": pa.array([2.5, float("nan"), float("inf"), 1.0]),
        }
    )
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["D"]
    assert [(r.sku_id, r.reason) for r in rejected] == [(k, S.INVALID_VARIANTS) for k in "ABC"]
    assert "whole number" in rejected[0].detail


def test_a_string_variants_column_is_still_a_file_error(tmp_path):
    table = pa.table({"sku_id": ["A"], "category": ["toys"], "variants": ["2"]})
    with pytest.raises(InputError, match="column 'variants' must be an integer"):
        S.read_tables(_write(tmp_path / "d.parquet", table))


# --- item 10: dictionary, large_string, string_view -----------------------------------------------------------


def _plain_rows() -> list[dict]:
    return [
        {"sku_id": "K1", "category": "toys", "attrs": json.dumps({"product": "car"}), "color": "red"},
        {"sku_id": "K2", "category": "toys", "attrs": json.dumps({"product": "bear"}), "color": "red"},
        {"sku_id": "K3", "category": "shoes", "attrs": json.dumps({"brand": "Peak"}), "color": "blue"},
    ]


def _encoded(kind: str, path: Path) -> Path:
    """The same three rows with every string column encoded the way `kind` writes it."""
    if kind == "pandas category":
        df = pd.DataFrame(_plain_rows()).astype("category")
        df.to_parquet(path)
        return path
    table = pa.Table.from_pylist(_plain_rows())
    if kind == "arrow dictionary":
        cols = [c.dictionary_encode() for c in table.columns]
    else:
        cols = [c.cast(pa.large_string() if kind == "large_string" else pa.string_view()) for c in table.columns]
    return _write(path, pa.table(dict(zip(table.column_names, cols))))


@pytest.mark.parametrize("kind", ["pandas category", "arrow dictionary", "large_string", "string_view"])
def test_string_encodings_work_like_plain_strings(tmp_path, kind):
    path = _encoded(kind, tmp_path / "d.parquet")
    assert {str(f.type) for f in pq.read_schema(path)} != {"string"}  # the encoding survived the round trip
    expected = _validate(_write(tmp_path / "plain.parquet", pa.Table.from_pylist(_plain_rows())))
    skus, rejected = _validate(path)
    assert [(s.sku_id, s.category, s.attrs, s.variants) for s in skus] == [
        (s.sku_id, s.category, s.attrs, s.variants) for s in expected[0]
    ]
    assert [(r.sku_id, r.reason) for r in rejected] == [(r.sku_id, r.reason) for r in expected[1]]


def test_dictionary_encoded_map_and_struct_attrs(tmp_path):
    struct = pa.StructArray.from_arrays(
        [pa.array(["car", "bear"]).dictionary_encode(), pa.array(["red", None], pa.large_string())],
        names=["product", "color"],
    )
    mapped = pa.array([[("product", "kite")], [("product", "ball")]], pa.map_(pa.large_string(), pa.string_view()))
    for attrs, products in ((struct, ["car", "bear"]), (mapped, ["kite", "ball"])):
        table = pa.table(
            {"sku_id": ["A", "B"], "category": pa.array(["toys", "toys"]).dictionary_encode(), "attrs": attrs}
        )
        skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
        assert [s.attrs["product"] for s in skus] == products and not rejected


# --- item 11: bytes that are not UTF-8, text that is not encodable --------------------------------------------


@pytest.mark.parametrize("type_", [pa.string(), pa.large_string(), pa.string_view()])
@pytest.mark.parametrize(
    "column, reason",
    [
        ("sku_id", S.INVALID_SKU_ID),
        ("category", S.UNKNOWN_CATEGORY),
        ("attrs", S.INVALID_ATTRS),
        ("color", S.INVALID_ATTRS),
    ],
)
def test_invalid_utf8_rejects_just_that_row(tmp_path, column, reason, type_):
    good = {"sku_id": b"U1", "category": b"toys", "attrs": b'{"product": "car"}', "color": b"red"}
    bad = {**good, "sku_id": b"U2", column: good[column][:-1] + b"\xff\xfe"}
    table = pa.table({k: _bad_utf8([good[k], bad[k]], type_) for k in good})
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["U1"]
    [r] = rejected
    assert (r.source_row, r.reason) == (1, reason) and "UTF-8" in r.detail
    if column == "sku_id":
        assert r.sku_id == "U\ufffd\ufffd"  # a readable stand-in for the manifest, never the raw bytes


def test_invalid_utf8_inside_a_map_attrs_rejects_just_that_row(tmp_path):
    maps = pa.array([[("product", b"car")], [("product", b"c\xff")]], pa.map_(pa.string(), pa.binary()))
    table = pa.table(
        {"sku_id": ["M1", "M2"], "category": ["toys", "toys"], "attrs": maps.view(pa.map_(pa.string(), pa.string()))}
    )
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["M1"] and [(r.sku_id, r.reason) for r in rejected] == [("M2", S.INVALID_ATTRS)]


@pytest.mark.parametrize("attrs", ['{"product": "\\ud800"}', '{"\\udfff": "x", "product": "car"}'])
def test_lone_surrogate_from_json_is_invalid_attrs(tmp_path, attrs):
    table = pa.table(
        {"sku_id": ["J1", "J2"], "category": ["toys"] * 2, "attrs": ['{"product": "\\ud83d\\ude97"}', attrs]}
    )
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.attrs["product"] for s in skus] == ["\U0001f697"]  # a surrogate *pair* is a real character: kept
    assert [(r.sku_id, r.reason) for r in rejected] == [("J2", S.INVALID_ATTRS)]
    assert "surrogate" in rejected[0].detail
    rejected[0].detail.encode("utf-8")  # the detail itself must be writable to rejected.parquet


def test_validate_and_run_agree_on_a_day_of_real_world_rows(cfg, tmp_path, loaded_worker):
    """One day with every row-level quirk: `run` must finish, and reject exactly the rows `plan` (validate) does."""
    ids = [b"GOOD-1", b"BAD-\xff", b"SUR-1", b"NAN-1", b"DUP-1", b"DUP-1", b"NEL\xc2\x85ID", b"LIST-1", b"DUP-1"]
    attrs = [{"product": "car"}] * len(ids)
    raw = [json.dumps(a) for a in attrs]
    raw[2], raw[3], raw[7] = '{"product": "\\ud800"}', '{"product": NaN}', '{"product": ["car"]}'
    categories = ["toys"] * len(ids)
    categories[4] = "garden"  # rejected first: the valid DUP-1 in row 5 keeps its SKU; row 8 is its duplicate
    table = pa.table(
        {
            "sku_id": _bad_utf8(ids).dictionary_encode(),
            "category": pa.array(categories, pa.large_string()),
            "attrs": pa.array(raw, pa.string_view()),
            "variants": pa.array([1.0, None, 2.0, 1.0, 1.0, None, 1.0, 1.0, 1.0]),
        }
    )
    _write(Path(cfg.paths.skus) / f"{DATE}.parquet", table)
    expected = [
        (1, "invalid_sku_id"),
        (2, "invalid_attrs"),
        (3, "invalid_attrs"),
        (4, "unknown_category"),
        (6, "invalid_sku_id"),
        (7, "invalid_attrs"),
        (8, "duplicate_sku_id"),
    ]
    assert [(r.source_row, r.reason) for r in plan(cfg, DATE).rejected] == expected
    s = run(with_run(cfg, executor="local"), DATE, worker=loaded_worker)
    manifests = read_manifests(s.output)
    assert [(r["source_row"], r["reason"]) for r in manifests["rejected"]] == expected
    assert sorted(r["sku_id"] for r in manifests["approved"] + manifests["review"]) == ["DUP-1", "GOOD-1"]
    assert "row 5" in manifests["rejected"][-1]["detail"]
    assert (Path(s.output) / DATE / "_SUCCESS").is_file()


def test_undecodable_column_name_is_a_file_error(tmp_path):
    path = _write(tmp_path / "d.parquet", pa.table({"sku_id": ["A"], "category": ["toys"], "colQQ": ["red"]}))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"colQQ", b"col\xff\xfe"))
    with pytest.raises(InputError) as info:
        S.read_tables(path)
    assert str(path) in str(info.value) and info.value.exit_code == 2


# --- item 12: a rejected row does not claim its sku_id --------------------------------------------------------


def test_a_rejected_first_row_does_not_claim_the_sku_id(tmp_path):
    rows = [
        {"sku_id": "A", "category": "garden", "product": "car"},  # rejected: unknown category
        {"sku_id": "A", "category": "toys", "product": None},  # rejected: missing product
        {"sku_id": "A", "category": "toys", "product": "car"},  # the first valid row: kept
        {"sku_id": "A", "category": "toys", "product": "bus"},  # a real duplicate of row 2
    ]
    skus, rejected = _validate(_write(tmp_path / "d.parquet", pa.Table.from_pylist(rows)))
    assert [(s.sku_id, s.source_row, s.attrs["product"]) for s in skus] == [("A", 2, "car")]
    assert [(r.source_row, r.reason) for r in rejected] == [
        (0, S.UNKNOWN_CATEGORY),
        (1, S.MISSING_ATTRIBUTE),
        (3, S.DUPLICATE_SKU_ID),
    ]
    assert "row 2 of d.parquet" in rejected[2].detail


def test_duplicates_across_files_of_a_directory_day_name_the_kept_row(tmp_path):
    d = tmp_path / DATE
    _write(d / "part-0.parquet", pa.table({"sku_id": ["A"], "category": ["toys"], "product": [None]}))
    _write(d / "part-1.parquet", pa.table({"sku_id": ["A", "A"], "category": ["toys"] * 2, "product": ["a", "b"]}))
    skus, rejected = _validate(d)
    assert [(Path(s.source_file).name, s.source_row) for s in skus] == [("part-1.parquet", 0)]
    assert [r.reason for r in rejected] == [S.MISSING_ATTRIBUTE, S.DUPLICATE_SKU_ID]
    assert "row 0 of part-1.parquet" in rejected[1].detail


# --- item 13: attribute rendering ----------------------------------------------------------------------------


def test_typed_attribute_columns_render_as_plain_text(tmp_path):
    table = pa.table(
        {
            "sku_id": ["T1"],
            "category": ["toys"],
            "product": ["car"],
            "price": pa.array([Decimal("1.50")], pa.decimal128(6, 2)),
            "launch": pa.array([dt.date(2026, 11, 21)], pa.date32()),
            "at": pa.array([dt.datetime(2026, 11, 21, 10, 30)], pa.timestamp("us")),
            "opens": pa.array([dt.time(9, 15)], pa.time64("us")),
            "weight": pa.array([1.1], pa.float32()),
            "size": pa.array([42.0]),  # pandas' integer column with missing values elsewhere
            "ratio": pa.array([0.25]),
            "big": pa.array([2**40], pa.int64()),
            "new": pa.array([True]),
            "age": pa.array([Decimal("3")], pa.decimal128(3, 0)),
        }
    )
    [sku], rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert not rejected
    assert {k: v for k, v in sku.attrs.items() if k != "product"} == {
        "price": "1.50",
        "launch": "2026-11-21",
        "at": "2026-11-21 10:30:00",
        "opens": "09:15:00",
        "weight": "1.1",
        "size": "42",
        "ratio": "0.25",
        "big": "1099511627776",
        "new": "true",
        "age": "3",
    }
    prompt, _ = TEMPLATES["toys"].render(sku.attrs)
    assert "for ages 3," in prompt and '"' not in prompt


def test_pandas_typed_columns_render_as_plain_text(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame(
        {
            "sku_id": ["P1", "P2"],
            "category": ["toys", "toys"],
            "product": ["car", "bus"],
            "age": [3, None],  # float64 with a null
            "launch": pd.to_datetime(["2026-11-21 08:00", "2026-11-22 00:00"]),
            "price": [Decimal("9.90"), Decimal("10.00")],
        }
    ).to_parquet(path)
    skus, rejected = _validate(path)
    assert not rejected
    assert [(s.attrs.get("age"), s.attrs["launch"], s.attrs["price"]) for s in skus] == [
        ("3", "2026-11-21 08:00:00", "9.90"),
        (None, "2026-11-22 00:00:00", "10.00"),
    ]
    assert "for ages 3+" in TEMPLATES["toys"].render(skus[1].attrs)[0]  # null: the template's default


@pytest.mark.parametrize(
    "attrs, what",
    [
        ('{"product": NaN}', "NaN"),
        ('{"product": Infinity}', "infinite"),
        ('{"product": "car", "color": -Infinity}', "infinite"),
        ('{"product": ["car", "bus"]}', "a list"),
        ('{"product": "car", "color": {"r": 255}}', "a nested object"),
        ('{"product": "car", "color": []}', "a list"),
    ],
)
def test_non_finite_and_nested_json_attributes_are_invalid_attrs(tmp_path, attrs, what):
    table = pa.table({"sku_id": ["N1"], "category": ["toys"], "attrs": [attrs]})
    skus, [r] = _validate(_write(tmp_path / "d.parquet", table))
    assert not skus and r.reason == S.INVALID_ATTRS and what in r.detail


@pytest.mark.parametrize(
    "column",
    [
        pa.array([float("nan")]),
        pa.array([float("inf")], pa.float32()),
        pa.array([["car"]], pa.list_(pa.string())),
        pa.array([[("a", "b")]], pa.map_(pa.string(), pa.string())),
        pa.array([{"r": 1}]),
        pa.array([b"\xff"], pa.binary()),
    ],
    ids=["nan", "inf32", "list", "map", "struct", "binary"],
)
def test_non_scalar_or_non_finite_attribute_columns_are_invalid_attrs(tmp_path, column):
    """NaN used to satisfy a required attribute and render as `nan`; lists rendered as JSON."""
    table = pa.table(
        {
            "sku_id": ["C1", "C2"],
            "category": ["toys"] * 2,
            "product": ["car", "car"],
            "color": pa.concat_arrays([column, pa.nulls(1, column.type)]),  # C2: null, the template default
        }
    )
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["C2"] and "color" not in skus[0].attrs
    assert [(r.sku_id, r.reason) for r in rejected] == [("C1", S.INVALID_ATTRS)] and "'color'" in rejected[0].detail


def test_nan_no_longer_satisfies_a_required_attribute(tmp_path):
    table = pa.table({"sku_id": ["R1"], "category": ["toys"], "product": pa.array([float("nan")])})
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert not skus and [r.reason for r in rejected] == [S.INVALID_ATTRS]


def test_struct_attrs_with_a_nested_field_is_invalid_attrs(tmp_path):
    attrs = pa.array([{"product": "car", "dims": {"w": 1}}, {"product": "bus", "dims": None}])
    table = pa.table({"sku_id": ["S1", "S2"], "category": ["toys"] * 2, "attrs": attrs})
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["S2"] and [(r.sku_id, r.reason) for r in rejected] == [("S1", S.INVALID_ATTRS)]


# --- item 14: Unicode line and paragraph separators ------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\x85", "\u2028", "\u2029", "\x9b"])
def test_unicode_line_breaks_in_sku_id_are_invalid(tmp_path, sep):
    table = pa.table({"sku_id": ["L1", f"L{sep}2"], "category": ["toys"] * 2, "product": ["car", "car"]})
    skus, rejected = _validate(_write(tmp_path / "d.parquet", table))
    assert [s.sku_id for s in skus] == ["L1"] and [r.reason for r in rejected] == [S.INVALID_SKU_ID]


def test_unicode_line_breaks_in_values_become_spaces_in_the_prompt():
    prompt, _ = TEMPLATES["toys"].render({"product": "toy\x85car\u2028with\u2029big\x9bwheels"})
    assert "toy car with big wheels" in prompt and not any(c in prompt for c in "\x85\u2028\u2029\x9b")


# --- item 15: directory conventions, dates, output root -------------------------------------------------------


def test_directory_day_skips_dot_and_underscore_files(tmp_path):
    d = tmp_path / DATE
    _write(d / "part-00000-abc.snappy.parquet", pa.table({"sku_id": ["A"], "category": ["toys"], "product": ["car"]}))
    (d / "_SUCCESS").write_bytes(b"")
    (d / "_common_metadata.parquet").write_bytes(b"not parquet")
    (d / ".part-00001-abc.snappy.parquet").write_bytes(b"half-written")
    (d / "_temporary").mkdir()
    _write(d / "_temporary" / "0.parquet", pa.table({"sku_id": ["B"], "category": ["toys"], "product": ["x"]}))
    tables = S.read_tables(d)
    assert [Path(f).name for f, _ in tables] == ["part-00000-abc.snappy.parquet"]


def test_directory_with_only_skipped_files_is_a_file_error(tmp_path):
    d = tmp_path / DATE
    _write(d / "_part.parquet", pa.table({"sku_id": ["A"], "category": ["toys"]}))
    with pytest.raises(InputError, match="no .parquet files") as info:
        S.read_tables(d)
    assert str(d) in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["2026-W47-6", "2026-W476", "20261121", "2026-325", "2026-11-21T00:00", "2026-11-21\n", "٢٠٢٦-١١-٢١", "2026-02-30"],
)
def test_only_calendar_dates_are_accepted(value):
    with pytest.raises(InputError, match="--date must be .*YYYY-MM-DD") as info:
        parse_date(value)
    assert info.value.exit_code == 2


def test_a_calendar_date_is_accepted():
    assert parse_date("2026-11-21") == "2026-11-21"


def test_cli_refuses_an_iso_week_date(cfg, tmp_path):
    config = demo_config_file(tmp_path / "c.toml", cfg)
    res = cli("validate", "--config", str(config), "--date", "2026-W47-6", "--skus", str(tmp_path))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: --date must be a calendar date YYYY-MM-DD, got '2026-W47-6'"
    ]


def _day(cfg) -> Path:
    return _write(
        Path(cfg.paths.skus) / f"{DATE}.parquet", pa.table({"sku_id": ["A"], "category": ["toys"], "product": ["car"]})
    )


@pytest.mark.parametrize("where", ["root", "parent"])
def test_output_root_that_is_a_file_is_bad_input(cfg, tmp_path, where):
    _day(cfg)
    blocker = tmp_path / "out-file"
    blocker.write_text("keep me")
    output = blocker if where == "root" else blocker / "nested"
    bad = cfg.__class__(
        **{**cfg.__dict__, "paths": cfg.paths.__class__(cfg.paths.skus, str(output), cfg.paths.templates)}
    )
    with pytest.raises(InputError) as info:
        run(with_run(bad, executor="local"), DATE)
    message = str(info.value)
    assert info.value.exit_code == 2 and str(output) in message and "\n" not in message and "--output" in message
    assert blocker.read_text() == "keep me"


def test_cli_output_that_is_a_file_exits_2(cfg, tmp_path):
    day = _day(cfg)
    blocker = tmp_path / "out-file"
    blocker.write_text("keep me")
    config = demo_config_file(tmp_path / "c.toml", cfg)
    res = cli(
        "run",
        "--config",
        str(config),
        "--date",
        DATE,
        "--skus",
        str(day),
        "--output",
        str(blocker),
        "--executor",
        "local",
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "not a directory" in res.stderr
    assert blocker.read_text() == "keep me"


def test_demo_skus_refuses_a_date_that_is_not_a_calendar_date(tmp_path):
    res = cli("demo-skus", "--date", "../../escape", "--skus-dir", str(tmp_path / "skus"))
    assert res.returncode == 2 and "--date must be" in res.stderr
    assert not any(tmp_path.rglob("*"))
