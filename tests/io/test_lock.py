"""The local run lock: published whole, and an empty or garbled lock is stale only after a grace period."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.errors import LockError
from factory.io.lock import GRACE_S, LOCK_NAME, RunLock
from tests.conftest import REPO

CYCLES = 300
_CHURN = f"""
import sys
from pathlib import Path
from factory.io.lock import RunLock
for i in range({CYCLES}):
    with RunLock(Path(sys.argv[1]), f"run-{{i}}"):
        pass
"""


def test_a_visible_lock_is_never_empty_or_half_written(tmp_path):
    """Another process takes and releases the lock in a loop; every read of an existing lock parses."""
    proc = subprocess.Popen([sys.executable, "-c", _CHURN, str(tmp_path)], cwd=REPO)
    lock, seen, bad = tmp_path / LOCK_NAME, 0, []
    while proc.poll() is None:
        try:
            text = lock.read_text()
        except FileNotFoundError:
            continue
        seen += 1
        try:
            json.loads(text)
        except ValueError:
            bad.append(text)
    assert proc.returncode == 0
    assert seen > 0 and not bad, f"{len(bad)} of {seen} reads saw a partial lock, e.g. {bad[:1]!r}"
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp files left behind


@pytest.mark.parametrize("content", ["", "{", '{"pid": "x"}', "\x00\x00"])
def test_an_empty_or_garbled_lock_is_stale_after_the_grace_period(tmp_path, content):
    lock = tmp_path / LOCK_NAME
    lock.write_text(content)
    with pytest.raises(LockError, match=r"another run holds .*\(an unknown process") as err:
        RunLock(tmp_path, "young").acquire()  # it may still be in the making: respected
    assert err.value.exit_code == 3
    old = time.time() - GRACE_S - 5
    os.utime(lock, (old, old))
    with RunLock(tmp_path, "mine") as taken:
        assert "unreadable lock" in taken.stale_taken_over["note"]
        assert json.loads(lock.read_text())["run_id"] == "mine"
    assert not lock.exists() and list(tmp_path.iterdir()) == []


def test_a_live_holder_is_respected_whatever_its_age(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "run_id": "live"}))
    old = time.time() - 10 * GRACE_S
    os.utime(lock, (old, old))
    with pytest.raises(LockError, match="run live"):
        RunLock(Path(tmp_path), "other").acquire()
