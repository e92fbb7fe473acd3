"""The worker on its own: SD1.5 (embedded), a tiny SDXL with an LCM-LoRA, and batch-invariant numerics."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from factory.config import PlannerConfig
from factory.inputs.bucketing import Batch, Planner
from factory.inputs.prompts import load_templates
from factory.inputs.skus import Sku
from factory.job.night_plan import local_worker
from tests.conftest import DATE, REPO, TEST_BUCKETS


def tasks_for(n, bucket="small"):
    templates = load_templates(REPO / "templates", {b.name for b in TEST_BUCKETS})
    skus = [Sku(f"W{i}", "toys", {"product": f"toy {i}"}, 1, "f.parquet", i) for i in range(n)]
    tasks = Planner(PlannerConfig(buckets=list(TEST_BUCKETS)), templates).plan_tasks(skus, DATE)
    b = next(b for b in TEST_BUCKETS if b.name == bucket)
    return [dataclasses.replace(t, bucket=b.name, width=b.width, height=b.height, steps=b.steps) for t in tasks]


def batch(tasks, name="b"):
    t = tasks[0]
    return Batch(name, t.width, t.height, t.steps, tuple(tasks))


def pixels(worker, tasks):
    return [np.asarray(im) for im in worker.generate(batch(tasks))]


def test_batch_invariant_pixels_and_scores(cfg, tmp_path):
    worker = local_worker(cfg, str(tmp_path))
    assert worker.batch_invariant  # "auto" on CPU
    tasks = tasks_for(5, "medium")
    whole = pixels(worker, tasks)
    split = pixels(worker, tasks[:2]) + pixels(worker, tasks[2:])
    single = [pixels(worker, [t])[0] for t in tasks]
    for a, b, c in zip(whole, split, single):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    r1 = worker.process(batch(tasks))
    r2 = [worker.process(batch([t])).records[0] for t in tasks]
    assert [r.clip_score for r in r1.records] == [r.clip_score for r in r2]
    assert (tmp_path / tasks[0].image_path).is_file()


def test_fast_mode_is_selectable(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, determinism="fast"))
    assert not local_worker(cfg, str(tmp_path)).batch_invariant


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """A tiny SDXL-architecture pipeline (two text encoders) and an LCM-LoRA for it, saved in standard formats."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from factory.tools.builders.tiny_models import build_tiny_sdxl

    root = tmp_path_factory.mktemp("sdxl")
    build_tiny_sdxl().save_pretrained(root / "pipe", safe_serialization=True)
    pipe = build_tiny_sdxl()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.5)  # lora_B starts at zero; make the LoRA actually change outputs
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLPipeline.save_lora_weights(root / "lora", unet_lora_layers=layers, safe_serialization=True)
    return root


def test_sdxl_with_lcm_lora_runs_through_the_worker(cfg, tiny_sdxl, tmp_path):
    sdxl = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=str(tiny_sdxl / "pipe")))
    base = local_worker(sdxl, str(tmp_path / "base"))
    assert type(base.pipe).__name__ == "StableDiffusionXLPipeline"
    tasks = tasks_for(2, "poster")
    result = base.process(batch(tasks))
    img = Image.open(tmp_path / "base" / tasks[0].image_path)
    assert img.size == (tasks[0].width, tasks[0].height)
    assert all(isinstance(r.clip_score, float) for r in result.records)

    lora_cfg = dataclasses.replace(sdxl, model=dataclasses.replace(sdxl.model, lora=str(tiny_sdxl / "lora")))
    lora = local_worker(lora_cfg, str(tmp_path / "lora"))
    assert not any("lora" in n for n, _ in lora.pipe.unet.named_parameters())  # fused, adapters unloaded
    assert not np.array_equal(pixels(base, tasks)[0], pixels(lora, tasks)[0])
    whole, single = pixels(lora, tasks), [pixels(lora, [t])[0] for t in tasks]
    assert all(np.array_equal(a, b) for a, b in zip(whole, single))


def test_padding_in_count_keeps_shapes_static_and_writes_nothing_extra(cfg, tmp_path):
    padded_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, padding="count", batch_size=4))
    worker = local_worker(padded_cfg, str(tmp_path / "padded"))
    tasks = tasks_for(3)
    calls = []
    original_call = worker.pipe.__call__

    def spy(*args, **kwargs):
        calls.append(len(kwargs["prompt"]))
        return original_call(*args, **kwargs)

    worker.pipe.__class__ = type("Spy", (type(worker.pipe),), {"__call__": lambda self, *a, **k: spy(*a, **k)})
    result = worker.process(batch(tasks))
    assert calls == [4]  # 3 tasks + 1 padding slot
    assert result.timings["pixels_computed"] == 4 * 64 * 64 and result.timings["pixels_needed"] == 3 * 64 * 64
    assert len(list((tmp_path / "padded").rglob("*.png"))) == 3 and len(result.records) == 3
    plain = local_worker(cfg, str(tmp_path / "plain"))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(pixels(plain, tasks), [np.asarray(r) for r in worker.generate(batch(tasks))])
    )


def test_writes_run_on_the_writer_pool_and_their_errors_reach_the_batch(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
    worker = local_worker(cfg, str(tmp_path / "ok"))
    tasks = tasks_for(3)
    result = worker.process(batch(tasks))
    assert [r.sku_id for r in result.records] == [t.sku_id for t in tasks]  # records in task order
    assert all((tmp_path / "ok" / r.image_path).is_file() for r in result.records)  # drained before returning
    (tmp_path / "bad").write_text("a file where the output root should be")
    worker.target(dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(tmp_path / "bad"))), "")
    with pytest.raises(Exception, match="bad"):
        worker.process(batch(tasks))
