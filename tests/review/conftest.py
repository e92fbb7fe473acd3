"""One small real night with SKUs in review (hostile ids included), built once per session: read as it is by the
tests that only read it (`shared_night`), copied for each test that changes it (`night`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from factory.config import FactoryConfig
from factory.job.run import run
from tests.conftest import DATE, SAMPLE_SCHEMA, make_cfg, with_run, write_skus

XSS_ID = '<img src=x onerror="window.__xss=1">"\'&</script><script>window.__xss=2</script>'


def review_rows() -> list[dict]:
    a = lambda **kw: json.dumps(kw)  # noqa: E731
    return [
        {"sku_id": XSS_ID, "category": "shoes", "attrs": a(brand="<b>Peak</b>", color="red"), "variants": 2},
        {"sku_id": "S-shoe", "category": "shoes", "attrs": a(brand="Peak", color="blue"), "variants": 1},
        {"sku_id": "B-bag", "category": "bags", "attrs": a(brand="Urban", color="tan"), "variants": 2},
        {"sku_id": "B-bag2", "category": "bags", "attrs": a(brand="Urban", color="black"), "variants": 1},
        {"sku_id": "D-dress", "category": "dress", "attrs": a(style="linen", color="navy"), "variants": 1},
        {"sku_id": "F-food", "category": "food", "attrs": a(product="dumplings"), "variants": 1},
    ]


def review_cfg(tiny_models: dict[str, Path], root: Path) -> FactoryConfig:
    """Shoes fail alignment (never repairable), bags fail blur (repaired, then still in review): both paths."""
    cfg = with_run(make_cfg(tiny_models, root), executor="local", workers=1, batch_size=4)
    categories = {"shoes": {"clip_threshold": 0.99}, "bags": {"blur_laplacian_var": 1e12}}
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, categories=categories))


@pytest.fixture(scope="session")
def built_night(tiny_models, tmp_path_factory) -> tuple[FactoryConfig, Path]:
    root = tmp_path_factory.mktemp("review-night")
    cfg = review_cfg(tiny_models, root)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", review_rows(), SAMPLE_SCHEMA)
    run(cfg, DATE)
    return cfg, root


@pytest.fixture
def shared_night(built_night) -> FactoryConfig:
    """The built night itself, for tests that only read it (never write to it: use `night` for that)."""
    return built_night[0]


@pytest.fixture
def night(built_night, tmp_path) -> FactoryConfig:
    """A private copy of the built night (tests change it) and its config."""
    cfg, root = built_night
    shutil.copytree(root, tmp_path / "night")
    fresh = tmp_path / "night"
    return dataclasses.replace(
        cfg, paths=dataclasses.replace(cfg.paths, skus=str(fresh / "skus"), output=str(fresh / "out"))
    )
