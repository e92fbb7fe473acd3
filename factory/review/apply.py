"""`adfactory review apply`: a reviewer's decisions CSV moves SKUs between the review and approved manifests.

A decision is per SKU and covers all its variants. `approve` moves the SKU's rows from review to approved;
`reject` keeps them in review (never approved) and marks them; a later file may change a decision (a rejected SKU
can be approved, an approved one sent back to review). Rows get `review_decision`, `reviewed_by`, `reviewed_at`,
`review_note`; every change is appended to `<date>/review/decisions.log.jsonl` (the audit trail).

Guarantees: the whole file is checked before anything is written (an unknown sku_id or decision is an InputError
naming the CSV line: exit 2, nothing applied); the date's lock is held throughout; a decision equal to the current
state changes nothing, so applying the same file twice writes nothing the second time; readers never see a
half-applied date as complete: `_SUCCESS` is withdrawn while the manifests are rewritten and written again last
(with run.json's counts updated and a `review` section), and an interrupted apply is repaired by running it again.
Cells the sheet's export protected from spreadsheets (a leading ' before =, +, -, @, tab, CR or ') are read back as
the original value (`decode_cell`).
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import InputError
from factory.io import layout, records
from factory.io.records import SIBLING_IN_REVIEW, ImageRecord
from factory.review import manifests, sheet
from factory.review.manifests import NightOutputs

DECISIONS = ("approve", "reject")
_SUCCESS_KEYS = ("run_id", "run_date", "finished_at", "counts", "timings", "by_category", "review")


@dataclass(frozen=True)
class Decision:
    sku_id: str
    decision: str
    note: str | None
    line: int


@dataclass
class ApplyResult:
    changed: list[Decision]
    unchanged: int
    sheet: str
    counts: dict[str, int]


def reviewer_name(flag: str | None) -> str:
    """--reviewer, else $USER, else the login name."""
    if flag and flag.strip():
        return flag.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_decisions(path: Path) -> list[Decision]:
    """`sku_id,decision[,note]` rows (an optional `sku_id,...` header line); errors name the line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the decisions file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; export the decisions as CSV from the review sheet") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    out: dict[str, Decision] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if line == 1 and row[0].strip().lower() == "sku_id":
                continue
            d = _decision(path, row, line)
            if d.sku_id in out and out[d.sku_id].decision != d.decision:
                raise InputError(f"{path} line {line}: {d.sku_id!r} is also decided on line {out[d.sku_id].line}")
            out[d.sku_id] = d
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return list(out.values())


def _decision(path: Path, row: list[str], line: int) -> Decision:
    if len(row) not in (2, 3):
        raise InputError(f"{path} line {line}: expected sku_id,decision[,note], got {len(row)} fields")
    decision = row[1].strip().lower()
    if decision not in DECISIONS:
        raise InputError(f"{path} line {line}: decision must be one of {', '.join(DECISIONS)}, got {row[1]!r}")
    note = decode_cell(row[2].strip()) if len(row) == 3 and row[2].strip() else None
    return Decision(decode_cell(row[0]), decision, note, line)


# First characters a spreadsheet evaluates (OWASP "CSV injection"), and the quote the sheet's export puts before
# them (sheet.js csvField) and before a value that itself starts with a quote.
FORMULA_CHARS = "=+-@\t\r"


def decode_cell(cell: str) -> str:
    """A decisions-CSV cell as the reviewer's value: the sheet's export wrote a cell a spreadsheet would evaluate
    (or one starting with ') with one more leading ', which is removed here; any other cell is kept as is."""
    if cell.startswith("'") and cell[1:2] and cell[1] in FORMULA_CHARS + "'":
        return cell[1:]
    return cell


def apply_decisions(night: NightOutputs, csv_path: Path, reviewer: str | None = None) -> ApplyResult:
    """Apply a decisions CSV to `night` under its lock; see the module docstring for the guarantees."""
    decisions = parse_decisions(csv_path)
    owner = f"review-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
    with manifests.date_lock(night, owner) as lock:
        if not manifests.completed(night):
            raise InputError(f"{night.store.url(night.date)} has no completed night (no _SUCCESS): nothing to review")
        approved = manifests.read_images(night, "approved")
        review = manifests.read_images(night, "review")
        changed = _check(csv_path, decisions, approved, review)
        if not changed and not night.store.exists(night.rel(manifests.APPLYING)):  # nothing to do, nothing written
            return ApplyResult([], len(decisions), night.store.url(night.rel(manifests.SHEET)), {})
        rejected = manifests.read_rejected(night)
        stamp = {"reviewed_by": reviewer_name(reviewer), "reviewed_at": dt.datetime.now(dt.UTC)}
        approved, review = _move(approved, review, {d.sku_id: d for d in changed}, stamp)
        manifests.begin_rewrite(night, {"owner": owner, "csv": str(csv_path)})
        _log(night, csv_path, changed, stamp)  # write-ahead: an interrupted apply may log a change twice, never zero
        layout.write_manifests(night.store, night.date, approved, review, rejected)
        sheet_url = sheet.write_sheet(night)
        info, success = _run_info(night, approved, review, rejected, stamp["reviewed_at"])
        if hasattr(lock, "check"):
            lock.check()  # an object-store lease lost meanwhile must not mark the date complete
        manifests.end_rewrite(night, info, success)
    return ApplyResult(changed, len(decisions) - len(changed), sheet_url, info["counts"])


def _check(path: Path, decisions: list[Decision], approved: list[ImageRecord], review: list[ImageRecord]):
    """The decisions that change something; an InputError naming the line for any that cannot apply."""
    in_review = {r.sku_id: r for r in review}
    approved_by_review = {r.sku_id: r for r in approved if r.review_decision == "approve"}
    # generation_error rows have no image; `detail` alone is no sign of failure (it also names similarity matches)
    failed = {r.sku_id for r in review if not r.image_path}
    changed = []
    for d in decisions:
        current = in_review.get(d.sku_id) or approved_by_review.get(d.sku_id)
        if current is None:
            where = "approved by the quality gate" if any(r.sku_id == d.sku_id for r in approved) else "not in review"
            raise InputError(f"{path} line {d.line}: sku_id {d.sku_id!r} is {where} for this date")
        if d.decision == "approve" and d.sku_id in failed:
            raise InputError(f"{path} line {d.line}: {d.sku_id!r} has a variant without an image: cannot approve it")
        if (current.review_decision, current.review_note) != (d.decision, d.note):
            changed.append(d)
    return changed


def _move(approved: list[ImageRecord], review: list[ImageRecord], changes: dict[str, Decision], stamp: dict[str, Any]):
    """New (approved, review) lists: every variant of a changed SKU gets the decision and lands where it says."""
    new_approved = [r for r in approved if r.sku_id not in changes]
    new_review = [r for r in review if r.sku_id not in changes]
    for r in [r for r in approved + review if r.sku_id in changes]:
        d = changes[r.sku_id]
        r = r.replace(review_decision=d.decision, review_note=d.note, **stamp)
        if d.decision == "approve":
            new_approved.append(r.replace(reason="", detail=None))
        else:
            new_review.append(r.replace(reason=r.reason or ",".join(r.reasons) or SIBLING_IN_REVIEW))
    key = lambda r: r.key  # noqa: E731
    return sorted(new_approved, key=key), sorted(new_review, key=key)


def _log(night: NightOutputs, csv_path: Path, changed: list[Decision], stamp: dict[str, Any]) -> None:
    digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    at = stamp["reviewed_at"].isoformat()
    lines = [
        json.dumps(
            {
                "at": at,
                "by": stamp["reviewed_by"],
                "sku_id": d.sku_id,
                "decision": d.decision,
                "note": d.note,
                "csv": csv_path.name,
                "csv_sha256": digest,
                "csv_line": d.line,
            },
            ensure_ascii=False,
        )
        for d in changed
    ]
    if lines:  # rewritten whole under the lock: object stores have no append
        text = manifests.read_text(night, manifests.DECISION_LOG) + "\n".join(lines) + "\n"
        manifests.write_text(night, manifests.DECISION_LOG, text)


def _run_info(night: NightOutputs, approved, review, rejected, at: dt.datetime) -> tuple[dict, dict]:
    """run.json with counts that match the new manifests, and a `review` section; the `_SUCCESS` subset of it.

    `outcomes` stays the quality gate's own first decision (machine rates); `counts`/`by_category` follow the
    manifests (what readers count)."""
    info = manifests.read_run_info(night)
    counts = dict(info.get("counts", {}))
    counts.update(
        approved_skus=len({r.sku_id for r in approved}),
        review_skus=len({r.sku_id for r in review}),
        approved_images=len(approved),
        review_images=len(review),
    )
    decided = {r.sku_id: r.review_decision for r in approved + review if r.review_decision}
    info.update(
        counts=counts,
        by_category=records.by_category(approved, review, rejected),
        review={
            "approved_skus": sum(1 for v in decided.values() if v == "approve"),
            "rejected_skus": sum(1 for v in decided.values() if v == "reject"),
            "pending_skus": len({r.sku_id for r in review if not r.review_decision}),
            "last_applied_at": at.isoformat(),
            "decision_log": manifests.DECISION_LOG,
        },
    )
    info.setdefault("finished_at", at.isoformat())
    return info, {k: info[k] for k in _SUCCESS_KEYS if k in info}
