"""Rolling resume parts (factory/job/parts.py): one part per N images or T seconds, written whatever ends a run."""

import dataclasses
import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import ConfigError
from factory.generation.worker import Worker
from factory.io.layout import parts_dir, success_path
from factory.io.records import PART_SCHEMA, ImageRecord
from factory.io.storage import open_store
from factory.job import parts
from factory.job.night_plan import local_worker
from factory.job.run import run
from factory.modes import NULL_PIPELINE
from tests.conftest import DATE, sample_rows, with_run
from tests.job.test_reliability import assert_invariant


def _rows(*skus: str, run_id: str = "r"):
    day = dt.date.fromisoformat(DATE)
    return parts.records_table([ImageRecord(run_date=day, run_id=run_id, sku_id=s, category="toys") for s in skus])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _part_sizes(out: Path) -> list[int]:
    return [pq.read_metadata(f).num_rows for f in sorted((out / parts_dir(DATE)).glob("*.parquet"))]


def test_a_part_per_n_images_or_t_seconds_whichever_first(tmp_path):
    store, clock = open_store(str(tmp_path)), Clock()
    with parts.PartRoller(store, DATE, "r1", max_images=3, max_seconds=60, clock=clock) as roller:
        for s in ("a", "b", "c", "d"):  # the third row fills the window
            roller.add(_rows(s))
        assert _part_sizes(tmp_path) == [3]
        clock.now = 59.0
        roller.add(_rows("e"))  # 59 s after "d" opened the window: held
        clock.now = 121.0
        roller.add(_rows("f", "g"))  # more than 60 s after: written, whatever the count
        assert _part_sizes(tmp_path) == [3, 4]
        roller.add(_rows("h"))
    assert _part_sizes(tmp_path) == [3, 4, 1]  # the rest on leaving the block
    assert roller.table().column("sku_id").to_pylist() == list("abcdefgh")
    assert parts.load_parts(store, DATE).num_rows == 8


def test_what_finished_is_written_when_the_block_raises(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with parts.PartRoller(store, DATE, "r1", max_images=100, max_seconds=3600) as roller:
            roller.add(_rows("a", "b"))
            raise KeyboardInterrupt
    assert _part_sizes(tmp_path) == [2]


def test_later_parts_win_on_load(tmp_path):
    store = open_store(str(tmp_path))
    parts.write_part(store, DATE, "20260101T000000Z-x-p00000", _rows("a", "b"))
    parts.write_part(store, DATE, "20260102T000000Z-y-p00000", _rows("b", run_id="new"))
    loaded = parts.load_parts(store, DATE)
    assert dict(zip(loaded["sku_id"].to_pylist(), loaded["run_id"].to_pylist())) == {"a": "r", "b": "new"}


def test_a_part_from_before_placements_still_counts(tmp_path):
    store = open_store(str(tmp_path))
    parts.write_part(store, DATE, "20260101T000000Z-x-p00000", _rows("a").drop_columns(["placement"]))
    loaded = parts.load_parts(store, DATE)
    assert loaded["sku_id"].to_pylist() == ["a"] and loaded["placement"].to_pylist() == [""]
    assert loaded.schema.equals(PART_SCHEMA, check_metadata=False)


def _null(cfg, **run_keys):
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE))
    return with_run(cfg, executor="local", batch_size=1, **run_keys)


def test_a_night_writes_one_part_per_n_images(cfg, day_file):
    s = run(_null(cfg, part_images=4), DATE)
    assert s.counts["images_generated"] == 9 and s.counts["batches"] == 9
    assert _part_sizes(Path(s.output)) == [4, 4, 1]


class StopsAfterThreeBatches(Worker):
    """A real (null-pipeline) worker interrupted on its fourth batch, like Ctrl-C in the middle of a night."""

    done = 0

    def process(self, batch):
        if self.done == 3:
            raise KeyboardInterrupt
        self.done += 1
        return super().process(batch)


def test_an_interrupted_night_keeps_what_finished_and_the_rerun_resumes(cfg, day_file):
    cfg = _null(cfg, part_images=100, part_seconds=3600)
    out = Path(cfg.paths.output)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, DATE, worker=local_worker(cfg, str(out), cls=StopsAfterThreeBatches))
    assert _part_sizes(out) == [3] and not open_store(str(out)).exists(success_path(DATE))
    again = run(cfg, DATE)  # the lock was released; the three images are kept
    assert again.counts["images_resumed"] == 3 and again.counts["images_generated"] == 6
    assert_invariant(out, sample_rows())


def test_part_window_is_validated(cfg):
    for key, value, words in (("part_images", 0, "at least 1"), ("part_seconds", 0.0, "greater than 0")):
        with pytest.raises(ConfigError, match=f"run.{key} must be {words}"):
            with_run(cfg, **{key: value}).validate()
