"""One run per (output root, date): an exclusive lock file holding the owner's pid, host and run id.

The lock is published atomically: its content is written and fsynced to a private temp file, which is then
hard-linked to `.lock` (`link` fails if `.lock` exists, like O_EXCL), so a visible lock is never empty or half
written. A lock whose owner process is gone (same host, pid not alive: e.g. a run killed with SIGKILL) is stale and
taken over. An empty or unparsable lock (left by an older version, or a disk that filled up) is stale once it is
older than `GRACE_S`; a younger one may still be in the making and is respected. A lock from another host cannot
be checked from here; it is respected, and the message says how to clear it.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType

from factory.errors import LockError

LOCK_NAME = ".lock"
GRACE_S = 60.0  # an empty/garbled lock older than this is a crash's leftover, not a lock being written
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)  # filesystems without hard links


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
        for _ in range(3):  # retries after removing a stale lock
            if self._publish():
                return
            holder, age, inode = self._inspect()
            if inode is None:
                continue  # released between our attempt and the look
            if self._is_stale(holder, age):
                if self._remove(inode):
                    self.stale_taken_over = holder or {"run_id": None, "note": f"an unreadable lock {age:.0f} s old"}
                continue
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "an unknown process"
            raise LockError(
                f"another run holds {self.path} ({who}, run {holder.get('run_id') if holder else '?'}); "
                "wait for it, or delete the lock file if that run is certainly dead"
            )
        raise LockError(f"could not take {self.path}: another run took it at the same moment")

    def _publish(self) -> bool:
        """Write the owner to a temp file, then link it to `.lock`; False if a lock is already there."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # 0666 minus the umask, like every output
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.owner, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                return self._publish_unlinked()
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _publish_unlinked(self) -> bool:
        """Filesystems without hard links: O_EXCL create, then write (briefly empty; the grace period covers it)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.owner, fh)
        return True

    def _inspect(self) -> tuple[dict | None, float, int | None]:
        """The holder (None if empty or garbled), the lock's age in seconds and its inode (None if gone)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None, 0.0, None
        holder = self._read()
        return holder, time.time() - st.st_mtime, st.st_ino

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # empty or garbage
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            return None
        return holder

    def _is_stale(self, holder: dict | None, age: float) -> bool:
        if holder is None:
            return age > GRACE_S
        return holder.get("host") == socket.gethostname() and not _alive(holder["pid"])

    def _remove(self, inode: int) -> bool:
        """Move the stale lock aside and delete it, only if it is still the file judged stale (another run may
        have taken it over and published its own in between: that one is put back)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{secrets.token_hex(8)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if os.stat(aside).st_ino != inode:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

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
