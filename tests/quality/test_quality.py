"""The quality gate inside real runs: reasons, the inpaint repair path, determinism, calibration."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.config import load_config
from factory.errors import ConfigError, TemplateError
from factory.job.run import run
from factory.tools.ops.calibrate import calibrate
from tests.conftest import DATE, REPO, SAMPLE_SCHEMA, make_cfg, read_manifests, sample_rows, with_run, write_skus


def quality(cfg, **kw):
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, **kw))


def output(cfg, name):
    return dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(Path(cfg.paths.output) / name)))


def rows(summary):
    m = read_manifests(summary.output)
    return {(r["sku_id"], r["variant"]): r for r in m["approved"] + m["review"]}, m


def test_repairable_failure_is_inpainted_only_inside_the_mask(cfg, day_file):
    # Tiny-model images have a Laplacian variance of ~1500-2000: a blur threshold of 1e6 makes every image
    # "blurry" (repairable); nothing else fails.
    cfg = with_run(quality(cfg, clip_threshold=-1.0, blur_laplacian_var=1e6), executor="local", batch_size=4)
    original = run(output(dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off")), "plain"), DATE)
    repaired = run(
        output(dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, max_attempts=2)), "fix"), DATE
    )
    assert repaired.timings["repair_s"] > 10 * original.timings["repair_s"]
    by_key, m = rows(repaired)
    plain, _ = rows(original)
    changed = 0
    for key, r in by_key.items():
        assert r["initial_reasons"] == ["blurry"] and 1 <= r["attempts"] <= 2
        a = np.asarray(Image.open(Path(original.output) / plain[key]["image_path"])).astype(int)
        b = np.asarray(Image.open(Path(repaired.output) / r["image_path"])).astype(int)
        if not r["repaired"]:
            assert r["repair_box"] is None and np.array_equal(a, b)  # the original was kept
            continue
        changed += 1
        x0, y0, x1, y1 = r["repair_box"]
        outside = np.ones(a.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(a[outside], b[outside])  # byte-identical outside the feathered mask
        assert not np.array_equal(a[~outside], b[~outside])
    assert changed > 0
    # still failing after the attempts -> review, with all reasons and the attempt count
    assert all(
        r["reason"] == "blurry" and r["attempts"] == 2 for r in m["review"] if r["reason"] != "sibling_in_review"
    )
    assert m["review"], "a threshold no image can meet leaves failures for review"


def test_unrepairable_failures_go_to_review_with_all_reasons(cfg, day_file):
    cfg = with_run(quality(cfg, clip_threshold=1.0, saturation_mean=0.0), executor="local")
    by_key, m = rows(run(cfg, DATE))
    assert not m["approved"]
    for r in m["review"]:
        assert r["reasons"] == ["oversaturated", "low_clip_score"] and r["attempts"] == 0 and not r["repaired"]
        assert r["reason"] == "oversaturated,low_clip_score"
        assert {"iqa_mean", "unsafe_score", "laplacian_var", "clip_score_100"} <= set(r)
        assert r["iqa"] and all(0.0 <= v <= 1.0 for _, v in r["iqa"])


def some_blurry(cfg):
    """A blur threshold some tiny-model images miss (repaired, or left for review) and others pass."""
    return with_run(quality(cfg, clip_threshold=-1.0, blur_laplacian_var=1700.0), executor="local")


@pytest.fixture(scope="module")
def some_blurry_night(tiny_models, tmp_path_factory):
    """The sample day under `some_blurry` at batch size 4, shared by the tests that only read it."""
    cfg = with_run(some_blurry(make_cfg(tiny_models, tmp_path_factory.mktemp("some-blurry"))), batch_size=4)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    return run(cfg, DATE)


def test_repaired_images_are_deterministic_across_batch_sizes(cfg, day_file, some_blurry_night):
    a = some_blurry_night
    b = run(output(with_run(some_blurry(cfg), batch_size=1), "b"), DATE)
    ka, _ = rows(a)
    kb, _ = rows(b)
    assert any(r["repaired"] for r in ka.values())
    for key, r in ka.items():
        assert (Path(a.output) / r["image_path"]).read_bytes() == (Path(b.output) / kb[key]["image_path"]).read_bytes()
        assert (r["repaired"], r["repair_box"], r["reasons"]) == (
            kb[key]["repaired"],
            kb[key]["repair_box"],
            kb[key]["reasons"],
        )


def test_outcome_rates_in_run_json(some_blurry_night):
    s = some_blurry_night
    o = s.outcomes["all"]
    assert o["first_pass"] + o["repaired"] + o["review"] == 9
    assert abs(o["first_pass_share"] + o["repaired_share"] + o["review_share"] - 1) < 1e-3
    assert set(s.outcomes) - {"all"} <= {
        "shoes",
        "dress",
        "electronics",
        "furniture",
        "toys",
        "food",
        "bags",
        "jewelry",
    }


def test_per_category_overrides_and_template_quality(cfg, day_file, tmp_path):
    cfg = quality(cfg, clip_threshold=-1.0, categories={"shoes": {"clip_threshold": 1.0}})
    by_key, m = rows(run(with_run(cfg, executor="local"), DATE))
    assert {r["sku_id"] for r in m["review"]} == {"S1"}  # only shoes must reach an impossible alignment
    with pytest.raises(ConfigError, match="unknown key 'clip_treshold'"):
        quality(cfg, categories={"shoes": {"clip_treshold": 1.0}}).validate()
    import shutil

    templates = tmp_path / "t"
    shutil.copytree(REPO / "templates", templates)
    with (templates / "toys.toml").open("a") as fh:
        fh.write("\n[quality]\niqa_treshold = 0.5\n")
    bad = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, templates=str(templates)))
    with pytest.raises(TemplateError, match="toys.toml"):
        run(with_run(bad, executor="local"), DATE)


def test_calibration_snippet_is_accepted_by_run(cfg, day_file, tmp_path):
    report = calibrate(with_run(cfg, executor="local"), DATE, sample=9, percentile=10)
    toml_path, report_path = Path(report.toml_path), Path(report.report_path)
    assert report.samples == 9 and toml_path.is_file() and report_path.is_file()
    assert "| clip_score |" in report_path.read_text()
    config = tmp_path / "calibrated.toml"
    config.write_text((REPO / "data" / "demo.toml").read_text().split("[quality]")[0] + toml_path.read_text())
    loaded = load_config(config)
    assert loaded.quality.clip_threshold == report.thresholds["all"]["clip_threshold"]
    s = run(dataclasses.replace(cfg, quality=loaded.quality, run=dataclasses.replace(cfg.run, executor="local")), DATE)
    assert s.counts["approved_images"] + s.counts["review_images"] == 9
