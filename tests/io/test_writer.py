import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.io.paths import image_relpath, safe_join
from factory.io.records import MANIFEST_SCHEMAS
from factory.io.writer import atomic_write_bytes, write_manifest

HOSTILE = [
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    "a\\b",
    "/abs",
    "a\x00b",
    "a\nb",
    "x" * 300,
    "鞋子-42",
    "CON",
    "nul.txt",
    "COM1",
    " ",
    ".hidden",
    "a b",
    "a_b",
]


@pytest.mark.parametrize("sku_id", HOSTILE)
def test_image_paths_stay_inside(tmp_path, sku_id):
    rel = image_relpath("shoes", sku_id, 0)
    parts = Path(rel).parts
    assert parts[:2] == ("images", "shoes") and len(parts) == 3
    name = parts[2]
    assert not name.startswith(".") and "\x00" not in name and len(name) < 100
    assert name.split(".")[0].upper() not in {"CON", "NUL", "COM1"}
    assert safe_join(tmp_path, rel).is_relative_to(tmp_path.resolve())


def test_names_never_collide():
    ids = HOSTILE + ["a_b", "a?b", "a*b", "A_B"]
    names = {image_relpath("shoes", s, 0) for s in set(ids)}
    assert len(names) == len(set(ids))
    assert image_relpath("shoes", "a", 0) != image_relpath("shoes", "a", 1)


def test_safe_join_refuses_escape(tmp_path):
    with pytest.raises(ValueError):
        safe_join(tmp_path, "../x.png")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "d" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["f.bin"]


def test_manifests_have_explicit_schemas_even_when_empty(tmp_path):
    for name, schema in MANIFEST_SCHEMAS.items():
        write_manifest(tmp_path / f"{name}.parquet", [], schema)
        assert pq.read_schema(tmp_path / f"{name}.parquet").equals(schema, check_metadata=False)


@pytest.mark.parametrize(
    "umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)], ids=["umask022", "umask027"]
)
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    """PNGs, manifests, run.json and the lock as the umask says (mkstemp would make them 0600)."""
    from factory.io.writer import link_or_copy, write_json
    from factory.job.lock import RunLock

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "d" / "images" / "a.png", b"png", durable=False)
        write_json(tmp_path / "d" / "run.json", {"a": 1})
        write_manifest(tmp_path / "d" / "manifests" / "approved.parquet", [], MANIFEST_SCHEMAS["approved"])
        link_or_copy(tmp_path / "d" / "run.json", tmp_path / "e" / "linked.json")
        with RunLock(tmp_path / "d", "r"):
            lock_mode = stat.S_IMODE((tmp_path / "d" / ".lock").stat().st_mode)
    finally:
        os.umask(old)
    assert lock_mode == file_mode
    for p in (tmp_path / "d").rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (dir_mode if p.is_dir() else file_mode), p
