"""Nights that fail must not look like successes; a rerun repairs them."""

import dataclasses
import json
from pathlib import Path

import pytest

from factory.errors import ConfigError, FactoryError
from factory.job.night_plan import plan
from factory.job.run import run
from tests.conftest import DATE, with_run


def test_unwritable_images_fail_the_night_and_a_rerun_repairs_it(cfg, day_file):
    cfg = with_run(cfg, executor="local")
    images = Path(cfg.paths.output) / DATE / "images"
    images.parent.mkdir(parents=True)
    images.write_text("in the way")  # no image can be written (works as root too, unlike a chmod)
    with pytest.raises(FactoryError, match="9 of 9 images failed to generate"):
        run(cfg, DATE)
    images.unlink()
    date_dir = images.parent
    assert not (date_dir / "_SUCCESS").exists()
    assert json.loads((date_dir / "run.json").read_text())["status"] == "failed"
    summary = run(cfg, DATE)  # the rerun retries every failed row
    assert summary.counts["images_generated"] == 9 and summary.counts["generation_errors"] == 0
    assert (date_dir / "_SUCCESS").exists()


def test_a_failed_share_over_the_limit_fails_and_errors_of_a_completed_date_are_retried(cfg, day_file):
    # one poison SKU of 9 images: below the default share (0.5) the night succeeds with one generation_error ...
    poisoned = with_run(cfg, executor="local", fault_injection="raise:S3")
    first = run(poisoned, DATE)
    date_dir = Path(first.output) / DATE
    assert first.counts["generation_errors"] == 1 and (date_dir / "_SUCCESS").exists()
    # ... and a plain rerun (no --force) retries just that row
    again = run(with_run(cfg, executor="local"), DATE)
    assert not again.already_done
    assert (again.counts["images_generated"], again.counts["images_resumed"]) == (1, 8)
    assert again.counts["generation_errors"] == 0
    assert run(with_run(cfg, executor="local"), DATE).already_done
    # with max_error_share = 0 one error fails the night
    strict = with_run(cfg, executor="local", fault_injection="raise:S3", max_error_share=0.0)
    with pytest.raises(FactoryError, match="max_error_share"):
        run(strict, DATE, force=True)
    assert not (date_dir / "_SUCCESS").exists()


def test_category_override_without_template_is_refused(cfg):
    typo = dataclasses.replace(
        cfg, quality=dataclasses.replace(cfg.quality, categories={"shoez": {"clip_threshold": 0.1}})
    )
    with pytest.raises(ConfigError, match=r"\[quality.categories.shoez\] names no category template"):
        plan(typo, DATE)
