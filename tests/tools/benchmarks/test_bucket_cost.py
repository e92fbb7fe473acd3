"""data/sdxl.toml (the SDXL production buckets) and `adfactory dev bucket-cost` over it."""

from __future__ import annotations

import math

from factory.config import load_config
from factory.inputs.placements import generation_buckets, nearest_aspect
from factory.job.night_plan import config_templates
from factory.tools.benchmarks.bucket_cost import bucket_costs, format_costs, night_images, scaled
from tests.conftest import REPO

SDXL = REPO / "data" / "sdxl.toml"
# The SDXL report's multi-aspect training resolutions of the ~1 megapixel class (sides multiples of 64).
SDXL_TRAINED = {(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768)}
SDXL_TRAINED |= {(640, 1536), (1536, 640)}


def test_sdxl_config_is_the_1024_class_at_the_training_aspects():
    cfg = load_config(SDXL)
    assert cfg.model.pipeline.endswith("stable-diffusion-xl-base-1.0") and cfg.model.lora.endswith("lcm-lora-sdxl")
    assert 1.0 <= cfg.model.guidance_scale <= 2.0  # the LCM-LoRA card's range
    for b in cfg.planner.buckets:
        assert (b.width, b.height) in SDXL_TRAINED and 4 <= b.steps <= 8, b
    assert {(a.width, a.height) for a in cfg.planner.aspect_buckets} == SDXL_TRAINED
    assert all(abs(math.log(a.width * a.height / 1024**2)) < 0.1 for a in cfg.planner.aspect_buckets)
    nearest = {
        n: nearest_aspect(p.width, p.height, cfg.planner.aspect_buckets) for n, p in cfg.placements.sizes.items()
    }
    assert {n: (a.width, a.height) for n, a in nearest.items()} == {
        "feed": (1024, 1024),
        "portrait": (896, 1152),
        "story": (768, 1344),
        "link": (1344, 768),
    }
    assert set(config_templates(cfg))  # the shipped templates' bucket hints all exist in it


def test_a_night_planned_with_sdxl_buckets():
    cfg = load_config(SDXL)
    plain = night_images(cfg, ())
    assert set(plain) <= {b.name for b in cfg.planner.buckets} and sum(plain.values()) == 53  # the demo day
    every = night_images(cfg, tuple(cfg.placements.sizes))
    assert sum(every.values()) == 4 * 53
    names = {b.name for b in generation_buckets(cfg.planner, cfg.placements)}
    assert set(every) <= names and not set(every) & set(plain)


def test_bucket_cost_reports_every_size_and_the_nights():
    cfg = scaled(load_config(SDXL), 32)  # 32 px class: the same buckets, at a size a test affords
    result = bucket_costs(cfg, "tiny-sdxl", repeats=1)
    names = [r["bucket"] for r in result["buckets"]]
    assert names == [b.name for b in generation_buckets(cfg.planner, cfg.placements)]
    assert result["buckets"][0]["relative"] == 1.0 and all(r["s_per_image"] > 0 for r in result["buckets"])
    nights = result["nights"]
    assert [n["images"] for n in nights.values()] == [53, 212]
    assert all(n["cost"] > 0 for n in nights.values())
    assert "demo day, no placements: 53 images" in format_costs(result)
