"""Image names derived from untrusted sku_ids (Store.path also refuses any path that would leave the output root)."""

from __future__ import annotations

import hashlib
import re

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
