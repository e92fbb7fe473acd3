"""Joining or starting the Ray cluster: an unreachable address fails fast, a pool too big is refused up front.

(A stale `ray_current_cluster` file not hijacking a local start: tests/job/test_run.py, the CLI's own-cluster run.)
"""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from factory.errors import ConfigError, FactoryError
from factory.generation.cluster import address_of, probe
from tests.conftest import DATE, cli, demo_config_file

RAY = str(Path(sys.executable).parent / "ray")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def head_node():
    """A real `ray start --head` on loopback ports, token auth off, a private temp dir; stopped by its pid."""
    tmp = Path(tempfile.mkdtemp(prefix="adf-head-", dir="/tmp"))  # short: Ray's socket paths live under it
    port = closed_port()
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp / 'ray'}"],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, "ray start --head exited"
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group (gcs, raylet, workers): SIGTERM drains for 30 s
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_probe_accepts_a_real_ray_head(head_node):
    probe(head_node, "RAY_ADDRESS")  # its GCS answers the gRPC preface at once


@pytest.mark.slow
def test_a_night_joins_a_running_cluster_by_address(head_node, day_file, cfg, tmp_path):
    """ray.init from the deadline thread: the night runs on the joined cluster, its log clean."""
    config = demo_config_file(tmp_path / "c.toml", cfg)
    res = cli(
        "run", "--date", DATE, "--skus", str(day_file), "--output", str(tmp_path / "out"), "--config", str(config),
        "--executor", "ray", "--workers", "2", "--batch-size", "4",
        env={"RAY_ADDRESS": head_node, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "approved SKUs" in res.stdout and "SIGTERM handler" not in res.stderr and "(Worker" not in res.stderr


def test_probe_names_the_address_and_where_it_came_from(cfg, monkeypatch):
    port = closed_port()
    with pytest.raises(FactoryError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port} \\(from RAY_ADDRESS\\)"):
        probe(f"127.0.0.1:{port}", "RAY_ADDRESS")
    with socket.socket() as silent:  # accepts connections, never speaks gRPC (a wrong port, a hung head node)
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t0 = time.monotonic()
        with pytest.raises(FactoryError, match="does not answer as a Ray cluster"):
            probe(f"ray://127.0.0.1:{silent.getsockname()[1]}", "RAY_ADDRESS", timeout=1)
        assert time.monotonic() - t0 < 5
    with pytest.raises(ConfigError, match="'head-node' is not a Ray address"):
        probe("head-node", "RAY_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert address_of(cfg) == ("10.0.0.1:6379", "RAY_ADDRESS")
    flagged = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, ray_address="10.0.0.2:6379"))
    assert address_of(flagged) == ("10.0.0.2:6379", "--ray-address / run.ray_address")


def test_unreachable_ray_address_fails_within_a_minute_and_releases_the_lock(day_file, cfg, tmp_path):
    """Today's hang (10+ minutes holding the date's lock) becomes exit 1 and one line, in seconds."""
    config = demo_config_file(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = cli(
        "run", "--date", DATE, "--skus", str(day_file), "--output", str(out), "--config", str(config),
        env={"RAY_ADDRESS": f"127.0.0.1:{closed_port()}"},
        timeout=90,
    )  # fmt: skip
    assert time.monotonic() - t0 < 60
    assert res.returncode == 1, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot reach the Ray cluster" in res.stderr
    assert not (out / DATE / ".lock").exists() and not (out / DATE / "_SUCCESS").exists()


def test_workers_above_the_local_cluster_cpus_are_refused_up_front(day_file, cfg, tmp_path):
    config = demo_config_file(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    too_many = str((os.cpu_count() or 1) + 1)
    res = cli(
        "run", "--date", DATE, "--skus", str(day_file), "--output", str(out), "--config", str(config),
        "--executor", "ray", "--workers", too_many,
        env={"RAY_ADDRESS": ""},
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"run.workers ({too_many})" in res.stderr and "local Ray cluster has" in res.stderr
    assert not out.exists()  # refused before the lock: nothing written
