"""The review sheet in a real headless browser: Debian's chromium driven by Playwright (`make test` installs it).

Clicks approve and reject, decides one SKU by key, checks the filter counts, exports the CSV (a Blob download)
and applies it with `review apply`'s function. Skipped, saying so, only where no Chromium is installed
(`make chromium`).
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import pytest

from factory.review.apply import apply_decisions
from factory.review.manifests import open_night, read_images
from tests.conftest import DATE
from tests.review.conftest import XSS_ID

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def card(page, sku_id: str):
    return page.locator("article.sku").filter(has=page.get_by_role("heading", name=sku_id, exact=True))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed: run `make chromium` (apt-get install chromium)")
def test_decide_filter_export_and_apply_in_chromium(night, tmp_path):
    from playwright.sync_api import sync_playwright

    sheet = Path(night.paths.output) / DATE / "review" / "sheet.html"
    started = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(sheet.as_uri())
        page.wait_for_load_state("load")

        # the hostile sku_id is shown as text and ran nothing; every thumbnail loaded from disk (CSP allows it)
        assert page.evaluate("window.__xss") is None
        assert card(page, XSS_ID).count() == 1
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("svg.box rect").count() >= 1
        assert (text(page, "#n-open"), text(page, "#n-shown")) == ("4", "4")

        # filters and their counts
        page.locator('button.chip[data-filter="category"][data-value="shoes"]').click()
        assert text(page, "#n-shown") == "2" and page.locator("article.sku:visible").count() == 2
        page.locator('button.chip[data-filter="reason"][data-value="blurry"]').click()
        assert text(page, "#n-shown") == "0"
        page.locator('button.chip[data-filter="category"][data-value=""]').click()
        assert text(page, "#n-shown") == "2" and page.locator("article.sku:visible").count() == 2  # the blurry bags
        page.locator('button.chip[data-filter="reason"][data-value=""]').click()
        assert text(page, "#n-shown") == "4"

        # buttons, a note, and keys
        card(page, XSS_ID).locator("button.approve").click()
        card(page, "S-shoe").locator("button.reject").click()
        card(page, "S-shoe").locator("input.note").fill('wrong colour, "navy"')
        card(page, "B-bag").locator("input.note").fill("=1+1")  # a formula: exported so it stays text
        card(page, "B-bag").locator("h2").click()  # select the card, then decide by key
        page.keyboard.press("a")
        assert card(page, "B-bag2").evaluate("el => el.classList.contains('current')")  # `a` moved on
        page.keyboard.press("r")  # rejects B-bag2 and moves on to S-shoe
        page.keyboard.press("k")
        page.keyboard.press("u")  # back on B-bag2, undecided again
        assert card(page, "B-bag").get_attribute("data-decision") == "approve"
        assert card(page, "B-bag2").get_attribute("data-decision") == ""
        assert (text(page, "#n-approve"), text(page, "#n-reject"), text(page, "#n-open")) == ("2", "1", "1")
        assert card(page, XSS_ID).locator(".state").text_content() == "approved"

        with page.expect_download() as download:
            page.locator("#export").click()
        exported = tmp_path / download.value.suggested_filename
        download.value.save_as(exported)
        assert not errors, errors
        browser.close()
    elapsed = time.perf_counter() - started

    rows = list(csv.reader(exported.open(newline="", encoding="utf-8")))
    assert exported.name == f"decisions-{DATE}.csv"
    assert rows[0] == ["sku_id", "decision", "note"]
    assert sorted(rows[1:]) == sorted(
        [["B-bag", "approve", "'=1+1"], ["S-shoe", "reject", 'wrong colour, "navy"'], [XSS_ID, "approve", ""]]
    )
    # the typed function `adfactory review apply` calls (the CLI's own path: tests/review/test_exports.py)
    result = apply_decisions(open_night(night, DATE), exported)
    assert {c.sku_id for c in result.changed} == {"B-bag", "S-shoe", XSS_ID}
    approved = read_images(open_night(night, DATE), "approved")
    assert {XSS_ID, "B-bag"} <= {r.sku_id for r in approved}
    assert {r.review_note for r in approved if r.sku_id == "B-bag"} == {"=1+1"}  # read back as typed
    print(f"browser part: {elapsed:.1f} s")
