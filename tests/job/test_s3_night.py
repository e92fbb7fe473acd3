"""A night to s3:// on a real S3 server (SeaweedFS): killed mid-run, refused while held, resumed, read back, and
byte-identical to the same night on a local disk."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from factory.config import load_config
from factory.io import layout
from factory.io.storage import open_store
from factory.job.night_plan import local_worker
from factory.job.parts import load_parts
from factory.job.run import run
from tests.conftest import (
    DATE,
    REPO,
    SAMPLE_SCHEMA,
    cli,
    cli_args,
    make_cfg,
    read_manifests,
    small_config_file,
    write_skus,
)
from tests.job.test_reliability import many_rows

ROWS = 10


def digests(store, date: str) -> dict[str, str]:
    return {p: hashlib.sha256(store.get_bytes(p)).hexdigest() for p in store.list(f"{date}/{layout.IMAGES}")}


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("run_id", "source_file")} for r in rows]


def test_night_to_s3_killed_refused_resumed_and_same_bytes_as_local(tiny_models, tmp_path, s3_uri, s3_server):
    rows = many_rows(ROWS)
    local_skus = write_skus(tmp_path / "skus" / f"{DATE}.parquet", rows, SAMPLE_SCHEMA)
    out = s3_uri + "/out"
    store = open_store(out)
    skus_uri = f"{s3_uri}/skus/{DATE}.parquet"  # the input is a URI too
    open_store(s3_uri).put_bytes(f"skus/{DATE}.parquet", local_skus.read_bytes())
    config = small_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path), {"part_images": 1})
    args = ["run", "--date", DATE, "--skus", skus_uri, "--output", out, "--config", str(config)]
    args += ["--executor", "local", "--batch-size", "2"]
    # the AWS_* variables of the server come from the s3_uri fixture; PYTHONPATH: this checkout's `factory`
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}

    # 1. a run in its own process, paused (SIGSTOP) after some parts: it holds the lease, a second run is refused
    proc = subprocess.Popen(
        cli_args(*args),
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while len(store.list(layout.parts_dir(DATE))) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGSTOP)
        second = cli(*args, cwd=tmp_path, env=env, timeout=120)
        assert second.returncode == 3 and "another run holds" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # 2. ... and killed mid-run
        proc.wait(30)
    assert not store.exists(layout.success_path(DATE)) and store.exists(f"{DATE}/.lock")  # a stale lease
    parts_done = load_parts(store, DATE).num_rows
    assert 0 < parts_done < ROWS

    # 3. the rerun takes over the dead run's lease and finishes only what is missing
    cfg = load_config(config, {"run": {"executor": "local", "batch_size": 2}})
    worker = local_worker(cfg, out)  # one model load for both nights below
    s3_cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=out))
    resumed = run(s3_cfg, DATE, skus_path=skus_uri, worker=worker)
    assert resumed.output == out and resumed.counts["images_resumed"] >= parts_done
    c = resumed.counts  # images written after the last resume part are adopted (re-scored), not regenerated
    assert c["images_resumed"] + c["images_adopted"] + c["images_generated"] == ROWS
    assert store.exists(layout.success_path(DATE)) and not store.exists(f"{DATE}/.lock")
    assert_invariant_s3(out, rows)

    # 4. the same night on a local disk: the same PNG bytes under the same paths, the same manifest rows
    local_out = tmp_path / "local"
    local_cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(local_out)))
    run(local_cfg, DATE, skus_path=local_skus, worker=worker)
    assert digests(store, DATE) == digests(open_store(str(local_out)), DATE) and len(digests(store, DATE)) == ROWS
    s3_rows, local_rows = read_manifests(out), read_manifests(local_out)
    for kind in layout.MANIFEST_KINDS:
        assert comparable(s3_rows[kind]) == comparable(local_rows[kind]), kind
    assert not list(tmp_path.rglob("s3:*")) and not list(Path.cwd().glob("s3:*"))  # never a local `s3:` dir


def assert_invariant_s3(out: str, rows: list[dict]) -> None:
    m = read_manifests(out)
    keyed = [(r["sku_id"], r["variant"]) for r in m["approved"] + m["review"]]
    assert sorted(keyed) == sorted((r["sku_id"], 0) for r in rows) and not m["rejected"]
    assert all(r["image_path"].startswith(f"{DATE}/images/") for r in m["approved"] + m["review"])


def test_a_malformed_uri_is_exit_2_and_never_a_local_dir(tmp_path, s3_uri):
    skus = write_skus(tmp_path / "skus" / f"{DATE}.parquet", many_rows(1), SAMPLE_SCHEMA)
    bucket_path = s3_uri.removeprefix("s3://")
    env = {"PYTHONPATH": str(REPO)}
    res = cli("run", "--date", DATE, "--skus", str(skus), "--output", f"s3:/{bucket_path}", cwd=tmp_path, env=env)
    assert res.returncode == 2 and "neither a local path nor a URI" in res.stderr, res.stderr[-2000:]
    assert not list(tmp_path.rglob("s3:*"))
