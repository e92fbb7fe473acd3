"""The e2e bench's pieces: the held-out day, the config it hands the CLI, and (slow) a whole run of both processes."""

import dataclasses

import pytest

from factory.config import load_config
from factory.tools.benchmarks.bench_e2e import bench_e2e, held_out_rows, write_config
from tests.conftest import REPO


@pytest.mark.parametrize("images", [1, 48, 200])
def test_held_out_day_has_exactly_the_images_asked(images):
    rows = held_out_rows(images)
    assert sum(r["variants"] for r in rows) == images and len({r["sku_id"] for r in rows}) == len(rows)


def test_written_config_loads_back_equal(tmp_path):
    cfg = load_config(REPO / "data" / "demo.toml")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, executor="local", cpus_per_worker=2))
    assert load_config(write_config(cfg, tmp_path / "night.toml")) == cfg


@pytest.mark.slow
def test_e2e_runs_both_processes(cfg):
    r = bench_e2e(cfg, (2,), threads=1)
    (day,) = r["days"]
    assert day["images"] == 2 and day["plain_s"] > 0 and day["factory_s"] > 0
    assert day["factory_startup_s"] > 0 and day["ratio_plain_over_factory"] > 0
