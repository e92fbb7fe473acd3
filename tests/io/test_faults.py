"""Which failures are the environment's (factory.io.faults), on real file systems and a real S3 server."""

from __future__ import annotations

import errno
import logging
import socket
import time

import pyarrow.fs as pafs
import pytest

from factory.errors import EnvironmentFault
from factory.io.faults import environment_fault
from factory.io.storage import Store, open_store
from tests.s3_server import BUCKET, REGION
from tests.tmpfs import remount, tmpfs


def test_a_full_disk_is_an_environment_fault_naming_the_path(tmp_path):
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        store = open_store(str(mnt))
        with pytest.raises(EnvironmentFault) as caught:
            for i in range(40):
                store.put_bytes(f"d/images/x/{i}.png", b"\x01" * 8192, durability="none")
        msg = str(caught.value)
        assert msg.startswith("the output is full: cannot write ") and str(mnt / "d/images/x") in msg
        assert "No space left on device" in msg and "\n" not in msg
        assert not [p for p in (mnt / "d/images/x").iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_a_read_only_output_is_an_environment_fault(tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        store = open_store(str(mnt))
        store.put_bytes("a.json", b"{}")
        remount(mnt, "ro")
        with pytest.raises(EnvironmentFault, match=r"^the output file system is read-only: cannot write .*b\.json"):
            store.put_bytes("b.json", b"{}")
        assert store.get_bytes("a.json") == b"{}"  # reads still work


def test_errors_a_sku_can_cause_are_not_environment_faults(tmp_path):
    store = open_store(str(tmp_path / "out"))
    with pytest.raises(OSError) as caught:  # a name too long for the file system: tied to the SKU's id
        store.put_bytes("d/" + "x" * 300 + ".png", b"1")
    assert caught.value.errno == errno.ENAMETOOLONG and not isinstance(caught.value, EnvironmentFault)
    assert environment_fault(caught.value) is None
    assert environment_fault(RuntimeError("injected fault for sku 'S3'")) is None


def test_faults_are_found_through_exception_chains(tmp_path):
    try:
        try:
            raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x.png"))
        except OSError as exc:
            raise RuntimeError("while writing a batch") from exc
    except RuntimeError as outer:
        fault = environment_fault(outer)
    assert isinstance(fault, EnvironmentFault)
    assert str(fault).startswith(f"the output's storage reports an I/O error: cannot write {tmp_path / 'x.png'}")


def _dead_endpoint() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"127.0.0.1:{port}"


def test_transient_store_errors_are_retried_with_backoff_then_stop(caplog):
    fs = pafs.S3FileSystem(
        region=REGION, endpoint_override=_dead_endpoint(), scheme="http", access_key="k", secret_key="s"
    )
    store = Store(fs, f"{BUCKET}/x", "s3", retries=2, backoff_s=0.2)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="factory.io.storage"):
        with pytest.raises(EnvironmentFault) as caught:
            store.put_bytes("d/a.png", b"1")
    assert time.perf_counter() - t0 >= 0.2 + 0.4  # waited 0.2 s, then 0.4 s
    assert [r.getMessage().split(" in ")[-1] for r in caplog.records if "retry" in r.getMessage()] == ["0.2s", "0.4s"]
    msg = str(caught.value)
    assert msg.startswith(f"the object store cannot be reached: cannot write s3://{BUCKET}/x/d/a.png after 3 attempt")


def test_refused_credentials_stop_at_once(s3_server):
    """A real S3 server refusing a wrong secret (as it refuses expired credentials): not retried, named."""
    endpoint = s3_server.endpoint.removeprefix("http://")
    fs = pafs.S3FileSystem(
        region=REGION, endpoint_override=endpoint, scheme="http", access_key="adfactory-test", secret_key="wrong"
    )
    store = Store(fs, f"{BUCKET}/creds", "s3", retries=3, backoff_s=5.0)
    t0 = time.perf_counter()
    with pytest.raises(EnvironmentFault, match=r"^the object store refused the credentials .*s3://adfactory/creds/a"):
        store.put_bytes("a", b"1")
    assert time.perf_counter() - t0 < 5.0  # no backoff wait: a retry cannot fix credentials
