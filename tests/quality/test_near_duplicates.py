"""Near-duplicates and reference matches on real open_clip embeddings of real tiny-model nights: the later SKU (in
sku_id order) goes to review naming the earlier one; resumed rows and cross-day cache hits take part; a reference
image is matched by name; numpy and faiss agree; reference embeddings are cached by file hash."""

import dataclasses
import datetime as dt
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from factory.io.records import ImageRecord
from factory.job.finalize import flag_similar
from factory.job.run import run
from factory.quality import duplicates
from tests.conftest import DATE, make_cfg, read_manifests, with_run, write_skus

NEXT_DATE = (dt.date.fromisoformat(DATE) + dt.timedelta(days=1)).isoformat()
SHOES = ["D1", "D2", "D3", "D4"]
ROWS = [
    *({"sku_id": s, "category": "shoes", "attrs": json.dumps({"brand": "Peak", "color": c})} for s, c in
      zip(SHOES, ["red", "blue", "white", "black"])),
    {"sku_id": "D5", "category": "bags", "attrs": json.dumps({"brand": "Acme", "color": "tan"})},
]  # fmt: skip


# every per-image check passes, so review holds exactly the night-wide findings
PASS_EVERY_CHECK = dict(
    clip_threshold=-1.0, iqa_threshold=0.0, unsafe_threshold=2.0, blank_std=0.0, overexposed_frac=1.0,
    underexposed_frac=1.0, blur_laplacian_var=0.0, saturation_mean=1.0,
)  # fmt: skip


def configure(cfg, **quality):
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, **quality))


@pytest.fixture(scope="module")
def first_night(tiny_models, tmp_path_factory):
    """Day 1 with the search off (threshold above 1): every image's embedding, nothing flagged."""
    tmp = tmp_path_factory.mktemp("dups")
    cfg = with_run(make_cfg(tiny_models, tmp), executor="local", workers=1, batch_size=4)
    cfg = dataclasses.replace(
        cfg,
        planner=dataclasses.replace(cfg.planner, seed_scope="sku"),  # day 2 hits the cache
        repair=dataclasses.replace(cfg.repair, mode="off"),
    )
    cfg = configure(cfg, **PASS_EVERY_CHECK)
    for date in (DATE, NEXT_DATE):
        write_skus(Path(cfg.paths.skus) / f"{date}.parquet", ROWS)
    summary = run(cfg, DATE)
    emb = pq.read_table(Path(summary.output) / summary.date / "embeddings.parquet").to_pylist()
    return cfg, summary, {r["sku_id"]: np.array(r["clip_embedding"], dtype=np.float32) for r in emb}


def expected_flags(emb: dict[str, np.ndarray], threshold: float) -> dict[str, str]:
    """Later shoe SKU -> the earlier shoe SKU with the highest cosine >= threshold (the rule, written out)."""
    out = {}
    for i, sku in enumerate(SHOES):
        best = max(((float(emb[sku] @ emb[e]), e) for e in SHOES[:i]), default=None, key=lambda x: x[0])
        if best and best[0] >= threshold:
            out[sku] = best[1]
    return out


def middle_threshold(emb: dict[str, np.ndarray]) -> float:
    """A threshold that flags some but not all later shoes (the tiny CLIP puts every pair near 0.99)."""
    best = sorted(max(float(emb[s] @ emb[e]) for e in SHOES[:i]) for i, s in enumerate(SHOES) if i)
    return (best[0] + best[1]) / 2


def test_flags_follow_sku_order_whatever_the_input_order_and_method(first_night):
    cfg, summary, emb = first_night
    t = middle_threshold(emb)
    records = [
        ImageRecord(sku_id=s, category="bags" if s == "D5" else "shoes", clip_embedding=emb[s].tolist()) for s in emb
    ]
    expected = expected_flags(emb, t)
    assert 0 < len(expected) < len(SHOES) - 1
    thresholds = {c: dataclasses.replace(cfg.quality, near_duplicate=t) for c in ("shoes", "bags")}
    for method in duplicates.SEARCH_METHODS:
        shuffled = records[:]
        random.Random(method).shuffle(shuffled)
        flagged, info = flag_similar(shuffled, thresholds, None, method)
        assert {r.sku_id: r.duplicate_of for r in flagged if r.duplicate_of} == expected, method
        assert all(r.reasons == ["near_duplicate"] for r in flagged if r.duplicate_of)
        assert info["near_duplicates"] == len(expected) and info["images_compared"] == 5


def test_resumed_rows_and_cache_hits_join_the_search_and_references_match(first_night, tmp_path):
    cfg, day1, emb = first_night
    # the module's day 1 stays as it is for the other tests: this one resumes and extends a copy of it
    shutil.copytree(Path(cfg.paths.output).parent, tmp_path / "night")
    own = tmp_path / "night"
    paths = dataclasses.replace(cfg.paths, skus=str(own / "skus"), output=str(own / "out"))
    cfg = dataclasses.replace(cfg, paths=paths)
    day1 = dataclasses.replace(day1, output=cfg.paths.output)
    t = middle_threshold(emb)
    expected = expected_flags(emb, t)
    # the reference set: a copy of the bag's image (under another name) and an unrelated image
    refs = tmp_path / "refs"
    (refs / "logos").mkdir(parents=True)
    bag = read_manifests(day1.output, day1.date)["approved"]
    shutil.copy(
        Path(day1.output) / next(r["image_path"] for r in bag if r["sku_id"] == "D5"), refs / "logos" / "acme.png"
    )
    Image.new("RGB", (64, 64), (200, 30, 30)).save(refs / "plain-red.png")
    cfg = configure(cfg, near_duplicate=t, reference_threshold=0.9999, reference_dir=str(refs))

    # 1. resume: the night "crashed" before _SUCCESS; the rerun generates nothing, yet finalize flags resumed rows
    (Path(day1.output) / day1.date / "_SUCCESS").unlink()
    again = run(cfg, DATE)
    assert again.counts["images_generated"] == 0 and again.counts["images_resumed"] == 5
    assert again.counts["generation_errors"] == 0  # a match's detail is not an error: the date stays completed
    check_review(again, expected)

    # 2. next day: unflagged images are cross-day cache hits (embeddings from day 1's embeddings.parquet)
    day2 = run(cfg, NEXT_DATE)
    assert day2.counts["cache_hits"] == 4 - len(expected)  # day 1 approved the shoes that were not flagged
    review = check_review(day2, expected)
    approved = read_manifests(day2.output, day2.date)["approved"]
    cached = {r["sku_id"] for r in approved + review if r["cached"]}
    assert cached == set(SHOES) - set(expected)
    assert cached & set(expected.values())  # an earlier SKU named by a flag came from the cache: it still counts
    run_json = json.loads(((Path(day2.output) / day2.date) / "run.json").read_text())
    assert run_json["similarity"]["missing_embeddings"] == 0 and run_json["counts"]["reference_matches"] == 1


def check_review(summary, expected: dict[str, str]) -> list[dict]:
    review = read_manifests(summary.output, summary.date)["review"]
    by_sku = {r["sku_id"]: r for r in review}
    assert set(by_sku) == set(expected) | {"D5"}
    for sku, earlier in expected.items():
        assert by_sku[sku]["reason"] == "near_duplicate" and by_sku[sku]["duplicate_of"] == earlier
        assert f"near_duplicate of {earlier!r}" in by_sku[sku]["detail"]
    bag = by_sku["D5"]  # ~0.99 to every shoe, but another category: only its reference match counts
    assert bag["reason"] == "reference_match" and bag["reference_file"] == "logos/acme.png"
    assert bag["duplicate_of"] is None and bag["reference_score"] >= 0.9999
    return review


def test_reference_embeddings_are_cached_by_file_hash(first_night, tmp_path):
    cfg, _, _ = first_night
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (32, 32), (0, 90, 0)).save(refs / "a.png")
    Image.new("RGB", (32, 32), (0, 0, 90)).save(refs / "b.png")
    (refs / ".hidden.png").write_bytes(b"not an image")  # hidden files are skipped
    encode = duplicates.clip_encoder(cfg.model)
    cache = tmp_path / "cache.parquet"
    first, encoded = duplicates.load_references(refs, cache, encode)
    assert encoded == 2 and first.names == ["a.png", "b.png"]
    (refs / "b.png").rename(refs / "c.png")  # same bytes, new name: still cached
    second, encoded = duplicates.load_references(refs, cache, encode)
    assert encoded == 0 and second.names == ["a.png", "c.png"]
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    (refs / "d.png").write_bytes(b"broken")
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match="d.png is not a readable image"):
        duplicates.load_references(refs, cache, encode)


def test_numpy_and_faiss_find_the_same_pairs():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 64)).astype(np.float32)
    emb = centres[rng.integers(0, 20, 300)] + 0.2 * rng.standard_normal((300, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    skus = [f"S{i // 2:04d}" for i in range(300)]  # two variants per SKU: never matched with each other
    found = {m: duplicates.near_duplicates(skus, emb, 0.9, m) for m in duplicates.SEARCH_METHODS}
    assert found["numpy"].keys() == found["faiss"].keys() and len(found["numpy"]) > 10
    for i, match in found["numpy"].items():
        assert match.other == found["faiss"][i].other and match.other < skus[i]


def test_similarity_config_is_validated():
    from factory.config import FactoryConfig, QualityConfig
    from factory.errors import ConfigError

    for quality in (
        QualityConfig(near_duplicate=-1.5),
        QualityConfig(reference_threshold=-2.0),
        QualityConfig(categories={"shoes": {"reference_dir": "/elsewhere"}}),  # global only: never silently ignored
    ):
        with pytest.raises(ConfigError):
            dataclasses.replace(FactoryConfig(), quality=quality).validate()
    dataclasses.replace(FactoryConfig(), quality=QualityConfig(near_duplicate=1.01)).validate()  # > 1: off


def _brute_force(codes: np.ndarray, emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    sims = emb @ emb.T
    partner, best = np.full(len(emb), -1), np.full(len(emb), -np.inf, np.float32)
    for i in range(len(emb)):
        ok = [j for j in range(i) if codes[j] != codes[i] and sims[i, j] >= threshold]
        if ok:
            j = max(ok, key=lambda j: (sims[i, j], -j))
            partner[i], best[i] = j, sims[i, j]
    return partner, best


@pytest.mark.parametrize("method", duplicates.SEARCH_METHODS)
def test_the_blocked_search_equals_all_pairs_from_memory_or_disk(tmp_path, monkeypatch, method):
    monkeypatch.setattr(duplicates, "_ROWS", 64)  # many query and candidate blocks on a small set
    monkeypatch.setattr(duplicates, "_COLS", 100)
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((25, 32)).astype(np.float32)
    emb = centres[rng.integers(0, 25, 700)] + 0.15 * rng.standard_normal((700, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes = np.sort(rng.integers(0, 400, 700))  # rows in sku order: runs of one SKU
    want, want_score = _brute_force(codes, emb, 0.9)
    spill = duplicates.EmbeddingSpill(tmp_path / "e.f32")
    for a in range(0, 700, 333):
        spill.append(emb[a : a + 333])
    for source in (emb, spill.close()):
        got, score = duplicates.best_earlier(codes, source, 0.9, method)
        assert (got >= 0).sum() > 50
        assert np.array_equal(got >= 0, want >= 0)
        np.testing.assert_allclose(score[got >= 0], want_score[want >= 0], atol=1e-5)
        ties = np.isclose(score, want_score, atol=1e-5)  # exact partners, up to float ties between methods
        assert np.array_equal(got[ties], want[ties])
