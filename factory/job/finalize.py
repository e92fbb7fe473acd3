"""The end of a night: the approve/review split, the three manifest partitions, counts, run.json, `_SUCCESS` last."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.config import QualityConfig
from factory.io import layout, records
from factory.io.records import (
    ADDED_COLUMNS,
    EMBEDDING_SCHEMA,
    IMAGE_KEY,
    SIBLING_IN_REVIEW,
    ImageRecord,
    RejectedRow,
)
from factory.io.storage import Store
from factory.job import parts
from factory.job.night_sort import RANK, SortedRows, sku_codes, sort_night
from factory.quality import duplicates
from factory.quality.reasons import NEAR_DUPLICATE, REFERENCE_MATCH, sort_reasons


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
    """Add near_duplicate / reference_match to rows held in memory (part schema; quality/duplicates.py), per
    category, in (sku_id, variant, placement) order: what `finalize_night` does range by range, for tools and
    tests. `method` (SEARCH_METHODS) overrides the choice by size."""
    table = sort_rows(table)
    usable, missing = usable_rows(table)
    ranks = np.arange(table.num_rows)
    cats = table["category"].to_numpy(zero_copy_only=False)
    emb = embedding_matrix(table["clip_embedding"].filter(pa.array(usable)))
    by_cat = {c: (ranks[usable][cats[usable] == c], emb[cats[usable] == c]) for c in sorted(set(cats[usable]))}
    matches, info = search(by_cat, sku_codes(table["sku_id"]), table.num_rows, thresholds, refs, method)
    info["missing_embeddings"] = missing
    return apply_matches(table, ranks, usable, matches, table["sku_id"], refs), info


def usable_rows(table: pa.Table) -> tuple[np.ndarray, int]:
    """Rows that take part in the similarity search (an embedding, no generation error), and how many rows without
    an error have no embedding (images from before embeddings were kept)."""
    no_error = pc.invert(parts.has_error(table)).to_numpy(zero_copy_only=False)
    has_emb = pc.is_valid(table["clip_embedding"]).to_numpy(zero_copy_only=False)
    return has_emb & no_error, int((~has_emb & no_error).sum())


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column without nulls as one (n, d) float32 matrix (no per-row Python lists)."""
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)


@dataclass
class Matches:
    """Per row of the night (its rank in (sku_id, variant, placement) order): the near-duplicate partner's rank and
    cosine, the closest reference's index and cosine; -1 where there is no match."""

    dup: np.ndarray
    dup_score: np.ndarray
    ref: np.ndarray
    ref_score: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Matches:
        return cls(np.full(n, -1, np.int64), np.zeros(n, np.float32), np.full(n, -1, np.int64), np.zeros(n, np.float32))


CategoryRows = dict[str, tuple[np.ndarray, duplicates.Embeddings]]  # category -> (ranks, their embeddings)


def search(
    by_cat: CategoryRows,
    codes: np.ndarray,
    n: int,
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    method: str | None,
) -> tuple[Matches | None, dict[str, Any]]:
    """The per-category searches (`codes`: sku codes by rank); None when no row has an embedding."""
    info = {"method": "numpy", "images_compared": 0, "missing_embeddings": 0, "near_duplicates": 0}
    info["reference_images"], info["reference_matches"] = len(refs.names) if refs else 0, 0
    if not by_cat:
        return None, info
    m = Matches.empty(n)
    for cat, (ranks, emb) in by_cat.items():
        q, how = thresholds[cat], method or duplicates.similarity_method(len(ranks))
        partner, score = duplicates.best_earlier(codes[ranks], emb, q.near_duplicate, how)
        found = partner >= 0
        m.dup[ranks[found]], m.dup_score[ranks[found]] = ranks[partner[found]], score[found]
        if refs is not None and len(refs.names):
            which, best = duplicates.best_reference(emb, refs, how)
            hit = best >= q.reference_threshold
            m.ref[ranks[hit]], m.ref_score[ranks[hit]] = which[hit], best[hit]
            info["reference_matches"] += int(hit.sum())
        info["images_compared"] += len(ranks)
        info["near_duplicates"] += int(found.sum())
        if how == "faiss":
            info["method"] = "faiss"
    return m, info


def apply_matches(
    table: pa.Table,
    ranks: np.ndarray,
    usable: np.ndarray,
    m: Matches | None,
    sku_by_rank: pa.ChunkedArray | pa.Array,
    refs: duplicates.References | None,
) -> pa.Table:
    """The similarity columns of usable rows replaced by their matches (null without one); reasons of matched rows.
    `ranks`: each row's rank in the night (the index of `m` and of `sku_by_rank`)."""
    if m is None or not usable.any():
        return table
    dup, ref = m.dup[ranks], m.ref[ranks]
    no_dup, no_ref = ~usable | (dup < 0), ~usable | (ref < 0)
    names = pa.array(refs.names if refs else [], pa.string())
    values = {
        "duplicate_of": sku_by_rank.take(pa.array(np.where(no_dup, 0, dup), mask=no_dup)),
        "duplicate_score": pa.array(m.dup_score[ranks], pa.float32(), mask=no_dup),
        "reference_file": names.take(pa.array(np.where(no_ref, 0, ref), mask=no_ref)),
        "reference_score": pa.array(m.ref_score[ranks], pa.float32(), mask=no_ref),
    }
    mask = pa.array(usable)
    for name, column in values.items():
        field = table.schema.field(name)
        column = pc.cast(column, field.type)
        table = table.set_column(table.schema.get_field_index(name), field, pc.if_else(mask, column, table[name]))
    matched = np.flatnonzero(~no_dup | ~no_ref)
    if len(matched):
        reasons = table["reasons"].to_pylist()
        for i in matched.tolist():
            extra = [NEAR_DUPLICATE] * bool(not no_dup[i]) + [REFERENCE_MATCH] * bool(not no_ref[i])
            reasons[i] = sort_reasons(reasons[i] + extra)
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


def read_embeddings(store: Store, date: str) -> pa.Table:
    """A completed date's embeddings (sku_id, variant, placement, clip_embedding), so cache hits join the night's
    near-duplicate and reference checks; no rows for dates from before embeddings were kept."""
    schema = pa.schema([EMBEDDING_SCHEMA.field(c) for c in (*IMAGE_KEY, "clip_embedding")])
    try:
        with store.open_input_file(f"{date}/{layout.EMBEDDINGS_FILE}") as f:
            table = pq.read_table(f)
    except (pa.ArrowException, OSError):
        return schema.empty_table()
    return layout.with_added_columns(table, ADDED_COLUMNS).select(schema.names).cast(schema)


def split_outcomes(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A SKU is approved only if all its images (variants, placements) pass; otherwise all go to review together.

    `table`: rows in (sku_id, variant, placement) order (`sort_rows`; finalize's ranges are); returns the approved
    and review rows in that order, review with `reason` and `detail`."""
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


def outcome_counts(approved: pa.Table, review: pa.Table) -> dict[str, Counter[str]]:
    """Images per category: approved at first pass, approved after repair, review (summed over ranges)."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    passed = approved.group_by(["category", "repaired"], use_threads=False).aggregate([("sku_id", "count")])
    for cat, repaired, n in zip(*(passed[c].to_pylist() for c in ("category", "repaired", "sku_id_count"))):
        groups[cat]["repaired" if repaired else "first_pass"] += n
    held = review.group_by("category", use_threads=False).aggregate([("sku_id", "count")])
    for cat, n in zip(held["category"].to_pylist(), held["sku_id_count"].to_pylist()):
        groups[cat]["review"] += n
    return groups


def outcome_rates(groups: dict[str, Counter[str]]) -> dict[str, dict[str, float]]:
    """Image-level shares per category and overall: approved at first pass, approved after repair, review."""
    groups = {cat: Counter(c) for cat, c in groups.items()}
    total: Counter[str] = Counter()
    for c in groups.values():
        total.update(c)
    if groups:
        groups["all"] = total
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


@dataclass
class Outcome:
    """What finalize found, summed over the ranges: the run's counts, by category, gate outcomes and reasons."""

    approved_images: int = 0
    review_images: int = 0
    approved_skus: int = 0
    review_skus: int = 0
    generation_errors: int = 0  # review rows with an error
    prompts_truncated: int = 0
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    review_reasons: Counter[str] = field(default_factory=Counter)
    similarity: dict[str, Any] = field(default_factory=dict)
    similarity_s: float = 0.0

    def add(self, approved: pa.Table, review: pa.Table) -> None:
        self.approved_images += approved.num_rows
        self.review_images += review.num_rows
        self.approved_skus += pc.count_distinct(approved["sku_id"]).as_py()  # ranges never split a SKU
        self.review_skus += pc.count_distinct(review["sku_id"]).as_py()
        self.generation_errors += _count_true(parts.has_error(review))
        self.prompts_truncated += _count_true(approved["prompt_truncated"]) + _count_true(review["prompt_truncated"])
        for cat, fates in records.by_category(approved, review, []).items():
            mine = self.by_category.setdefault(cat, {"approved": 0, "review": 0, "rejected": 0})
            for fate, n in fates.items():
                mine[fate] += n
        for cat, c in outcome_counts(approved, review).items():
            self.outcomes[cat].update(c)
        for reasons in review["reasons"].to_pylist():  # an image held for a sibling counts as sibling_in_review
            self.review_reasons.update(reasons or [SIBLING_IN_REVIEW])


def _count_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)


def finalize_night(
    store: Store,
    date: str,
    files: list[parts.RowFile],
    thresholds: dict[str, QualityConfig],
    refs: duplicates.References | None,
    rejected: list[RejectedRow],
) -> Outcome:
    """The night's rows (`files`: part files and the rows of each that count) into the manifests and
    `<date>/embeddings.parquet`, in bounded memory: an external range sort (night_sort), the similarity search over
    per-category embeddings spilled to local disk, then range by range the matches applied, the approve/review
    split, and the rows appended to the manifest files as row groups (each file atomic)."""
    with tempfile.TemporaryDirectory(prefix="adfactory-finalize-") as tmp:
        rows = sort_night(store, files, Path(tmp))
        t0 = time.perf_counter()
        by_cat, missing = _spill_embeddings(rows, Path(tmp))
        matches, info = search(by_cat, sku_codes(rows.keys["sku_id"]), rows.rows, thresholds, refs, None)
        info["missing_embeddings"] = missing
        out = Outcome(similarity=info, similarity_s=time.perf_counter() - t0)
        del by_cat
        with layout.ManifestWriters(store, date) as writers:
            for table in rows.ranges():
                ranks = table[RANK].to_numpy()
                table = apply_matches(
                    table.drop_columns([RANK]), ranks, usable_rows(table)[0], matches, rows.keys["sku_id"], refs
                )
                embeddings = _embedding_rows(table)
                approved, review = split_outcomes(table.drop_columns(["clip_embedding"]))  # not a manifest column
                del table
                writers.write(approved, review, embeddings)
                out.add(approved, review)
            writers.write_rejected(rejected)
    return out


def _spill_embeddings(rows: SortedRows, directory: Path) -> tuple[CategoryRows, int]:
    """Each category's usable embeddings in rank order as a local EmbeddingSpill, with their ranks; and how many
    rows without an error have no embedding."""
    spills: dict[str, duplicates.EmbeddingSpill] = {}
    ranks: dict[str, list[np.ndarray]] = defaultdict(list)
    missing = 0
    for table in rows.ranges():
        usable, m = usable_rows(table)
        missing += m
        if not usable.any():
            continue
        table = table.filter(pa.array(usable))
        cats, rank = table["category"].to_numpy(zero_copy_only=False), table[RANK].to_numpy()
        emb = embedding_matrix(table["clip_embedding"])
        for cat in sorted(set(cats)):
            here = cats == cat
            if cat not in spills:
                spills[cat] = duplicates.EmbeddingSpill(directory / f"emb-{len(spills):04d}.f32")
            spills[cat].append(emb[here])
            ranks[cat].append(rank[here])
    return {c: (np.concatenate(ranks[c]), spills[c].close()) for c in sorted(spills)}, missing


def _embedding_rows(table: pa.Table) -> pa.Table:
    """The rows of `<date>/embeddings.parquet` (what the next nights' cache hits carry into their checks)."""
    table = table.filter(pc.is_valid(table["clip_embedding"]))
    return table.select(EMBEDDING_SCHEMA.names).cast(EMBEDDING_SCHEMA)
