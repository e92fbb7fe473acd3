"""The end of a night: the approve/review split, the three manifest partitions, counts, run.json, `_SUCCESS` last."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from factory.io import layout
from factory.io.records import SIBLING_IN_REVIEW, ImageRecord, RejectedRow
from factory.io.storage import Store
from factory.job import parts


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
                    detail=r.error,
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
