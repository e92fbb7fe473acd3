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


def _pil_png(image, text=()):
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for t in text:
        (info.add_itxt if t.international else info.add_text)(t.key, t.value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3, pnginfo=info)
    return buf.getvalue()


def test_the_numpy_encoder_writes_pil_s_bytes():
    """Every filter PIL picks, odd and tiny sizes, several IDAT blocks (incl. a row wider than PIL's 64 KiB block),
    tEXt and iTXt (Latin-1 and not)."""
    import numpy as np
    from PIL import Image

    from factory.io import png
    from factory.tools.benchmarks.sim_device import pseudo_image

    assert png._fast_matches_pil()  # this machine's zlib is PIL's: the fast path is the one in use
    rng = np.random.default_rng(11)
    arrays = [pseudo_image(s, 512, 512) for s in range(2)] + [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(1, 1, 3), (2, 5, 3), (37, 53, 3), (3, 16500, 3)]
    ]
    arrays.append(np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None] * 4, (64, 70, 3)).copy())  # Up rows
    arrays.append(np.zeros((33, 65, 3), np.uint8))  # blank: every row cost 0
    text = [
        png.PngText("XML:com.adobe.xmp", "<x>é</x>", True),
        png.PngText("parameters", "a\nb"),
        png.PngText("k", "鞋"),
    ]
    for a in arrays:
        image = Image.fromarray(a)
        assert png.png_bytes(image, text) == _pil_png(image, text), a.shape
        assert png.png_bytes(image) == _pil_png(image), a.shape


def test_other_images_go_through_pil():
    from PIL import Image

    from factory.io import png

    gray, rgba = Image.new("L", (9, 7), 40), Image.new("RGBA", (9, 7), (1, 2, 3, 4))
    with_icc = Image.new("RGB", (9, 7), (5, 6, 7))
    with_icc.info["icc_profile"] = b"not a real profile"
    assert not any(png._fast_path(im) for im in (gray, rgba, with_icc))
    for im in (gray, rgba):
        assert png.png_bytes(im) == _pil_png(im)
