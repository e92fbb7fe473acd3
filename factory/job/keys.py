"""The keys that decide what may be reused, computed in one place from the *resolved* runtime.

model key   everything about the model that changes pixels: weights (+LoRA) fingerprint, dtype, determinism,
            quantization, device kind, guidance scale; with provenance.watermark on, the watermark key's fingerprint
            and strength. `model_id` (name@fingerprint) is the manifests' `model`.
cache key   one image's pixels: rendered prompt, negative prompt, seed, size, steps, template version, model key,
            for an image with style adapters each "name@weight" with the content hash of its LoRA file(s), and for
            an ad placement's image its name, generated size and fit (keys of other images are unchanged).
            The cross-day cache reuses an earlier day's approved image with the same cache key.
task key    one image's *decision*: cache key + the quality and repair config of its category. Resume keeps a
            finished row of the same date only while its task key is unchanged (thresholds may have moved).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig, QualityConfig
from factory.generation.runtime import Runtime
from factory.inputs.bucketing import Task, parse_adapter_entry
from factory.io.watermark import layout, secret_from_env


@dataclass(frozen=True)
class ModelKey:
    model_id: str  # <pipeline dir name>@<weights fingerprint>: the manifests' `model` column
    key: str  # model_id plus the numerics that change pixels

    def __str__(self) -> str:
        return self.key


def model_key(cfg: FactoryConfig, runtime: Runtime) -> ModelKey:
    from factory.generation.models import model_fingerprint

    m = cfg.model
    model_id = f"{Path(m.pipeline).name}@{model_fingerprint(m)}"
    numerics = (
        f"dev={runtime.device}|dtype={runtime.dtype}|det={runtime.determinism}|quant={runtime.quantization}"
        f"|cfg={m.guidance_scale:g}"
    )
    pv = cfg.provenance
    if pv.watermark:  # watermarked pixels differ: an unmarked (or differently keyed) earlier image is not reused
        fingerprint = layout(secret_from_env(pv.watermark_secret_env)).fingerprint
        numerics += f"|wm={fingerprint}:{pv.watermark_strength:g}"
    return ModelKey(model_id, f"{model_id}|{numerics}")


def adapter_fingerprints(cfg: FactoryConfig) -> dict[str, str]:
    """name -> sha256 of each configured style adapter's bytes (a file, or every file of a directory by name)."""
    out = {}
    for name, a in cfg.lora.adapters.items():
        root = Path(a.path)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        out[name] = h.hexdigest()[:16]
    return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:32]


def cache_key(task: Task, mkey: ModelKey, adapter_fps: dict[str, str] | None = None) -> str:
    """`adapter_fps` (adapter_fingerprints) is needed for tasks with adapters; keys of tasks without are unchanged."""
    fields = [task.prompt, task.negative_prompt, task.seed, task.width, task.height, task.steps, mkey.key]
    fields.append(task.template_version)
    if task.adapters:
        fields.append([f"{e}#{(adapter_fps or {})[parse_adapter_entry(e)[0]]}" for e in task.adapters])
    if task.placement:  # delivered size is width x height; the generated size and the fit make the pixels too
        fields.append([task.placement, task.render_width, task.render_height, task.fit])
    return _digest(fields)


# Applied by the driver at finalize to every image of the night (resumed ones included), never by a worker: changing
# them must not invalidate finished rows, so they stay out of the task key.
FINALIZE_ONLY = frozenset({"near_duplicate", "reference_threshold", "reference_dir"})


def decision_config(quality: QualityConfig, cfg: FactoryConfig) -> str:
    """What decides a category's outcome besides the pixels: its thresholds and the repair settings."""
    gate = {k: v for k, v in dataclasses.asdict(quality).items() if k not in FINALIZE_ONLY}
    return json.dumps({"quality": gate, "repair": dataclasses.asdict(cfg.repair)}, sort_keys=True)


def task_key(cache: str, decision: str) -> str:
    return hashlib.sha256(f"{cache}|{decision}".encode()).hexdigest()[:32]


def clip_key(cfg: FactoryConfig) -> str:
    """The CLIP image encoder's identity (model name, checkpoint size and first MiB, preprocessing mode):
    reference-set embeddings are cached per this key, so a new CLIP model never reuses another model's vectors."""
    from factory.config import resolve_path

    m = cfg.model
    name = m.clip_pretrained and Path(m.clip_pretrained).name
    h = hashlib.sha256(f"{m.clip_model}|{name}|{cfg.quality.preprocess}".encode())
    ckpt = resolve_path(m.clip_pretrained) if m.clip_pretrained else None
    if ckpt is not None and ckpt.is_file():
        h.update(str(ckpt.stat().st_size).encode())
        with ckpt.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]
