"""The plan as data (job/plan_table) and batches streamed from it (job/dispatch): the same batches as make_batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from factory.config import Bucket
from factory.inputs.bucketing import Task, make_batches
from factory.io.storage import open_store
from factory.job.dispatch import Batches, Todo
from factory.job.plan_table import Spill, read_chunks, write_keyed

BUCKETS = [Bucket("small", 64, 64, 2), Bucket("medium", 96, 96, 3), Bucket("poster", 192, 128, 4)]
SETS = [(), ("style@0.8",), ("brand@1.0", "style@0.8")]


def _tasks(n: int, seed: int = 0) -> list[Task]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = BUCKETS[rng.choice(3, p=[0.6, 0.3, 0.1])]
        adapters = SETS[rng.choice(3, p=[0.7, 0.2, 0.1])]
        path = f"images/toys/S{i}-v0.png"
        out.append(
            Task(f"S{i}", "toys", 0, f"p{i}", "n", i, b.name, b.width, b.height, b.steps, path, "t", "f", i, adapters)
        )
    return out


def _plan(tmp_path, tasks: list[Task], rows_at_once: int = 37):
    spill = Spill(tmp_path, [b.name for b in BUCKETS])
    for start in range(0, len(tasks), rows_at_once):  # as planning adds them: one input batch at a time
        spill.add(tasks[start : start + rows_at_once])
    store = open_store(str(tmp_path / "out"))
    groups = write_keyed(
        store, "2026-01-01", spill.close(), lambda ts: ([f"c{t.seed}" for t in ts], [f"k{t.seed}" for t in ts])
    )
    return store, groups


@pytest.mark.parametrize("padding", ["none", "size", "count"])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_streamed_batches_are_make_batches_of_the_rows_left(tmp_path, padding, batch_size):
    tasks = _tasks(500)
    store, groups = _plan(tmp_path, tasks)
    assert [g.rows for g in groups] and sum(g.rows for g in groups) == 500
    assert [(g.adapters, g.bucket) for g in groups] == sorted(
        {(g.adapters, g.bucket) for g in groups}, key=lambda k: (k[0], [b.name for b in BUCKETS].index(k[1]))
    )
    todo = Todo.everything(groups)
    rng = np.random.default_rng(1)
    for gi, g in enumerate(groups):  # some rows done already (resume, cache)
        todo.clear(gi, np.flatnonzero(rng.random(g.rows) < 0.3))
    left = {s for _, _, chunk in todo.chunks(store, ["sku_id"], todo_only=True) for s in chunk["sku_id"].to_pylist()}
    # handed-out tasks carry their cache key (stamped into the PNG, so a rerun can adopt it)
    keyed = [dataclasses.replace(t, cache_key=f"c{t.seed}") for t in tasks if t.sku_id in left]
    expected = make_batches(keyed, batch_size, BUCKETS, padding)
    batches = Batches(store, todo, batch_size, BUCKETS, padding)
    got = list(batches)
    assert len(batches) == len(got) == len(expected)
    assert got == expected  # ids, render sizes, steps, adapter sets, tasks and their order
    keyed_as = [batches.keys((t.sku_id, t.variant, t.placement)) for b in got for t in b.tasks]
    assert keyed_as == [(f"c{t.seed}", f"k{t.seed}") for b in got for t in b.tasks]
    assert not batches.inflight  # every handed-out key was asked for once
    promoted = [t for b in got for t in b.tasks if (t.width, t.height) != (b.width, b.height)]
    assert bool(promoted) == (padding == "size")  # this plan has remainders worth promoting


def test_the_keyed_plan_is_under_the_output_root_in_row_groups(tmp_path):
    store, groups = _plan(tmp_path, _tasks(300), rows_at_once=300)
    assert all(g.file.startswith("2026-01-01/_plan/g") for g in groups)
    assert store.exists("2026-01-01/_plan/plan.json")
    first = next(read_chunks(store, groups[0]))
    assert first.column_names[-2:] == ["cache_key", "task_key"] and first.num_rows <= groups[0].rows


def test_an_interrupted_night_resumes_by_joining_its_parts_against_the_plan(cfg, day_file):
    from factory.io.layout import success_path
    from factory.job.night_plan import local_worker
    from factory.job.run import run
    from factory.modes import NULL_PIPELINE
    from tests.conftest import DATE, read_manifests, sample_rows, with_run
    from tests.job.test_reliability import assert_invariant

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE))
    cfg = with_run(cfg, executor="local", batch_size=1, part_images=1, part_seconds=3600)
    worker = local_worker(cfg, cfg.paths.output, DATE)
    calls = {"n": 0}
    process = worker.process

    def stops_on_the_fourth(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a night
        return process(batch)

    worker.process = stops_on_the_fourth
    with pytest.raises(KeyboardInterrupt):
        run(cfg, DATE, worker=worker)
    assert not open_store(cfg.paths.output).exists(success_path(DATE))
    again = run(cfg, DATE)
    c = again.counts  # with two batches in flight the one after the interrupt may have written its PNG: adopted
    assert c["images_resumed"] == 3 and c["images_generated"] + c["images_adopted"] == 6
    assert_invariant(cfg.paths.output, sample_rows())
    fresh = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=cfg.paths.output + "-fresh"))
    run(fresh, DATE)
    drop = {"run_id"}
    for kind in ("approved", "review", "rejected"):
        rows = [
            [{k: v for k, v in r.items() if k not in drop} for r in read_manifests(o)[kind]]
            for o in (cfg.paths.output, fresh.paths.output)
        ]
        assert rows[0] == rows[1], kind
