"""Single-file checkpoints in the original LDM key layout: tiny replicas written by the inverse of diffusers'
conversion (factory/tools/builders/ldm_layout.py) load back to the same tensors and pixels as their directory form;
the family is told from the keys; the shipped full-size configs have the published architectures.

The replicas have tiny random weights: loading and plumbing only, never image quality.
"""

import argparse
import dataclasses
import json
import shutil

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from factory.config import ModelConfig
from factory.errors import EXIT_BAD_INPUT, ModelInputError
from factory.generation.models import load_pipeline, model_fingerprint
from factory.generation.single_file import SHIPPED_CONFIGS, detect, inspect_checkpoint
from factory.job.night_plan import local_worker
from factory.tools.builders.ldm_layout import to_ldm
from factory.tools.builders.single_file_replicas import write_single_file_replicas
from factory.tools.ops.check_model import check_model
from tests.generation.test_worker import batch, tasks_for

PROMPTS = ["a red running shoe, HD", "产品摄影 运动鞋", "{0.__class__} %s", "white sneaker " * 40]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_single_file_replicas(tmp_path_factory.mktemp("single-file"))


def load(path, **kw):
    return load_pipeline(ModelConfig(pipeline=str(path), **kw), "cpu", torch.float32)


def image(pipe):
    kw = dict(prompt=["a red shoe"], width=64, height=64, num_inference_steps=2, guidance_scale=1.0)
    return pipe(generator=[torch.Generator().manual_seed(7)], output_type="np", **kw).images[0]


@pytest.mark.parametrize("name", ["lcm-sd15", "sd15", "sdxl"])
def test_single_file_loads_to_the_directory_forms_tensors_and_pixels(name, files):
    f = files[name]
    ldm = load_file(str(f))
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")) for k in ldm
    )
    directory, single = load(f.parent / name), load(f)
    assert type(single).__name__ == type(directory).__name__
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(directory, comp, None) is None:
            continue
        a, b = getattr(directory, comp).state_dict(), getattr(single, comp).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), comp
    assert (single.unet.config.time_cond_proj_dim is not None) == (name == "lcm-sd15")
    assert type(single.scheduler).__name__ == "LCMScheduler"
    assert np.array_equal(image(directory), image(single)) and image(single).std() > 0


def test_single_file_tokenizers_give_open_clips_token_ids(files):
    pipe = load(files["sdxl"])
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        for text in PROMPTS:
            ids = tok(text, truncation=True, max_length=77).input_ids
            assert ids == open_clip.tokenize([text])[0][: len(ids)].tolist(), text
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"  # as SDXL's are


def test_worker_pixels_from_a_single_file_equal_the_directory_forms(files, cfg, tmp_path):
    tasks = tasks_for(2, "small")
    out = {}
    for form, path in (("dir", files["lcm-sd15"].parent / "lcm-sd15"), ("file", files["lcm-sd15"])):
        model = dataclasses.replace(cfg.model, pipeline=str(path))
        worker = local_worker(dataclasses.replace(cfg, model=model), str(tmp_path / form))
        worker.process(batch(tasks))
        out[form] = [np.asarray(Image.open(tmp_path / form / t.image_path)) for t in tasks]
    # the PNGs' bytes differ only in the model id they carry (a file and a directory are two model keys)
    assert all(np.array_equal(a, b) for a, b in zip(out["dir"], out["file"]))


def test_ckpt_loads_like_safetensors_and_pickled_code_is_refused(files, tmp_path):
    sd15 = files["sd15"]
    assert np.array_equal(image(load(sd15.with_suffix(".ckpt"))), image(load(sd15)))
    shutil.copytree(sd15.with_suffix(".config"), tmp_path / "evil.config")
    torch.save({"state_dict": load_file(str(sd15)), "hparams": argparse.Namespace(lr=1)}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelInputError, match="needs arbitrary code to unpickle") as err:
        load(tmp_path / "evil.ckpt")
    assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(err.value)


def test_family_inpainting_lcm_and_prediction_come_from_the_keys(files, tmp_path):
    lcm, sd15, sdxl = (
        inspect_checkpoint(files["lcm-sd15"]),
        inspect_checkpoint(files["sd15"]),
        inspect_checkpoint(files["sdxl"]),
    )
    assert (lcm.family, lcm.lcm_dim, sd15.family, sd15.lcm_dim, sdxl.family) == ("sd15", 32, "sd15", None, "sdxl")
    assert not sd15.inpainting and sd15.prediction == "epsilon" and sd15.dtype == "float32"
    shapes = {k: (tuple(v.shape), "F16") for k, v in load_file(str(files["sd15"])).items()}
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint = {**shapes, conv_in: ((32, 9, 3, 3), "F16"), "v_pred": ((), "F16")}
    info = detect(inpaint, tmp_path / "x.safetensors")
    assert info.inpainting and info.prediction == "v_prediction" and info.dtype == "float16"
    sd2 = {k.replace("cond_stage_model.transformer.", "cond_stage_model.model."): v for k, v in shapes.items()}
    with pytest.raises(ModelInputError, match="SD2.x"):
        detect(sd2, tmp_path / "x.safetensors")
    with pytest.raises(ModelInputError, match="a LoRA, not a checkpoint"):
        detect({"lora_unet_x.lora_down.weight": ((4, 4), "F32")}, tmp_path / "x.safetensors")
    # a 9-channel file is refused as model.pipeline in one sentence
    sd = load_file(str(files["sd15"]))
    sd[conv_in] = torch.zeros(32, 9, 3, 3)
    save_file(sd, str(tmp_path / "inpaint.safetensors"))
    shutil.copytree(files["sd15"].with_suffix(".config"), tmp_path / "inpaint.config")
    with pytest.raises(ModelInputError, match="inpainting checkpoint"):
        load(tmp_path / "inpaint.safetensors")


def test_config_directory_choice_and_the_model_key(files, tmp_path):
    f = shutil.copy(files["sd15"], tmp_path / "brand.safetensors")
    with pytest.raises(ModelInputError, match="do not load with the configs in .*single_file_configs/sd15"):
        load(f)  # no brand.config/ beside it: the shipped full-size SD1.5 configs, which tiny tensors do not fit
    with pytest.raises(ModelInputError, match="keys are an sd15 model's"):
        load(f, single_file_config="sdxl")
    with pytest.raises(ModelInputError, match="not a diffusers config directory"):
        load(f, single_file_config=str(tmp_path))
    config = shutil.copytree(files["sd15"].with_suffix(".config"), tmp_path / "brand.config")
    assert np.array_equal(image(load(f)), image(load(f, single_file_config=str(config))))
    key = model_fingerprint(ModelConfig(pipeline=str(f)))
    assert (
        key
        == model_fingerprint(ModelConfig(pipeline=str(f)))
        != model_fingerprint(ModelConfig(pipeline=str(files["sd15"])))
    )
    sched = config / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "timestep_spacing": "trailing"}))
    assert model_fingerprint(ModelConfig(pipeline=str(f))) != key  # the configs change pixels, so they key the model


def test_shipped_configs_have_the_published_architectures():
    """Full-size models built (on the meta device: shapes, no memory) from the shipped configs, renamed to the LDM
    layout, are what diffusers' own key detection calls SD1.5 (v1) and SDXL base: the published checkpoints' keys."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from factory.tools.builders.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    with torch.device("meta"):
        ldm = {}
        for family in ("sd15", "sdxl"):
            root = SHIPPED_CONFIGS / family
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
            sd = unet_to_ldm(unet.state_dict(), unet.config) | vae_to_ldm(vae.state_dict(), vae.config)
            if family == "sdxl":
                text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
                sd |= clip_to_ldm(text.state_dict(), "conditioner.embedders.0.transformer.")
                sd |= open_clip_to_ldm(text_2.state_dict(), "conditioner.embedders.1.model.")
            else:
                sd |= clip_to_ldm(text.state_dict(), "cond_stage_model.transformer.")
            ldm[family] = sd
    assert infer_diffusers_model_type(ldm["sd15"]) == "v1" and infer_diffusers_model_type(ldm["sdxl"]) == "xl_base"
    shapes = {f: {k: (tuple(v.shape), "F16") for k, v in sd.items()} for f, sd in ldm.items()}
    assert detect(shapes["sd15"], SHIPPED_CONFIGS).family == "sd15"
    assert detect(shapes["sdxl"], SHIPPED_CONFIGS).family == "sdxl"
    assert shapes["sdxl"]["conditioner.embedders.1.model.text_projection"][0] == (1280, 1280)
    assert 1.06e9 < sum(np.prod(s) for s, _ in shapes["sd15"].values()) < 1.07e9  # SD1.5: 1066M params


def test_models_check_names_what_a_single_file_is(files, cfg, tmp_path):
    found = dict(check_model(files["lcm-sd15"], None, cfg).lines)
    assert found["checkpoint"].startswith("sd15 single file (original LDM keys), text-to-image (4-channel UNet)")
    assert "LCM-distilled (time_cond_proj_dim=32)" in found["lcm keys"] and "lcm-sd15.config" in found["configs"]
    assert found["unet"].startswith("UNet2DConditionModel") and "outside the mask unchanged" in found["repair run"]
    sdxl = dict(check_model(files["sdxl"], None, cfg).lines)
    assert sdxl["checkpoint"].startswith("sdxl single file") and "not detectable" in sdxl["lcm keys"]
    with pytest.raises(ModelInputError, match="do not load with the configs") as err:  # exit 2, one line
        check_model(shutil.copy(files["sd15"], tmp_path / "no-config.safetensors"), None, cfg)
    assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(err.value)


def test_inverse_conversion_refuses_keys_it_has_no_name_for(files):
    pipe = load(files["sd15"].parent / "sd15")
    pipe.unet.register_buffer("extra_thing", torch.zeros(1))
    with pytest.raises(ValueError, match="no LDM name for UNet key 'extra_thing'"):
        to_ldm(pipe)
