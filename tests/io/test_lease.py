"""The one-run-per-date lock on object stores, against a real S3 server (SeaweedFS) and real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from factory.config import StorageConfig
from factory.errors import EXIT_LOCKED, ConfigError, LockError
from factory.io.lease import ObjectLease, open_run_lock
from factory.io.lock import RunLock
from factory.io.storage import open_store
from tests.conftest import REPO

DAY = "2026-11-21"

# A run in its own process: take the lock (after `go` exists, so several can race), hold it until stdin closes.
HOLDER = """
import os, sys, time
from factory.config import StorageConfig
from factory.errors import LockError
from factory.io.storage import open_store
from factory.io.lease import open_run_lock
uri, mode, run_id, go = sys.argv[1:5]
lock = open_run_lock(open_store(uri), "2026-11-21", run_id, StorageConfig(lock=mode))
print("ready", flush=True)
while go != "-" and not os.path.exists(go):
    time.sleep(0.005)
try:
    lock.acquire()
except LockError as exc:
    print("refused", exc.exit_code, flush=True)
    sys.exit(0)
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def _holder(uri: str, mode: str, run_id: str, go: str = "-") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, mode, run_id, go],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


@pytest.fixture(params=["s3-exclusive-create", "s3-lease", "local-lease"])
def where(request, tmp_path) -> tuple[str, str]:
    kind, mode = request.param.split("-", 1)
    uri = request.getfixturevalue("s3_uri") if kind == "s3" else str(tmp_path / "out")
    return uri, mode


def test_a_second_run_is_refused_while_the_first_holds_the_lock(where):
    uri, mode = where
    first = _holder(uri, mode, "run-A")
    try:
        assert [first.stdout.readline().strip() for _ in range(2)] == ["ready", "held"]
        second = open_run_lock(open_store(uri), DAY, "run-B", StorageConfig(lock=mode))
        with pytest.raises(LockError, match="another run holds .*run run-A") as exc:
            second.acquire()
        assert exc.value.exit_code == EXIT_LOCKED
    finally:
        first.stdin.close()
    assert first.stdout.readline().strip() == "released"
    first.wait(timeout=30)
    with open_run_lock(open_store(uri), DAY, "run-B", StorageConfig(lock=mode)) as lock:
        assert lock.stale_taken_over is None
    assert not open_store(uri).exists(f"{DAY}/.lock")


@pytest.mark.parametrize("mode", ["exclusive-create", "lease"])
def test_racing_runs_exactly_one_wins(s3_uri, tmp_path, mode):
    go = tmp_path / "go"
    procs = [_holder(s3_uri, mode, f"run-{i}", str(go)) for i in range(4)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4
    go.touch()
    try:
        outcomes = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert outcomes == ["held", f"refused {EXIT_LOCKED}", f"refused {EXIT_LOCKED}", f"refused {EXIT_LOCKED}"]


def test_a_killed_run_on_this_host_is_taken_over_at_once(s3_uri):
    victim = _holder(s3_uri, "exclusive-create", "run-killed")
    assert [victim.stdout.readline().strip() for _ in range(2)] == ["ready", "held"]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    store = open_store(s3_uri)
    assert json.loads(store.get_bytes(f"{DAY}/.lock"))["run_id"] == "run-killed"  # left behind
    with open_run_lock(store, DAY, "run-next", StorageConfig()) as lock:
        assert lock.stale_taken_over["run_id"] == "run-killed"
        assert json.loads(store.get_bytes(f"{DAY}/.lock"))["run_id"] == "run-next"


@pytest.mark.parametrize("mode", ["exclusive-create", "lease"])
def test_an_expired_lease_from_another_host_is_taken_over(s3_uri, mode):
    store = open_store(s3_uri)
    now = time.time() - (40 if mode == "lease" else 0)  # "lease" mode judges age on the holder's clock
    other = {"run_id": "run-elsewhere", "host": "another-node", "pid": 1, "lease_s": 2}
    other["renewed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now))
    fresh = dict(other, lease_s=300)
    store.put_bytes(f"{DAY}/.lock", json.dumps(fresh).encode())
    with pytest.raises(LockError, match="run run-elsewhere, pid 1 on another-node"):
        ObjectLease(store, DAY, "run-new", mode=mode, settle_s=0.5).acquire()

    store.put_bytes(f"{DAY}/.lock", json.dumps(other).encode())
    time.sleep(3.5)  # past its 2 s lease, on the server's clock
    lease = ObjectLease(store, DAY, "run-new", mode=mode, settle_s=0.5)
    with lease:
        assert lease.stale_taken_over["host"] == "another-node"
        assert json.loads(store.get_bytes(f"{DAY}/.lock"))["run_id"] == "run-new"


def test_renewal_keeps_a_live_lease_and_a_paused_run_learns_it_lost(s3_uri):
    store = open_store(s3_uri)
    a = ObjectLease(store, DAY, "run-A", lease_s=2)
    a.acquire()
    time.sleep(3.5)  # longer than the lease: only renewal keeps it
    with pytest.raises(LockError, match="run run-A"):
        ObjectLease(store, DAY, "run-B", lease_s=2).acquire()

    a._stop.set()  # run A stalls (a long GC pause, a frozen VM): no renewals
    a._renewer.join()
    time.sleep(3.5)
    b = ObjectLease(store, DAY, "run-B", lease_s=2)
    b.acquire()
    assert b.stale_taken_over["run_id"] == "run-A"
    a.renew()  # A wakes up: its conditional renewal fails
    with pytest.raises(LockError, match="lost its lease"):
        a.check()
    a.release()  # must not delete B's lease
    assert json.loads(store.get_bytes(f"{DAY}/.lock"))["run_id"] == "run-B"
    b.check()
    b.release()
    assert not store.exists(f"{DAY}/.lock")


def test_lock_choice_per_store(tmp_path, s3_uri):
    local = open_store(str(tmp_path / "out"))
    assert isinstance(open_run_lock(local, DAY, "r", StorageConfig()), RunLock)
    assert isinstance(open_run_lock(local, DAY, "r", StorageConfig(lock="lease")), ObjectLease)
    assert isinstance(open_run_lock(open_store(s3_uri), DAY, "r", StorageConfig()), ObjectLease)
    other = open_store("mock://bucket/out")  # pyarrow's in-memory filesystem: a store without conditional writes
    with pytest.raises(ConfigError, match="'exclusive-create' is not available for mock://"):
        open_run_lock(other, DAY, "r", StorageConfig(lock="exclusive-create"))
    with open_run_lock(other, DAY, "r", StorageConfig()) as lock:
        assert json.loads(other.get_bytes(f"{DAY}/.lock"))["host"] == socket.gethostname()
    assert lock.stale_taken_over is None
