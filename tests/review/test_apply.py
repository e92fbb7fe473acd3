"""`adfactory review apply`: decisions move whole SKUs, are logged, are idempotent, and bad files change nothing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.errors import InputError, LockError
from factory.io.lock import RunLock
from factory.io.records import ImageRecord
from factory.io.storage import open_store
from factory.review.apply import apply_decisions
from factory.review.manifests import APPLYING, manifest_relpath, open_night
from tests.conftest import DATE, cli
from tests.review.conftest import XSS_ID


def date_dir(cfg) -> Path:
    return Path(cfg.paths.output) / DATE


def manifest(cfg, name: str) -> list[dict]:
    """Raw manifest rows, found where factory.review.manifests says (one place for the layout)."""
    night = open_night(cfg, DATE)
    with night.store.open_input_file(manifest_relpath(night, name)) as f:
        return pq.read_table(f).to_pylist()


def snapshot(cfg) -> dict[str, bytes]:
    """Every output file of the date except images: its manifest partitions, run.json, _SUCCESS, sheet, log."""
    root = Path(cfg.paths.output)
    files = [p for p in root.rglob("*") if p.is_file() and "images" not in p.parts]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def write_csv(tmp_path: Path, text: str, name: str = "decisions.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def test_approve_moves_all_variants_reject_stays_in_review_and_both_are_logged(night, tmp_path):
    before = {n: manifest(night, n) for n in ("approved", "review")}
    decisions = write_csv(tmp_path, f'sku_id,decision,note\n{csv_field(XSS_ID)},approve\nS-shoe,reject,"off, colour"\n')
    done = cli("review", "apply", "--date", DATE, "--output", night.paths.output, "--reviewer", "ana", str(decisions))
    assert done.returncode == 0, done.stderr
    assert "applied 2 decisions (1 approve, 1 reject" in done.stdout
    approved, review = manifest(night, "approved"), manifest(night, "review")
    moved = [r for r in approved if r["sku_id"] == XSS_ID]
    assert [r["variant"] for r in moved] == [0, 1]  # every variant of the SKU
    assert all(r["review_decision"] == "approve" and r["reviewed_by"] == "ana" for r in moved)
    assert all(r["reviewed_at"] is not None for r in moved)
    assert XSS_ID not in {r["sku_id"] for r in review}
    (shoe,) = [r for r in review if r["sku_id"] == "S-shoe"]
    assert (shoe["review_decision"], shoe["review_note"], shoe["reason"]) == ("reject", "off, colour", "low_clip_score")
    assert "S-shoe" not in {r["sku_id"] for r in approved}
    # every SKU still in exactly one manifest; nothing lost
    assert len(approved) + len(review) == sum(len(v) for v in before.values())
    assert not {r["sku_id"] for r in approved} & {r["sku_id"] for r in review}
    # the date stays complete: _SUCCESS and run.json count what the manifests hold, plus a review section
    success = json.loads((date_dir(night) / "_SUCCESS").read_text())
    run = json.loads((date_dir(night) / "run.json").read_text())
    for info in (success, run):
        assert info["counts"]["approved_images"] == len(approved) and info["counts"]["review_images"] == len(review)
        assert info["counts"]["approved_skus"] == len({r["sku_id"] for r in approved})
        assert (info["review"]["approved_skus"], info["review"]["rejected_skus"]) == (1, 1)
    assert not (date_dir(night) / APPLYING).exists()
    log = [json.loads(line) for line in (date_dir(night) / "review" / "decisions.log.jsonl").read_text().splitlines()]
    assert [(e["sku_id"], e["decision"], e["by"], e["csv_line"]) for e in log] == [
        (XSS_ID, "approve", "ana", 2),
        ("S-shoe", "reject", "ana", 3),
    ]
    sheet = (date_dir(night) / "review" / "sheet.html").read_text()  # rewritten: the rejected SKU shows its state
    assert 'data-sku="S-shoe"' in sheet and 'data-decision="reject"' in sheet and "onerror" not in sheet


def test_applying_the_same_file_twice_changes_nothing(night, tmp_path):
    decisions = write_csv(tmp_path, "B-bag,approve\nB-bag2,reject,too dark\n")
    first = apply_decisions(open_night(night, DATE), decisions, "ana")
    assert len(first.changed) == 2
    after_first = snapshot(night)
    second = apply_decisions(open_night(night, DATE), decisions, "bob")
    assert (second.changed, second.unchanged) == ([], 2)
    assert snapshot(night) == after_first  # not a byte: manifests, run.json, _SUCCESS, sheet, log


def test_a_decision_can_be_reversed(night, tmp_path):
    apply_decisions(open_night(night, DATE), write_csv(tmp_path, "B-bag,approve\n"), "ana")
    apply_decisions(open_night(night, DATE), write_csv(tmp_path, "B-bag,reject\n", "again.csv"), "ana")
    assert "B-bag" not in {r["sku_id"] for r in manifest(night, "approved")}
    rows = [r for r in manifest(night, "review") if r["sku_id"] == "B-bag"]
    assert [(r["variant"], r["review_decision"], r["reason"]) for r in rows] == [
        (0, "reject", "blurry"),
        (1, "reject", "blurry"),
    ]
    log = (date_dir(night) / "review" / "decisions.log.jsonl").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in log] == ["approve", "reject"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("S-shoe,approve\nB-bag,maybe\n", "line 2: decision must be one of approve, reject, got 'maybe'"),
        ("D-dress,reject\n", "line 1: sku_id 'D-dress' is approved by the quality gate"),
        ("S-shoe,approve\nS-shoe,reject\n", "line 2: 'S-shoe' is also decided on line 1"),
        ("S-shoe\n", "line 1: expected sku_id,decision[,note], got 1 fields"),
    ],
)
def test_a_bad_line_is_refused_naming_it_and_nothing_is_applied(night, tmp_path, text, message):
    before = snapshot(night)
    with pytest.raises(InputError, match=re.escape(message)):
        apply_decisions(open_night(night, DATE), write_csv(tmp_path, text))
    assert snapshot(night) == before


def test_cli_unknown_sku_is_exit_2_naming_the_line_and_nothing_is_applied(night, tmp_path):
    before = snapshot(night)
    decisions = write_csv(tmp_path, "sku_id,decision\nS-shoe,approve\nNOPE,approve\n")
    done = cli("review", "apply", "--date", DATE, "--output", night.paths.output, str(decisions))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "decisions.csv line 3: sku_id 'NOPE' is not in review" in done.stderr
    assert snapshot(night) == before


def test_not_utf8_is_refused(night, tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"S-shoe,approve,\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        apply_decisions(open_night(night, DATE), path)


def test_it_takes_the_dates_lock(night, tmp_path):
    decisions = write_csv(tmp_path, "S-shoe,approve\n")
    with RunLock(date_dir(night), "a-live-run"):  # held by this (live) process, as a running night would
        with pytest.raises(LockError, match="another run holds"):
            apply_decisions(open_night(night, DATE), decisions)
    assert manifest(night, "review")[0]["review_decision"] is None
    assert apply_decisions(open_night(night, DATE), decisions).changed


def test_an_interrupted_apply_is_repaired_by_running_it_again(night, tmp_path):
    decisions = write_csv(tmp_path, "S-shoe,approve\n")
    apply_decisions(open_night(night, DATE), decisions, "ana")
    # as if the process died after withdrawing _SUCCESS and rewriting the manifests
    (date_dir(night) / APPLYING).write_text("{}")
    (date_dir(night) / "_SUCCESS").unlink()
    again = apply_decisions(open_night(night, DATE), decisions, "ana")
    assert again.changed == [] and (date_dir(night) / "_SUCCESS").is_file()
    assert not (date_dir(night) / APPLYING).exists()


def test_a_date_without_success_is_refused(night, tmp_path):
    (date_dir(night) / "_SUCCESS").unlink()
    with pytest.raises(InputError, match="no completed night"):
        apply_decisions(open_night(night, DATE), write_csv(tmp_path, "S-shoe,approve\n"))


def test_reviewer_defaults_to_user(night, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "night-reviewer")
    apply_decisions(open_night(night, DATE), write_csv(tmp_path, "S-shoe,approve\n"))
    assert {r["reviewed_by"] for r in manifest(night, "approved") if r["sku_id"] == "S-shoe"} == {"night-reviewer"}


def test_a_cached_image_carries_no_earlier_decision():
    from factory.inputs.bucketing import Task

    record = ImageRecord(sku_id="S", review_decision="approve", reviewed_by="ana", review_note="ok")
    task = Task(**{k: v for k, v in vars(record).items() if k in Task.__dataclass_fields__})
    carried = record.carried_to(task)
    assert (carried.review_decision, carried.reviewed_by, carried.review_note) == (None, None, None)


def test_apply_on_an_object_store(night, tmp_path, s3_uri):
    """The same rules through the Store on S3 (SeaweedFS): the lease lock, manifests, log, _SUCCESS last."""
    local, remote = open_store(night.paths.output), open_store(s3_uri, night.storage)
    for rel in local.list(DATE) + local.list("manifests"):  # the night's files and its manifest partitions
        remote.put_bytes(rel, local.get_bytes(rel))
    s3 = dataclasses.replace(night, paths=dataclasses.replace(night.paths, output=s3_uri))
    decisions = write_csv(tmp_path, "B-bag,approve\nS-shoe,reject\n")
    result = apply_decisions(open_night(s3, DATE), decisions, "ana")
    assert len(result.changed) == 2 and result.sheet == f"{s3_uri}/{DATE}/review/sheet.html"
    approved = manifest(s3, "approved")
    assert {r["variant"] for r in approved if r["sku_id"] == "B-bag"} == {0, 1}
    assert json.loads(remote.get_bytes(f"{DATE}/_SUCCESS"))["review"]["approved_skus"] == 1
    assert not remote.exists(f"{DATE}/.lock") and not remote.exists(f"{DATE}/{APPLYING}")
    assert len(remote.get_bytes(f"{DATE}/review/decisions.log.jsonl").splitlines()) == 2
    assert apply_decisions(open_night(s3, DATE), decisions, "ana").changed == []
