"""A failing environment is not a poison SKU: real full disks (tmpfs) and a real S3 server stopped mid-night."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import EnvironmentFault
from factory.io.layout import parts_dir
from factory.io.storage import open_store
from factory.job.night_plan import local_worker
from factory.job.parts import load_parts
from factory.job.run import run
from tests.conftest import (
    DATE,
    SAMPLE_SCHEMA,
    cli,
    cli_args,
    cli_env,
    make_cfg,
    small_config_file,
    with_run,
    write_skus,
)
from tests.job.test_reliability import assert_invariant, many_rows
from tests.s3_server import BUCKET, SeaweedS3
from tests.tmpfs import remount, tmpfs

ROWS = 30


def part_rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / parts_dir(DATE)).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def full_disk_night(cfg, tmp_path: Path, caplog, worker=None) -> tuple[Path, EnvironmentFault]:
    """A night of ROWS SKUs whose output is a 150 kB tmpfs (it fills after about a dozen images)."""
    rows = many_rows(ROWS)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
    out = Path(cfg.paths.output)
    with caplog.at_level(logging.INFO), pytest.raises(EnvironmentFault) as caught:
        run(cfg, DATE, worker=worker)
    return out, caught.value


def check_stopped_cleanly(out: Path, fault: EnvironmentFault, caplog) -> None:
    msg = str(fault)
    assert msg.startswith("the output is full: cannot write ") and str(out) in msg and "\n" not in msg
    assert not (out / DATE / "_SUCCESS").exists()
    assert not [r for r in caplog.records if "splitting" in r.getMessage() or "failed:" in r.getMessage()]
    assert not [r for r in part_rows(out) if r["error"]]  # no SKU blamed for the disk
    assert len(list((out / DATE / "images").rglob("*.png"))) > 0  # it did fill mid-night, not before


def test_full_disk_stops_the_night_and_a_rerun_repairs_it(cfg, tmp_path, caplog):
    cfg = with_run(cfg, executor="local", batch_size=4)
    with tmpfs(Path(cfg.paths.output), "150k"):
        worker = local_worker(cfg, cfg.paths.output)
        out, fault = full_disk_night(cfg, tmp_path, caplog, worker)
        check_stopped_cleanly(out, fault, caplog)
        # no bisection: the pipeline computed the images written plus at most the one batch that failed
        written = len(list((out / DATE / "images").rglob("*.png")))
        assert worker.pixels_computed <= (written + 4) * 128 * 128
        computed_before = worker.pixels_computed

        remount(out, "size=64m")  # space freed
        summary = run(cfg, DATE, worker=worker)
        c = summary.counts
        assert c["generation_errors"] == 0 and c["images_adopted"] > 0  # the PNGs written before the disk filled
        assert c["images_generated"] + c["images_resumed"] + c["images_adopted"] == c["images_planned"] == ROWS
        assert worker.pixels_computed > computed_before
        assert_invariant(out, many_rows(ROWS))
        rerun = digests(out)
    clean = with_paths(cfg, tmp_path / "clean")
    assert digests(Path(run(clean, DATE, worker=worker).output)) == rerun  # the same bytes as a clean night


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / DATE).rglob("*.png")}


def with_paths(cfg, output: Path):
    return dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(output)))


@pytest.mark.slow  # a Ray cluster and two nights of actors: make test-all
def test_full_disk_on_ray_drains_stops_and_the_rerun_adopts(cfg, tmp_path, caplog, ray_cluster):
    cfg = with_run(cfg, executor="ray", workers=2, batch_size=4)
    with tmpfs(Path(cfg.paths.output), "150k"):
        out, fault = full_disk_night(cfg, tmp_path, caplog)
        check_stopped_cleanly(out, fault, caplog)
        stops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping the night")]
        assert len(stops) == 1 and "in flight finish first" in stops[0]
        remount(out, "size=64m")  # space freed: the Ray workers adopt what was written
        c = run(cfg, DATE).counts
        assert c["images_adopted"] > 0 and c["generation_errors"] == 0
        assert c["images_generated"] + c["images_resumed"] + c["images_adopted"] == ROWS
        assert_invariant(out, many_rows(ROWS))


@pytest.mark.slow  # ~50 s (its own S3 server, two CLI processes): make test-all; the fault classes stay in make test
def test_s3_server_stopped_mid_night_fails_cleanly_and_a_rerun_repairs_it(tiny_models, tmp_path, monkeypatch):
    """The object store dies mid-night: bounded retries, then exit 1 naming the URI; nothing blamed on a SKU."""
    server = SeaweedS3(tmp_path / "seaweedfs")
    server.start()
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    try:
        rows = many_rows(16)
        skus = write_skus(tmp_path / "skus" / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
        config = small_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path), {"part_images": 1})
        config.write_text(config.read_text() + "[storage]\nretries = 1\nretry_backoff_s = 0.2\n")
        out = f"s3://{BUCKET}/stopped/out"
        args = ["run", "--date", DATE, "--skus", str(skus), "--output", out, "--config", str(config)]
        args += ["--executor", "local", "--batch-size", "2"]
        env = cli_env({"RAY_ADDRESS": ""})
        proc = subprocess.Popen(cli_args(*args), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        store = open_store(out)
        deadline = time.monotonic() + 240
        while len(store.list(parts_dir(DATE))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        server.stop()  # mid-night: some parts and images are in the store
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr[-2000:]
        assert time.monotonic() - t0 < 60  # bounded retries, not a hang
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: the object store cannot be reached: cannot ") and out in last, last
        assert "splitting" not in stderr and "failed:" not in stderr

        server.start(same_ports=True)
        store = open_store(out)
        assert not store.exists(f"{DATE}/_SUCCESS")
        part_rows = load_parts(store, DATE).to_pylist()
        assert part_rows and not [r for r in part_rows if r["error"]]  # no SKU blamed for the store
        done = cli(*args, cwd=tmp_path, env={"RAY_ADDRESS": ""})
        assert done.returncode == 0, done.stderr[-2000:]
        m = read_manifests_from(store)
        assert store.exists(f"{DATE}/_SUCCESS") and not [r for r in m["review"] if r["reason"] == "generation_error"]
        assert sorted(r["sku_id"] for r in m["approved"] + m["review"]) == sorted(r["sku_id"] for r in rows)
    finally:
        server.stop()


def read_manifests_from(store) -> dict[str, list[dict]]:
    from factory.io.layout import MANIFEST_KINDS, read_manifest

    return {kind: read_manifest(store, kind, DATE).to_pylist() for kind in MANIFEST_KINDS}
