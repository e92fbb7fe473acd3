"""Ad placements end to end: demo-config nights (tiny model, local executor) with three placements per SKU.

One image per (SKU, variant, placement), delivered at the placement's exact pixels, with bytes that depend on the
placement only (not on the batch size, nor on which other placements were asked for); a night without placements
unchanged from before placements existed (a golden computed on main); bad placement config is exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from factory.config import FactoryConfig, load_config
from factory.inputs.bucketing import make_batches
from factory.io import provenance
from factory.io.layout import MANIFEST_KINDS, partition_path, read_manifest, success_path
from factory.io.storage import open_store
from factory.job.night_plan import batch_buckets, plan
from factory.job.run import run
from tests.conftest import DATE, REPO, SAMPLE_SCHEMA, cli, demo_config_file, make_cfg, sample_rows, with_run, write_skus

THREE = ("feed", "story", "link")
DEMO_SIZES = {"feed": (270, 270), "story": (270, 480), "link": (300, 157)}  # data/demo.toml [placements.sizes]
# The no-placement demo night of `sample_rows()` (batch size 4): the PNGs (path + bytes) and the manifests without
# run_id / source_file (a tmp path) / placement. Computed before placements existed and recomputed (`digest`) only
# when a deliberate change moved bytes or scores (last: CPU weights in their own memory moved pixels; the gate on
# the device tensor, quality.preprocess = "torch", moved scores).
GOLDEN = {
    "images": "f163be258327e0b60b10f29146433a6926b23423288dbf40750fdf1fb59a085b",
    "approved": "7e34cc1500dd560928024f25b8e4a4c8a2d99a18fd4ab04ed7c42fcc88dfc411",
    "review": "94ee2393f82154d71fd17f09bce5d0a8728af86ac1cdf75e9f123472e73ab0de",
    "rejected": "0a2dec06288635701f69bf7b05762d024d2b4e604df1151b86691eb23d80df0d",
}
# CPU kernels differ by instruction set (torch's CPU capability): the same code gives other float results, so other
# pixels, on an AVX-512 machine (measured 2026-12-03 with main's code before and after the streaming finalize).
GOLDEN_AVX512 = {
    "images": "42a07d2ece16cc25df4c7a89bdba976a5bbf4e4e1eb65813560e36912560eab5",
    "approved": "201cfc31bc17ff90c63173aa86b8d5aee7ba49cdb43e03917fab74b59ae6065a",
    "review": "61aa40da6b2ce754e395254e0a5fe7402a220cacd996adfaaaa23f31e43d75ae",
    "rejected": GOLDEN["rejected"],
}


def golden() -> dict[str, str]:
    import torch

    return GOLDEN_AVX512 if torch.backends.cpu.get_cpu_capability() == "AVX512" else GOLDEN


def templates_with(tmp: Path, placements: tuple[str, ...]) -> Path:
    """The shipped templates, each naming `placements` (none: the shipped files as they are)."""
    out = tmp / "templates"
    shutil.copytree(REPO / "templates", out)
    if placements:
        for f in out.glob("*.toml"):
            f.write_text(f"placements = {json.dumps(list(placements))}\n" + f.read_text())
    return out


def demo_cfg(tiny_models, tmp: Path, batch_size: int, placements: tuple[str, ...] = THREE) -> FactoryConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = load_config(demo_config_file(tmp / "demo.toml", make_cfg(tiny_models, tmp)))
    paths = dataclasses.replace(
        cfg.paths, skus=str(tmp / "skus"), output=str(tmp / "out"), templates=str(templates_with(tmp, placements))
    )
    return with_run(dataclasses.replace(cfg, paths=paths), executor="local", workers=1, batch_size=batch_size)


def night(tiny_models, tmp: Path, batch_size: int, placements: tuple[str, ...] = THREE, rows=None) -> FactoryConfig:
    cfg = demo_cfg(tiny_models, tmp, batch_size, placements)
    write_skus(tmp / "skus" / f"{DATE}.parquet", rows or sample_rows(), None if rows else SAMPLE_SCHEMA)
    run(cfg, DATE)
    return cfg


def pngs(cfg: FactoryConfig) -> dict[str, bytes]:
    images = Path(cfg.paths.output) / DATE / "images"
    return {str(p.relative_to(images)): p.read_bytes() for p in sorted(images.rglob("*.png"))}


def rows(cfg: FactoryConfig, kind: str) -> list[dict]:
    return read_manifest(open_store(cfg.paths.output), kind, DATE).to_pylist()


@pytest.fixture(scope="module")
def three(tiny_models, tmp_path_factory) -> FactoryConfig:
    """The reference: three placements from the templates, batch size 4."""
    return night(tiny_models, tmp_path_factory.mktemp("three"), 4)


def test_three_placements_one_row_and_one_png_each_at_exact_pixels(three):
    images = rows(three, "approved") + rows(three, "review")
    assert {r["placement"] for r in images} == set(THREE)
    valid = {"S1", "S2", "S3", "S4", "S5", "S6", "S7", "../../etc/passwd"}  # S1 has 2 variants
    expected = {(s, v, p) for s in valid for v in range(2 if s == "S1" else 1) for p in THREE}
    assert {(r["sku_id"], r["variant"], r["placement"]) for r in images} == expected
    assert len(images) == len(expected)  # exactly one row per (SKU, variant, placement)
    root = Path(three.paths.output)
    for r in images:
        assert (r["width"], r["height"]) == DEMO_SIZES[r["placement"]]
        assert r["image_path"].endswith(f"-v{r['variant']}-{r['placement']}.png")
        with Image.open(root / r["image_path"]) as im:
            assert im.size == DEMO_SIZES[r["placement"]]
            params = im.text["parameters"]
        assert f"Placement: {r['placement']} {r['width']}x{r['height']} (crop)" in params
        assert f"-v{r['variant']}-{r['placement']}-" in r["produce_id"]
        label = provenance.inspect(root / r["image_path"])
        assert label.ok, label.problems  # the pixel hash covers the delivered pixels
    # placements' generation buckets: the aspect bucket with the complexity rules' steps
    buckets = {(r["placement"], r["bucket"]) for r in images}
    assert {("story", "portrait-s4"), ("link", "landscape-s8"), ("feed", "square-s6")} <= buckets
    assert len({r["cache_key"] for r in images}) == len(images)
    assert len({r["seed"] for r in images}) == len(images)  # each placement its own seed


def test_batches_are_homogeneous_in_generated_size(three):
    p = plan(three, DATE)
    for batch in make_batches(p.tasks, 3, batch_buckets(three), "none"):
        assert {(t.render_width, t.render_height, t.steps) for t in batch.tasks} == {
            (batch.width, batch.height, batch.steps)
        }


def test_same_bytes_at_batch_size_1_and_4(three, tiny_models, tmp_path):
    assert pngs(night(tiny_models, tmp_path, 1)) == pngs(three)


def test_same_bytes_whichever_other_placements_were_asked_for(three, tiny_models, tmp_path):
    # the same templates (a template's bytes are its version, in every cache key), each SKU's cell asking for one
    subset = [{**r, "placements": "story"} for r in sample_rows()]
    only = pngs(night(tiny_models, tmp_path, 4, THREE, subset))
    assert only and all(name.endswith("-story.png") for name in only)
    assert only == {k: v for k, v in pngs(three).items() if k.endswith("-story.png")}  # a subset: same bytes


def test_sku_column_names_placements_and_unknown_ones_are_rejected(tiny_models, tmp_path):
    a = lambda **kw: json.dumps(kw)  # noqa: E731
    day = [
        {"sku_id": "P1", "category": "shoes", "attrs": a(brand="Peak", color="red"), "placements": "link, feed"},
        {"sku_id": "P2", "category": "bags", "attrs": a(brand="Urban", color="tan"), "placements": None},
        {"sku_id": "P3", "category": "toys", "attrs": a(product="blocks"), "placements": "billboard"},
    ]
    cfg = night(tiny_models, tmp_path, 4, ("story",), day)
    images = rows(cfg, "approved") + rows(cfg, "review")
    got = sorted((r["sku_id"], r["placement"]) for r in images)
    assert got == [("P1", "feed"), ("P1", "link"), ("P2", "story")]  # the cell replaces the template's; null keeps it
    [bad] = rows(cfg, "rejected")
    assert (bad["sku_id"], bad["reason"]) == ("P3", "unknown_placement") and "'billboard'" in bad["detail"]


def test_a_rerun_resumes_every_placement(three, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(three.paths.output, out)
    store = open_store(str(out))
    store.delete(success_path(DATE))
    for kind in MANIFEST_KINDS:
        store.delete(partition_path(kind, DATE))
    cfg = dataclasses.replace(three, paths=dataclasses.replace(three.paths, output=str(out)))
    summary = run(cfg, DATE)
    assert summary.counts["images_resumed"] == len(rows(three, "approved") + rows(three, "review"))
    assert summary.counts["images_generated"] == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k != "run_id"} for r in rs]  # noqa: E731
    assert strip(rows(cfg, "review")) == strip(rows(three, "review"))


class _Sheet(HTMLParser):
    """article.sku -> its section.placements -> the data-placement of the figures in it."""

    def __init__(self) -> None:
        super().__init__()
        self.skus: dict[str, list[tuple[str, list[str]]]] = {}
        self.sku = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "article":
            self.sku = a["data-sku"]
            self.skus[self.sku] = []
        elif tag == "section" and "placements" in a.get("class", ""):
            self.skus[self.sku].append((a["data-variant"], []))
        elif tag == "figure":
            self.skus[self.sku][-1][1].append(a["data-placement"])


def test_review_sheet_groups_a_skus_placements_by_variant(three):
    sheet = _Sheet()
    sheet.feed((Path(three.paths.output) / DATE / "review" / "sheet.html").read_text())
    review = rows(three, "review")
    assert set(sheet.skus) == {r["sku_id"] for r in review}
    for sku, groups in sheet.skus.items():
        expected = sorted({r["variant"] for r in review if r["sku_id"] == sku})
        assert [int(v) for v, _ in groups] == expected
        assert all(sorted(names) == sorted(THREE) for _, names in groups)


def digest(cfg: FactoryConfig) -> dict[str, str]:
    h = hashlib.sha256()
    for name, data in pngs(cfg).items():
        h.update(f"{DATE}/images/{name}".encode() + hashlib.sha256(data).digest())
    out = {"images": h.hexdigest()}
    for kind in MANIFEST_KINDS:
        drop = ("run_id", "source_file", "placement")
        kept = [{k: v for k, v in r.items() if k not in drop} for r in rows(cfg, kind)]
        out[kind] = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()
    return out


def test_a_night_without_placements_is_unchanged(tiny_models, tmp_path):
    cfg = night(tiny_models, tmp_path, 4, ())
    assert all(r["placement"] == "" for r in rows(cfg, "approved") + rows(cfg, "review"))  # the column: always there
    assert digest(cfg) == golden()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[placements]\nfit = "zoom"\n', "placements.fit must be one of crop, stretch"),
        ("[placements.sizes]\nFeed = { width = 10, height = 10 }\n", "placement names are 1-32 lowercase"),
        ("[placements.sizes]\nfeed = { width = 0, height = 10 }\n", "width and height must be 1..8192"),
        ('[placements.sizes]\nfeed = { width = "1", height = 10 }\n', "width must be int"),
        ("[placements.sizes]\nfeed = { width = 10 }\n", "needs exactly the keys width, height"),
        ("[planner]\naspect_buckets = []\n", "aspect_buckets must list the model's trained sizes"),
        ('[[planner.aspect_buckets]]\nname = "sq"\nwidth = 100\nheight = 64\n', "positive multiples of 8"),
    ],
)
def test_bad_placement_config_is_one_sentence(tmp_path, toml, message):
    from factory.errors import ConfigError

    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.toml")


def test_unknown_placement_in_a_template_exits_2(tiny_models, tmp_path):
    cfg = demo_cfg(tiny_models, tmp_path, 4, ("feed", "billboard"))
    write_skus(tmp_path / "skus" / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    conf = demo_config_file(tmp_path / "cli.toml", cfg)
    text = conf.read_text().replace(f'templates = "{REPO / "templates"}"', f'templates = "{cfg.paths.templates}"')
    conf.write_text(text)
    res = cli("validate", "--date", DATE, "--config", str(conf), "--skus", str(tmp_path / "skus" / f"{DATE}.parquet"))
    assert res.returncode == 2, res.stderr
    assert "unknown placement 'billboard' (declare it in [placements.sizes]" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_cross_day_cache_reuses_each_placement(tiny_models, tmp_path):
    a = lambda **kw: json.dumps(kw)  # noqa: E731
    day = [
        {"sku_id": "C1", "category": "shoes", "attrs": a(brand="Peak", color="red"), "placements": "feed,story"},
        {"sku_id": "C2", "category": "bags", "attrs": a(brand="Urban", color="tan"), "placements": "link"},
    ]
    cfg = demo_cfg(tiny_models, tmp_path, 4, ())
    cfg = dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, seed_scope="sku"))
    lenient = dict(blur_laplacian_var=0.0, iqa_threshold=0.0, clip_threshold=-1.0, near_duplicate=1.01)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, reference_threshold=1.01, **lenient))
    for date in ("2026-11-20", DATE):
        write_skus(tmp_path / "skus" / f"{date}.parquet", day)
    first = run(cfg, "2026-11-20")
    assert first.counts["images_generated"] == first.counts["approved_images"] == 3  # only approved images are reused
    second = run(cfg, DATE)
    assert second.counts["cache_hits"] == 3 and second.counts["images_generated"] == 0
    got = {(r["sku_id"], r["placement"]): r for r in rows(cfg, "approved")}
    assert set(got) == {("C1", "feed"), ("C1", "story"), ("C2", "link")} and all(r["cached"] for r in got.values())
    out = Path(cfg.paths.output)
    for r in got.values():
        earlier = r["image_path"].replace(DATE, "2026-11-20", 1)
        assert (out / r["image_path"]).read_bytes() == (out / earlier).read_bytes()
