"""The Store API against a local directory and a real S3 server (SeaweedFS), with the same assertions for both."""

from __future__ import annotations

import os
import pickle
import stat
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.config import StorageConfig
from factory.errors import ConfigError, StorageError
from factory.io.paths import looks_like_uri
from factory.io.storage import Store, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return open_store(str(tmp_path / "out"))
    return open_store(request.getfixturevalue("s3_uri"))


def test_put_get_exists_list_delete(store):
    store.put_bytes("2026-11-21/images/shoes/a-v0.png", b"png-a")
    store.put_bytes("2026-11-21/run.json", b"{}")
    store.put_bytes("2026-11-22/_SUCCESS", b"")

    assert store.get_bytes("2026-11-21/images/shoes/a-v0.png") == b"png-a"
    assert store.exists("2026-11-21/run.json") and not store.exists("2026-11-21/_SUCCESS")
    assert store.list() == ["2026-11-21/images/shoes/a-v0.png", "2026-11-21/run.json", "2026-11-22/_SUCCESS"]
    assert store.list("2026-11-21/images") == ["2026-11-21/images/shoes/a-v0.png"]
    assert store.list("2026-12-01") == []

    store.put_bytes("2026-11-21/run.json", b'{"v": 2}')  # overwrite in place
    assert store.get_bytes("2026-11-21/run.json") == b'{"v": 2}'

    store.delete("2026-11-21/run.json")
    store.delete("2026-11-21/run.json")  # missing is fine
    assert not store.exists("2026-11-21/run.json")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("2026-11-21/run.json")

    store.delete_tree("2026-11-21")
    assert store.list() == ["2026-11-22/_SUCCESS"]


def test_copy_across_days(store):
    store.put_bytes("2026-11-20/images/bags/x-v0.png", b"yesterday")
    store.copy("2026-11-20/images/bags/x-v0.png", "2026-11-21/images/bags/x-v0.png")
    assert store.get_bytes("2026-11-21/images/bags/x-v0.png") == b"yesterday"
    assert store.get_bytes("2026-11-20/images/bags/x-v0.png") == b"yesterday"


def test_parquet_through_output_stream(store):
    table = pa.table({"sku_id": ["S1", "S2"], "score": [0.5, 0.25]})
    with store.open_output_stream("manifests/approved/run_date=2026-11-21/part-0.parquet") as f:
        pq.write_table(table, f)
    assert pq.read_table(store.open_input_file("manifests/approved/run_date=2026-11-21/part-0.parquet")) == table
    hive = pq.read_table(store.path("manifests/approved"), filesystem=store.fs, partitioning="hive")
    assert hive.column("sku_id").to_pylist() == ["S1", "S2"]
    assert [str(d) for d in hive.column("run_date").to_pylist()] == ["2026-11-21", "2026-11-21"]


def test_failed_stream_leaves_nothing_and_keeps_the_old_file(store):
    store.put_bytes("m.parquet", b"old")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with store.open_output_stream("m.parquet") as f:
            f.write(b"half of the new")
            assert store.get_bytes("m.parquet") == b"old"  # not visible while being written
            raise RuntimeError("writer crashed")
    assert store.get_bytes("m.parquet") == b"old"
    with pytest.raises(RuntimeError):
        with store.open_output_stream("new.parquet") as f:
            f.write(b"partial")
            raise RuntimeError("writer crashed")
    assert not store.exists("new.parquet")
    assert store.list() == ["m.parquet"]  # no temp file left behind either


def test_url_and_path_escapes(store, tmp_path):
    url = store.url("2026-11-21/images/a.png")
    if store.kind == "local":
        assert url == str(tmp_path / "out" / "2026-11-21" / "images" / "a.png")
    else:
        assert url.startswith("s3://adfactory/") and url.endswith("/2026-11-21/images/a.png")
    for bad in ["../x", "a/../../x", "/etc/passwd", "a/../../../etc", "a\\..\\b", "a\x00b"]:
        with pytest.raises(ValueError, match="outside the output root"):
            store.put_bytes(bad, b"x")
    assert store.list() == []


def test_store_pickles_for_ray_workers(store):
    store.put_bytes("a.txt", b"1")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("a.txt") == b"1" and clone.url("a.txt") == store.url("a.txt")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_local_files_honour_the_umask(tmp_path, umask, mode):
    store = open_store(str(tmp_path / "out"))
    old = os.umask(umask)
    try:
        store.put_bytes("a/put.bin", b"x")
        with store.open_output_stream("a/stream.bin") as f:
            f.write(b"y")
        store.put_bytes("a/img.png", b"z", durability="none")
    finally:
        os.umask(old)
    for name in ("put.bin", "stream.bin", "img.png"):
        assert stat.S_IMODE((tmp_path / "out" / "a" / name).stat().st_mode) == mode, name


def test_local_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(outside)
    store = open_store(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="outside the output root"):
        store.put_bytes("link/x", b"x")
    assert not (outside / "x").exists()


def _metrics_after(server, name: str, at_least: float) -> dict[str, float]:
    """The server's samples once `name` reached `at_least` (it counts a request just after answering it)."""
    deadline = time.monotonic() + 10
    while (m := server.metrics()).get(name, 0) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return m


def test_s3_copy_is_server_side(s3_uri, s3_server):
    """The server's own counters: a cross-day copy is one COPY request and no object bytes reach the server."""
    received = 'SeaweedFS_s3_bucket_traffic_received_bytes_total{bucket="adfactory"}'
    copies = 'SeaweedFS_s3_request_total{bucket="adfactory",code="200",type="COPY"}'
    store = open_store(s3_uri)
    payload = os.urandom(4 << 20)
    before = s3_server.metrics()
    store.put_bytes("2026-11-20/images/big.png", payload)
    middle = _metrics_after(s3_server, received, before.get(received, 0) + len(payload))
    assert middle[received] - before.get(received, 0) >= len(payload)  # control: an upload shows in the counter

    store.copy("2026-11-20/images/big.png", "2026-11-21/images/big.png")
    after = _metrics_after(s3_server, copies, middle.get(copies, 0) + 1)
    assert after.get(copies, 0) >= middle.get(copies, 0) + 1, "no server-side COPY request"
    assert after[received] - middle[received] < 1024, "the copy sent the object's bytes through the client"
    assert store.get_bytes("2026-11-21/images/big.png") == payload


def test_s3_small_objects_are_one_put_each(s3_uri, s3_server):
    """A small object (a PNG, a part) is one PutObject, not a multipart upload (create, part, complete): the
    server's counters see 1 request per object and no POSTs (docs/performance-driver.md)."""
    puts = 'SeaweedFS_s3_request_total{bucket="adfactory",code="200",type="PUT"}'
    posts = 'SeaweedFS_s3_request_total{bucket="adfactory",code="200",type="POST"}'
    store = open_store(s3_uri)
    before = s3_server.metrics()
    for i in range(20):
        store.put_bytes(f"2026-11-21/images/x/{i}.png", os.urandom(2000), durability="none")
    after = _metrics_after(s3_server, puts, before.get(puts, 0) + 20)
    assert after.get(puts, 0) - before.get(puts, 0) == 20
    assert after.get(posts, 0) == before.get(posts, 0)
    assert store.get_bytes("2026-11-21/images/x/7.png") and len(store.list("2026-11-21/images")) == 20


def test_s3_bad_uris_and_unreachable_stores(s3_uri, s3_server, monkeypatch):
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/x")
    with pytest.raises(ConfigError, match="paths.output 's3:/adfactory/x' is neither a local path nor a URI"):
        open_store("s3:/adfactory/x")
    with pytest.raises(ConfigError, match="cannot be opened: Unrecognized filesystem type"):
        open_store("ftp://host/x")
    with pytest.raises(ConfigError, match="has no bucket"):
        open_store("s3:///prefix")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="access refused"):
        open_store(s3_uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.env["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(StorageError, match="cannot be reached"):
        open_store(s3_uri, StorageConfig(endpoint="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="must look like http"):
        open_store(s3_uri, StorageConfig(endpoint="ftp://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="storage.lock must be"):
        open_store(s3_uri, StorageConfig(lock="zookeeper"))


def test_config_endpoint_wins_over_the_environment(s3_uri, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # dead
    store = open_store(s3_uri, StorageConfig(endpoint=s3_server.endpoint))
    store.put_bytes("x", b"1")
    assert store.get_bytes("x") == b"1"


def test_what_counts_as_a_uri():
    assert all(map(looks_like_uri, ["s3://b/p", "s3:/b/p", "s3:b", "gs://b", "file:///x", "hdfs://nn:8020/x"]))
    assert not any(map(looks_like_uri, ["data/output", "/srv/ads", "C:/ads", "./s3", "~/out"]))
