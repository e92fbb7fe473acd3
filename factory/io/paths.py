"""Names under the output root: image paths derived from untrusted sku_ids (Store.path also refuses any path that
would leave the output root), and the test that tells a URI from a local path."""

from __future__ import annotations

import hashlib
import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # no dots: `nul.txt` must not become a `nul.*` name
_STEM_CHARS = 48  # readable prefix; the hash suffix is what makes names unique


def image_relpath(category: str, sku_id: str, variant: int, placement: str = "") -> str:
    """`images/<category>/<readable-prefix>-<sha256(sku_id)[:16]>-v<variant>[-<placement>].png`, relative to the
    date directory (`placement` is a validated config name: lowercase letters, digits, `_`, `-`).

    The prefix keeps only [A-Za-z0-9_-] (no separators, no dots, no NUL), so the only dot is the extension; the hash
    suffix makes two different sku_ids map to different names even when their prefixes are equal, and also keeps
    Windows-reserved stems (`CON`, `nul`) from standing alone. `category` is a validated template name.
    """
    prefix = _UNSAFE.sub("_", sku_id)[:_STEM_CHARS] or "sku"
    digest = hashlib.sha256(sku_id.encode("utf-8")).hexdigest()[:16]
    suffix = f"-{placement}" if placement else ""
    return f"images/{category}/{prefix}-{digest}-v{variant}{suffix}.png"


def looks_like_uri(p: str) -> bool:
    """True for `s3://b/p` and also for malformed `s3:/b` or `s3:b` (so they get an error, not a local `s3:` dir);
    False for plain paths and Windows drives (`C:/x`). Config path resolution must leave these strings alone."""
    m = _SCHEME.match(p.strip())
    return m is not None and len(m.group(1)) > 1
