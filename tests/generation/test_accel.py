"""GPU speed-ups (factory/accel.py): configuration checked on CPU, the CUDA path with mocks (no GPU, no compile)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from factory.config import ModelConfig
from factory.errors import ConfigError
from factory.generation.accel import optimize_pipeline, warmup
from factory.generation.models import load_pipeline
from factory.modes import COMPILE_MODES


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)


class FakeUNet:
    """Records what optimize_pipeline asks of a UNet."""

    def __init__(self, regional: bool = True, processor: object | None = None):
        self.attn_processors = {"down.attn1.processor": processor or AttnProcessor2_0()}
        self.to = mock.Mock()
        self.compile = mock.Mock()
        self.set_attn_processor = mock.Mock(side_effect=lambda p: self.attn_processors.update(x=p))
        if regional:
            self.compile_repeated_blocks = mock.Mock()


def fake_pipe(**kw) -> mock.Mock:
    return mock.Mock(unet=FakeUNet(**kw), vae=mock.Mock())


def test_cpu_is_a_validated_no_op(pipe):
    with pytest.raises(ConfigError, match="unknown compile mode 'max'"):
        optimize_pipeline(pipe, "cpu", "max")
    for mode in COMPILE_MODES:
        report = optimize_pipeline(pipe, "cpu", mode)
        assert report["device"] == "cpu" and report["channels_last"] is False and report["compile"] == "none"
        assert report["attention"] == ["AttnProcessor2_0"]  # diffusers' SDPA default, reported
        assert any("ignored" in n for n in report["notes"]) == (mode != "none")
    assert pipe.unet._compiled_call_impl is None  # nothing was compiled
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


def test_cuda_regional_compile_and_channels_last():
    p = fake_pipe()
    report = optimize_pipeline(p, "cuda", "regional")
    p.unet.to.assert_called_once_with(memory_format=torch.channels_last)
    p.vae.to.assert_called_once_with(memory_format=torch.channels_last)
    p.unet.compile_repeated_blocks.assert_called_once_with(fullgraph=True)
    p.unet.compile.assert_not_called()
    p.unet.set_attn_processor.assert_not_called()  # already SDPA
    assert report == {
        "device": "cuda",
        "channels_last": True,
        "compile": "regional",
        "attention": ["AttnProcessor2_0"],
        "notes": [],
    }


def test_cuda_regional_falls_back_to_full_compile():
    p = fake_pipe(regional=False)  # diffusers < 0.35
    assert optimize_pipeline(p, "cuda:0", "regional")["compile"] == "full"
    p.unet.compile.assert_called_once_with(fullgraph=True)

    p = fake_pipe()
    p.unet.compile_repeated_blocks.side_effect = ValueError("`_repeated_blocks` attribute is empty")
    report = optimize_pipeline(p, "cuda", "regional")
    assert report["compile"] == "full" and "_repeated_blocks" in report["notes"][0]
    p.unet.compile.assert_called_once_with(fullgraph=True)


def test_cuda_full_and_none_and_sdpa():
    p = fake_pipe(processor=AttnProcessor())  # a pipeline loaded with the pre-SDPA processor
    report = optimize_pipeline(p, "cuda", "full")
    assert report["compile"] == "full"
    p.unet.compile.assert_called_once_with(fullgraph=True)
    p.vae.decoder.compile.assert_called_once_with(fullgraph=True)  # 41 % of a 512² batch on an H200 uncompiled
    p.unet.compile_repeated_blocks.assert_not_called()
    assert isinstance(p.unet.set_attn_processor.call_args.args[0], AttnProcessor2_0)

    p = fake_pipe()
    assert optimize_pipeline(p, "cuda")["compile"] == "none"
    p.unet.compile.assert_not_called()
    p.unet.compile_repeated_blocks.assert_not_called()


def test_real_unet_supports_regional_compile(pipe):
    # What the "regional" mode relies on, checked without compiling: the method and matching block classes.
    blocks = pipe.unet._repeated_blocks
    assert hasattr(pipe.unet, "compile_repeated_blocks")
    assert any(type(m).__name__ in blocks for m in pipe.unet.modules())


def test_warmup_calls_the_pipeline_once_per_bucket():
    calls = []
    buckets = [(512, 512, 4), (768, 512, 6), (1024, 1024, 8)]
    seconds = warmup(lambda **kw: calls.append(kw), buckets, batch_size=3, guidance_scale=1.5)
    assert list(seconds) == ["512x512x4", "768x512x6", "1024x1024x8"] and all(s >= 0 for s in seconds.values())
    assert [(c["width"], c["height"], c["num_inference_steps"]) for c in calls] == buckets
    for c in calls:
        assert len(c["prompt"]) == len(c["negative_prompt"]) == len(c["generator"]) == 3
        assert c["guidance_scale"] == 1.5 and c["output_type"] == "pil"
    with pytest.raises(ValueError):
        warmup(lambda **kw: None, buckets, batch_size=0)


def test_warmup_runs_a_real_pipeline(pipe):
    seconds = warmup(pipe, [(64, 64, 1), (64, 32, 1)], batch_size=2)
    assert set(seconds) == {"64x64x1", "64x32x1"}
