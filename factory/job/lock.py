"""One run per (output root, date): an exclusive lock file holding the owner's pid, host and run id.

The lock is created with O_CREAT|O_EXCL (atomic on POSIX filesystems). A lock whose owner process is gone (same
host, pid not alive: e.g. a run killed with SIGKILL) is stale and taken over. A lock from another host cannot be
checked from here; it is respected, and the message says how to clear it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from factory.errors import LockError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, date_dir: Path, run_id: str):
        self.path = date_dir / LOCK_NAME
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "started_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.stale_taken_over: dict | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is not None and self._is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    self.stale_taken_over = holder
                    continue
                who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "an unknown process"
                raise LockError(
                    f"another run holds {self.path} ({who}, run {holder.get('run_id') if holder else '?'}); "
                    "wait for it, or delete the lock file if that run is certainly dead"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(self.owner, fh)
            return
        raise LockError(f"could not take {self.path}: another run took it at the same moment")

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # being written right now, or garbage: treat as held

    def _is_stale(self, holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))

    def check(self) -> None:
        """Nothing to check: a local lock file is held until released (ObjectLease can lose its lease)."""

    def release(self) -> None:
        holder = self._read()
        if holder is not None and holder.get("run_id") == self.owner["run_id"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
