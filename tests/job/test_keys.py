"""Keys come from the resolved runtime: what changes pixels changes the keys."""

import dataclasses

from factory.generation.runtime import resolve
from factory.inputs.bucketing import Task
from factory.job import keys

TASK = Task("S1", "shoes", 0, "a red shoe", "", 7, "small", 64, 64, 2, "images/shoes/x.png", "v1", "f.parquet", 0)


def _key(cfg, device, capability=None):
    return keys.cache_key(TASK, keys.model_key(cfg, resolve(cfg, device, capability)))


def test_cpu_and_cuda_days_have_different_keys(cfg):
    cpu = resolve(cfg, "cpu")
    cuda = resolve(cfg, "cuda", (9, 0))
    assert (cpu.dtype, cpu.determinism, cpu.quantization, cpu.padding) == ("float32", "batch-invariant", "none", "none")
    assert (cuda.dtype, cuda.determinism, cuda.quantization, cuda.padding) == ("float16", "fast", "none", "count")
    assert _key(cfg, "cpu") != _key(cfg, "cuda", (9, 0))
    assert keys.model_key(cfg, cpu).model_id == keys.model_key(cfg, cuda).model_id  # same weights


def test_quantization_changes_the_cache_key(cfg):
    dynamic = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization="int8-dynamic"))
    assert _key(cfg, "cpu") != _key(dynamic, "cpu")
    fp8 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization="fp8"))
    assert _key(fp8, "cuda", (9, 0)) != _key(cfg, "cuda", (9, 0))  # auto is none: fp8 changes the pixels


def test_task_key_follows_the_category_thresholds_and_repair(cfg):
    c = keys.cache_key(TASK, keys.model_key(cfg, resolve(cfg, "cpu")))
    base = keys.task_key(c, keys.decision_config(cfg.quality, cfg))
    stricter = dataclasses.replace(cfg.quality, clip_threshold=0.5)
    assert keys.task_key(c, keys.decision_config(stricter, cfg)) != base
    no_repair = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
    assert keys.task_key(c, keys.decision_config(cfg.quality, no_repair)) != base
