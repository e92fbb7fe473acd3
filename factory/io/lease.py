"""One run per (output root, date) on an object store: a lease object `<date>/.lock`, renewed while the run lives.

Same interface as `RunLock` (context manager, `stale_taken_over`), plus `check()`: call it before writing `_SUCCESS`
— a run that lost its lease (paused longer than the lease) must not mark the night complete.

Two ways to take the lease (`storage.lock`):
- "exclusive-create" (S3 default): `PUT If-None-Match: *` creates the object only if it is absent; a stale lease is
  replaced with `PUT If-Match: <its ETag>` and renewed the same way, so of two racing runs exactly one wins, on
  any store that implements S3 conditional writes (AWS S3, SeaweedFS, MinIO, Cloudflare R2). Staleness is judged
  on the server's clock (response Date minus the object's Last-Modified), so host clocks do not matter.
  pyarrow cannot send these headers; botocore does.
- "lease" (stores without conditional writes: gs://, hdfs://): write the lease, wait `settle_s`, read it back; the
  last writer wins and the others back off. It refuses a second run in every ordinary case, but two runs starting
  within one request latency of each other, or one paused between its check and its write for longer than
  `settle_s`, can both proceed. Staleness uses the holder's clock plus a skew margin.

A lease held by a dead process on this same host is stale at once (as with RunLock); any other lease is stale
only after `lease_seconds` without renewal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

from factory.config import StorageConfig
from factory.errors import ConfigError, LockError
from factory.io.lock import LOCK_NAME, RunLock, _alive
from factory.io.storage import Store, check_storage_config, s3_settings

log = logging.getLogger(__name__)
SKEW_S = 30.0  # "lease" mode compares the holder's clock with ours: allow this much disagreement


def open_run_lock(store: Store, date_relpath: str, run_id: str, storage: StorageConfig) -> RunLock | ObjectLease:
    """The lock for one date under `store`: RunLock (O_EXCL file) locally, an ObjectLease on object stores."""
    check_storage_config(storage)
    mode = storage.lock
    if store.kind == "local" and mode in ("auto", "exclusive-create"):
        from pathlib import Path

        return RunLock(Path(store.path(date_relpath)), run_id)
    if mode == "auto":
        mode = "exclusive-create" if store.kind == "s3" else "lease"
    if mode == "exclusive-create" and store.kind != "s3":
        raise ConfigError(f"storage.lock 'exclusive-create' is not available for {store.kind}:// (use 'lease')")
    return ObjectLease(store, date_relpath, run_id, mode=mode, lease_s=storage.lease_seconds, storage=storage)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ObjectLease:
    """A renewed lease object; see the module docstring for what each mode guarantees."""

    def __init__(
        self,
        store: Store,
        date_relpath: str,
        run_id: str,
        mode: str = "exclusive-create",
        lease_s: float = 300,
        settle_s: float = 2.0,
        storage: StorageConfig | None = None,
    ):
        self.relpath = f"{date_relpath.rstrip('/')}/{LOCK_NAME}"
        self.url = store.url(self.relpath)
        self.run_id, self.lease_s = run_id, float(lease_s)
        self.owner = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "lease_s": lease_s}
        if mode == "exclusive-create":
            self._backend: _Conditional | _Reread = _Conditional(store, self.relpath, storage or StorageConfig())
        elif mode == "lease":
            self._backend = _Reread(store, self.relpath, settle_s)
        else:
            raise ConfigError(f"storage.lock must be exclusive-create or lease here, got {mode!r}")
        self.stale_taken_over: dict | None = None
        self.lost = False
        self._token: str | None = None
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._last_renewal = 0.0

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "renewed_at": _now().isoformat()}).encode()

    def acquire(self) -> None:
        for _ in range(3):  # retries cover a lease released or taken over between our two requests
            token = self._backend.create(self._body())
            if token is None:
                current = self._backend.read()
                if current is None:
                    continue
                holder, old_token, age = current
                if not self._is_stale(holder, age):
                    raise LockError(self._held_message(holder, age))
                token = self._backend.replace(old_token, self._body())
                if token is None:
                    continue
                self.stale_taken_over = holder
                log.warning("took over the stale lease %s from run %s", self.url, holder.get("run_id"))
            self._token, self._last_renewal = token, time.monotonic()
            self._start_renewal()
            return
        raise LockError(f"could not take {self.url}: other runs keep taking it; wait for them")

    def _is_stale(self, holder: dict, age: float) -> bool:
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
            return True  # its process is gone (killed): no need to wait out the lease
        return age > float(holder.get("lease_s", self.lease_s))

    def _held_message(self, holder: dict, age: float) -> str:
        left = max(0, int(float(holder.get("lease_s", self.lease_s)) - age))
        return (
            f"another run holds {self.url} (run {holder.get('run_id', '?')}, pid {holder.get('pid')} on "
            f"{holder.get('host')}); wait for it, or for its lease to expire in {left} s if that run is dead"
        )

    # -- renewal ---------------------------------------------------------------------------------------------
    def _start_renewal(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self.renew()

    def renew(self) -> None:
        """Extend the lease; a lease someone else replaced, or one not renewed in time, is marked lost."""
        with self._guard:
            if self._token is None or self.lost:
                return
            try:
                token = self._backend.replace(self._token, self._body())
            except Exception as exc:  # a network blip: try again next tick, unless the lease has run out
                log.warning("could not renew %s: %s", self.url, exc)
                if time.monotonic() - self._last_renewal > self.lease_s:
                    self.lost = True
                return
            if token is None:
                self.lost = True
                log.error("lost the lease %s: another run took it over", self.url)
                return
            self._token, self._last_renewal = token, time.monotonic()

    def check(self) -> None:
        """Raise LockError if the lease was lost: the run must not mark its outputs complete."""
        if self.lost:
            raise LockError(f"this run lost its lease {self.url} (not renewed in time); rerun the night")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._guard:
            if self._token is not None and not self.lost:
                self._backend.delete(self._token)
            self._token = None

    def __enter__(self) -> ObjectLease:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if e is None:
            self.release()
            return
        try:  # the store that failed the night may refuse this too: never hide why the night stopped
            self.release()
        except LockError as exc:
            log.warning("could not release the lock (%s); a rerun takes it over once it is stale", exc)


class _Conditional:
    """S3 conditional writes through botocore; tokens are ETags."""

    def __init__(self, store: Store, relpath: str, storage: StorageConfig):
        import botocore.config
        import botocore.session

        s = s3_settings(storage)
        self.bucket, _, key_root = store.path(relpath).partition("/")
        self.key = key_root
        self.url = store.url(relpath)
        self.client = botocore.session.get_session().create_client(
            "s3",
            region_name=s.region,
            endpoint_url=s.endpoint_url,
            config=botocore.config.Config(
                s3={"addressing_style": s.addressing},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def _call(self, op: str, **kw: Any) -> dict | None:
        """Run one S3 call; None when a precondition failed (someone else's write won)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self.key, **kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            if code in ("NoSuchKey", "404"):
                return {"missing": True}
            if code == "NotImplemented" or status == 501:
                raise ConfigError(
                    f"{self.url}: this store does not support conditional writes; set storage.lock = 'lease'"
                ) from None
            raise LockError(f"cannot use the lock {self.url}: {code or status} {exc}") from None
        except NoCredentialsError:
            raise ConfigError(f"{self.url}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
        except BotoCoreError as exc:
            raise LockError(f"cannot reach the lock {self.url}: {exc}") from None

    def create(self, body: bytes) -> str | None:
        r = self._call("put_object", Body=body, IfNoneMatch="*")
        return None if r is None else r["ETag"]

    def read(self) -> tuple[dict, str, float] | None:
        r = self._call("get_object")
        if r is None or r.get("missing"):
            return None
        server_now = parsedate_to_datetime(r["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - r["LastModified"]).total_seconds()
        return _parse(r["Body"].read()), r["ETag"], age

    def replace(self, token: str, body: bytes) -> str | None:
        r = self._call("put_object", Body=body, IfMatch=token)
        return None if r is None or r.get("missing") else r["ETag"]

    def delete(self, token: str) -> None:
        self._call("delete_object", IfMatch=token)  # 412: no longer ours, leave it


class _Reread:
    """Write, wait, read back: for stores without conditional writes; tokens are random nonces in the body."""

    def __init__(self, store: Store, relpath: str, settle_s: float):
        self.store, self.relpath, self.settle_s = store, relpath, settle_s

    def _write_and_confirm(self, body: bytes) -> str | None:
        nonce = secrets.token_hex(16)
        self.store.put_bytes(self.relpath, json.dumps({**json.loads(body), "nonce": nonce}).encode())
        time.sleep(self.settle_s)  # a racing writer's PUT lands within this window; the last one wins
        current = self.read()
        return nonce if current is not None and current[1] == nonce else None

    def create(self, body: bytes) -> str | None:
        return None if self.store.exists(self.relpath) else self._write_and_confirm(body)

    def read(self) -> tuple[dict, str, float] | None:
        try:
            holder = _parse(self.store.get_bytes(self.relpath))
        except FileNotFoundError:
            return None
        renewed = dt.datetime.fromisoformat(holder.get("renewed_at", "1970-01-01T00:00:00+00:00"))
        return holder, holder.get("nonce", ""), (_now() - renewed).total_seconds() - SKEW_S

    def replace(self, token: str, body: bytes) -> str | None:
        current = self.read()
        return None if current is None or current[1] != token else self._write_and_confirm(body)

    def delete(self, token: str) -> None:
        current = self.read()
        if current is not None and current[1] == token:
            self.store.delete(self.relpath)


def _parse(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}  # garbage: held by "an unknown run" until it goes stale
    return data if isinstance(data, dict) else {}
