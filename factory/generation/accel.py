"""GPU speed-ups for a loaded pipeline: channels-last memory, SDPA attention, torch.compile, and warm-up.

Order in a worker: `models.load_pipeline` (LoRA fused, on the device) -> `quantize.quantize_unet` ->
`optimize_pipeline` -> `warmup`. Compiling after quantizing lets inductor fuse torchao's int8/fp8 dequantization
into the matmuls; warming up every bucket before timed work moves compilation (one graph per input shape) out of
the batches.

On CPU everything here is a no-op apart from reporting: channels-last and compiled kernels change the float
summation order by batch size and layout, which would break the batch-invariant numerics of
`factory.determinism` (and `BatchInvariantMode`, a TorchFunctionMode, is not traced into compiled graphs).

VAE decoding needs no work here: `StableDiffusionPipeline` / `StableDiffusionXLPipeline` already decode the whole
batch in one `vae.decode` call (checked in diffusers 0.42.1; only `vae.enable_slicing()` would split it), so a
separate batched decoder would duplicate diffusers.
"""

from __future__ import annotations

import time
from typing import Any  # torch is imported where used, so importing this module stays cheap

from factory.errors import ConfigError
from factory.modes import COMPILE_MODES

# Inductor's default mode: "max-autotune" would multiply compile time per shape (one per bucket) for little gain on
# the compute-bound UNet shapes of SD at 512-1024 px; fullgraph=True makes a graph break an error instead of a
# silent slowdown.
COMPILE_KWARGS: dict[str, Any] = {"fullgraph": True}


def _attention_processors(unet: Any) -> list[str]:
    return sorted({type(p).__name__ for p in unet.attn_processors.values()})


def optimize_pipeline(pipe: Any, device: str, compile_mode: str = "none") -> dict[str, Any]:
    """Apply the GPU speed-ups to `pipe` in place and return what was applied.

    compile_mode: "none"; "regional" compiles only the UNet's repeated transformer blocks
    (`unet.compile_repeated_blocks`, diffusers >= 0.35; a short compile, but measured on an H200 it gained nothing
    over "none" for SD1.5 at 512²), falling back to a full compile when the method or the UNet's `_repeated_blocks`
    is missing; "full" compiles the whole UNet and the VAE decoder (76 s once per worker and shape on an H200;
    1.75x the images/s of "none"). Compilation is lazy: the first call per input shape compiles (see `warmup`).

    Returns {"device", "channels_last", "attention" (processor class names in use), "compile" (what was compiled:
    "none", "regional", "full"), "notes" (list of strings, e.g. why something was skipped)}.
    """
    import torch

    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
    notes: list[str] = []
    report: dict[str, Any] = {"device": device, "channels_last": False, "compile": "none", "notes": notes}
    if torch.device(device).type != "cuda":
        report["attention"] = _attention_processors(pipe.unet)
        notes.append("cpu: channels_last and torch.compile skipped (they would break batch-invariant numerics)")
        if compile_mode != "none":
            notes.append(f"cpu: compile_mode {compile_mode!r} ignored")
        return report

    # Convolutions run as NHWC tensor-core kernels on GPU; the VAE decoder is all convolutions at full resolution.
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    report["channels_last"] = True

    # AttnProcessor2_0 (torch SDPA: flash / memory-efficient kernels) is diffusers' default on torch 2; a pipeline
    # loaded with other processors (e.g. legacy attention slicing) is switched back to it.
    from diffusers.models.attention_processor import AttnProcessor2_0

    if any(not isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values()):
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        notes.append("attention processors replaced by AttnProcessor2_0")
    report["attention"] = _attention_processors(pipe.unet)

    if compile_mode == "regional":
        if hasattr(pipe.unet, "compile_repeated_blocks"):
            try:
                pipe.unet.compile_repeated_blocks(**COMPILE_KWARGS)
                report["compile"] = "regional"
            except ValueError as exc:  # the UNet declares no `_repeated_blocks`, or none of them is present
                notes.append(f"regional compile unavailable ({exc}); compiled the whole UNet")
                compile_mode = "full"
        else:
            notes.append("diffusers has no compile_repeated_blocks (< 0.35); compiled the whole UNet")
            compile_mode = "full"
    if compile_mode == "full":
        # nn.Module.compile compiles in place, so `pipe.unet` keeps its class and config for the pipeline. The VAE
        # decoder too: measured on an H200 (SD1.5, 512², batch 16, fp16) it was 41 % of a batch uncompiled
        # (237 ms) and 100 ms compiled; the whole batch went from 26 to 45-48 images/s.
        pipe.unet.compile(**COMPILE_KWARGS)
        pipe.vae.decoder.compile(**COMPILE_KWARGS)
        report["compile"] = "full"
    return report


def warmup(
    pipe: Any, buckets: list[tuple[int, int, int]], batch_size: int, guidance_scale: float = 1.0
) -> dict[str, float]:
    """Run one untimed pipeline call per (width, height, steps) bucket at the batch size the worker uses, so that
    compilation (one graph per input shape) and kernel autotuning happen before any timed batch.

    Pass the worker's `guidance_scale`: above 1 with a non-LCM UNet, classifier-free guidance doubles the UNet batch,
    which is a different shape. Batches smaller than `batch_size` (a bucket's last batch) are other shapes and
    compile on first use. Returns seconds per bucket, keyed "WIDTHxHEIGHTxSTEPS".
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"warmup: batch_size must be >= 1, got {batch_size}")
    seconds: dict[str, float] = {}
    for width, height, steps in buckets:
        # One CPU generator per sample, as the worker passes them: the same latent-preparation code path.
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch_size)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=["warm-up"] * batch_size,
                negative_prompt=[""] * batch_size,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pil",
            )
        seconds[f"{width}x{height}x{steps}"] = time.perf_counter() - t0
    return seconds
