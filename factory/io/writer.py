"""PNG encoding, and atomic local writes for tools (calibration reports).

A night's outputs (images, parts, manifests, run.json, `_SUCCESS`) go through factory.io.storage.Store, which
gives the same guarantee on local disks and object stores: a reader never sees half a file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Temp file + rename. `durable` also fsyncs (manifests, parts, markers); images skip it: a crash of the
    process cannot leave a half file either way, and an image lost to a power cut is regenerated on resume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Any) -> bytes:
    """PIL image -> PNG bytes. PIL writes no timestamps, so equal pixels give equal bytes. zlib level 3: ~25 %
    faster than PIL's default 6 for ~4 % larger files (measured on the demo images)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
