"""Output storage by URI: one small `Store` API over `pyarrow.fs` for a local directory or an object store.

`open_store("data/output")`, `open_store("s3://bucket/prefix", cfg.storage)` (and anything
`pyarrow.fs.FileSystem.from_uri` understands: `gs://`, `hdfs://`, `file://`). Every path handed to a `Store` is
relative to its root and checked not to escape it.

Atomicity: a reader never sees half an output.
- local: write a temp file next to the target, then rename (atomic on POSIX); created with mode 0666 so the
  kernel applies the umask (mkstemp's 0600 would make outputs unreadable to the reviewers' group).
- object stores: an object appears whole when its PUT (or multipart completion) succeeds, so we write the final
  key directly; `open_output_stream` spools locally first because pyarrow completes a partial upload when the
  writing code raises.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from factory.config import StorageConfig
from factory.errors import ConfigError, EnvironmentFault, StorageError
from factory.io.faults import STOPPED, is_credentials, is_transient, local_fault
from factory.io.paths import looks_like_uri

T = TypeVar("T")

log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")  # our in-flight local temp files (`_temp_name`)
SPOOL_BYTES = 64 << 20  # open_output_stream keeps up to this much in memory before spilling to a temp file
_CHUNK = 8 << 20
LOCK_MODES = ("auto", "exclusive-create", "lease")
_FLAT = {"s3", "gs", "gcs", "abfs", "abfss", "az"}  # object stores: no directories to create before a write
MAX_BACKOFF_S = 30.0  # one wait between retries never exceeds this, whatever storage.retry_backoff_s doubles to


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 API is and how to address it; credentials stay with the AWS SDK's chain (env, profile, role)."""

    endpoint: str  # "host:port", "" = AWS
    scheme: str  # http | https
    region: str
    addressing: str  # path | virtual

    @property
    def endpoint_url(self) -> str | None:
        return f"{self.scheme}://{self.endpoint}" if self.endpoint else None


def s3_settings(storage: StorageConfig) -> S3Settings:
    """Resolve the endpoint and region: the [storage] table first, then the standard AWS variables."""
    env = os.environ
    raw = storage.endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    scheme, endpoint = "https", ""
    if raw:
        parts = urlsplit(raw if "://" in raw else f"https://{raw}")
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(f"S3 endpoint {raw!r} must look like http(s)://host:port (storage.endpoint or env)")
        scheme, endpoint = parts.scheme, parts.netloc
    region = storage.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    addressing = storage.addressing if storage.addressing != "auto" else ("path" if endpoint else "virtual")
    return S3Settings(endpoint, scheme, region, addressing)


def check_storage_config(storage: StorageConfig) -> None:
    if storage.addressing not in ("auto", "path", "virtual"):
        raise ConfigError(f"storage.addressing must be auto, path or virtual, got {storage.addressing!r}")
    if storage.lock not in LOCK_MODES:
        raise ConfigError(f"storage.lock must be auto, exclusive-create or lease, got {storage.lock!r}")
    if storage.lease_seconds < 10:
        raise ConfigError(f"storage.lease_seconds must be at least 10, got {storage.lease_seconds}")
    if storage.retries < 0 or storage.retry_backoff_s < 0:
        raise ConfigError(
            f"storage.retries and storage.retry_backoff_s must be >= 0, got {storage.retries} and "
            f"{storage.retry_backoff_s}"
        )


def open_store(uri: str, storage: StorageConfig | None = None, what: str = "paths.output") -> Store:
    """Open the store rooted at `uri` and check it can be reached (`what` names the flag/key in errors)."""
    storage = storage or StorageConfig()
    check_storage_config(storage)
    uri = uri.strip()
    if not uri:
        raise ConfigError(f"{what} is empty: give a local directory or a URI like s3://bucket/prefix")
    if not looks_like_uri(uri):
        return Store(pafs.LocalFileSystem(), Path(uri).expanduser().absolute().as_posix(), "local")
    m = _SCHEME.match(uri)
    scheme = m.group(1).lower()
    if not uri[m.end() :].startswith("//"):
        raise ConfigError(f"{what} {uri!r} is neither a local path nor a URI: write {scheme}://bucket/prefix")
    if scheme == "s3" and not urlsplit(uri).query:
        fs, root = _s3_filesystem(uri, s3_settings(storage), what)
    else:
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError, ImportError) as exc:  # ArrowInvalid is a ValueError
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"{what} {uri!r} cannot be opened: {reason}") from None
    kind = "local" if isinstance(fs, pafs.LocalFileSystem) else scheme
    store = Store(fs, root.rstrip("/"), kind, storage.retries, storage.retry_backoff_s)
    if kind != "local":
        store.check_reachable(what)
    return store


def _s3_filesystem(uri: str, s: S3Settings, what: str) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise ConfigError(f"{what} {uri!r} has no bucket: write s3://bucket/prefix")
    fs = pafs.S3FileSystem(
        region=s.region,
        endpoint_override=s.endpoint or None,
        scheme=s.scheme,
        force_virtual_addressing=s.addressing == "virtual" and bool(s.endpoint),
        connect_timeout=5,
        request_timeout=30,
        # an object smaller than one upload part goes up as one PutObject instead of a multipart upload (create,
        # upload part, complete): 1 request per image instead of 3; errors surface at close(), which _upload checks
        allow_delayed_open=True,
    )
    return fs, f"{parts.netloc}{parts.path}"


def _check_durability(durability: str) -> None:
    if durability not in ("fsync", "none"):
        raise ValueError(f"durability must be 'fsync' or 'none', got {durability!r}")


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.tmp"


class Store:
    """Files under one root, addressed by '/'-separated paths relative to it. Picklable (Ray workers get a copy)."""

    def __init__(self, fs: pafs.FileSystem, root: str, kind: str, retries: int = 0, backoff_s: float = 0.5):
        self.fs, self.root, self.kind = fs, root, kind  # kind: "local", "s3", "gs", "hdfs", ...
        # transient object-store errors: retried this many times, waiting backoff_s, 2 x backoff_s, ... between
        self.retries, self.backoff_s = retries, backoff_s

    def __repr__(self) -> str:
        return f"Store({self.url('')!r})"

    # -- addressing ------------------------------------------------------------------------------------------
    def path(self, relpath: str) -> str:
        """The filesystem path of `relpath`; refuses absolute paths, `..`, NUL and backslashes (untrusted ids)."""
        if "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
            raise ValueError(f"refusing a path outside the output root: {relpath!r}")
        parts = [p for p in PurePosixPath(relpath).parts if p != "."]
        if ".." in parts:
            raise ValueError(f"refusing a path outside the output root: {relpath!r}")
        joined = "/".join([self.root, *parts]) if parts else self.root
        if self.kind == "local" and parts:  # a symlink inside the root must not lead out of it either
            real, real_root = Path(joined).resolve(), Path(self.root).resolve()
            if not real.is_relative_to(real_root):
                raise ValueError(f"refusing a path outside the output root: {relpath!r}")
        return joined

    def url(self, relpath: str) -> str:
        """What manifests record: an absolute local path, or `<scheme>://bucket/prefix/relpath`."""
        path = self.path(relpath)
        return path if self.kind == "local" else f"{self.kind}://{path}"

    # -- reads -----------------------------------------------------------------------------------------------
    def get_bytes(self, relpath: str) -> bytes:
        """The whole file; FileNotFoundError if it does not exist."""
        path = self.path(relpath)

        def read() -> bytes:
            with self.fs.open_input_stream(path) as f:
                return f.read()

        return self._call("read", relpath, read)

    def open_input_file(self, relpath: str) -> pafs.NativeFile:
        """A random-access file (what `pyarrow.parquet.read_table` wants)."""
        return self.fs.open_input_file(self.path(relpath))

    def exists(self, relpath: str) -> bool:
        return self.info(relpath).type != pafs.FileType.NotFound

    def info(self, relpath: str) -> pafs.FileInfo:
        path = self.path(relpath)
        return self._call("stat", relpath, lambda: self.fs.get_file_info(path))

    def list(self, prefix: str = "") -> list[str]:
        """Files under `prefix` (recursive), as sorted paths relative to the root; in-flight temp files excluded."""
        return sorted(self.sizes(prefix))

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Path relative to the root -> size in bytes, for every file under `prefix` (recursive; one listing,
        not one request per file); in-flight temp files excluded."""
        base = self.path(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self._call("list", prefix, lambda: self.fs.get_file_info(selector))
        except NotADirectoryError:
            return {}
        start = len(self.root) + 1
        return {
            i.path[start:]: i.size for i in infos if i.type == pafs.FileType.File and not _TEMP_NAME.match(i.base_name)
        }

    def children(self, prefix: str = "") -> list[str]:
        """The directories (or common prefixes) directly under `prefix`, as sorted paths relative to the root."""
        selector = pafs.FileSelector(self.path(prefix), recursive=False, allow_not_found=True)
        try:
            infos = self._call("list", prefix, lambda: self.fs.get_file_info(selector))
        except NotADirectoryError:
            return []
        start = len(self.root) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.Directory)

    # -- writes ----------------------------------------------------------------------------------------------
    def put_bytes(self, relpath: str, data: bytes, durability: str = "fsync") -> None:
        """Write `data` atomically. durability: "fsync" (manifests, markers) | "none" (images: regenerated if a
        power cut loses them); object stores are durable once the PUT returns either way."""
        _check_durability(durability)
        if self.kind == "local":
            with _local_atomic(Path(self.path(relpath)), durability) as fh:
                fh.write(data)
            return
        self._upload(relpath, lambda: [data])

    @contextlib.contextmanager
    def open_output_stream(self, relpath: str, durability: str = "fsync") -> Iterator[IO[bytes]]:
        """A binary file to write `relpath` through (e.g. `pq.write_table(t, f)`); the file appears whole when the
        block exits normally and not at all when it raises."""
        _check_durability(durability)
        if self.kind == "local":
            with _local_atomic(Path(self.path(relpath)), durability) as fh:
                yield fh
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            yield spool

            def chunks() -> Iterator[bytes]:  # from the start on every attempt
                spool.seek(0)
                return iter(lambda: spool.read(_CHUNK), b"")

            self._upload(relpath, chunks)

    def copy(self, src: str, dst: str) -> None:
        """Copy within the store: server-side on object stores (S3 CopyObject), a hardlink (else a copy) locally;
        the target appears whole either way."""
        if self.kind != "local":

            def copy() -> None:
                if self.kind not in _FLAT:
                    self.fs.create_dir(self.path(dst).rsplit("/", 1)[0], recursive=True)
                self.fs.copy_file(self.path(src), self.path(dst))

            self._call("copy", dst, copy)
            return
        src_path, dst_path = Path(self.path(src)), Path(self.path(dst))
        self._call("write", dst, lambda: _local_copy(src_path, dst_path))

    def delete(self, relpath: str) -> None:
        """Delete one file; a missing file is fine (deletes are retried by reruns)."""
        path = self.path(relpath)
        try:
            self._call("delete", relpath, lambda: self.fs.delete_file(path))
        except FileNotFoundError:
            pass

    def delete_tree(self, prefix: str) -> None:
        """Delete every file under `prefix` (not the root itself)."""
        if not prefix.strip("/."):
            raise ValueError("refusing to delete the whole output root")
        path = self.path(prefix)
        try:
            self._call("delete", prefix, lambda: self.fs.delete_dir(path))
        except FileNotFoundError:
            pass

    # -- internals -------------------------------------------------------------------------------------------
    def check_reachable(self, what: str) -> None:
        """One request to the store: a missing bucket or denied access is a config error, a dead endpoint not."""
        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket if self.kind == "s3" else self.root)
        except OSError as exc:
            reason = str(exc).splitlines()[0]
            if "ACCESS_DENIED" in reason or "InvalidAccessKeyId" in reason or "NO_SUCH_BUCKET" in reason:
                raise ConfigError(f"{what} {self.url('')}: access refused ({reason})") from None
            raise StorageError(f"{what} {self.url('')}: the store cannot be reached ({reason})") from None
        if self.kind == "s3" and info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{what} {self.url('')}: bucket {bucket!r} does not exist") from None

    def _upload(self, relpath: str, chunks: Callable[[], Iterable[bytes]]) -> None:
        path = self.path(relpath)

        def upload() -> None:
            if self.kind not in _FLAT:  # hdfs and friends want the parent directory to exist
                self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            # No `with`: if a write fails, the exception must not run close(), which would complete the upload.
            stream = self.fs.open_output_stream(path)
            for chunk in chunks():
                stream.write(chunk)
            stream.close()

        self._call("write", relpath, upload)

    def _call(self, op: str, relpath: str, fn: Callable[[], T]) -> T:
        """`fn()`, retrying transient object-store errors (`retries` times, doubling waits from `backoff_s`); a
        missing file is passed through, any other OSError becomes a StorageError (EnvironmentFault when it is
        the environment's)."""
        attempt = 0
        while True:
            try:
                return fn()
            except (FileNotFoundError, NotADirectoryError):
                raise
            except OSError as exc:
                attempt += 1
                if self.kind == "local" or attempt > self.retries or not is_transient(str(exc)):
                    raise _store_error(self.kind, self.url(relpath), op, exc, attempt) from exc
                wait = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                log.warning(
                    "%s %s failed (%s); retry %d of %d in %.1fs",
                    op,
                    self.url(relpath),
                    exc,
                    attempt,
                    self.retries,
                    wait,
                )
                time.sleep(wait)


def _local_copy(src_path: Path, dst_path: Path) -> None:
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.with_name(_temp_name(dst_path.name))
    try:
        os.link(src_path, tmp)
    except FileNotFoundError:
        raise
    except OSError as exc:  # another filesystem, or links not allowed: copy the bytes (honours the umask)
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO):
            raise
        shutil.copyfile(src_path, tmp)
    os.replace(tmp, dst_path)


@contextlib.contextmanager
def _local_atomic(path: Path, durability: str) -> Iterator[IO[bytes]]:
    """Write to a temp file beside `path`, renamed into place at the end: a reader never sees half a file."""
    tmp = path.with_name(_temp_name(path.name))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, like any new file
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durability == "fsync":
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a read-only or failing disk refuses this too; the cause matters
            tmp.unlink(missing_ok=True)
        fault = local_fault("write", str(path), exc) if isinstance(exc, OSError) else None
        if fault is not None:  # a full, read-only or failing disk: the environment's fault, not the data's
            raise fault from exc
        raise


def _store_error(kind: str, where: str, op: str, exc: OSError, attempts: int = 1) -> StorageError:
    """The typed error of a failed store operation: EnvironmentFault when the environment is to blame."""
    reason = str(exc).splitlines()[0]
    if kind == "local":
        return local_fault(op, where, exc) or StorageError(f"cannot {op} {where}: {reason}")
    if is_credentials(reason):
        return EnvironmentFault(
            f"the object store refused the credentials (expired or invalid?): cannot {op} {where} ({reason}){STOPPED}"
        )
    if is_transient(reason):
        return EnvironmentFault(
            f"the object store cannot be reached: cannot {op} {where} after {attempts} attempt(s) ({reason}){STOPPED}"
        )
    return StorageError(f"cannot {op} {where}: {reason}")
