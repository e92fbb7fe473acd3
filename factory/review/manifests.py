"""Where a night's review inputs and outputs live: the one module of factory/review that knows manifest paths.

Everything the review loop reads or writes goes through a `NightOutputs` (a Store and a date): the manifests (read
with pyarrow through the store; written with factory.job.finalize's writer, so a change of manifest layout is made
there and here only), `run.json` and `_SUCCESS`, the images, the sheet and the decision log under `<date>/review/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from factory.config import FactoryConfig, StorageConfig
from factory.errors import InputError
from factory.inputs.arguments import parse_date
from factory.io import layout
from factory.io.lease import ObjectLease, open_run_lock
from factory.io.lock import RunLock
from factory.io.records import MANIFEST_SCHEMAS, ImageRecord, RejectedRow
from factory.io.storage import Store, open_store

SHEET = "review/sheet.html"  # relative to the date directory
DECISION_LOG = "review/decisions.log.jsonl"
APPLYING = "review/_APPLYING"  # present while `review apply` rewrites a date (its _SUCCESS is then absent)


@dataclass(frozen=True)
class NightOutputs:
    store: Store
    date: str
    storage: StorageConfig

    def rel(self, relpath: str) -> str:
        """A path relative to the output root for `relpath` relative to the date directory."""
        return f"{self.date}/{relpath}"

    @property
    def local_dir(self) -> Path | None:
        """The date directory on a local filesystem, else None (an object store)."""
        return Path(self.store.path(self.date)) if self.store.kind == "local" else None


def open_night(cfg: FactoryConfig, date: str) -> NightOutputs:
    """The outputs of `date` under `cfg.paths.output` (a directory or an object-store URI)."""
    date = parse_date(date)
    return NightOutputs(open_store(cfg.paths.output, cfg.storage), date, cfg.storage)


def manifest_relpath(night: NightOutputs, name: str) -> str:
    """The night's partition of the `name` table, relative to the output root (factory.io.layout)."""
    return layout.partition_path(name, night.date)


def has_manifests(night: NightOutputs) -> bool:
    return night.store.exists(manifest_relpath(night, "review"))


def _read_rows(night: NightOutputs, name: str) -> list[dict[str, Any]]:
    rel = manifest_relpath(night, name)
    try:
        return layout.read_manifest(night.store, name, night.date).to_pylist()
    except FileNotFoundError:
        raise InputError(f"{night.store.url(rel)} does not exist: run the night for {night.date} first") from None
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{night.store.url(rel)} is not a readable manifest ({exc})") from None


def read_images(night: NightOutputs, name: str) -> list[ImageRecord]:
    """The rows of the approved or review manifest."""
    return [ImageRecord.from_row(r) for r in _read_rows(night, name)]


def read_rejected(night: NightOutputs) -> list[RejectedRow]:
    names = MANIFEST_SCHEMAS["rejected"].names
    return [RejectedRow(**{k: r.get(k) for k in names}) for r in _read_rows(night, "rejected")]


def image_bytes(night: NightOutputs, image_path: str) -> bytes:
    """A manifest's image (its `image_path` is relative to the output root)."""
    return night.store.get_bytes(image_path)


def image_href_from_sheet(image_path: str) -> str:
    """A relative link from the sheet (`<date>/review/sheet.html`) to an image (relative to the output root)."""
    return "../../" + quote(image_path)


def read_json(night: NightOutputs, relpath: str) -> dict[str, Any] | None:
    try:
        return json.loads(night.store.get_bytes(night.rel(relpath)))
    except (FileNotFoundError, ValueError):
        return None


def write_json(night: NightOutputs, relpath: str, data: dict[str, Any]) -> None:
    layout.write_json(night.store, night.rel(relpath), data)  # the night's own JSON writer (run.json, _SUCCESS)


def read_run_info(night: NightOutputs) -> dict[str, Any]:
    return read_json(night, "run.json") or {}


def completed(night: NightOutputs) -> bool:
    """The night finished (`_SUCCESS`), or an interrupted `review apply` left it mid-rewrite (rerun apply)."""
    return night.store.exists(night.rel(layout.SUCCESS)) or night.store.exists(night.rel(APPLYING))


def begin_rewrite(night: NightOutputs, what: dict[str, Any]) -> None:
    """Mark the date as being rewritten, then withdraw `_SUCCESS`: readers never see a half-applied date as done."""
    write_json(night, APPLYING, what)
    night.store.delete(night.rel(layout.SUCCESS))


def end_rewrite(night: NightOutputs, run_info: dict[str, Any], success: dict[str, Any]) -> None:
    """run.json, then `_SUCCESS` last, then drop the in-progress mark."""
    write_json(night, "run.json", run_info)
    write_json(night, layout.SUCCESS, success)
    night.store.delete(night.rel(APPLYING))


def read_text(night: NightOutputs, relpath: str) -> str:
    try:
        return night.store.get_bytes(night.rel(relpath)).decode("utf-8")
    except FileNotFoundError:
        return ""


def write_text(night: NightOutputs, relpath: str, text: str) -> str:
    """Write atomically; returns the written file's URL (a local path for a local store)."""
    night.store.put_bytes(night.rel(relpath), text.encode("utf-8"))
    return night.store.url(night.rel(relpath))


def date_lock(night: NightOutputs, owner_id: str) -> RunLock | ObjectLease:
    """The same per-date lock a run takes (so a review never interleaves with a run of that date)."""
    return open_run_lock(night.store, night.date, owner_id, night.storage)
