"""`adfactory report` over three real (null-pipeline) nights, one failed, checked in a real headless Chromium
(Debian's, through Playwright): the page renders (a non-blank screenshot, no errors, no requests) and its numbers
equal what DuckDB computes from the manifest tables."""

from __future__ import annotations

import html
import io
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from PIL import Image, ImageStat

from factory.errors import FactoryError
from factory.io.storage import open_store
from factory.job.run import run
from factory.ops.report import write_report
from tests.conftest import DATE, SAMPLE_SCHEMA, cli, make_cfg, sample_rows, with_run, write_skus
from tests.ops.conftest import null_night

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DATES = (DATE, "2026-11-22", "2026-11-23")  # the last one fails (a poison SKU, run.max_error_share = 0)


@pytest.fixture(scope="module")
def nights(tiny_models, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    cfg = null_night(make_cfg(tiny_models, tmp))
    for date in DATES:
        write_skus(Path(cfg.paths.skus) / f"{date}.parquet", sample_rows(), SAMPLE_SCHEMA)
    run(cfg, DATES[0])
    run(with_run(cfg, executor="local", batch_size=1), DATES[1])  # another batch size: another images/s
    with pytest.raises(FactoryError, match="failed to generate"):
        run(with_run(cfg, fault_injection="raise:S2", max_error_share=0.0, batch_size=1), DATES[2])
    return tmp


def manifest_numbers(out: Path) -> dict:
    con = duckdb.connect()
    images = "SELECT run_date::VARCHAR d, category, repaired, 0 AS review FROM read_parquet('{0}/manifests/approved/*/*.parquet', hive_partitioning=true) UNION ALL SELECT run_date::VARCHAR, category, repaired, 1 FROM read_parquet('{0}/manifests/review/*/*.parquet', hive_partitioning=true)"  # noqa: E501
    q = images.format(out)
    per_night = con.sql(f"SELECT d, count(*), avg(review) FROM ({q}) GROUP BY d").fetchall()
    per_cat = con.sql(f"SELECT d, category, 1 - avg(review) FROM ({q}) GROUP BY d, category").fetchall()
    rejected = con.sql(
        f"SELECT run_date::VARCHAR, reason, count(*) FROM read_parquet('{out}/manifests/rejected/*/*.parquet', "
        "hive_partitioning=true) GROUP BY ALL"
    ).fetchall()
    return {"per_night": per_night, "per_cat": per_cat, "rejected": rejected}


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed: run `make chromium` (apt-get install chromium)")
def test_report_in_chromium_shows_the_manifest_numbers(nights, tmp_path):
    from playwright.sync_api import sync_playwright

    out = nights / "out"
    r = cli("report", "--output", str(out), "--nights", "3", "--device-hour-price", "2.5")
    assert r.returncode == 0, r.stderr
    page_path = Path(r.stdout.strip())
    assert page_path == out / "report.html"
    want = manifest_numbers(out)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda req: req.url != page_path.as_uri() and requests.append(req.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")

        def cell(key: str, date: str, category: str = "") -> str:
            cat = f'[data-category="{category}"]' if category else ""
            return page.locator(f'td[data-key="{key}"][data-date="{date}"]{cat}').inner_text().strip()

        assert page.locator("#nights tr").count() == 1 + len(DATES)
        for date, n, review_share in want["per_night"]:
            assert int(cell("images", date)) == n
            assert cell("review_share", date) == f"{100 * review_share:.1f}%"
        for date, category, approve_share in want["per_cat"]:
            assert cell("approve_share", date, category).split("\n")[0] == f"{100 * approve_share:.1f}%"
        for date, reason, n in want["rejected"]:
            assert int(cell(f"rejected:{reason}", date)) == n
        assert [cell("status", d) for d in DATES] == ["ok", "ok", "failed"]
        assert DATES[2] in page.locator("#failed").inner_text()
        assert cell("cost_per_image", DATES[0]) != "—"
        assert page.locator("svg circle.failed").count() == 3  # one per chart
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L")
        browser.close()
    assert not errors and not requests
    assert max(ImageStat.Stat(shot).stddev) > 20  # text, tables and charts, not a blank page


def page_cells(text: str) -> dict[tuple[str, str, str], str]:
    """(key, date, category) -> the cell's text, from the page's data attributes (no browser)."""
    cell = re.compile(r'<td data-key="([^"]+)" data-date="([^"]+)"(?: data-category="([^"]+)")?>([^<]*)')
    return {(k, d, html.unescape(c or "")): html.unescape(v) for k, d, c, v in cell.findall(text)}


def test_report_numbers_equal_the_manifest_tables(nights):
    store = open_store(str(nights / "out"))
    cells = page_cells(Path(write_report(store, nights=2)).read_text())
    want = manifest_numbers(nights / "out")
    assert {d for _, d, _ in cells} == set(DATES[1:])  # the last two nights only
    for date, n, review_share in want["per_night"]:
        if date != DATES[0]:
            assert cells["images", date, ""] == str(n)
            assert cells["review_share", date, ""] == f"{100 * review_share:.1f}%"
    for date, category, approve_share in want["per_cat"]:
        if date != DATES[0]:
            assert cells["approve_share", date, category] == f"{100 * approve_share:.1f}%"
    assert cells["status", DATES[2], ""] == "failed" and cells["cost_per_image", DATES[1], ""] == "—"
