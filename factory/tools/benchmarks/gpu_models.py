"""What the GPU benches share (`bench_gpu`, `gpu_proof`): the random full-size models, the config that points at
them, timing with CUDA synchronisation, peak memory, freeing a worker, the machine, and a report written after every
stage."""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig


def build_models(root: Path, clip_model: str) -> dict[str, float]:
    """The random SD1.5 pipeline and open_clip checkpoint under `root` (skipped when present)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from factory.tools.builders.tiny_models import build_random_sd15

    seconds: dict[str, float] = {}
    if not (root / "sd15" / "model_index.json").is_file():
        t0 = time.perf_counter()
        build_random_sd15(torch.float16).save_pretrained(root / "sd15", safe_serialization=True)
        seconds["build_sd15_s"] = time.perf_counter() - t0
    ckpt = root / f"{clip_model}.safetensors"
    if not ckpt.is_file():
        t0 = time.perf_counter()
        model = open_clip.create_model(clip_model)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
        seconds["build_clip_s"] = time.perf_counter() - t0
    return seconds


def gpu_config(base: FactoryConfig, root: Path, clip_model: str, **model: Any) -> FactoryConfig:
    """`base` with the random full-size models, compile and quantization as given, repair off, local executor."""
    m = {
        "pipeline": str(root / "sd15"),
        "clip_model": clip_model,
        "clip_pretrained": str(root / f"{clip_model}.safetensors"),
        "clip_config_dir": "",
        **model,
    }
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, **m),
        repair=dataclasses.replace(base.repair, mode="off"),
        run=dataclasses.replace(base.run, executor="local"),
    )


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _mem() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    gib = 2**30
    out = {
        "max_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
        "max_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2),
    }
    torch.cuda.reset_peak_memory_stats()
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def _free(worker: Any) -> None:
    import gc

    import torch

    del worker
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Report:
    """The results so far, rewritten to `path` after every stage."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            self.data[name] = {**fn(), "stage_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # a failed stage is reported, and the next stages still run
            self.data[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        print(name, json.dumps(self.data[name])[:1500], flush=True)


def _machine(torch: Any) -> dict[str, Any]:
    import diffusers

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
