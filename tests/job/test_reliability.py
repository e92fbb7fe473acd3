"""Resume, idempotence, faults, the lock, the cross-day cache: the nightly-job guarantees, with real components."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import LockError
from factory.io.layout import MANIFEST_KINDS, partition_path, parts_dir
from factory.job.run import run
from tests.conftest import (
    DATE,
    SAMPLE_SCHEMA,
    cli,
    cli_args,
    cli_env,
    demo_config_file,
    make_cfg,
    read_manifests,
    sample_rows,
    with_run,
    write_skus,
)


def manifests(output: str | Path) -> dict[str, list[dict]]:
    return read_manifests(output, DATE)


def assert_invariant(output: str | Path, input_rows: list[dict]) -> None:
    """approved + review + rejected = unique input SKUs (+ duplicate rows in rejected); each SKU once."""
    m = manifests(output)
    ids = [r["sku_id"] for r in input_rows]
    a = {r["sku_id"] for r in m["approved"]}
    v = {r["sku_id"] for r in m["review"]}
    assert not a & v
    keyed = [(r["sku_id"], r["variant"]) for r in m["approved"] + m["review"]]
    assert len(keyed) == len(set(keyed))
    assert len(a) + len(v) + len(m["rejected"]) == len(ids)  # every input row accounted for exactly once
    assert (Path(output) / DATE / "_SUCCESS").is_file()


def many_rows(n: int) -> list[dict]:
    cats = [("toys", {"product": "car"}), ("food", {"product": "tea"}), ("shoes", {"brand": "A", "color": "red"})]
    return [
        {"sku_id": f"R{i:03d}", "category": cats[i % 3][0], "attrs": json.dumps(cats[i % 3][1]), "variants": 1}
        for i in range(n)
    ]


def test_rerun_of_a_completed_date_is_a_noop_and_force_regenerates(cfg, day_file):
    cfg = with_run(cfg, executor="local")
    first = run(cfg, DATE)
    again = run(cfg, DATE)
    assert again.already_done and again.run_id == first.run_id
    forced = run(cfg, DATE, force=True)
    assert not forced.already_done and forced.run_id != first.run_id
    assert forced.counts["images_generated"] == 9
    assert_invariant(forced.output, sample_rows())


def test_resume_skips_finished_work(cfg, day_file):
    """Simulate a crash after some batches: drop _SUCCESS and the final manifests, keep the parts and images."""
    cfg = with_run(cfg, executor="local", batch_size=2, part_images=1)  # a part per batch
    first = run(cfg, DATE)
    out = Path(first.output)
    date_dir = out / DATE
    kept = sorted((out / parts_dir(DATE)).glob("*.parquet"))[:2]
    for f in (out / parts_dir(DATE)).glob("*.parquet"):
        if f not in kept:
            f.unlink()
    for f in [date_dir / "_SUCCESS", *(out / partition_path(kind, DATE) for kind in MANIFEST_KINDS)]:
        f.unlink()
    kept_rows = [r for f in kept for r in pq.read_table(f).to_pylist()]
    mtimes = {r["image_path"]: (out / r["image_path"]).stat().st_mtime_ns for r in kept_rows}
    second = run(cfg, DATE)
    assert second.counts["images_resumed"] == len(kept_rows) > 0
    # the images of the lost parts are still there: adopted (re-scored), or regenerated where they were repaired
    assert second.counts["images_generated"] + second.counts["images_adopted"] == 9 - len(kept_rows)
    assert second.counts["images_adopted"] > 0
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())  # not regenerated
    assert_invariant(out, sample_rows())


def test_sigkill_during_a_real_ray_run_then_resume(tiny_models, tmp_path):
    """Kill the driver (SIGKILL) mid-run on its own local Ray cluster; the rerun finishes without redoing work."""
    rows = many_rows(24)
    skus = write_skus(tmp_path / "skus" / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
    config = demo_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path), {"part_images": 1})
    out = tmp_path / "out"
    args = cli_args(
        "run",
        "--date",
        DATE,
        "--skus",
        str(skus),
        "--output",
        str(out),
        "--config",
        str(config),
        "--batch-size",
        "2",
        "--workers",
        "2",
    )
    env = cli_env({"RAY_ADDRESS": ""})  # this checkout's `factory`, whatever is installed
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    parts = out / parts_dir(DATE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and the local cluster it started, like a node crash
        except ProcessLookupError:
            pass
    date_dir = out / DATE
    assert not (date_dir / "_SUCCESS").exists()
    assert (date_dir / ".lock").exists()  # left behind by the dead driver: stale
    done_parts = list(parts.glob("*.parquet"))
    done = [r for f in done_parts for r in pq.read_table(f).to_pylist()]
    assert 0 < len(done) < len(rows)
    mtimes = {r["image_path"]: (out / r["image_path"]).stat().st_mtime_ns for r in done}

    res = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads((date_dir / "run.json").read_text())
    assert info["counts"]["images_resumed"] >= len(done)
    c = info["counts"]  # images written after the last resume part are adopted (re-scored), not regenerated
    assert c["images_resumed"] + c["images_adopted"] + c["images_generated"] == len(rows)
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())
    assert_invariant(out, rows)
    assert not (date_dir / ".lock").exists()


def test_worker_killed_mid_batch_is_restarted(cfg, day_file, ray_cluster):
    cfg = with_run(cfg, executor="ray", workers=2, batch_size=4, fault_injection="die_once:S2")
    summary = run(cfg, DATE)
    assert list((Path(summary.output) / DATE).glob(".fault-*")), "the worker process should have died once"
    m = manifests(summary.output)
    assert not [r for r in m["review"] if r["detail"]]  # no generation errors: the batch was retried
    assert "S2" in {r["sku_id"] for r in m["approved"] + m["review"]}
    assert_invariant(summary.output, sample_rows())


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_poison_sku_is_isolated(cfg, day_file, ray_cluster, executor):
    cfg = with_run(cfg, executor=executor, workers=1, batch_size=4, fault_injection="raise:S3")
    summary = run(cfg, DATE)
    m = manifests(summary.output)
    errors = [r for r in m["review"] if r["detail"]]
    assert [(r["sku_id"], r["reason"]) for r in errors] == [("S3", "generation_error")]
    assert "injected fault" in errors[0]["detail"] and errors[0]["image_path"] is None
    good = [r for r in m["approved"] + m["review"] if r["sku_id"] != "S3"]
    assert len(good) == 8 and all((Path(summary.output) / r["image_path"]).is_file() for r in good)
    assert_invariant(summary.output, sample_rows())
    assert summary.counts["generation_errors"] == 1


@pytest.mark.parametrize("padding", ["none", "count"])  # count: the halves must shrink the call, not re-pad it
def test_out_of_memory_halves_the_batch_and_keeps_the_bytes(cfg, day_file, local_night, tmp_path, padding):
    _, ref = local_night  # the same day, local executor, batch size 4, without the fault (read only)
    oom_cfg = with_run(cfg, executor="local", batch_size=4, fault_injection="oom:S1", padding=padding)
    oom_cfg = dataclasses.replace(oom_cfg, paths=dataclasses.replace(oom_cfg.paths, output=str(tmp_path / "oom")))
    oom = run(oom_cfg, DATE)
    ref_imgs = {p.name: p.read_bytes() for p in Path(ref.output).rglob("*.png")}
    oom_imgs = {p.name: p.read_bytes() for p in Path(oom.output).rglob("*.png")}
    assert ref_imgs == oom_imgs and oom.counts["generation_errors"] == 0


def test_lock_refuses_a_second_run_and_takes_over_stale_ones(cfg, day_file):
    cfg = with_run(cfg, executor="local")
    date_dir = Path(cfg.paths.output) / DATE
    date_dir.mkdir(parents=True)
    lock = date_dir / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": "other"}))
    with pytest.raises(LockError, match="another run holds"):
        run(cfg, DATE)
    res = cli("run", "--date", DATE, "--skus", str(day_file), "--output", cfg.paths.output, "--executor", "local")
    assert res.returncode == 3 and "another run holds" in res.stderr and "Traceback" not in res.stderr
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "run_id": "dead"}))
    summary = run(cfg, DATE)
    assert summary.counts["images_generated"] == 9 and not lock.exists()


def test_cross_day_cache_reuses_approved_images(cfg, tmp_path, loaded_worker):
    cfg = with_run(cfg, executor="local")
    cfg = dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, seed_scope="sku"))
    rows = sample_rows()
    skus = Path(cfg.paths.skus)
    write_skus(skus / "2026-11-20.parquet", rows, SAMPLE_SCHEMA)
    write_skus(skus / "2026-11-21.parquet", rows, SAMPLE_SCHEMA)
    day1 = run(cfg, "2026-11-20", worker=loaded_worker)  # the session's loaded worker: five nights, no model load
    day2 = run(cfg, "2026-11-21", worker=loaded_worker)
    out = Path(day1.output)
    m1, m2 = read_manifests(out, "2026-11-20"), read_manifests(out, "2026-11-21")
    assert day2.counts["cache_hits"] == len(m1["approved"]) > 0
    cached = [r for r in m2["approved"] if r["cached"]]
    assert len(cached) == len(m1["approved"]) and all(str(r["cache_source_date"]) == "2026-11-20" for r in cached)
    for r in cached:
        assert r["image_path"].startswith("2026-11-21/images/")  # relative to the output root, today's copy
        a, b = out / r["image_path"].replace("2026-11-21/", "2026-11-20/", 1), out / r["image_path"]
        assert a.read_bytes() == b.read_bytes() and os.stat(a).st_ino == os.stat(b).st_ino  # hardlinked
    assert day2.counts["images_generated"] == len(m1["review"])  # review images are regenerated, not reused
    # a changed template/prompt misses the cache
    changed = [dict(r, attrs=r["attrs"].replace("Peak", "Summit")) for r in rows]
    write_skus(skus / "2026-11-22.parquet", changed, SAMPLE_SCHEMA)
    assert run(cfg, "2026-11-22", worker=loaded_worker).counts["cache_hits"] > 0
    assert "S1" not in {r["sku_id"] for r in read_manifests(out, "2026-11-22")["approved"] if r["cached"]}
    # with the default seed scope (a new seed every day) nothing is reused
    daily = dataclasses.replace(cfg, planner=dataclasses.replace(cfg.planner, seed_scope="date"))
    daily = dataclasses.replace(daily, paths=dataclasses.replace(daily.paths, output=str(tmp_path / "daily")))
    run(daily, "2026-11-20", worker=loaded_worker)
    assert run(daily, "2026-11-21", worker=loaded_worker).counts["cache_hits"] == 0
