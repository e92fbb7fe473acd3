"""UNet quantization (factory/quantize.py) on the embedded tiny models, CPU only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.config import ModelConfig
from factory.determinism import BatchInvariantMode
from factory.errors import ConfigError
from factory.generation.models import load_pipeline
from factory.generation.quantize import (
    DEFAULT_SKIP,
    check_mode,
    default_quantization_for,
    linear_weight_bytes,
    psnr,
    quantize_unet,
)
from factory.modes import QUANT_MODES

CPU_MODES = ("none", "int8-weight", "int8-dynamic")
PROMPTS = ["studio photo of a red sneaker", "a blue handbag on marble"]


def load(tiny_models):
    return load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)


def generate(pipe, prompts=PROMPTS, seeds=(11, 12), width=96, height=64):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.inference_mode(), BatchInvariantMode():
        out = pipe(
            prompt=list(prompts),
            width=width,
            height=height,
            num_inference_steps=2,
            guidance_scale=1.0,
            generator=generators,
            output_type="pil",
        )
    return out.images


@pytest.fixture(scope="module")
def reference(tiny_models):
    return [np.asarray(im) for im in generate(load(tiny_models))]


def is_quantized(weight: torch.Tensor) -> bool:
    return type(weight) not in (torch.Tensor, torch.nn.Parameter)


@pytest.mark.parametrize("mode", CPU_MODES)
def test_mode_generates_images_and_shrinks_linear_weights(tiny_models, reference, mode):
    pipe = load(tiny_models)
    vae_before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    info = quantize_unet(pipe.unet, mode)

    images = generate(pipe)
    assert [im.size for im in images] == [(96, 64)] * 2
    # Same seeds as the float pipeline: quantization error only (measured 62-66 dB on the tiny model).
    assert all(psnr(np.asarray(im), ref) > 45 for im, ref in zip(images, reference))

    linears = {n: m for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Linear)}
    skipped = {n for n in linears if any(s in n for s in DEFAULT_SKIP)}
    assert (
        info["mode"] == mode and info["linear_layers"] == len(linears) and info["skipped"] == len(skipped) == 16
    )  # attn2 q, k, v, out x 4 blocks
    assert info["weight_bytes_after"] == linear_weight_bytes(pipe.unet)
    for name, m in linears.items():  # cross-attention q/k/v always stay float
        assert is_quantized(m.weight) == (mode != "none" and name not in skipped), name
    if mode == "none":
        assert info["quantized"] == 0 and info["weight_bytes_after"] == info["weight_bytes_before"]
    else:
        assert info["quantized"] == len(linears) - len(skipped)
        # int8 data + one fp32 scale per output row: 0.27x here (features of 32-512), ~0.25x at SD sizes.
        assert info["quantized_bytes_after"] <= 0.3 * info["quantized_bytes_before"]
        assert info["weight_bytes_after"] < 0.4 * info["weight_bytes_before"]
    # The VAE and the text encoder are never quantized.
    assert all(torch.equal(v, vae_before[k]) for k, v in pipe.vae.state_dict().items())
    assert not any(is_quantized(m.weight) for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.Linear))


def test_int8_dynamic_keeps_batch_invariance(tiny_models):
    # Integer GEMMs are exact and activation scales are per token, so a sample's pixels still do not depend on the
    # batch it runs in. (int8-weight does not have this property: its float matmul runs on the flattened batch.)
    pipe = load(tiny_models)
    quantize_unet(pipe.unet, "int8-dynamic")
    prompts, seeds = PROMPTS + ["a wooden chair"], (1, 2, 3)
    whole = generate(pipe, prompts, seeds, 64, 64)
    single = [generate(pipe, [p], [s], 64, 64)[0] for p, s in zip(prompts, seeds)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(whole, single))


def test_linear_weight_bytes_counts_what_is_stored():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32, bias=False))
    model.add_module("conv", torch.nn.Conv2d(4, 4, 3))  # not a Linear: never counted
    assert linear_weight_bytes(model) == (64 * 128 + 128 * 32) * 4
    info = quantize_unet(model, "int8-weight", skip=())
    # int8 values plus, per output row, an fp32 scale and an int8 zero point (torchao stores one even for
    # symmetric int8); the biases are not weights.
    rows = 128 + 32
    assert linear_weight_bytes(model) == info["weight_bytes_after"] == 64 * 128 + 128 * 32 + rows * (4 + 1)


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))
    assert psnr(a, np.full_like(a, 255)) == 0.0
    with pytest.raises(ValueError):
        psnr(a, np.zeros((4, 5, 3), np.uint8))


def test_mode_validation(monkeypatch):
    unet = torch.nn.Sequential(torch.nn.Linear(16, 16))
    with pytest.raises(ConfigError, match="unknown quantization mode 'int4'"):
        quantize_unet(unet, "int4")
    with pytest.raises(ConfigError, match="fp8.*compute capability >= 8.9"):
        quantize_unet(unet, "fp8")  # the model is on the CPU
    assert not is_quantized(unet[0].weight)
    assert set(QUANT_MODES) == {"none", "int8-weight", "int8-dynamic", "fp8"}
    for mode in CPU_MODES:
        check_mode(mode, "cpu")
    with pytest.raises(ConfigError, match="not supported on device 'mps'"):
        check_mode("int8-dynamic", "mps")

    # CUDA decisions by compute capability, without a GPU.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))  # Ampere
    with pytest.raises(ConfigError, match="this GPU is 8.6"):
        check_mode("fp8", "cuda")
    check_mode("int8-weight", "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # Hopper
    check_mode("fp8", "cuda")
    # every mode measured slower than float, on CPU and on an H200 (see its docstring): auto never quantizes
    assert default_quantization_for("cuda") == default_quantization_for("cpu") == "none"


def test_quantize_after_fused_lora():
    """The loader's order: LoRA fused into the base weights and unloaded, then quantized."""
    from peft import LoraConfig

    from factory.tools.builders.tiny_models import build_tiny_sdxl

    pipe = build_tiny_sdxl()
    unet = pipe.unet
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 8, 8)
    hidden = torch.randn(1, 77, 64)
    cond = {"added_cond_kwargs": {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}}
    cond["timestep_cond"] = torch.randn(1, 32)

    def forward():
        with torch.inference_mode():
            return unet(sample, 500, hidden, **cond).sample

    base = forward()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                # lora_B starts at zero: make the LoRA change outputs, at a realistic scale (a 0.5 scale makes this
                # random UNet chaotic: any perturbation, float rounding included, then changes the output).
                p.copy_(torch.randn_like(p) * 0.1)
    attn1 = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    base_q = attn1.to_q.base_layer.weight.detach().clone()
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert not any("lora" in n for n, _ in unet.named_modules())
    fused_q = attn1.to_q.weight.detach().clone()
    fused = forward()
    assert not torch.allclose(fused, base)

    info = quantize_unet(unet, "int8-dynamic")
    assert info["quantized"] == info["linear_layers"] - info["skipped"] > 0
    assert is_quantized(attn1.to_q.weight) and is_quantized(attn1.to_out[0].weight)  # LoRA-adapted layers
    # The int8 weight is the fused one (within half a quantization step per row), not the base weight.
    w = attn1.to_q.weight
    step = w.scale.reshape(-1, 1)
    assert ((w.dequantize() - fused_q).abs() <= step / 2 + 1e-6).all()
    assert (fused_q - base_q).abs().max() > 5 * step.max()
    quantized = forward()
    assert quantized.shape == fused.shape and torch.isfinite(quantized).all()
    assert torch.nn.functional.cosine_similarity(quantized.flatten(), fused.flatten(), dim=0) > 0.999
    # The LoRA moves the output several times more than int8 rounding does (measured 0.079 vs 0.011).
    assert (quantized - fused).abs().max() < 0.25 * (fused - base).abs().max()


def test_resolve_refuses_fp8_without_float8_tensor_cores():
    import dataclasses

    from factory.config import FactoryConfig
    from factory.generation.runtime import resolve

    cfg = FactoryConfig()
    fp8 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization="fp8"))
    with pytest.raises(ConfigError, match="fp8.*8.9; workers have no GPU"):
        resolve(fp8, "cpu")
    with pytest.raises(ConfigError, match="compute capability 8.6"):
        resolve(fp8, "cuda", (8, 6))
    assert resolve(fp8, "cuda", (9, 0)).quantization == "fp8"
    assert resolve(cfg, "cuda", (9, 0)).quantization == "none"  # auto: measured slower on an H200
