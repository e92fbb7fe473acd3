"""`run.batch_size_mode = "auto"`: the batch size from the workers' free device memory, chosen once at start.

The driver asks the executor for the free memory of the device the workers run on (before any worker loads its
models: a fresh GPU), subtracts the models' weights (counted from the safetensors headers, no load) and a headroom,
and divides what is left by the activation memory of one image of the largest bucket. The result is capped where
the GPU bench measured no gain from bigger batches. One size for the night: the largest bucket bounds it (every
bucket's own fit is reported), so each bucket keeps one compiled shape. On CPU there is no device memory to size
against: the configured `run.batch_size` is kept, and run.json says so.

Activation memory per pixel (`ACTIVATION_BYTES_PER_PIXEL`, 2-byte dtypes): derived from the H200 run
(docs/bench-gpu-h200.json, `final_run_compile_full`, SD1.5 512², batch 16, fp16, compile full): peak allocated in C
8.64 GiB, minus the weights (UNet 859.5 M + VAE 83.7 M + text encoder 123.1 M parameters in fp16, open_clip
ViT-L-14 427.6 M in fp32: 3.58 GiB) = 5.06 GiB for 16 x 512² images = 1 295 bytes per pixel. `bench_gpu` measures
it directly (the `batch_memory` stage: the slope of peak memory between two batch sizes) to replace this figure.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from factory.config import Bucket
from factory.errors import ConfigError

ACTIVATION_BYTES_PER_PIXEL = 1295  # per image pixel at a 2-byte dtype (see above); x2 in float32
HEADROOM = 0.15  # of the free memory, kept for the allocator's fragmentation, cuDNN workspaces, compile
RESERVE_BYTES = 2**30  # the CUDA context and library handles a worker creates besides its tensors
# Where bigger batches stopped paying: H200, SD1.5 512², 4 steps, fp16, uncompiled, one call: batch 16 27.7
# images/s, 32 27.1, 64 26.0 (docs/bench-gpu-h200.json `breakdown_run`).
BATCH_CAP = 16
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class MemoryPlan:
    batch_size: int
    per_bucket: dict[str, int]  # the largest batch each bucket alone would fit (before the cap)
    reason: str


def safetensors_params(path: Path) -> int:
    """Parameters in a .safetensors file, from its JSON header only (no tensor is read)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name != "__metadata__":
            count = 1
            for d in t["shape"]:
                count *= d
            total += count
    return total


def model_bytes(pipeline: str, clip_checkpoint: str, dtype_bytes: int) -> int:
    """Device bytes of the pipeline's weights at the runtime dtype, plus the CLIP scorer's (open_clip keeps fp32)."""
    root = Path(pipeline)
    params = sum(safetensors_params(p) for p in sorted(root.glob("*/*.safetensors")))
    clip = Path(clip_checkpoint)
    clip_params = safetensors_params(clip) if clip.suffix == ".safetensors" and clip.is_file() else 0
    return params * dtype_bytes + clip_params * 4


def plan_batch_size(
    free_bytes: int,
    weights_bytes: int,
    buckets: list[Bucket],
    dtype_bytes: int,
    cap: int = BATCH_CAP,
    per_pixel: int = ACTIVATION_BYTES_PER_PIXEL,
) -> MemoryPlan:
    """The largest batch of every bucket that fits in `free_bytes` after weights, reserve and headroom, capped."""
    usable = free_bytes * (1 - HEADROOM) - RESERVE_BYTES - weights_bytes
    image = {b.name: b.width * b.height * per_pixel * dtype_bytes // 2 for b in buckets}
    fits = {name: max(int(usable // cost), 0) for name, cost in image.items()}
    gib = 2**30
    if min(fits.values()) < 1:
        worst = max(image, key=image.__getitem__)
        raise ConfigError(
            f"run.batch_size_mode 'auto': {free_bytes / gib:.1f} GiB free on the device do not hold the models "
            f"({weights_bytes / gib:.1f} GiB), the reserve and one {worst!r} image"
        )
    size = min(min(fits.values()), cap)
    limit = "the cap where bigger batches measured no gain" if size == cap else "what fits"
    reason = (
        f"{free_bytes / gib:.1f} GiB free, models {weights_bytes / gib:.1f} GiB, "
        f"{HEADROOM:.0%} headroom + {RESERVE_BYTES / gib:.0f} GiB reserve: {size} ({limit}; cap {cap})"
    )
    return MemoryPlan(size, fits, reason)
