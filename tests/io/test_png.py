import os
import stat
from pathlib import Path

import pytest

from factory.io.paths import image_relpath
from factory.io.storage import open_store

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
    assert open_store(str(tmp_path)).path(f"2026-11-21/{rel}").startswith(f"{tmp_path}/2026-11-21/images/shoes/")


def test_names_never_collide():
    ids = HOSTILE + ["a_b", "a?b", "a*b", "A_B"]
    names = {image_relpath("shoes", s, 0) for s in set(ids)}
    assert len(names) == len(set(ids))
    assert image_relpath("shoes", "a", 0) != image_relpath("shoes", "a", 1)


def test_store_refuses_escape(tmp_path):
    with pytest.raises(ValueError):
        open_store(str(tmp_path)).path("2026-11-21/../../x.png")


@pytest.mark.parametrize(
    "umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)], ids=["umask022", "umask027"]
)
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    """PNGs, manifest partitions, run.json and the lock as the umask says (mkstemp would make them 0600)."""
    from factory.io import layout
    from factory.io.lock import RunLock

    old = os.umask(umask)
    try:
        store = open_store(str(tmp_path))
        store.put_bytes("d/images/a.png", b"png", durability="none")
        store.put_bytes("d/run.json", b"{}")
        layout.write_manifest(store, "approved", "2026-11-21", [])
        with RunLock(tmp_path / "d", "r"):
            lock_mode = stat.S_IMODE((tmp_path / "d" / ".lock").stat().st_mode)
    finally:
        os.umask(old)
    assert lock_mode == file_mode
    for p in tmp_path.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (dir_mode if p.is_dir() else file_mode), p
