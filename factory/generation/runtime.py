"""One resolution step: every "auto" in the config becomes a concrete value, once, for the device the workers use.

`resolve(cfg, device)` is called by the driver after the executor has told it where the workers run (a local
CUDA device, or GPUs in the Ray cluster); the worker, the planner's padding, the keys and run.json all read the
resolved `Runtime`, never the raw config strings. So a CPU day and a CUDA day get different model keys (their
pixels differ), and a config that says "auto" is recorded with what "auto" meant that night.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from factory.config import FactoryConfig
from factory.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: str  # cpu | cuda
    dtype: str  # float32 | float16 | bfloat16
    determinism: str  # batch-invariant | fast
    quantization: str  # none | int8-weight | int8-dynamic | fp8 (factory.generation.quantize)
    padding: str  # count | size | none (factory.inputs.bucketing)
    compile: str  # none | regional | full (factory.generation.accel)
    batch_size: int  # images per pipeline call: run.batch_size, or chosen from free memory (batch_size_mode auto)
    # why each "auto" became what it did (run.json `runtime.why`); not part of any key
    why: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def batch_invariant(self) -> bool:
        return self.determinism == "batch-invariant"

    @property
    def pad_in_count(self) -> bool:
        """Partial batches are filled with padding slots up to batch_size (static shapes for compiled graphs)."""
        return self.padding in ("count", "size")

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def local_device(cfg: FactoryConfig) -> tuple[str, tuple[int, int] | None]:
    """The device this process would run on, and its CUDA compute capability (None on CPU)."""
    import torch

    wanted = cfg.model.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but no CUDA device is visible to this process")
    if wanted == "cpu" or not torch.cuda.is_available():
        return "cpu", None
    return "cuda", torch.cuda.get_device_capability()


def resolve(
    cfg: FactoryConfig,
    device: str,
    cuda_capability: tuple[int, int] | None = None,
    free_memory: int | None = None,
) -> Runtime:
    """Concrete values for `device` ("cpu" or "cuda"; `cuda_capability` of the workers' GPU, checked against fp8;
    `free_memory`: bytes free on one worker's GPU, for run.batch_size_mode "auto")."""
    from factory.generation.quantize import FP8_MIN_CAPABILITY, auto_quantization

    m, cpu, why = cfg.model, device == "cpu", {}
    if m.quantization == "auto":
        quantization, why["quantization"] = auto_quantization(device, cuda_capability, m.compile)
    else:
        quantization = m.quantization
    if quantization == "fp8" and (cuda_capability or (0, 0)) < FP8_MIN_CAPABILITY:
        found = "no GPU" if cpu else "a GPU of compute capability " + ".".join(map(str, cuda_capability or ()))
        raise ConfigError(f"model.quantization 'fp8' needs compute capability >= 8.9; workers have {found}")
    dtype = _dtype(m.dtype, cpu, quantization)
    runtime = Runtime(
        device=device,
        dtype=dtype,
        determinism=("batch-invariant" if cpu else "fast") if m.determinism == "auto" else m.determinism,
        quantization=quantization,
        padding=("none" if cpu else "count") if cfg.run.padding == "auto" else cfg.run.padding,
        compile=m.compile,
        batch_size=_batch_size(cfg, device, dtype, free_memory, why),
        why=why,
    )
    if runtime.quantization == "int8-weight" and runtime.batch_invariant:
        raise ConfigError(
            "model.quantization 'int8-weight' is not batch-invariant on CPU (measured): use int8-dynamic or none"
        )
    return runtime


def _dtype(configured: str, cpu: bool, quantization: str) -> str:
    """fp8's rowwise scales need bfloat16 weights in torchao: "auto" gives an fp8 pipeline bfloat16."""
    if configured == "auto":
        return "float32" if cpu else "bfloat16" if quantization == "fp8" else "float16"
    if quantization == "fp8" and configured != "bfloat16":
        raise ConfigError(
            f"model.quantization 'fp8' uses rowwise scales, which torchao runs on bfloat16 only; model.dtype is "
            f"{configured!r}: set it to 'bfloat16' or 'auto'"
        )
    return configured


def _batch_size(cfg: FactoryConfig, device: str, dtype: str, free: int | None, why: dict[str, str]) -> int:
    run = cfg.run
    if run.batch_size_mode == "fixed":
        return run.batch_size
    if device != "cuda" or free is None:
        why["batch_size"] = f"{device}: no device memory to size against: run.batch_size {run.batch_size} kept"
        return run.batch_size
    from factory.generation.batch_memory import model_bytes, plan_batch_size

    dtype_bytes = 4 if dtype == "float32" else 2
    weights = model_bytes(cfg.model.pipeline, cfg.model.clip_pretrained, dtype_bytes)
    plan = plan_batch_size(free, weights, cfg.planner.buckets, dtype_bytes)
    why["batch_size"] = plan.reason + "; fits per bucket: " + ", ".join(f"{k} {v}" for k, v in plan.per_bucket.items())
    return plan.batch_size
