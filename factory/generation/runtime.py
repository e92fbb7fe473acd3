"""One resolution step: every "auto" in the config becomes a concrete value, once, for the device the workers use.

`resolve(cfg, device)` is called by the driver after the executor has told it where the workers run (a local
CUDA device, or GPUs in the Ray cluster); the worker, the planner's padding, the keys and run.json all read the
resolved `Runtime`, never the raw config strings. So a CPU day and a CUDA day get different model keys (their
pixels differ), and a config that says "auto" is recorded with what "auto" meant that night.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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


def resolve(cfg: FactoryConfig, device: str, cuda_capability: tuple[int, int] | None = None) -> Runtime:
    """Concrete values for `device` ("cpu" or "cuda"; `cuda_capability` of the workers' GPU, checked against fp8)."""
    from factory.generation.quantize import FP8_MIN_CAPABILITY, default_quantization_for

    m, cpu = cfg.model, device == "cpu"
    quantization = default_quantization_for(device) if m.quantization == "auto" else m.quantization
    if quantization == "fp8" and (cuda_capability or (0, 0)) < FP8_MIN_CAPABILITY:
        found = "no GPU" if cpu else "a GPU of compute capability " + ".".join(map(str, cuda_capability or ()))
        raise ConfigError(f"model.quantization 'fp8' needs compute capability >= 8.9; workers have {found}")
    runtime = Runtime(
        device=device,
        dtype=("float32" if cpu else "float16") if m.dtype == "auto" else m.dtype,
        determinism=("batch-invariant" if cpu else "fast") if m.determinism == "auto" else m.determinism,
        quantization=quantization,
        padding=("none" if cpu else "count") if cfg.run.padding == "auto" else cfg.run.padding,
        compile=m.compile,
    )
    if runtime.quantization == "int8-weight" and runtime.batch_invariant:
        raise ConfigError(
            "model.quantization 'int8-weight' is not batch-invariant on CPU (measured): use int8-dynamic or none"
        )
    return runtime
