"""The streaming finalize (factory/job/night_sort.py, finalize.finalize_night): rows read from part files range by
range give exactly the manifests the in-memory path gives (flag_similar_table + split_outcomes on one table),
whatever the range size, with SKUs of several images never split and near-duplicates across ranges found."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from factory.config import QualityConfig
from factory.io import layout
from factory.io.records import ImageRecord
from factory.io.storage import open_store
from factory.job import finalize, night_sort, parts
from factory.quality import duplicates
from factory.quality.reasons import BLURRY

DATE = "2026-03-04"


def _records(n_skus: int, seed: int = 3) -> list[ImageRecord]:
    """SKUs of 1-3 images (variants x placements), clustered embeddings (near-duplicates), a few failing images."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, 16)).astype(np.float32)
    day, out = dt.date.fromisoformat(DATE), []
    for s in rng.permutation(n_skus):  # completion order is not sku order
        for v in range(int(rng.integers(1, 3))):
            for placement in ("", "feed")[: int(rng.integers(1, 3))]:
                e = centres[rng.integers(0, 12)] + 0.05 * rng.standard_normal(16).astype(np.float32)
                fails = rng.random() < 0.1
                out.append(
                    ImageRecord(
                        run_date=day,
                        sku_id=f"S{s:05d}",
                        category=("toys", "shoes")[s % 2],
                        variant=v,
                        placement=placement,
                        image_path=f"{DATE}/images/x/S{s:05d}-{v}{placement}.png",
                        reasons=[BLURRY] if fails else [],
                        error="" if rng.random() > 0.02 else "boom",
                        clip_embedding=(e / np.linalg.norm(e)).tolist() if rng.random() > 0.05 else None,
                    )
                )
    return out


def _write_parts(store, records: list[ImageRecord], per_part: int) -> list[parts.RowFile]:
    files = []
    for i in range(0, len(records), per_part):
        name = f"r-p{i // per_part:05d}"
        parts.write_part(store, DATE, name, parts.records_table(records[i : i + per_part]))
        files.append(parts.RowFile(f"{layout.parts_dir(DATE)}/{name}.parquet"))
    return files


def _manifests(store) -> dict[str, list[dict]]:
    return {k: layout.read_manifest(store, k, DATE).to_pylist() for k in ("approved", "review")}


THRESHOLDS = {c: QualityConfig(near_duplicate=0.97, reference_threshold=0.9) for c in ("toys", "shoes")}


@pytest.mark.parametrize("range_rows", [1, 7, 100_000])
def test_range_by_range_equals_the_whole_table(tmp_path, monkeypatch, range_rows):
    records = _records(150)
    rng = np.random.default_rng(0)
    refs = duplicates.References(["a.png", "b.png"], rng.standard_normal((2, 16)).astype(np.float32))
    refs.embeddings /= np.linalg.norm(refs.embeddings, axis=1, keepdims=True)
    expected_store = open_store(str(tmp_path / "expected"))
    table, info = finalize.flag_similar_table(parts.records_table(records), THRESHOLDS, refs)
    approved, review = finalize.split_outcomes(table)
    layout.write_manifests(expected_store, DATE, approved, review, [])
    assert info["near_duplicates"] > 5

    store = open_store(str(tmp_path / "streamed"))
    monkeypatch.setattr(night_sort, "RANGE_ROWS", range_rows)
    out = finalize.finalize_night(store, DATE, _write_parts(store, records, 37), THRESHOLDS, refs, [])
    assert _manifests(store) == _manifests(expected_store)
    assert out.similarity == info
    assert (out.approved_images, out.review_images) == (approved.num_rows, review.num_rows)
    stored = pa.concat_tables([finalize.read_embeddings(store, DATE)])
    assert stored.num_rows == sum(r.clip_embedding is not None for r in records)


def test_a_selection_of_part_rows_is_what_finalize_reads(tmp_path):
    store = open_store(str(tmp_path))
    records = _records(40)
    files = _write_parts(store, records, 50)
    files[0] = parts.RowFile(files[0].path, np.array([0, 2, 3]))  # a resumed part: three of its rows count
    finalize.finalize_night(store, DATE, files, THRESHOLDS, None, [])
    kept = {(r.sku_id, r.variant, r.placement) for r in [records[i] for i in (0, 2, 3)] + records[50:]}
    rows = _manifests(store)
    assert {(r["sku_id"], r["variant"], r["placement"]) for r in rows["approved"] + rows["review"]} == kept


def test_ranges_never_split_a_sku():
    sku = pa.chunked_array([pa.array(["a", "a", "a", "b", "c", "c", "d"])])
    assert night_sort._cut(sku, 2).tolist() == [0, 3, 4, 6, 7]  # "a" (3 images) is a range of its own
    assert night_sort._cut(sku, 4).tolist() == [0, 4, 7]
    assert night_sort._cut(pa.chunked_array([pa.array([], pa.string())]), 4).tolist() == [0]
