"""Every checkpoint layout docs/real-weights.md names, as a tiny replica: a worker with inpaint repair, `models check`.

The replicas (factory/tools/builders/checkpoint_replicas.py) have the published model_index.json, component folders and
LoRA key format; their weights are tiny and random, so these tests prove loading and plumbing only.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from factory.config import ModelConfig
from factory.errors import EXIT_BAD_INPUT, ModelInputError
from factory.generation.models import load_pipeline
from factory.job.night_plan import local_worker
from factory.quality.repair import Repairer
from factory.tools.builders.checkpoint_replicas import LORA_FILE, write_lcm_lora, write_replicas
from factory.tools.ops.check_model import check_model
from tests.conftest import cli
from tests.generation.test_worker import batch, tasks_for

LAYOUTS = ["lcm-sd15", "sd15+lcm-lora", "sdxl+lcm-lora", "sdxl-lcm-unet"]


@pytest.fixture(scope="session")
def replicas(tmp_path_factory):
    return write_replicas(tmp_path_factory.mktemp("layouts"))


def only_blurry_fails(cfg):
    """Every image fails the blur check alone (repairable), so each one goes through the inpaint repair."""
    q = dataclasses.replace(
        cfg.quality,
        blur_laplacian_var=1e9,
        clip_threshold=-1.0,
        iqa_threshold=0.0,
        unsafe_threshold=1.01,
        blank_std=0.0,
        overexposed_frac=1.0,
        underexposed_frac=1.0,
        saturation_mean=1.01,
    )
    return dataclasses.replace(cfg, quality=q)


def test_replicas_have_the_published_layouts(replicas):
    for r in replicas.values():
        index = json.loads((r.pipeline / "model_index.json").read_text())
        assert index["_class_name"] == r.pipeline_class
        listed = {k for k, v in index.items() if isinstance(v, list) and None not in v}
        assert listed == {p.name for p in r.pipeline.iterdir() if p.is_dir()}  # every component on disk, no extra
    sd15, lcm = replicas["sd15+lcm-lora"].pipeline, replicas["lcm-sd15"].pipeline
    for root in (sd15, lcm):
        index = json.loads((root / "model_index.json").read_text())
        assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
        assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert json.loads((sd15 / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    unet_only = replicas["sdxl-lcm-unet"].pipeline.parent / "lcm-sdxl"
    assert not (unet_only / "model_index.json").exists() and (unet_only / "config.json").is_file()
    for r in (replicas["sd15+lcm-lora"], replicas["sdxl+lcm-lora"]):
        from safetensors import safe_open

        with safe_open(str(r.lora / LORA_FILE), "pt") as f:
            keys = list(f.keys())
        # The published LCM-LoRA files' key format: kohya names over diffusers block names, with alphas.
        assert keys and all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)


def assert_lora_fused(pipe, base_dir):
    """The LCM-LoRA was fused into attention and convolution weights alike, and no adapter is left."""
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    assert pipe.unet.config.time_cond_proj_dim is None
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, pipe.unet.get_parameter(n))]
    for module in ("attn1.to_q", "attn2.to_v", "ff.net.2", "proj_in", "conv1", "time_emb_proj"):
        assert any(module in n for n in changed), module


@pytest.mark.parametrize("name", LAYOUTS)
def test_worker_generates_and_repairs_with_each_layout(name, replicas, cfg, tmp_path):
    r = replicas[name]
    model = dataclasses.replace(cfg.model, pipeline=str(r.pipeline), lora=str(r.lora or ""))
    worker = local_worker(only_blurry_fails(dataclasses.replace(cfg, model=model)), str(tmp_path))
    assert type(worker.pipe).__name__ == r.pipeline_class
    assert type(worker.pipe.scheduler).__name__ == "LCMScheduler"
    assert worker.retry.repairer.pipe.unet is worker.pipe.unet and worker.retry.repairer.pipe.vae is worker.pipe.vae
    if r.lcm == "distilled":
        assert worker.pipe.unet.config.time_cond_proj_dim is not None
    else:
        assert_lora_fused(worker.pipe, r.pipeline)

    tasks = tasks_for(2, "small")
    result = worker.process(batch(tasks))
    for task, record in zip(tasks, result.records):
        assert record.error is None and record.initial_reasons == ["blurry"] and record.attempts == 1
        image = Image.open(tmp_path / task.image_path)
        assert image.size == (task.width, task.height) and np.asarray(image).std() > 0


def test_lcm_repair_pipeline_shares_modules_without_casting(replicas):
    # StableDiffusionInpaintPipeline.from_pipe would cast the shared UNet to float32; the worker's must stay as loaded.
    cfg = ModelConfig(pipeline=str(replicas["lcm-sd15"].pipeline))
    pipe = load_pipeline(cfg, "cpu", torch.bfloat16)
    repairer = Repairer(pipe)
    assert type(repairer.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert repairer.pipe.unet is pipe.unet and repairer.pipe.text_encoder is pipe.text_encoder
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert repairer.pipe.scheduler is not pipe.scheduler  # a private scheduler instance


def test_models_check_reports_each_component(replicas, cfg, tmp_path):
    lines = []
    r = replicas["lcm-sd15"]
    report = check_model(r.pipeline, None, cfg, emit=lambda k, v: lines.append((k, v)))
    found = dict(report.lines)
    assert lines == report.lines and report.warnings == 0
    assert found["model_index"].startswith("LatentConsistencyModelPipeline")
    assert "time_cond_proj_dim=32" in found["unet"] and "float32" in found["unet"]
    assert found["scheduler"].startswith("LCMScheduler") and found["safety_checker"].startswith("not loaded")
    assert found["repair"].startswith("StableDiffusionInpaintPipeline") and "unet" in found["repair"]
    assert "64x64, 2 steps" in found["generate"] and "outside the mask unchanged" in found["repair run"]

    # SD1.5 base: without a LoRA it is a warning; with one in diffusers' own key format the LoRA is reported.
    base = replicas["sd15+lcm-lora"].pipeline
    assert check_model(base, None, cfg).warnings == 1
    lora = write_lcm_lora("sd15", tmp_path / "lora-diffusers", fmt="diffusers")
    found = dict(check_model(base, lora.parent, cfg).lines)
    assert "diffusers format" in found["lora"] and "UNet layers" in found["lora"]
    assert "(saved: PNDMScheduler; replaced)" in found["scheduler"]
    assert_lora_fused(load_pipeline(ModelConfig(pipeline=str(base), lora=str(lora)), "cpu", torch.float32), base)


def bad_dirs(replicas, tmp_path):
    """(pipeline, lora, message) for each way a directory or LoRA given to `models check` can be wrong."""
    sd15 = replicas["sd15+lcm-lora"]
    no_unet = shutil.copytree(sd15.pipeline, tmp_path / "no-unet")
    shutil.rmtree(no_unet / "unet")
    lfs = shutil.copytree(sd15.pipeline, tmp_path / "lfs")
    for f in (lfs / "unet").glob("*.safetensors"):
        f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 3438167536\n")
    truncated = shutil.copytree(sd15.pipeline, tmp_path / "truncated")
    for f in (truncated / "vae").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:2000])
    bad_json = shutil.copytree(sd15.pipeline, tmp_path / "bad-json")
    (bad_json / "model_index.json").write_text("{not json")
    not_lora = tmp_path / "not-a-lora.safetensors"
    not_lora.write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    return [
        (tmp_path / "missing", None, "no such directory"),
        (sd15.pipeline / "model_index.json", None, "a file, not a diffusers pipeline directory"),
        (tmp_path / "empty", None, "no model_index.json"),
        (replicas["sdxl-lcm-unet"].pipeline.parent / "lcm-sdxl", None, "a UNet-only directory"),
        (sd15.lora, None, "a LoRA, not a pipeline: pass it with --lora"),
        (no_unet, None, "lists 'unet' but there is no unet/ folder"),
        (lfs, None, "a Git LFS pointer, not weights"),
        (bad_json, None, "not a diffusers model index"),
        (truncated, None, "cannot load the diffusers pipeline"),
        (sd15.pipeline, not_lora, "not a safetensors file"),
        (sd15.pipeline, tmp_path / "empty", "no LoRA file"),
        (replicas["lcm-sd15"].pipeline, replicas["sdxl+lcm-lora"].lora, "cannot load LoRA weights"),
    ]


def test_models_check_refuses_bad_directories_in_one_sentence(replicas, cfg, tmp_path):
    for pipeline, lora, message in bad_dirs(replicas, tmp_path):
        with pytest.raises(ModelInputError, match=message) as err:
            check_model(pipeline, lora, cfg)
        assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(err.value), (pipeline, str(err.value))
    with pytest.raises(ModelInputError, match="multiple of 8"):
        check_model(replicas["lcm-sd15"].pipeline, None, cfg, size=60)


def test_models_check_cli(replicas):
    sdxl = replicas["sdxl+lcm-lora"]
    ok = cli("models", "check", str(sdxl.pipeline), "--lora", str(sdxl.lora))
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout.splitlines()
    assert out[-1].startswith("OK: ") and any(line.startswith("text_encoder_2 ") for line in out)
    assert any(line.startswith("repair ") and "StableDiffusionXLInpaintPipeline" in line for line in out)
    bad = cli("models", "check", str(replicas["sdxl-lcm-unet"].pipeline.parent / "lcm-sdxl"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and "UNet-only" in bad.stderr and len(bad.stderr.splitlines()) == 1
