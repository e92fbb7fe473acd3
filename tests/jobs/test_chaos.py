"""Chaos on a real two-node loopback Ray cluster (Ray's own practice): SIGKILL a worker actor's process, SIGKILL the
second node's raylet, both mid-night. The night finishes or fails cleanly; the rerun conserves every SKU with the
bytes of a clean night (slow: `make test-all`). The cluster is `ray start` processes (tests/jobs/ray_cluster.py),
stopped in a `finally` whatever the test does."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from factory.config import load_config
from factory.io.layout import parts_dir
from factory.job.run import run
from tests.conftest import DATE, SAMPLE_SCHEMA, cli_args, cli_env, read_manifests, small_config_file, write_skus
from tests.job.test_reliability import assert_invariant, many_rows
from tests.jobs.ray_cluster import LoopbackCluster, ray_env

ROWS = 200
NIGHT_TIMEOUT_S = 150  # a night that outlives this hung: the test fails instead of waiting for pytest's timeout


@pytest.fixture
def night(tiny_models, cfg, tmp_path):
    """The chaos night's SKU file and config (a resume part per batch of 2, so progress shows mid-night)."""
    skus = write_skus(tmp_path / "skus" / f"{DATE}.parquet", many_rows(ROWS), SAMPLE_SCHEMA)
    conf = small_config_file(tmp_path / "night.toml", cfg, {"part_images": 1, "executor": "ray", "workers": 2})
    return skus, conf


def start_night(cluster: LoopbackCluster, skus: Path, conf: Path, out: Path, *flags: str) -> subprocess.Popen:
    """`adfactory run` as its own process (the driver), joined to the loopback cluster."""
    args = cli_args("run", "--date", DATE, "--skus", str(skus), "--config", str(conf), "--output", str(out))
    args += ["--batch-size", "2", *flags]
    env = {**cli_env(), **ray_env(), "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}"}
    env["PYTHONPATH"] = cli_env()["PYTHONPATH"]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_parts(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.monotonic() + NIGHT_TIMEOUT_S
    while len(list((out / parts_dir(DATE)).glob("*.parquet"))) < n:
        assert proc.poll() is None, f"the night ended before the fault: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)


def busy_worker(proc: subprocess.Popen, cluster: LoopbackCluster, node: int) -> psutil.Process:
    """The node's Worker actor process once it runs a batch (Ray titles it `ray::Worker.process`): past its model
    load, so the fault hits a started worker mid-batch."""
    deadline = time.monotonic() + NIGHT_TIMEOUT_S
    while True:
        busy = [p for p in node_processes(cluster, node) if _title(p).startswith("ray::Worker.process")]
        if busy:
            return busy[0]
        assert proc.poll() is None, f"the night ended before the fault: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the node's worker never took a batch"
        time.sleep(0.1)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=NIGHT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"the night hung after the fault:\n{stderr[-3000:]}")
    return proc.returncode, stderr


def node_processes(cluster: LoopbackCluster, node: int) -> list[psutil.Process]:
    return psutil.Process(cluster.nodes[node].pid).children(recursive=True)


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / DATE).rglob("*.png")}


def clean_night(conf: Path, skus: Path, out: Path) -> dict[str, str]:
    """The same night, undisturbed, in-process with the local executor (the bytes do not depend on the executor)."""
    cfg = load_config(conf, {"run": {"executor": "local"}})
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(out), skus=str(skus.parent)))
    run(cfg, DATE)
    return digests(out)


def assert_conserved(out: Path, conf: Path, skus: Path, tmp_path: Path) -> None:
    """Every SKU in exactly one manifest, none blamed for the fault, the bytes of a clean night."""
    assert_invariant(out, many_rows(ROWS))
    m = read_manifests(out, DATE)
    assert not [r for r in m["review"] if r["reason"] == "generation_error"]
    assert digests(out) == clean_night(conf, skus, tmp_path / "clean")


@pytest.mark.slow  # a two-node cluster and a night of actors (~1-2 min on 2 cores): make test-all
def test_a_worker_process_killed_mid_night_loses_and_duplicates_nothing(two_nodes, night, tmp_path):
    skus, conf = night
    out = tmp_path / "out"
    proc = start_night(two_nodes, skus, conf, out)
    try:
        wait_for_parts(proc, out, 2)
        worker = busy_worker(proc, two_nodes, 1)
        os.kill(worker.pid, signal.SIGKILL)  # Ray restarts the actor (run.max_restarts) and retries its batches
        rc, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, stderr[-3000:]
    assert_conserved(out, conf, skus, tmp_path)


@pytest.mark.slow  # a two-node cluster, a night, its rerun and a clean night (~2-3 min on 2 cores): make test-all
def test_the_second_nodes_raylet_killed_mid_night(two_nodes, night, tmp_path):
    """The node's actor is lost (its restart cannot be placed: the head has one CPU): the night finishes on the
    head's actor, or fails with one sentence and no _SUCCESS; a rerun then completes it. Either way nothing is lost,
    duplicated or blamed, and the bytes are a clean night's."""
    skus, conf = night
    out = tmp_path / "out"
    proc = start_night(two_nodes, skus, conf, out)
    try:
        wait_for_parts(proc, out, 2)
        busy_worker(proc, two_nodes, 1)
        node = node_processes(two_nodes, 1)
        (raylet,) = [p for p in node if p.name() == "raylet"]
        raylet.kill()
        # its workers notice in a second or two, or go on serving the driver's calls until they do: the rest of
        # the node dies with its raylet here, so the loss is certain (a machine gone), not a race with the night
        time.sleep(1)
        for p in node:
            with contextlib.suppress(psutil.Error):
                p.kill()
        rc, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    if rc != 0:
        last = stderr.strip().splitlines()[-1]
        assert rc == 1 and last.startswith("error: ") and not (out / DATE / "_SUCCESS").exists(), stderr[-3000:]
        rerun = start_night(two_nodes, skus, conf, out, "--workers", "1")  # the head alone is left
        rc, stderr = finish(rerun)
    assert rc == 0, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "worker lost" in line or "replacement" in line]
    print("\n".join(["", *said]))  # with -s: what the driver said, and when
    assert said, stderr[-3000:]
    assert_conserved(out, conf, skus, tmp_path)
