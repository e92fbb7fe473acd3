"""Placement planning and fitting: nearest trained aspect, generation buckets, seeds, fit modes, keys."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from factory.config import Bucket, FactoryConfig, PlacementsConfig, PlannerConfig
from factory.errors import TemplateError
from factory.inputs.bucketing import Planner, derive_seed, make_batches, promotions
from factory.inputs.placements import PlacementBucket, fit_image, generation_buckets, nearest_aspect
from factory.inputs.prompts import load_templates
from factory.inputs.skus import Sku
from factory.job.keys import ModelKey, cache_key
from factory.quality.repair import inpaint_size
from tests.conftest import REPO, TEST_ASPECT_BUCKETS, TEST_BUCKETS, TEST_PLACEMENTS

PRODUCTION = FactoryConfig()  # factory.toml's values
TEST_PLANNER = PlannerConfig(buckets=list(TEST_BUCKETS), aspect_buckets=list(TEST_ASPECT_BUCKETS))


def test_production_placements_generate_at_the_nearest_trained_aspect():
    aspects = PRODUCTION.planner.aspect_buckets
    got = {n: nearest_aspect(p.width, p.height, aspects).name for n, p in PRODUCTION.placements.sizes.items()}
    # 4:5 (0.8) is nearer 2:3 (0.667) than 1:1 in log ratio (0.18 vs 0.22); 1.91:1 nearest 3:2
    assert got == {"feed": "square", "portrait": "portrait", "story": "portrait", "link": "landscape"}


def test_generation_buckets_follow_the_config_not_the_day():
    buckets = generation_buckets(PRODUCTION.planner, PRODUCTION.placements)
    assert buckets[:4] == PRODUCTION.planner.buckets  # the configured ones first, unchanged
    extra = buckets[4:]
    assert all(isinstance(b, PlacementBucket) for b in extra)
    assert [b.name for b in extra] == [f"{a}-s{s}" for a in ("square", "portrait", "landscape") for s in (4, 6, 8)]
    assert generation_buckets(PRODUCTION.planner, PlacementsConfig(sizes={})) == PRODUCTION.planner.buckets


def test_fit_crop_cuts_the_centre_and_stretch_keeps_everything():
    grid = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3) % 251
    image = Image.fromarray(grid.astype(np.uint8))
    tall = fit_image(image, 36, 64, "crop")  # 9:16 from a square: no resize needed, the middle 36 columns
    assert tall.size == (36, 64) and np.array_equal(np.asarray(tall), np.asarray(image)[:, 14:50])
    assert fit_image(image, 135, 240, "crop").size == (135, 240)
    assert fit_image(image, 150, 79, "crop").size == (150, 79)
    stretched = fit_image(image, 150, 79, "stretch")
    assert stretched.size == (150, 79)
    assert np.array_equal(np.asarray(stretched), np.asarray(image.resize((150, 79), Image.Resampling.LANCZOS)))
    assert fit_image(image, 64, 64, "crop") is image


def test_seeds_without_a_placement_are_unchanged_and_each_placement_has_its_own():
    digest = hashlib.sha256(b"S1\x002026-11-21\x000").digest()
    assert derive_seed("S1", "2026-11-21", 0) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    seeds = {derive_seed("S1", "2026-11-21", 0, p) for p in ("", "feed", "story", "link")}
    assert len(seeds) == 4


def planner(placements: tuple[str, ...]) -> tuple[Planner, Sku]:
    sizes = PlacementsConfig(sizes=dict(TEST_PLACEMENTS))
    templates = load_templates(REPO / "templates", {b.name for b in TEST_BUCKETS}, (), sizes.sizes)
    sku = Sku("S1", "shoes", {"brand": "Peak", "color": "red"}, 2, "f.parquet", 0, (), placements)
    return Planner(TEST_PLANNER, templates, None, sizes), sku


def test_one_task_per_variant_and_placement_with_the_rules_steps():
    p, sku = planner(("feed", "story"))
    tasks = p.plan_tasks([sku], "2026-11-21")
    assert [(t.variant, t.placement, t.width, t.height) for t in tasks] == [
        (0, "feed", 135, 135),
        (0, "story", 135, 240),
        (1, "feed", 135, 135),
        (1, "story", 135, 240),
    ]
    assert {(t.placement, t.bucket, t.render_width, t.render_height, t.steps) for t in tasks} == {
        ("feed", "square-s2", 64, 64, 2),
        ("story", "portrait-s2", 64, 96, 2),
    }
    assert p.group_counts([sku]) == {((), "square-s2"): 2, ((), "portrait-s2"): 2}
    single = p.plan_tasks([dataclasses.replace(sku, placements=("story",))], "2026-11-21")
    assert [t for t in tasks if t.placement == "story"] == single  # the same tasks whatever else was asked for


def test_promotion_never_moves_placement_images_nor_into_a_same_size_bucket():
    buckets = [Bucket("a", 64, 64, 2), Bucket("b", 64, 64, 4), PlacementBucket("sq-s2", 128, 128, 2)]
    assert promotions({"a": 1, "b": 0, "sq-s2": 3}, 4, buckets) == []
    p, sku = planner(("feed",))
    tasks = p.plan_tasks([sku], "2026-11-21")
    buckets = generation_buckets(TEST_PLANNER, p.placements)
    batches = make_batches(tasks, 4, buckets, "size")  # 2 feed images: padded or left as they are, never moved
    assert [(b.batch_id, b.width, b.height, len(b.tasks)) for b in batches] == [("square-s2-64x64-00000", 64, 64, 2)]


def test_template_placements_are_checked_and_kept_in_config_order(tmp_path):
    (tmp_path / "shoes.toml").write_text(
        'placements = ["story", "feed"]\nprompt = "a {x}"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n'
    )
    t = load_templates(tmp_path, {"small"}, (), ["feed", "portrait", "story"])["shoes"]
    assert t.placements == ("feed", "story")
    with pytest.raises(TemplateError, match=r"unknown placement 'story' \(declare it in \[placements.sizes\]"):
        load_templates(tmp_path, {"small"}, (), ["feed"])
    (tmp_path / "shoes.toml").write_text('placements = "feed"\nprompt = "a"\nnegative_prompt = ""\nbucket = "small"\n')
    with pytest.raises(TemplateError, match="'placements' must be a list of placement names"):
        load_templates(tmp_path, {"small"}, (), ["feed"])


def test_cache_keys_carry_the_placement_and_leave_others_unchanged():
    p, sku = planner(("feed", "story"))
    feed, story = p.plan_tasks([sku], "2026-11-21")[:2]
    mkey = ModelKey("m@1", "m@1|k")
    plain = dataclasses.replace(feed, placement="", fit="", render_width=0, render_height=0)
    keys = {cache_key(t, mkey) for t in (feed, story, plain, dataclasses.replace(feed, fit="stretch"))}
    assert len(keys) == 4
    assert cache_key(dataclasses.replace(feed, render_width=128, render_height=128), mkey) != cache_key(feed, mkey)


def test_inpaint_size_of_a_placement_is_its_aspect_at_the_trained_pixels():
    assert inpaint_size((128, 64), (0, 0)) == (128, 64)  # a bucket's image: its own size
    w, h = inpaint_size((1080, 1350), (512, 768))
    assert w % 8 == h % 8 == 0 and abs(w / h - 0.8) < 0.02 and abs(w * h / (512 * 768) - 1) < 0.05


def test_shipped_templates_name_no_placement():
    # so a night on the shipped templates is the night from before placements (tests/job/test_placements.py)
    templates = load_templates(REPO / "templates", {b.name for b in TEST_BUCKETS}, (), TEST_PLACEMENTS)
    assert templates and all(not t.placements for t in templates.values())
