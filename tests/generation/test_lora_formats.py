"""Style LoRAs in the formats people have (kohya / A1111, diffusers, peft) and their trigger words.

The LoRAs are random (factory/tools/builders/style_lora.py `write_format_loras`): each format holds the same
weights, with alpha != rank, so equal pixels across formats mean the keys and the alpha/rank scale were both read.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from factory.config import AdapterConfig, LoraSection, ModelConfig, load_config
from factory.errors import ConfigError, ModelInputError
from factory.generation.adapters import Adapters
from factory.generation.lora_formats import find_lora
from factory.generation.models import load_pipeline
from factory.inputs.bucketing import Planner
from factory.inputs.prompts import load_templates
from factory.inputs.skus import Sku
from factory.job.run import run
from factory.tools.builders.style_lora import FORMAT_ALPHA, FORMAT_RANK, write_format_loras
from factory.tools.ops.check_model import describe_lora
from tests.conftest import DATE, REPO

FORMATS = {"unet-diffusers": "diffusers", "unet-kohya": "kohya", "unet-peft": "peft", "te-diffusers": "diffusers",
           "te-kohya": "kohya"}  # fmt: skip


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    return write_format_loras(tmp_path_factory.mktemp("lora-formats"))


@pytest.fixture(scope="module")
def images(loras, tiny_models):
    """name -> the 64 px image with that LoRA active (and "none"), all from one pipeline switching adapters."""
    pipe = load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)
    adapters = Adapters(pipe, {n.replace("-", "_"): AdapterConfig(str(p)) for n, p in loras.items()})

    def image():
        kw = dict(prompt=["a red shoe"], width=64, height=64, num_inference_steps=2, guidance_scale=1.0)
        return pipe(generator=[torch.Generator().manual_seed(3)], output_type="np", **kw).images[0]

    out = {"none": image()}
    for name in loras:
        adapters.activate((f"{name.replace('-', '_')}@1.0",))
        out[name] = image()
    adapters.activate(())
    out["none again"] = image()
    return out


def test_each_format_is_recognised_and_reported(loras):
    for name, path in loras.items():
        assert find_lora(path).format == FORMATS[name], name
        line = describe_lora(path)
        assert f"{FORMATS[name]} format" in line and "UNet layers" in line, line
        assert ("0 text-encoder layers" in line) == name.startswith("unet-"), line


def test_each_format_loads_changes_pixels_and_equal_weights_give_equal_pixels(images):
    for name in FORMATS:
        assert np.abs(images[name] - images["none"]).max() > 0.01, name
    assert np.array_equal(images["unet-diffusers"], images["unet-kohya"])
    assert np.array_equal(images["unet-diffusers"], images["unet-peft"])
    assert np.array_equal(images["te-diffusers"], images["te-kohya"])
    assert not np.array_equal(images["te-diffusers"], images["unet-diffusers"])  # the text-encoder half acts
    assert np.array_equal(images["none"], images["none again"])  # disabled adapters add nothing


def test_the_alpha_over_rank_scale_is_read_from_every_format(loras, tiny_models):
    pipe = load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)
    adapters = Adapters(pipe, {n.replace("-", "_"): AdapterConfig(str(p)) for n, p in loras.items() if "unet" in n})
    for name in adapters.configured:
        adapters.activate((f"{name}@1.0",))
        q = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
        assert q.scaling[name] == FORMAT_ALPHA / FORMAT_RANK, name


def test_malformed_lora_files_are_one_sentence(loras, tmp_path):
    peft = shutil.copytree(loras["unet-peft"], tmp_path / "peft")
    (peft / "adapter_config.json").unlink()
    shutil.copy(peft / "adapter_model.safetensors", tmp_path / "loose.safetensors")
    cases = [
        (tmp_path / "loose.safetensors", "peft keys but no adapter_config.json"),
        (tmp_path / "missing.safetensors", "no such LoRA file"),
        ((tmp_path / "empty"), "no LoRA file"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.ckpt").write_bytes(b"0")
    cases.append((tmp_path / "x.ckpt", "from .safetensors files only"))
    for path, message in cases:
        with pytest.raises(ModelInputError, match=message):
            find_lora(path)


def planner_with(words: dict[str, list[str]]):
    adapters = {n: AdapterConfig("unused", 1.0, w) for n, w in words.items()}
    cfg = load_config(REPO / "factory.toml")
    return Planner(cfg.planner, load_templates(REPO / "templates", {b.name for b in cfg.planner.buckets}), adapters)


def test_trigger_words_go_first_in_the_prompt_literally(tmp_path):
    planner = planner_with({"peak": ["peakstyle", "{0.__class__} %s"], "ink": ["inkwash", "peakstyle"], "plain": []})
    skus = [
        Sku("A", "toys", {"product": "robot"}, 1, "f.parquet", 0, ("peak",)),
        Sku("B", "toys", {"product": "robot"}, 1, "f.parquet", 1, ("ink", "peak")),
        Sku("C", "toys", {"product": "robot"}, 1, "f.parquet", 2, ("plain",)),
        Sku("D", "toys", {"product": "robot"}, 1, "f.parquet", 3),
    ]
    a, b, c, d = planner.plan_tasks(skus, DATE)
    assert d.prompt == c.prompt and not d.prompt.startswith("peakstyle")
    assert a.prompt == f"peakstyle, {{0.__class__}} %s, {d.prompt}"  # data, never formatted
    assert b.prompt == f"inkwash, peakstyle, {{0.__class__}} %s, {d.prompt}"  # adapter-name order, once each
    poster = planner_with({"p": ["poster"]})  # a trigger word never picks the bucket (the template's words do)
    assert poster.plan_tasks([dataclasses.replace(skus[0], adapters=("p",))], DATE)[0].bucket == d.bucket


def test_trigger_words_config_is_checked(tmp_path):
    f = tmp_path / "f.toml"
    for value, message in (('"peak"', "must be a list of strings"), ('["a\\nb"]', "printable one-line"),
                           ('[" "]', "non-empty"), (f'["{"x" * 101}"]', "at most 100")):  # fmt: skip
        f.write_text(f'[lora.adapters.peak]\npath = "l.safetensors"\ntrigger_words = {value}\n')
        with pytest.raises(ConfigError, match=message):
            load_config(f).validate()
    f.write_text('[lora.adapters.peak]\npath = "l.safetensors"\ntrigger_words = ["peakstyle"]\n')
    cfg = load_config(f)
    assert cfg.lora == LoraSection({"peak": AdapterConfig(str(tmp_path / "l.safetensors"), 1.0, ["peakstyle"])})
    assert json.loads(json.dumps(cfg.to_dict()))["lora"]["adapters"]["peak"]["trigger_words"] == ["peakstyle"]


def test_a_night_on_a_single_file_with_a_kohya_adapter_and_trigger_words(loras, tiny_models, tmp_path):
    """End to end (local executor): the model is a single file, the toys template's adapter a kohya file with
    trigger words; toys prompts start with them, food prompts do not, the model column names the file."""
    from factory.tools.builders.single_file_replicas import write_single_file_replicas
    from tests.generation.test_adapters import adapter_cfg, manifest, two_category_day

    model = write_single_file_replicas(tmp_path / "models")["lcm-sd15"]
    cfg = adapter_cfg(tiny_models, tmp_path, {"style": loras["unet-kohya"], "brand": loras["unet-peft"]})
    cfg.lora.adapters["style"].trigger_words = ["stylewordx"]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pipeline=str(model)))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, executor="local"))
    summary = run(cfg, DATE, two_category_day(tmp_path / "day.parquet"))
    rows = manifest(summary, "approved") + manifest(summary, "review")
    assert len(rows) == 6 and all(r["model"].startswith("lcm-sd15.safetensors@") for r in rows)
    for r in rows:
        assert r["prompt"].startswith("stylewordx, ") == (r["sku_id"][0] == "T"), r["prompt"]
    assert run(cfg, DATE, tmp_path / "day.parquet").already_done  # the night is final: a rerun does nothing
