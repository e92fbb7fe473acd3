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
