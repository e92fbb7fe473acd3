"""`model.pipeline = "null"`: no model, solid colours from the seed, a passing gate, through the real night path."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.config import load_config
from factory.errors import ConfigError
from factory.job.run import run
from factory.modes import NULL_PIPELINE
from tests.conftest import DATE, REPO, read_manifests, with_run


def _null(cfg):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_null_night_goes_through_the_executor_worker_and_writer(cfg, day_file, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    # a reference set (the demo's) needs CLIP, which the null pipeline has not: it is skipped, not a crash
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, reference_dir=str(REPO / "data/reference")))
    s = run(with_run(_null(cfg), executor=executor, workers=2), DATE)
    approved = read_manifests(s.output, s.date)["approved"]
    assert s.counts["approved_images"] == s.counts["images_planned"] == len(approved) == 9
    assert s.counts["review_images"] == 0 and s.counts["rejected_rows"] == 4
    assert {r["model"] for r in approved} == {"null@null"}
    for r in approved:
        pixels = np.asarray(Image.open(Path(s.output) / r["image_path"]))
        assert pixels.shape == (r["height"], r["width"], 3)
        seed = r["seed"]
        assert (pixels == [seed >> 40 & 255, seed >> 24 & 255, seed & 255]).all()  # one colour, from the seed
        assert r["clip_score"] is None and r["reasons"] == []


def test_null_pipeline_is_a_mode_not_a_path(tmp_path, monkeypatch):
    file = tmp_path / "night.toml"
    file.write_text(f'[model]\npipeline = "{NULL_PIPELINE}"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(file).model.pipeline == NULL_PIPELINE  # not resolved to <dir>/null
    file.write_text(f'[model]\npipeline = "{NULL_PIPELINE}"\nlora = "{REPO}/x.safetensors"\n')
    with pytest.raises(ConfigError, match="model.lora must be empty"):
        load_config(file)
