"""`model.quantization = "auto"`: the measured-faster policy, fp8's dtype rule and the whole cross-attention kept
float, on CPU (no GPU here: CUDA decisions are taken with a given compute capability)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from factory.config import ModelConfig
from factory.errors import ConfigError
from factory.generation.models import load_pipeline
from factory.generation.quantize import MEASURED, Measured, auto_quantization, device_class, quantize_unet
from factory.generation.runtime import resolve


def with_model(cfg, **kw):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kw))


def test_auto_is_none_wherever_nothing_measured_faster():
    assert device_class("cuda", (9, 0)) == "cuda-sm90" and device_class("cpu", None) == "cpu"
    mode, why = auto_quantization("cuda", (9, 0), "none")
    assert mode == "none" and "int8-weight 0.90x" in why and "fp8 0.75x" in why and "bench-gpu-h200.json" in why
    mode, why = auto_quantization("cuda", (9, 0), "full")  # fp8 + compile: not measured yet
    assert mode == "none" and why.startswith("no quantized mode measured on cuda-sm90 with compile 'full'")
    assert auto_quantization("cpu", None, "none")[0] == "none"
    assert auto_quantization("cuda", (8, 0), "none")[0] == "none"  # A100: no row at all


def test_auto_picks_a_mode_measured_faster_that_the_device_can_run():
    table = (
        *MEASURED,
        Measured("cuda-sm90", "full", "fp8", 1.21, "bench_gpu quant, H100"),
        Measured("cuda-sm90", "full", "int8-weight", 1.05, "bench_gpu quant, H100"),
        Measured("cuda-sm86", "full", "fp8", 1.5, "impossible: sm86 has no fp8"),
        Measured("cuda-sm86", "full", "int8-weight", 1.1, "bench_gpu quant, A6000"),
    )
    mode, why = auto_quantization("cuda", (9, 0), "full", table)
    assert mode == "fp8" and why.endswith(": fp8") and "fp8 1.21x" in why and "H100" in why
    mode, why = auto_quantization("cuda", (8, 6), "full", table)  # fp8 is never picked below sm89
    assert mode == "int8-weight" and "fp8" not in why


def test_run_json_reason_and_fp8_dtype_rule(cfg):
    cpu = resolve(cfg, "cpu")
    assert cpu.quantization == "none" and cpu.why["quantization"].startswith("measured on cpu")
    assert "quantization" not in resolve(with_model(cfg, quantization="none"), "cpu").why  # not auto: no reason
    fp8 = resolve(with_model(cfg, quantization="fp8"), "cuda", (9, 0))
    assert (fp8.quantization, fp8.dtype) == ("fp8", "bfloat16")  # rowwise scales: bfloat16 (VAE included)
    with pytest.raises(ConfigError, match="rowwise scales.*model.dtype is 'float16'"):
        resolve(with_model(cfg, quantization="fp8", dtype="float16"), "cuda", (9, 0))
    with pytest.raises(ConfigError, match="fp8' needs compute capability >= 8.9; workers have no GPU"):
        resolve(with_model(cfg, quantization="fp8"), "cpu")
    with pytest.raises(ConfigError, match="compute capability 8.6"):
        resolve(with_model(cfg, quantization="fp8"), "cuda", (8, 6))


def test_fp8_request_on_cpu_stops_the_night_as_a_config_error(cfg, day_file):
    from factory.job.run import run
    from tests.conftest import with_run

    night = with_run(with_model(cfg, quantization="fp8"), executor="local")
    with pytest.raises(ConfigError, match="fp8' needs compute capability >= 8.9; workers have no GPU") as err:
        run(night, _date(day_file))
    assert err.value.exit_code == 2
    assert not (Path(cfg.paths.output) / _date(day_file) / "_SUCCESS").exists()


def _date(day_file: Path) -> str:
    return day_file.stem


@pytest.mark.parametrize("mode", ["int8-weight", "int8-dynamic"])
def test_whole_cross_attention_stays_float(tiny_models, mode):
    pipe = load_pipeline(ModelConfig(pipeline=str(tiny_models["pipeline"])), "cpu", torch.float32)
    info = quantize_unet(pipe.unet, mode)
    linears = {n: m for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Linear)}
    cross = [n for n in linears if ".attn2." in f".{n}"]
    assert cross and all(type(linears[n].weight) in (torch.Tensor, torch.nn.Parameter) for n in cross)
    assert {n.rsplit("attn2.", 1)[1] for n in cross} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert info["skipped"] == len(cross) and info["quantized"] == len(linears) - len(cross)
    assert info["saved_mib"] == round((info["weight_bytes_before"] - info["weight_bytes_after"]) / 2**20, 1) > 0
