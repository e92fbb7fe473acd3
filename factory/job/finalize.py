"""The end of a night: the approve/review split, the three manifests, counts, run.json, and `_SUCCESS` last."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from factory.config import QualityConfig
from factory.io.records import EMBEDDING_SCHEMA, MANIFEST_SCHEMAS, SIBLING_IN_REVIEW, ImageRecord, RejectedRow
from factory.io.writer import write_json, write_manifest
from factory.job import parts
from factory.quality import duplicates
from factory.quality.reasons import NEAR_DUPLICATE, REFERENCE_MATCH, sort_reasons

EMBEDDINGS_FILE = "embeddings.parquet"  # manifests/: what the next nights' cache hits carry into their checks


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


def write_embeddings(date_dir: Path, records: list[ImageRecord]) -> None:
    rows = [r.to_row() for r in sorted(records, key=lambda r: r.key) if r.clip_embedding is not None]
    write_manifest(date_dir / "manifests" / EMBEDDINGS_FILE, rows, EMBEDDING_SCHEMA)


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
    date_dir: Path, approved: list[ImageRecord], review: list[ImageRecord], rejected: list[RejectedRow]
):
    manifests = date_dir / "manifests"
    for name, records in (("approved", approved), ("review", review), ("rejected", rejected)):
        write_manifest(manifests / f"{name}.parquet", [r.to_row() for r in records], MANIFEST_SCHEMAS[name])


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


def write_run_info(date_dir: Path, info: dict[str, Any], success: bool) -> None:
    """run.json always (a failed night says why); `_SUCCESS` only for a night that succeeded, and last."""
    info = {**info, "finished_at": dt.datetime.now(dt.UTC).isoformat(), "status": "ok" if success else "failed"}
    write_json(date_dir / "run.json", info)
    if success:
        keep = ("run_id", "run_date", "finished_at", "counts", "timings", "by_category")
        parts.write_success(date_dir, {k: info[k] for k in keep})
