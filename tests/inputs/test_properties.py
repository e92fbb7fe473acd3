"""Property-based (hypothesis): any Arrow table as a day's SKU file, with any column types, is either refused up
front (exit 2, one sentence naming the file, nothing written) or every row ends in exactly one manifest.

The nights run the real path with the null pipeline (no model: solid colours, a passing gate), so a night costs
its orchestration only; example counts are kept small (the whole file runs in well under a minute)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import tempfile
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from factory.cli import app
from factory.errors import EXIT_BAD_INPUT, FactoryError
from factory.job.night_plan import plan
from factory.job.run import run
from factory.modes import NULL_PIPELINE
from tests.conftest import DATE, read_manifests, with_run

CATEGORIES = ["toys", "shoes", "food", "bags", "garden"]  # garden: no template
WORDS = ["S1", "S2", "toys", "car", "", " ", "../x", "鞋", "A\x00B", "{}", '{"product": "car"}', '{"product": ', "[1]"]
NAMES = ["sku_id", "category", "attrs", "variants", "adapters", "product", "color", "brand"]

text = st.one_of(st.sampled_from(WORDS + CATEGORIES), st.text(max_size=12))
# (arrow type, strategy of its Python values); None (null) is always possible
TYPED: list[tuple[pa.DataType, st.SearchStrategy]] = [
    (pa.string(), text),
    (pa.large_string(), text),
    (pa.binary(), st.one_of(st.binary(max_size=6), text.map(lambda s: s.encode()))),
    (pa.int8(), st.integers(-128, 127)),
    (pa.int64(), st.one_of(st.integers(-3, 6), st.integers(-(2**63), 2**63 - 1))),
    (pa.float32(), st.floats(width=32)),
    (pa.float64(), st.one_of(st.floats(), st.sampled_from([1.0, 2.0, 0.5]))),
    (pa.bool_(), st.booleans()),
    (pa.null(), st.none()),
    (pa.list_(pa.string()), st.lists(text, max_size=3)),
    (
        pa.struct([("product", pa.string()), ("color", pa.int32())]),
        st.fixed_dictionaries({"product": st.none() | text, "color": st.none() | st.integers(-5, 5)}),
    ),
    (pa.map_(pa.string(), pa.string()), st.lists(st.tuples(text, st.none() | text), max_size=3)),
    (pa.dictionary(pa.int32(), pa.string()), text),
    (pa.timestamp("ms"), st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1))),
    (pa.date32(), st.dates(dt.date(1970, 1, 1), dt.date(2100, 1, 1))),
    (pa.decimal128(10, 2), st.decimals(-(10**7), 10**7, places=2, allow_nan=False, allow_infinity=False)),
]


def _array(t: pa.DataType, values: list) -> pa.Array:
    if pa.types.is_dictionary(t):
        return pa.array(values, pa.string()).dictionary_encode()
    if pa.types.is_decimal(t):
        values = [None if v is None else Decimal(v) for v in values]
    return pa.array(values, t)


GOOD = {"sku_id": None, "category": "toys", "attrs": '{"product": "car"}', "variants": 1}  # sku_id: S<row>


@st.composite
def columns(draw, name: str, rows: int) -> pa.Array:
    """A column of any type; the columns a night reads are mostly of their usual type, and about half their
    values are good ones, so that many examples plan images and not only refusals or rejections."""
    if name in GOOD and draw(st.integers(0, 7)) != 7:
        usual = pa.int64() if name == "variants" else pa.string()
        good = [f"S{i}" if name == "sku_id" else GOOD[name] for i in range(rows)]
        values = [draw(st.none() | text) if draw(st.integers(0, 2)) == 2 else v for v in good]
        if name == "variants":
            values = [v if isinstance(v, int) else None for v in values] if usual == pa.int64() else values
        return pa.array(values, usual)
    t, values = draw(st.sampled_from(TYPED))
    return _array(t, [draw(st.none() | values) for _ in range(rows)])


@st.composite
def day_tables(draw) -> pa.Table:
    rows = draw(st.integers(0, 5))
    required = [n for n in ("sku_id", "category") if draw(st.integers(0, 19)) != 19]  # mostly present
    required += ["attrs"] if draw(st.integers(0, 3)) != 3 else []
    extra = draw(st.lists(st.sampled_from(NAMES[3:] + ["", "x y"]), max_size=2))
    names = required + extra  # duplicates possible: a hostile file
    return pa.Table.from_arrays([draw(columns(n, rows)) for n in names], names=names)


def _write_day(root: Path, table: pa.Table) -> Path:
    path = root / "skus" / f"{DATE}.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def _null_cfg(cfg, root: Path):
    cfg = with_run(cfg, executor="local", workers=1)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE),
        paths=dataclasses.replace(cfg.paths, skus=str(root / "skus"), output=str(root / "out")),
    )


def _check_refusal(exc: FactoryError, path: Path, root: Path) -> None:
    event("refused: " + str(exc).split(": ", 1)[-1][:50])
    assert exc.exit_code == EXIT_BAD_INPUT, exc
    assert str(path) in str(exc) and "\n" not in str(exc)
    assert not (root / "out").exists()  # refused before any output


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_runs = itertools.count()


@PROPERTY
@given(table=day_tables())
def test_any_table_plans_every_row_once_or_is_refused(cfg, tmp_path, table):
    root = tmp_path / f"e{next(_runs)}"
    path = _write_day(root, table)
    try:
        p = plan(_null_cfg(cfg, root), DATE)
    except FactoryError as exc:
        _check_refusal(exc, path, root)
        return
    planned = {t.source_row for t in p.tasks}
    event(f"planned {len(planned)} of {table.num_rows} rows")
    rejected = [r.source_row for r in p.rejected]
    assert p.input_rows == table.num_rows
    assert len(rejected) == len(set(rejected)) and not planned & set(rejected)
    assert planned | set(rejected) == set(range(table.num_rows))  # every row: planned or rejected, once


@settings(PROPERTY, max_examples=20)
@given(table=day_tables())
def test_any_table_ends_in_exactly_one_manifest_per_row_or_is_refused(cfg, tmp_path, table):
    """A whole night (null pipeline) per example: every input row is in exactly one of approved, review, rejected."""
    root = tmp_path / f"n{next(_runs)}"
    path = _write_day(root, table)
    try:
        summary = run(_null_cfg(cfg, root), DATE)
    except FactoryError as exc:
        _check_refusal(exc, path, root)
        return
    m = read_manifests(summary.output)
    event(f"{len(m['approved']) + len(m['review'])} images, {len(m['rejected'])} rejected")
    image_rows = {r["source_row"] for r in m["approved"] + m["review"]}  # variants share their SKU's row
    rejected = [r["source_row"] for r in m["rejected"]]
    assert len(rejected) == len(set(rejected)) and not image_rows & set(rejected)
    assert image_rows | set(rejected) == set(range(table.num_rows))
    assert not {r["sku_id"] for r in m["approved"]} & {r["sku_id"] for r in m["review"]}
    assert (Path(summary.output) / DATE / "_SUCCESS").is_file()


@settings(PROPERTY, max_examples=25)
@given(table=day_tables())
def test_validate_never_prints_a_traceback(cfg, table):
    """`adfactory validate` in-process: exit 0, or exit 2 with one `error:` line naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _write_day(root, table)
        config = root / "c.toml"
        config.write_text(f'[paths]\ntemplates = "{cfg.paths.templates}"\n')
        result = CliRunner().invoke(app, ["validate", "--date", DATE, "--skus", str(path), "--config", str(config)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, EXIT_BAD_INPUT), result.output
    if result.exit_code == EXIT_BAD_INPUT:
        errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0], result.output


def test_the_strategy_reaches_every_outcome(cfg, tmp_path):
    """The properties prove little if every example is refused, or none is: refusals, rejected rows and planned
    images are all drawn."""
    outcomes: set[str] = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(table=day_tables())
    def classify(table: pa.Table) -> None:
        root = tmp_path / f"c{next(_runs)}"
        _write_day(root, table)
        try:
            p = plan(_null_cfg(cfg, root), DATE)
        except FactoryError:
            outcomes.add("refused")
            return
        outcomes.update(["planned"] * bool(p.tasks) + ["rejected"] * bool(p.rejected))

    classify()
    assert outcomes == {"refused", "planned", "rejected"}
