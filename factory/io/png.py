"""PNG encoding. The bytes are written by factory.io.storage.Store, which is atomic on local disks and object
stores alike: a reader never sees half a file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple


class PngText(NamedTuple):
    """A PNG text chunk: tEXt (iTXt when not Latin-1), or always iTXt when `international` (XMP requires it)."""

    key: str
    value: str
    international: bool = False


def png_bytes(image: Any, text: Sequence[PngText] = ()) -> bytes:
    """PIL image (+ text chunks, in order: factory.io.provenance) -> PNG bytes. PIL writes no timestamps, so equal
    pixels and text give equal bytes. zlib level 3: ~25 % faster than PIL's default 6 for ~4 % larger files
    (measured on the demo images)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for chunk in text:
        if chunk.international:
            info.add_itxt(chunk.key, chunk.value)
        else:
            info.add_text(chunk.key, chunk.value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3, pnginfo=info)
    return buf.getvalue()
