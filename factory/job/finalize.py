"""The end of a night: the approve/review split, the three manifest partitions, counts, run.json, `_SUCCESS` last."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.config import QualityConfig
from factory.io import layout
from factory.io.records import ADDED_COLUMNS, EMBEDDING_SCHEMA, IMAGE_KEY, SIBLING_IN_REVIEW, ImageRecord
from factory.io.storage import Store
from factory.job import parts
from factory.quality import duplicates
from factory.quality.reasons import NEAR_DUPLICATE, REFERENCE_MATCH, sort_reasons

EMBEDDINGS_FILE = "embeddings.parquet"  # <date>/: what the next nights' cache hits carry into their checks


def sort_rows(table: pa.Table) -> pa.Table:
    """Rows in (sku_id, variant, placement) order: the order of every manifest and of the similarity search (a
    SKU's placements sort by name: the order never depends on which other placements were asked for)."""
    return table.sort_by([(c, "ascending") for c in IMAGE_KEY])


def flag_similar(
    records: list[ImageRecord],
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    method: str | None = None,
) -> tuple[list[ImageRecord], dict[str, Any]]:
    """flag_similar_table for a list of records (benchmarks, tests)."""
    table, info = flag_similar_table(parts.records_table(records), thresholds, refs, method)
    return [ImageRecord.from_row(row) for row in table.to_pylist()], info


def flag_similar_table(
    table: pa.Table,
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    method: str | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Add near_duplicate / reference_match to the night's rows (part schema; quality/duplicates.py), per category,
    in (sku_id, variant, placement) order. Rows without an embedding (errors, images from before embeddings were
    kept) are left as they are and counted. `method` (SEARCH_METHODS) overrides the choice by size (benchmarks,
    tests)."""
    table = sort_rows(table)
    no_error = _no_error(table)
    has_emb = pc.is_valid(table["clip_embedding"]).to_numpy(zero_copy_only=False)
    usable = has_emb & no_error
    emb = embedding_matrix(table["clip_embedding"].filter(pa.array(usable)))
    skus, cats = (table[c].to_numpy(zero_copy_only=False) for c in ("sku_id", "category"))
    dups, refm, info = _search(skus, cats, usable, emb, thresholds, refs, method)
    info["missing_embeddings"] = int((~has_emb & no_error).sum())
    return _apply_matches(table, usable, dups, refm), info


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column without nulls as one (n, d) float32 matrix (no per-row Python lists)."""
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)


def has_error(table: pa.Table) -> pa.ChunkedArray:
    """Rows with a (non-empty) generation error."""
    return pc.fill_null(pc.not_equal(table["error"], ""), False)


def _no_error(table: pa.Table) -> np.ndarray:
    return pc.invert(has_error(table)).to_numpy(zero_copy_only=False)


Matches = dict[int, duplicates.Match]


def _search(
    skus: np.ndarray,
    cats: np.ndarray,
    usable: np.ndarray,
    emb: np.ndarray,
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    method: str | None,
) -> tuple[Matches, Matches, dict[str, Any]]:
    """The per-category searches over the usable rows (`emb`: their embeddings, in row order); matches by row."""
    info = {"method": "numpy", "images_compared": 0, "missing_embeddings": 0, "near_duplicates": 0}
    info["reference_images"], info["reference_matches"] = len(refs.names) if refs else 0, 0
    rows_all = np.flatnonzero(usable)
    dups: Matches = {}
    refm: Matches = {}
    for cat in sorted(set(cats[rows_all])):
        sel = np.flatnonzero(cats[rows_all] == cat)
        rows, e, q = rows_all[sel], emb[sel], thresholds[cat]
        how = method or duplicates.similarity_method(len(rows))
        d = duplicates.near_duplicates(skus[rows].tolist(), e, q.near_duplicate, how)
        r = duplicates.reference_matches(e, refs, [q.reference_threshold] * len(rows), how) if refs else {}
        info["images_compared"] += len(rows)
        if how == "faiss":
            info["method"] = "faiss"
        dups.update({int(rows[k]): m for k, m in d.items()})
        refm.update({int(rows[k]): m for k, m in r.items()})
        info["near_duplicates"] += len(d)
        info["reference_matches"] += len(r)
    return dups, refm, info


def _apply_matches(table: pa.Table, usable: np.ndarray, dups: Matches, refm: Matches) -> pa.Table:
    """The similarity columns of usable rows replaced by the matches (null without one); reasons of matched rows."""
    n, mask = table.num_rows, pa.array(usable)
    for name, matches, attr in (
        ("duplicate_of", dups, "other"),
        ("duplicate_score", dups, "score"),
        ("reference_file", refm, "other"),
        ("reference_score", refm, "score"),
    ):
        values = np.full(n, None, dtype=object)
        for i, m in matches.items():
            values[i] = getattr(m, attr)
        column = pa.array(values, table.schema.field(name).type)
        table = table.set_column(table.schema.get_field_index(name), name, pc.if_else(mask, column, table[name]))
    if dups or refm:
        reasons = table["reasons"].to_pylist()
        for i in dups.keys() | refm.keys():
            reasons[i] = sort_reasons(reasons[i] + [NEAR_DUPLICATE] * (i in dups) + [REFERENCE_MATCH] * (i in refm))
        idx = table.schema.get_field_index("reasons")
        table = table.set_column(idx, "reasons", pa.array(reasons, table.schema.field("reasons").type))
    return table


def _similarity_detail(
    dup: str | None, dup_score: float | None, ref: str | None, ref_score: float | None
) -> str | None:
    notes = []
    if dup is not None:
        notes.append(f"near_duplicate of {dup!r} (cosine {dup_score:.3f})")
    if ref is not None:
        notes.append(f"reference_match {ref!r} (cosine {ref_score:.3f})")
    return "; ".join(notes) or None


def write_embeddings(store: Store, date: str, table: pa.Table) -> None:
    """The night's CLIP image embeddings, `<date>/embeddings.parquet` (not a manifest table: a cache input)."""
    table = sort_rows(table.filter(pc.is_valid(table["clip_embedding"])))
    table = table.select(EMBEDDING_SCHEMA.names).cast(EMBEDDING_SCHEMA).combine_chunks()
    with store.open_output_stream(f"{date}/{EMBEDDINGS_FILE}") as f:
        pq.write_table(table, f, compression="zstd")


def read_embeddings(store: Store, date: str) -> pa.Table:
    """A completed date's embeddings (sku_id, variant, placement, clip_embedding), so cache hits join the night's
    near-duplicate and reference checks; no rows for dates from before embeddings were kept."""
    schema = pa.schema([EMBEDDING_SCHEMA.field(c) for c in (*IMAGE_KEY, "clip_embedding")])
    try:
        with store.open_input_file(f"{date}/{EMBEDDINGS_FILE}") as f:
            table = pq.read_table(f)
    except (pa.ArrowException, OSError):
        return schema.empty_table()
    return layout.with_added_columns(table, ADDED_COLUMNS).select(schema.names).cast(schema)


def split_outcomes(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A SKU is approved only if all its images (variants, placements) pass; otherwise all go to review together.

    Returns the approved and review rows (in (sku_id, variant, placement) order), review with `reason` and
    `detail`."""
    table = sort_rows(table)
    failing = pc.unique(table["sku_id"].filter(pc.greater(pc.list_value_length(table["reasons"]), 0)))
    in_review = pc.is_in(table["sku_id"], value_set=failing)
    approved, review = table.filter(pc.invert(in_review)), table.filter(in_review)
    reason = pc.binary_join(review["reasons"], ",")
    reason = pc.if_else(pc.equal(reason, ""), SIBLING_IN_REVIEW, reason)
    cols = [review[c].to_pylist() for c in ("error", "duplicate_of", "duplicate_score", "reference_file")]
    errors, ref_scores = cols[0], review["reference_score"].to_pylist()
    detail = [e or _similarity_detail(d, ds, rf, rs) for e, d, ds, rf, rs in zip(*cols, ref_scores)]
    paths = [None if e else p for e, p in zip(errors, review["image_path"].to_pylist())]
    review = review.set_column(review.schema.get_field_index("image_path"), "image_path", pa.array(paths, pa.string()))
    review = review.append_column("reason", reason).append_column("detail", pa.array(detail, pa.string()))
    return approved, review


def outcome_rates(approved: pa.Table, review: pa.Table) -> dict[str, dict[str, float]]:
    """Image-level shares per category and overall: approved at first pass, approved after repair, review."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    passed = approved.group_by(["category", "repaired"], use_threads=False).aggregate([("sku_id", "count")])
    for cat, repaired, n in zip(*(passed[c].to_pylist() for c in ("category", "repaired", "sku_id_count"))):
        groups[cat]["repaired" if repaired else "first_pass"] += n
    held = review.group_by("category", use_threads=False).aggregate([("sku_id", "count")])
    for cat, n in zip(held["category"].to_pylist(), held["sku_id_count"].to_pylist()):
        groups[cat]["review"] += n
    for c in list(groups.values()):
        groups["all"].update(c)
    kinds = ("first_pass", "repaired", "review")
    return {
        cat: {
            **{k: c[k] for k in kinds},
            **{f"{k}_share": round(c[k] / max(sum(c.values()), 1), 4) for k in kinds},
        }
        for cat, c in sorted(groups.items())
    }


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
    layout.write_json(store, layout.run_info_path(date), info)
    if success:
        if lock is not None:
            lock.check()
        keep = ("run_id", "run_date", "finished_at", "counts", "timings", "by_category")
        layout.write_success(store, date, {k: info[k] for k in keep})
