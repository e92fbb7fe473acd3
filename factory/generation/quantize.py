"""Post-load quantization of the UNet's Linear layers with torchao (`quantize_` + its int8/float8 configs).

Modes (`QUANT_MODES`):
  - "none":         leave the UNet as loaded.
  - "int8-weight":  int8 per-row weights, activations stay float (torchao `Int8WeightOnlyConfig`): ~1/4 of the
                    fp32 (1/2 of the fp16) Linear weight memory; the weight is dequantized inside the matmul, so it
                    only pays off in speed with torch.compile on CUDA.
  - "int8-dynamic": int8 weights and per-token dynamically quantized int8 activations, int8 GEMM
                    (torchao `Int8DynamicActivationInt8WeightConfig`). Runs on CPU and CUDA.
  - "fp8":          float8 e4m3 weights and dynamic activations on `torch._scaled_mm`
                    (torchao `Float8DynamicActivationFloat8WeightConfig`): CUDA compute capability >= 8.9 only.

What is quantized and why:
  - Only the UNet, and only its `nn.Linear` layers (attention projections, feed-forwards, time embeddings). The
    convolutions stay float: torchao's int8/fp8 configs target Linear layers. The VAE and the text encoder(s) are
    never touched: an int8 VAE visibly shifts colours (brand colours must be exact) and the text encoders run once
    per batch, so quantizing them would save nothing measurable.
  - `DEFAULT_SKIP` keeps the whole cross-attention (`attn2`: its query/key/value and output projections) in float:
    quantizing it breaks the rendering of text (logos, labels) in product images.
  - fp8 uses rowwise (per output channel) scales, which torchao implements for bfloat16 weights only, so "fp8"
    runs the pipeline in bfloat16 (`model.dtype = "auto"` resolves to it; an explicit float16 is refused):
    the VAE then decodes in bfloat16 too, never in fp8.

`"auto"` (`auto_quantization`) picks a mode only where `MEASURED` has it faster than "none" on the same device
class and compile mode, in the same run; run.json `runtime.why.quantization` names the figures it decided on.

LoRA: `generation.models.load_pipeline` loads an LCM-LoRA, fuses it into the base weights (`pipe.fuse_lora()`) and
unloads the adapter *before* this module runs, so `quantize_unet` sees plain Linear layers with the LoRA already
folded in. The order matters: a LoRA cannot be fused into int8/fp8 weights, and PEFT's LoRA wrappers are not
`nn.Linear`, so quantizing before fusing would silently skip every adapted layer. Call order in a worker:
`load_pipeline` (moves to the device, fuses LoRA) -> `quantize_unet(pipe.unet, mode)` -> `accel.optimize_pipeline`.

Batch invariance on CPU (`factory.determinism.BatchInvariantMode`): "int8-dynamic" keeps it (integer GEMMs are
exact and activation scales are per token), "int8-weight" does not (its float matmul runs on the whole flattened
batch; measured: pixels differ by 1 level between a batch of one and a batch of five).

Backend: torchao (0.18.0 works with torch 2.15 on CPU for both int8 configs). torch's own
`torch.ao.quantization.quantize_dynamic` is deprecated in favour of torchao and warns that it will be removed.
Importing diffusers with torchao >= 0.15 installed logs "Unable to import `torchao` Tensor objects": diffusers
looks for torchao tensor classes that 0.18 removed, needed only to load torchao-*serialized* checkpoints, which
the factory never does (it quantizes in process). So torchao stays hidden from diffusers and transformers
(`models.import_libraries`) and is imported here only when a mode other than "none" runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from factory.errors import ConfigError
from factory.modes import QUANT_MODES

if TYPE_CHECKING:  # torch is imported where it is used: the driver resolves modes here without it
    import torch

DEFAULT_SKIP = ("attn2.",)  # the whole cross-attention: to_q, to_k, to_v, to_out.0
FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) / Hopper (sm_90): the first GPUs with float8 tensor cores


def check_mode(mode: str, device: str | torch.device) -> None:
    """Raise ConfigError if `mode` is unknown or cannot run on `device` ("cpu", "cuda", "cuda:1", ...).

    Cheap (no model needed), so it runs before any model is loaded.
    """
    import torch

    if mode not in QUANT_MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; expected one of {', '.join(QUANT_MODES)}")
    if mode == "none":
        return
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"quantization mode {mode!r} is not supported on device {dev.type!r} (cpu or cuda only)")
    if mode == "fp8":
        if dev.type != "cuda":
            raise ConfigError("quantization mode 'fp8' needs a CUDA GPU with compute capability >= 8.9; device is cpu")
        cap = torch.cuda.get_device_capability(dev)
        if cap < FP8_MIN_CAPABILITY:
            raise ConfigError(
                f"quantization mode 'fp8' needs CUDA compute capability >= 8.9 (Ada/Hopper); "
                f"this GPU is {cap[0]}.{cap[1]}; use 'int8-weight' or 'int8-dynamic'"
            )


def _config(mode: str, weight_dtype: torch.dtype) -> Any:
    """The torchao config for a mode (torchao imported lazily: only quantizing workers pay for the import)."""
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        PerTensor,
    )

    if mode == "int8-weight":
        return Int8WeightOnlyConfig()  # per-row (per output channel) scales
    if mode == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()  # per-token activations, per-row weights
    # fp8: rowwise scales (torchao: bfloat16 weights only; runtime.resolve makes an fp8 pipeline bfloat16). A
    # float16 UNet here (a direct caller) gets per-tensor scales rather than torchao's error.
    granularity = PerRow() if weight_dtype == torch.bfloat16 else PerTensor()
    return Float8DynamicActivationFloat8WeightConfig(granularity=granularity)


def _stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: tensor subclasses (torchao Int8Tensor/Float8Tensor) are unpacked into their
    inner tensors (int8/fp8 data, scales, zero points), as `torchao.utils.get_model_size_in_bytes` counts them
    (that helper itself only walks child modules, so it reports 0 for a bare Linear)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(_stored_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def linear_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the weights (not biases) of every `nn.Linear` in `module`, as stored: quantized weights count
    their int8/fp8 data plus their scales (and zero points: torchao's Int8Tensor keeps an int8 one per row)."""
    import torch

    return sum(_stored_bytes(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear))


def _is_quantized(t: torch.Tensor) -> bool:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(t)


def quantize_unet(unet: torch.nn.Module, mode: str, skip: tuple[str, ...] = DEFAULT_SKIP) -> dict[str, Any]:
    """Quantize the UNet's Linear layers in place (on the device the UNet is on) and report what was done.

    A Linear is quantized unless its qualified name contains one of the `skip` substrings. Layers torchao itself
    declines (fp8 needs both dims to be multiples of 16) stay float and are not counted as quantized.

    Returns a dict: mode; linear_layers (total); quantized; skipped (left float by `skip`); weight_bytes_before /
    weight_bytes_after (all Linear weights of the UNet); quantized_bytes_before / quantized_bytes_after (only the
    layers that were quantized). Raises ConfigError for an unknown mode or one the device cannot run.
    """
    import torch

    param = next(unet.parameters())
    check_mode(mode, param.device)
    linears = {name: m for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    skipped = {name for name in linears if any(s in name for s in skip)}
    targets = {name: m for name, m in linears.items() if name not in skipped}
    before = linear_weight_bytes(unet)
    target_before = {name: _stored_bytes(m.weight) for name, m in targets.items()}
    if mode != "none":
        from torchao.quantization import quantize_

        quantize_(
            unet,
            _config(mode, param.dtype),
            filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in targets,
        )
    done = [name for name, m in targets.items() if _is_quantized(m.weight)]
    return {
        "mode": mode,
        "linear_layers": len(linears),
        "quantized": len(done),
        "skipped": len(skipped),
        "weight_bytes_before": before,
        "weight_bytes_after": linear_weight_bytes(unet),
        "quantized_bytes_before": sum(target_before[n] for n in done),
        "quantized_bytes_after": sum(_stored_bytes(targets[n].weight) for n in done),
        "saved_mib": round((before - linear_weight_bytes(unet)) / 2**20, 1),
    }


@dataclass(frozen=True)
class Measured:
    """One quantized mode against "none" in the same run, on one device class and compile mode."""

    device_class: str  # device_class(): "cpu" or "cuda-sm<major><minor>"
    compile: str  # model.compile of both runs
    mode: str
    speedup: float  # images/s of `mode` / images/s of "none"
    source: str  # the measurement: command, shape, file


_H200 = "bench_gpu quant, H200, SD1.5 512², 4 steps, fp16, batch 16, 64 images, docs/bench-gpu-h200.json"
_CPU = "tiny-sd 128², 4 steps, fp32, batch 4, 2 cores, pipeline median of 10 rounds (docstring below)"
MEASURED: tuple[Measured, ...] = (
    Measured("cuda-sm90", "none", "int8-weight", round(16.42 / 18.33, 3), _H200),
    Measured("cuda-sm90", "none", "fp8", round(13.71 / 18.33, 3), _H200),
    Measured("cpu", "none", "int8-weight", round(106 / 112, 3), _CPU),
    Measured("cpu", "none", "int8-dynamic", round(106 / 172, 3), _CPU),
)


def device_class(device: str, capability: tuple[int, int] | None) -> str:
    """What a measurement is keyed by: "cpu", or the CUDA compute capability (H100 and H200 are both sm90)."""
    if device == "cpu" or capability is None:
        return "cpu"
    return f"cuda-sm{capability[0]}{capability[1]}"


def auto_quantization(
    device: str, capability: tuple[int, int] | None, compile_mode: str, table: tuple[Measured, ...] = MEASURED
) -> tuple[str, str]:
    """The mode "auto" means here, and why: the fastest mode `table` measured faster than "none" (speedup > 1) on
    this device class with this compile mode, among the modes the device can run; "none" otherwise."""
    cls = device_class(device, capability)
    rows = [m for m in table if m.device_class == cls and m.compile == compile_mode]
    runnable = [m for m in rows if m.mode != "fp8" or (capability or (0, 0)) >= FP8_MIN_CAPABILITY]
    if not runnable:
        return "none", f"no quantized mode measured on {cls} with compile {compile_mode!r}: none"
    figures = ", ".join(f"{m.mode} {m.speedup:.2f}x" for m in runnable)
    best = max(runnable, key=lambda m: m.speedup)
    if best.speedup <= 1.0:
        return "none", f"measured on {cls}, compile {compile_mode!r}: {figures} of none ({best.source}): none"
    return best.mode, f"measured on {cls}, compile {compile_mode!r}: {figures} of none ({best.source}): {best.mode}"


def default_quantization_for(device: str) -> str:
    """The mode "auto" means uncompiled on `device` ("cpu" or "cuda" of an H200/H100): "none", because every mode
    measured slower than float (`auto_quantization` decides with the capability and compile mode).

    CUDA, one H200 (full-size SD1.5 LCM UNet, 512x512, 4 steps, fp16, batch 16, no compile, torch 2.11 + torchao
    0.18; `python -m factory.tools.benchmarks.bench_gpu`, docs/bench-gpu-h200.json): none 18.3 images/s,
    int8-weight 16.4, fp8 13.7, while UNet Linear weight bytes fall 540 -> 303 MB. The UNet is convolution-bound at
    these shapes, so the quantized GEMMs save little and the activation quantization costs more. With compile
    (fp8 rowwise + inductor, the issue's Hopper case) nothing is measured yet: `bench_gpu --quick` measures it.

    CPU: int8 measured slower too. Measurement (tiny-sd, 128x128, 4 LCM steps, batch 4, fp32,
    2 cores, torch 2.15.0 + torchao 0.18.0; the 4 pipelines loaded side by side and timed round-robin, 10 rounds,
    best / median; PSNR = worst image vs "none" on the same seeds):
        mode                        pipeline      in BatchInvariantMode   UNet forward   PSNR
        none                        103 / 106 ms  139 / 166 ms            19.8 ms        inf
        int8-weight                 108 / 112 ms  144 / 168 ms            21.4 ms        65.8 dB
        int8-dynamic                169 / 172 ms  205 / 238 ms            36.3 ms        62.1 dB
        torch.ao quantize_dynamic   112 / 115 ms  148 / 174 ms            21.8 ms        58.2 dB  (not used; compared)
    Per-token activation quantization plus an int8 GEMM costs more than the fp32 GEMMs it replaces at these layer
    sizes (32-512 features), and the convolutions and the VAE, which dominate, stay float.
    """
    return auto_quantization(device, (9, 0) if device == "cuda" else None, "none")[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: images differ in shape {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)
