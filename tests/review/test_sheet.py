"""The review sheet's HTML: every review SKU, thumbnails, repair boxes, filters with counts, escaping, the CLI."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from factory.config import FactoryConfig
from factory.io.storage import open_store
from factory.review.manifests import open_night, read_images
from factory.review.sheet import THUMB_PX, write_sheet
from tests.conftest import DATE, cli
from tests.review.conftest import XSS_ID


class Page(HTMLParser):
    """Elements as (tag, attrs, text-until-next-tag) plus the raw script bodies."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and (cls is None or cls in a.get("class", "").split())]


def review_rows(cfg: FactoryConfig) -> list[dict]:
    return [r.to_row() for r in read_images(open_night(cfg, DATE), "review")]


def sheet_path(cfg: FactoryConfig) -> Path:
    return Path(cfg.paths.output) / DATE / "review" / "sheet.html"


def test_the_run_writes_a_sheet_with_every_review_sku(shared_night):
    text = sheet_path(shared_night).read_text()
    page, rows = Page(text), review_rows(shared_night)
    cards = page.find("article", "sku")
    assert [c["data-sku"] for c in cards] == sorted({r["sku_id"] for r in rows})  # one card per SKU, all of them
    images = page.find("img")
    assert len(images) == sum(1 for r in rows if r["image_path"])
    root = sheet_path(shared_night).parent.parent.parent  # the output root: manifests' image_path is relative to it
    for img, row in zip(images, sorted(rows, key=lambda r: (r["sku_id"], r["variant"]))):
        assert img["src"].startswith("../../") and "/images/" in img["src"]  # relative: opens from disk
        assert (sheet_path(shared_night).parent / img["src"]).resolve() == (root / row["image_path"]).resolve()
    assert "low_clip_score" in text and "blurry" in text  # reasons
    assert all(r["prompt"].split(",")[0].replace("<", "&lt;").replace(">", "&gt;") in text for r in rows)


def test_repair_boxes_are_drawn_in_image_coordinates(shared_night):
    page, rows = Page(sheet_path(shared_night).read_text()), review_rows(shared_night)
    boxed = [r for r in sorted(rows, key=lambda r: (r["sku_id"], r["variant"])) if r["repair_box"]]
    assert boxed, "the night should have repaired review images (bags: blur always fails)"
    svgs, rects = page.find("svg", "box"), page.find("rect")
    assert len(svgs) == len(rects) == len(boxed)
    for svg, rect, r in zip(svgs, rects, boxed):
        assert svg["viewbox"] == f"0 0 {r['width']} {r['height']}"
        x0, y0, x1, y1 = r["repair_box"]
        assert (rect["x"], rect["y"], rect["width"], rect["height"]) == tuple(map(str, (x0, y0, x1 - x0, y1 - y0)))


def test_filters_show_counts_per_category_and_reason(shared_night):
    page = Page(sheet_path(shared_night).read_text())
    chips = {(a["data-filter"], a["data-value"]) for a in page.find("button", "chip")}
    assert chips == {("category", ""), ("category", "bags"), ("category", "shoes"), ("reason", ""),
                     ("reason", "blurry"), ("reason", "low_clip_score")}  # fmt: skip
    text = sheet_path(shared_night).read_text()
    assert re.search(r'data-value="bags">bags <span class="count">2</span>', text)
    assert re.search(r'data-value="low_clip_score">low_clip_score <span class="count">2</span>', text)


def test_hostile_sku_ids_and_prompts_are_inert_text(shared_night):
    text = sheet_path(shared_night).read_text()
    page = Page(text)
    assert XSS_ID in [c["data-sku"] for c in page.find("article", "sku")]  # the exact id survives as data
    assert "<img src=x" not in text and "<b>Peak" not in text and "window.__xss=2</script>" not in text
    assert len(page.find("script")) == 1  # ours only
    # the Content-Security-Policy lets exactly our script run (by hash), nothing injected
    (csp,) = [a["content"] for a in page.find("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_cli_prints_the_path_and_refuses_a_date_without_a_night(night):
    sheet_path(night).unlink()
    done = cli("review", "sheet", "--date", DATE, "--output", night.paths.output)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == sheet_path(night) and sheet_path(night).is_file()
    missing = cli("review", "sheet", "--date", "2026-11-22", "--output", night.paths.output)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "does not exist: run the night" in missing.stderr


def test_on_an_object_store_thumbnails_are_embedded(shared_night, s3_uri):
    """An S3 output: the page (written to the store) carries downscaled data-URI thumbnails, no links."""
    local, remote = open_store(shared_night.paths.output), open_store(s3_uri, shared_night.storage)
    for rel in local.list(DATE) + local.list("manifests"):  # the night's files and its manifest partitions
        remote.put_bytes(rel, local.get_bytes(rel))
    remote.delete(f"{DATE}/review/sheet.html")
    s3 = dataclasses.replace(shared_night, paths=dataclasses.replace(shared_night.paths, output=s3_uri))
    url = write_sheet(open_night(s3, DATE))
    assert url == f"{s3_uri}/{DATE}/review/sheet.html"
    page = Page(remote.get_bytes(f"{DATE}/review/sheet.html").decode())
    srcs = [a["src"] for a in page.find("img")]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert max(im.size) <= THUMB_PX
