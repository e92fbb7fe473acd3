import dataclasses
import random
from collections import Counter

from factory.config import PlannerConfig
from factory.inputs.bucketing import Planner, count_batches, count_grouped_batches, derive_seed, make_batches
from factory.inputs.prompts import load_templates
from factory.inputs.skus import Sku
from tests.conftest import REPO, TEST_BUCKETS

TEMPLATES = load_templates(REPO / "templates", {b.name for b in TEST_BUCKETS})
PLANNER = Planner(PlannerConfig(buckets=list(TEST_BUCKETS)), TEMPLATES)


def sku(i, category="toys", variants=1, **attrs):
    return Sku(f"SKU-{i}", category, {"product": "car", **attrs}, variants, "f.parquet", i)


def test_seed_is_stable_and_distinct():
    assert derive_seed("A", "2026-11-21", 0) == derive_seed("A", "2026-11-21", 0)
    seeds = {derive_seed(s, d, v) for s in ("A", "B") for d in ("2026-11-21", "2026-11-22") for v in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def test_keyword_rules():
    assert PLANNER.choose_bucket("small", "a plain toy").name == "small"
    assert PLANNER.choose_bucket("small", "a toy, HD").name == "medium"
    assert PLANNER.choose_bucket("small", "a toy, hdr").name == "small"  # whole words only
    assert PLANNER.choose_bucket("large", "very detailed").name == "large"  # capped at the largest square
    assert PLANNER.choose_bucket("small", "Big BANNER for a toy").name == "poster"
    assert PLANNER.choose_bucket("small", "中秋海报").name == "poster"
    assert PLANNER.choose_bucket("medium", "高清 toy").name == "large"


def test_plan_is_deterministic_and_batches_homogeneous():
    skus = [sku(i, color="red" if i % 3 else "blue HD") for i in range(23)] + [sku(99, variants=3, age="banner")]
    tasks = PLANNER.plan_tasks(skus, "2026-11-21")
    assert len(tasks) == 26
    assert tasks == PLANNER.plan_tasks(skus, "2026-11-21")
    batches = make_batches(tasks, 4, TEST_BUCKETS)
    assert sum(len(b.tasks) for b in batches) == len(tasks)
    for b in batches:
        assert 1 <= len(b.tasks) <= 4
        assert {(t.width, t.height, t.steps) for t in b.tasks} == {(b.width, b.height, b.steps)}
    assert {t.bucket for t in tasks} == {"small", "medium", "poster"}
    assert len({b.batch_id for b in batches}) == len(batches)


def test_task_identity_does_not_depend_on_input_order():
    skus = [sku(i) for i in range(10)]
    shuffled = skus[:]
    random.Random(1).shuffle(shuffled)
    key = lambda t: (t.sku_id, t.variant)  # noqa: E731
    a = sorted(PLANNER.plan_tasks(skus, "2026-11-21"), key=key)
    b = sorted(PLANNER.plan_tasks(shuffled, "2026-11-21"), key=key)
    assert [(t.seed, t.prompt, t.image_path) for t in a] == [(t.seed, t.prompt, t.image_path) for t in b]


def _tasks_in(bucket, n, start=0):
    b = next(b for b in TEST_BUCKETS if b.name == bucket)
    return [
        dataclasses.replace(t, bucket=b.name, width=b.width, height=b.height, steps=b.steps)
        for t in PLANNER.plan_tasks([sku(start + i) for i in range(n)], "2026-11-21")
    ]


def test_padding_none_and_count_keep_buckets_apart():
    tasks = _tasks_in("small", 5) + _tasks_in("large", 3, start=100)
    for padding in ("none", "count", "auto"):
        batches = make_batches(tasks, 4, TEST_BUCKETS, padding)
        assert [(b.width, len(b.tasks)) for b in batches] == [(64, 4), (64, 1), (128, 3)]


def test_padding_in_size_promotes_a_remainder_only_when_it_wastes_less():
    # 1 small task left over: padding it in count wastes 3 x 64^2; rendering it at 96^2 wastes 96^2 - 64^2 (less)
    tasks = _tasks_in("small", 5) + _tasks_in("medium", 2, start=100)
    batches = make_batches(tasks, 4, TEST_BUCKETS, "size")
    assert [(b.width, len(b.tasks)) for b in batches] == [(64, 4), (96, 3)]
    promoted = batches[1].tasks[-1]
    assert (promoted.width, promoted.bucket) == (64, "small")  # keeps its target size: resized after rendering
    # 3 small tasks left over: padding 1 slot (64^2) beats promoting 3 of them to 96^2
    tasks = _tasks_in("small", 7) + _tasks_in("medium", 2, start=100)
    assert [len(b.tasks) for b in make_batches(tasks, 4, TEST_BUCKETS, "size")] == [4, 3, 2]
    # never across aspect ratios: the square "large" remainder does not go to the landscape poster bucket
    tasks = _tasks_in("large", 1) + _tasks_in("poster", 1, start=100)
    assert [(b.width, b.height) for b in make_batches(tasks, 4, TEST_BUCKETS, "size")] == [(128, 128), (128, 64)]


def test_batches_never_mix_adapter_sets_and_come_grouped_by_set():
    """Adapter set (with weights) is part of a batch's identity; sets are the major order, so workers switch
    adapters once per set, not once per bucket."""
    from factory.config import AdapterConfig

    adapters = {"guochao": AdapterConfig("g", 0.8), "illustration": AdapterConfig("i")}
    planner = Planner(PlannerConfig(buckets=list(TEST_BUCKETS)), TEMPLATES, adapters)
    skus = [sku(i, color="red" if i % 2 else "blue HD") for i in range(12)]
    skus = [
        dataclasses.replace(s, adapters=(("guochao",), (), ("guochao", "illustration"))[i % 3])
        for i, s in enumerate(skus)
    ]
    tasks = planner.plan_tasks(skus, "2026-11-21")
    assert {t.adapters for t in tasks} == {(), ("guochao@0.8",), ("guochao@0.8", "illustration@1.0")}
    for padding in ("none", "size"):
        batches = make_batches(tasks, 3, TEST_BUCKETS, padding)
        assert all({t.adapters for t in b.tasks} == {b.adapters} for b in batches)
        order = [b.adapters for b in batches]
        assert order == sorted(order) and order[0] == ()  # grouped: each set is one run of batches
        assert len({b.batch_id for b in batches}) == len(batches) and sum(len(b.tasks) for b in batches) == 12
        assert count_grouped_batches(planner.group_counts(skus), 3, TEST_BUCKETS, padding) == len(batches)
    plain = [dataclasses.replace(t, adapters=()) for t in tasks]
    assert [b.batch_id for b in make_batches(plain, 4, TEST_BUCKETS)][0] == "small-64x64-00000"  # ids as before


def test_counts_without_tasks_match_the_planned_batches():
    skus = [sku(i, color="blue HD" if i % 4 == 0 else "red") for i in range(37)] + [sku(99, variants=3, age="banner")]
    tasks = PLANNER.plan_tasks(skus, "2026-11-21")
    counts = PLANNER.bucket_counts(skus)
    assert counts == Counter(t.bucket for t in tasks)
    for padding in ("none", "count", "size"):
        for batch_size in (1, 3, 4, 16):
            expected = len(make_batches(tasks, batch_size, TEST_BUCKETS, padding))
            assert count_batches(counts, batch_size, TEST_BUCKETS, padding) == expected
