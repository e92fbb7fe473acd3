"""The end of a night: the approve/review split, the three manifest partitions, counts, run.json, `_SUCCESS` last."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.config import QualityConfig
from factory.io import layout
from factory.io.records import EMBEDDING_SCHEMA, SIBLING_IN_REVIEW, ImageRecord, RejectedRow
from factory.io.storage import Store
from factory.job import parts
from factory.quality import duplicates
from factory.quality.reasons import NEAR_DUPLICATE, REFERENCE_MATCH, sort_reasons

EMBEDDINGS_FILE = "embeddings.parquet"  # <date>/: what the next nights' cache hits carry into their checks


def flag_similar(
    records: list[ImageRecord],
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    method: str | None = None,
) -> tuple[list[ImageRecord], dict[str, Any]]:
    """Add near_duplicate / reference_match to the night's images (quality/duplicates.py), per category, in
    (sku_id, variant) order. Records without an embedding (errors, images from before embeddings were kept) are
    left as they are and counted. `method` (SEARCH_METHODS) overrides the choice by size (benchmarks, tests)."""
    records = sorted(records, key=lambda r: r.key)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.clip_embedding is not None and not r.error:
            by_cat[r.category].append(i)
    info = {"method": "numpy", "images_compared": 0, "missing_embeddings": 0, "near_duplicates": 0}
    info["missing_embeddings"] = sum(1 for r in records if r.clip_embedding is None and not r.error)
    info["reference_images"], info["reference_matches"] = len(refs.names) if refs else 0, 0
    for cat, rows in sorted(by_cat.items()):
        emb = np.array([records[i].clip_embedding for i in rows], dtype=np.float32)
        q = thresholds[cat]
        how = method or duplicates.similarity_method(len(rows))
        dups = duplicates.near_duplicates([records[i].sku_id for i in rows], emb, q.near_duplicate, how)
        refm = duplicates.reference_matches(emb, refs, [q.reference_threshold] * len(rows), how) if refs else {}
        info["images_compared"] += len(rows)
        if how == "faiss":
            info["method"] = "faiss"
        for k, i in enumerate(rows):
            records[i] = _with_matches(records[i], dups.get(k), refm.get(k))
        info["near_duplicates"] += len(dups)
        info["reference_matches"] += len(refm)
    return records, info


def _with_matches(r: ImageRecord, dup: duplicates.Match | None, ref: duplicates.Match | None) -> ImageRecord:
    found = ([NEAR_DUPLICATE] if dup else []) + ([REFERENCE_MATCH] if ref else [])
    return r.replace(
        reasons=sort_reasons(r.reasons + found) if found else r.reasons,
        duplicate_of=dup.other if dup else None,
        duplicate_score=dup.score if dup else None,
        reference_file=ref.other if ref else None,
        reference_score=ref.score if ref else None,
    )


def _similarity_detail(r: ImageRecord) -> str | None:
    notes = []
    if r.duplicate_of is not None:
        notes.append(f"near_duplicate of {r.duplicate_of!r} (cosine {r.duplicate_score:.3f})")
    if r.reference_file is not None:
        notes.append(f"reference_match {r.reference_file!r} (cosine {r.reference_score:.3f})")
    return "; ".join(notes) or None


def write_embeddings(store: Store, date: str, records: list[ImageRecord]) -> None:
    """The night's CLIP image embeddings, `<date>/embeddings.parquet` (not a manifest table: a cache input)."""
    rows = [r.to_row() for r in sorted(records, key=lambda r: r.key) if r.clip_embedding is not None]
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in EMBEDDING_SCHEMA} for r in rows], EMBEDDING_SCHEMA)
    with store.open_output_stream(f"{date}/{EMBEDDINGS_FILE}") as f:
        pq.write_table(table, f, compression="zstd")


def read_embeddings(store: Store, date: str) -> dict[tuple[str, int], list[float]]:
    """A completed date's embeddings, so cache hits join the night's near-duplicate and reference checks; {} for
    dates from before embeddings were kept."""
    try:
        with store.open_input_file(f"{date}/{EMBEDDINGS_FILE}") as f:
            rows = pq.read_table(f, columns=["sku_id", "variant", "clip_embedding"]).to_pylist()
    except (pa.ArrowException, OSError):
        return {}
    return {(r["sku_id"], r["variant"]): r["clip_embedding"] for r in rows}


def split_outcomes(records: Iterable[ImageRecord]) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A SKU is approved only if all its variants pass; otherwise all its variants go to review together."""
    records = sorted(records, key=lambda r: r.key)
    failing = {r.sku_id for r in records if r.reasons}
    approved, review = [], []
    for r in records:
        if r.sku_id not in failing:
            approved.append(r)
        else:
            review.append(
                r.replace(
                    reason=",".join(r.reasons) or SIBLING_IN_REVIEW,
                    detail=r.error or _similarity_detail(r),
                    image_path=None if r.error else r.image_path,
                )
            )
    return approved, review


def write_manifests(
    store: Store, date: str, approved: list[ImageRecord], review: list[ImageRecord], rejected: list[RejectedRow]
) -> None:
    """Replace the night's partition of each manifest table (factory.io.layout)."""
    for kind, records in (("approved", approved), ("review", review), ("rejected", rejected)):
        layout.write_manifest(store, kind, date, [r.to_row() for r in records])


def outcome_rates(approved: list[ImageRecord], review: list[ImageRecord]) -> dict[str, dict[str, float]]:
    """Image-level shares per category and overall: approved at first pass, approved after repair, review."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for records, fate in ((approved, None), (review, "review")):
        for r in records:
            outcome = fate or ("repaired" if r.repaired else "first_pass")
            groups[r.category][outcome] += 1
            groups["all"][outcome] += 1
    kinds = ("first_pass", "repaired", "review")
    return {
        cat: {
            **{k: c[k] for k in kinds},
            **{f"{k}_share": round(c[k] / max(sum(c.values()), 1), 4) for k in kinds},
        }
        for cat, c in sorted(groups.items())
    }


def by_category(
    approved: list[ImageRecord], review: list[ImageRecord], rejected: list[RejectedRow]
) -> dict[str, dict[str, int]]:
    """SKUs per category and fate (rejected: input rows)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"approved": 0, "review": 0, "rejected": 0})
    for name, records in (("approved", approved), ("review", review)):
        for _, cat in {(r.sku_id, r.category) for r in records}:
            out[cat][name] += 1
    for r in rejected:
        out[r.category if isinstance(r.category, str) else "<none>"]["rejected"] += 1
    return dict(out)


def pixel_stats(stage: Counter[str]) -> dict[str, Any]:
    needed = stage["pixels_needed"]
    return {
        "pixels_computed": int(stage["pixels_computed"]),  # padding slots and promoted sizes included
        "pixels_needed": int(needed),
        "pixel_waste": round(stage["pixels_computed"] / needed, 4) if needed else 1.0,
    }


def write_run_info(store: Store, date: str, info: dict[str, Any], success: bool, lock: Any = None) -> None:
    """run.json always (a failed night says why); `_SUCCESS` only for a night that succeeded, and last. `lock`
    (RunLock / ObjectLease) is checked first: a run that lost its lease must not mark the night complete."""
    info = {**info, "finished_at": dt.datetime.now(dt.UTC).isoformat(), "status": "ok" if success else "failed"}
    parts.write_json(store, layout.run_info_path(date), info)
    if success:
        if lock is not None:
            lock.check()
        keep = ("run_id", "run_date", "finished_at", "counts", "timings", "by_category")
        parts.write_success(store, date, {k: info[k] for k in keep})
