"""Typed manifest records and the parquet schemas generated from them (the one place columns are declared).

Every producer of manifest rows builds an `ImageRecord` (the worker, a failed batch, the driver's bookkeeping, a
cache hit, resume) or a `RejectedRow` (input validation); writers call `to_row()` and the schemas below, which are
derived from the dataclass fields' `arrow` metadata, so a column cannot exist in one place and not the other.

Column sets: approved = IMAGE_COLUMNS + DECISION_COLUMNS; review = IMAGE_COLUMNS + reason, detail +
DECISION_COLUMNS; a resume part (rolled while a run goes, job/parts.py) = IMAGE_COLUMNS + error, task_key,
clip_embedding; embeddings.parquet = EMBEDDING_COLUMNS (what the cross-day cache carries into the next night's
similarity checks). docs/outputs.md documents each column.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

GENERATION_ERROR = "generation_error"  # a batch that could not be generated: the row goes to review
SIBLING_IN_REVIEW = "sibling_in_review"  # this variant passed, but another variant of the same SKU did not


def col(arrow: pa.DataType, nullable: bool = True, default: Any = None, factory: Any = None) -> Any:
    meta = {"arrow": arrow, "nullable": nullable}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


F32 = pa.float32()


@dataclass
class ImageRecord:
    """One image (or one image that could not be made) of a run."""

    # set by the driver
    run_date: dt.date | None = col(pa.date32(), False)
    run_id: str = col(pa.string(), False, "")
    # the task (from the planner)
    sku_id: str = col(pa.string(), False, "")
    category: str = col(pa.string(), False, "")
    variant: int = col(pa.int32(), False, 0)
    prompt: str = col(pa.string(), False, "")
    negative_prompt: str = col(pa.string(), False, "")
    seed: int = col(pa.int64(), False, 0)
    bucket: str = col(pa.string(), False, "")
    width: int = col(pa.int32(), False, 0)
    height: int = col(pa.int32(), False, 0)
    steps: int = col(pa.int32(), False, 0)
    adapters: list[str] = col(pa.list_(pa.string()), False, factory=list)  # style LoRAs as "name@weight"
    placement: str = col(pa.string(), False, "")  # ad placement ([placements.sizes]); "" = none (a join key: no null)
    # scores (None: not scored, e.g. a generation error)
    clip_score: float | None = col(F32)
    clip_score_100: float | None = col(F32)
    iqa_mean: float | None = col(F32)
    iqa: dict[str, float] | None = col(pa.map_(pa.string(), F32))
    unsafe_score: float | None = col(F32)
    pixel_std: float | None = col(F32)
    overexposed_frac: float | None = col(F32)
    underexposed_frac: float | None = col(F32)
    laplacian_var: float | None = col(F32)
    saturation_mean: float | None = col(F32)
    # the gate's decision and the repair that led to it
    reasons: list[str] = col(pa.list_(pa.string()), False, factory=list)
    initial_reasons: list[str] = col(pa.list_(pa.string()), False, factory=list)
    repaired: bool = col(pa.bool_(), False, False)
    attempts: int = col(pa.int32(), False, 0)
    repair_box: list[int] | None = col(pa.list_(pa.int32()))
    image_path: str | None = col(pa.string())  # relative to the output root (<date>/images/...); None: no image
    model: str = col(pa.string(), False, "")
    template_version: str = col(pa.string(), False, "")
    prompt_tokens: int | None = col(pa.int32())
    prompt_truncated: bool | None = col(pa.bool_())
    cache_key: str = col(pa.string(), False, "")
    cached: bool = col(pa.bool_(), False, False)
    cache_source_date: dt.date | None = col(pa.date32())
    source_file: str = col(pa.string(), False, "")
    source_row: int = col(pa.int64(), False, 0)
    # provenance (factory.io.provenance) and the night-wide similarity checks (factory.quality.duplicates)
    produce_id: str | None = col(pa.string())  # the PNG's GB 45438 ProduceID
    duplicate_of: str | None = col(pa.string())  # near_duplicate: the earlier sku_id of the same category
    duplicate_score: float | None = col(F32)  # its CLIP image cosine
    reference_file: str | None = col(pa.string())  # reference_match: the file, relative to quality.reference_dir
    reference_score: float | None = col(F32)  # its CLIP image cosine
    # resume parts and embeddings.parquet only: the CLIP image features, so finalize compares every image of the
    # night (resumed and cache hits included) without re-encoding
    clip_embedding: list[float] | None = col(pa.list_(pa.float32()))
    # review only
    reason: str = col(pa.string(), False, "")
    detail: str | None = col(pa.string())
    # a person's review decision (`adfactory review apply`, factory/review/apply.py); null until one is applied
    review_decision: str | None = col(pa.string())  # "approve" | "reject" (factory.review.apply.DECISIONS)
    reviewed_by: str | None = col(pa.string())
    reviewed_at: dt.datetime | None = col(pa.timestamp("us", tz="UTC"))
    review_note: str | None = col(pa.string())
    # resume parts only
    error: str | None = col(pa.string())
    task_key: str = col(pa.string(), False, "")

    @classmethod
    def from_task(cls, task: Any, **values: Any) -> ImageRecord:
        """A record for a planned task (`factory.inputs.bucketing.Task`) plus `values`."""
        fields = {k: v for k, v in dataclasses.asdict(task).items() if k in _IMAGE_FIELD_SET}  # not fit, render_*
        fields["adapters"] = list(fields.get("adapters", ()))
        return cls(**{**fields, **values})

    @classmethod
    def failed(cls, task: Any, error: str) -> ImageRecord:
        return cls.from_task(task, reasons=[GENERATION_ERROR], initial_reasons=[GENERATION_ERROR], error=error)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ImageRecord:
        """From a manifest or part row (columns this record does not know are ignored)."""
        return cls(**{k: row[k] for k in _IMAGE_FIELD_NAMES if k in row})

    def to_row(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _IMAGE_FIELD_NAMES}

    def carried_to(self, task: Any, **values: Any) -> ImageRecord:
        """This image's outcome (scores, repair history, token counts) as a record of another run's `task`."""
        task_fields = {f.name for f in dataclasses.fields(task)}
        outcome = {k: v for k, v in self.to_row().items() if k not in task_fields and k not in _STAMPED}
        return ImageRecord.from_task(task, **outcome, **values)

    @property
    def key(self) -> tuple[str, int, str]:
        """One image of a night: (sku_id, variant, placement)."""
        return self.sku_id, self.variant, self.placement

    def replace(self, **values: Any) -> ImageRecord:
        return dataclasses.replace(self, **values)


@dataclass
class RejectedRow:
    """An input row that produced no task, with the reason code (see factory.inputs.skus)."""

    run_date: dt.date | None = col(pa.date32(), False)
    run_id: str = col(pa.string(), False, "")
    sku_id: str | None = col(pa.string())
    category: str | None = col(pa.string())
    source_file: str = col(pa.string(), False, "")
    source_row: int = col(pa.int64(), False, 0)
    reason: str = col(pa.string(), False, "")
    detail: str | None = col(pa.string())

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_IMAGE_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ImageRecord))
_IMAGE_FIELD_SET = frozenset(_IMAGE_FIELD_NAMES)
IMAGE_KEY = ["sku_id", "variant", "placement"]  # the columns that name one image of a night
# Columns added after nights were written without them, with the value those nights' rows have (readers fill it).
ADDED_COLUMNS = {"placement": ""}
RUN_STAMP = ("run_date", "run_id", "model", "cache_key", "task_key", "cached", "cache_source_date")  # by the driver
SIMILARITY = ("duplicate_of", "duplicate_score", "reference_file", "reference_score")  # decided at finalize
REVIEW_ONLY = ("reason", "detail")
DECISION_COLUMNS = ("review_decision", "reviewed_by", "reviewed_at", "review_note")  # manifests, never parts
EMBEDDING = ("clip_embedding",)
PART_ONLY = ("error", "task_key")
# not carried by carried_to: a cache hit carries no decision, no similarity verdict, and gets its embedding separately
_STAMPED = frozenset(RUN_STAMP + SIMILARITY + REVIEW_ONLY + DECISION_COLUMNS + PART_ONLY + EMBEDDING)
IMAGE_COLUMNS = tuple(n for n in _IMAGE_FIELD_NAMES if n not in REVIEW_ONLY + DECISION_COLUMNS + PART_ONLY + EMBEDDING)
EMBEDDING_COLUMNS = ("sku_id", "variant", "placement", "cache_key", "clip_embedding")


def _schema(record: type, names: tuple[str, ...]) -> pa.Schema:
    fields = {f.name: f for f in dataclasses.fields(record)}
    return pa.schema([pa.field(n, fields[n].metadata["arrow"], nullable=fields[n].metadata["nullable"]) for n in names])


APPROVED_SCHEMA = _schema(ImageRecord, IMAGE_COLUMNS + DECISION_COLUMNS)
REVIEW_SCHEMA = _schema(ImageRecord, IMAGE_COLUMNS + REVIEW_ONLY + DECISION_COLUMNS)
PART_SCHEMA = _schema(ImageRecord, IMAGE_COLUMNS + PART_ONLY + EMBEDDING)
EMBEDDING_SCHEMA = _schema(ImageRecord, EMBEDDING_COLUMNS)  # <date>/embeddings.parquet
REJECTED_SCHEMA = _schema(RejectedRow, tuple(f.name for f in dataclasses.fields(RejectedRow)))
MANIFEST_SCHEMAS = {"approved": APPROVED_SCHEMA, "review": REVIEW_SCHEMA, "rejected": REJECTED_SCHEMA}


def by_category(
    approved: pa.Table | list[ImageRecord], review: pa.Table | list[ImageRecord], rejected: list[RejectedRow]
) -> dict[str, dict[str, int]]:
    """SKUs per category and fate (rejected: input rows)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"approved": 0, "review": 0, "rejected": 0})
    for name, rows in (("approved", approved), ("review", review)):
        if not isinstance(rows, pa.Table):
            rows = pa.table({c: [getattr(r, c) for r in rows] for c in ("sku_id", "category")}, _SKU_CATEGORY)
        skus = rows.group_by("category", use_threads=False).aggregate([("sku_id", "count_distinct")])
        for cat, n in zip(skus["category"].to_pylist(), skus["sku_id_count_distinct"].to_pylist()):
            out[cat][name] += n
    for r in rejected:
        out[r.category if isinstance(r.category, str) else "<none>"]["rejected"] += 1
    return dict(out)


_SKU_CATEGORY = pa.schema([("sku_id", pa.string()), ("category", pa.string())])
