"""Outputs: safe image paths, atomic file writes, and the parquet manifests with explicit schemas.

Everything is written to a temporary name in the destination directory and renamed into place (`os.replace` is
atomic on POSIX), so a reader never sees a half-written PNG, manifest or run.json, and rewriting the same file
(a retried batch, a rerun) is idempotent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # no dots: `nul.txt` must not become a `nul.*` name
_STEM_CHARS = 48  # readable prefix; the hash suffix is what makes names unique


def image_relpath(category: str, sku_id: str, variant: int) -> str:
    """`images/<category>/<readable-prefix>-<sha256(sku_id)[:16]>-v<variant>.png`, relative to the date directory.

    The prefix keeps only [A-Za-z0-9_-] (no separators, no dots, no NUL), so the only dot is the extension; the hash
    suffix makes two different sku_ids map to different names even when their prefixes are equal, and also keeps
    Windows-reserved stems (`CON`, `nul`) from standing alone. `category` is a validated template name.
    """
    prefix = _UNSAFE.sub("_", sku_id)[:_STEM_CHARS] or "sku"
    digest = hashlib.sha256(sku_id.encode("utf-8")).hexdigest()[:16]
    return f"images/{category}/{prefix}-{digest}-v{variant}.png"


def safe_join(root: Path, relpath: str) -> Path:
    """Join and verify the result stays inside `root` (defence in depth on top of `image_relpath`)."""
    path = (root / relpath).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"refusing to write outside the output directory: {relpath!r}")
    return path


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


def link_or_copy(src: Path, dst: Path) -> None:
    """Place `src` at `dst` atomically: a hardlink when on the same filesystem (no extra bytes), else a copy."""
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def png_bytes(image: Any) -> bytes:
    """PIL image -> PNG bytes. PIL writes no timestamps, so equal pixels give equal bytes. zlib level 3: ~25 %
    faster than PIL's default 6 for ~4 % larger files (measured on the demo images)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Manifests (documented column by column in README)
# --------------------------------------------------------------------------------------------------------------

_IMAGE_FIELDS = [
    pa.field("run_date", pa.date32(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("sku_id", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("variant", pa.int32(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("negative_prompt", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("bucket", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("steps", pa.int32(), nullable=False),
    pa.field("clip_score", pa.float32(), nullable=True),
    pa.field("clip_score_100", pa.float32(), nullable=True),
    pa.field("iqa_mean", pa.float32(), nullable=True),
    pa.field("iqa", pa.map_(pa.string(), pa.float32()), nullable=True),
    pa.field("unsafe_score", pa.float32(), nullable=True),
    pa.field("pixel_std", pa.float32(), nullable=True),
    pa.field("overexposed_frac", pa.float32(), nullable=True),
    pa.field("underexposed_frac", pa.float32(), nullable=True),
    pa.field("laplacian_var", pa.float32(), nullable=True),
    pa.field("saturation_mean", pa.float32(), nullable=True),
    pa.field("reasons", pa.list_(pa.string()), nullable=False),
    pa.field("initial_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("repaired", pa.bool_(), nullable=False),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("repair_box", pa.list_(pa.int32()), nullable=True),
    pa.field("image_path", pa.string(), nullable=True),
    pa.field("model", pa.string(), nullable=False),
    pa.field("template_version", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int32(), nullable=True),
    pa.field("prompt_truncated", pa.bool_(), nullable=True),
    pa.field("cache_key", pa.string(), nullable=False),
    pa.field("cached", pa.bool_(), nullable=False),
    pa.field("cache_source_date", pa.date32(), nullable=True),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
]

APPROVED_SCHEMA = pa.schema(_IMAGE_FIELDS)
REVIEW_SCHEMA = pa.schema(
    _IMAGE_FIELDS
    + [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("sku_id", pa.string(), nullable=True),
        pa.field("category", pa.string(), nullable=True),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
    ]
)
MANIFEST_SCHEMAS = {"approved": APPROVED_SCHEMA, "review": REVIEW_SCHEMA, "rejected": REJECTED_SCHEMA}


def write_manifest(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write rows (dicts with exactly the schema's columns) as one parquet file, atomically."""
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue().to_pybytes())
