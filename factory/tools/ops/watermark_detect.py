"""`adfactory provenance detect` and the watermark part of `provenance verify`: read the invisible watermark
(factory.io.watermark) of files that may have lost every other mark, and match its payload to the manifests'
`produce_id` under an output root.

The payload is a keyed hash of the ProduceID stem (SKU hash + variant) and the producer, so matching recomputes it
for every approved and review row of every night under the root: one HMAC per row, no index to keep.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from factory.config import FactoryConfig
from factory.errors import ConfigError, InputError
from factory.io import watermark
from factory.io.layout import read_table
from factory.io.provenance import Report, WatermarkCheck, describe_watermark, stem_of, verify_files
from factory.io.storage import open_store

_MATCH_KINDS = ("approved", "review")  # rejected rows have no image
_MATCH_COLUMNS = ("run_date", "sku_id", "variant", "produce_id", "image_path")


def watermark_check(cfg: FactoryConfig, need_secret: bool) -> WatermarkCheck | None:
    """The check for this config: the secret from its environment variable, the buckets' sizes. Without the
    variable: ConfigError when `need_secret` or `provenance.watermark` is on, else None (not checked)."""
    p = cfg.provenance
    try:
        secret = watermark.secret_from_env(p.watermark_secret_env)
    except ConfigError:
        if need_secret or p.watermark:
            raise
        return None
    sizes = tuple(dict.fromkeys((b.width, b.height) for b in cfg.planner.buckets))
    return WatermarkCheck(secret, sizes, required=p.watermark)


def manifest_index(cfg: FactoryConfig, output: str, secret: bytes) -> dict[str, list[dict[str, Any]]]:
    """payload (hex) -> the manifest rows (every night under `output`) whose image carries it."""
    store = open_store(output, cfg.storage, what="--output")
    index: dict[str, list[dict[str, Any]]] = defaultdict(list)
    keys: dict[str, str] = {}
    for kind in _MATCH_KINDS:
        try:
            table = read_table(store, kind).select(list(_MATCH_COLUMNS))
        except FileNotFoundError:
            continue  # a root whose nights wrote no such table
        for row in table.to_pylist():
            pid = row["produce_id"]
            if not pid:
                continue
            stem = stem_of(pid)
            if stem not in keys:
                keys[stem] = watermark.payload_key(secret, cfg.provenance.producer, stem).hex()
            index[keys[stem]].append({**row, "run_date": str(row["run_date"]), "manifest": kind})
    return index


def _attach(report: Report, index: dict[str, list[dict[str, Any]]] | None) -> None:
    w = report.watermark
    if w is None or index is None:
        return
    w["searched"] = True
    if w["found"]:
        # sku_id is untrusted input: repr() keeps control characters out of the terminal
        w["matches"] = [
            f"{m['manifest']} {m['run_date']} sku_id={m['sku_id']!r} variant={m['variant']} "
            f"produce_id={m['produce_id']}"
            for m in index.get(w["payload"], [])
        ]


def verify(cfg: FactoryConfig, files: list[Path], trust_anchors: Path | None, output: str | None) -> list[Report]:
    """Every mark of each file, the watermark included when its secret is set (required when `--output` is)."""
    check = watermark_check(cfg, need_secret=output is not None)
    reports = verify_files(files, trust_anchors, check)
    index = manifest_index(cfg, output, check.secret) if output and check else None
    for r in reports:
        _attach(r, index)
    return reports


def detect(cfg: FactoryConfig, files: list[Path], output: str | None) -> list[Report]:
    """The watermark alone, for files of any format without metadata (JPEG, WebP, screenshots)."""
    found = watermark_check(cfg, need_secret=True)  # ConfigError without the secret, never None
    check = WatermarkCheck(found.secret, found.sizes, required=True) if found else None
    if check is None:
        raise ConfigError("no watermark secret")
    index = manifest_index(cfg, output, check.secret) if output else None
    reports = []
    for f in files:
        report = Report(str(f))
        try:
            with Image.open(f) as im:
                pixels = im.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"{f}: no such file") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{f}: not a readable image ({exc})") from None
        check.check(pixels, None, report)
        _attach(report, index)
        reports.append(report)
    return reports


def describe_detection(report: Report) -> str:
    """`detect`'s lines for one file."""
    return f"{report.path}:\n  {describe_watermark(report.watermark)}"
