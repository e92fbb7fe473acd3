"""The worker: holds one pipeline and one CLIP model, and turns a planned Batch into images and manifest rows.

The same class runs in-process (`--executor local`) and as a Ray actor (`--executor ray`). Writes are idempotent
(deterministic bytes, atomic rename to a name derived from the task), so a batch re-run by a restarted actor
produces exactly the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from PIL import Image

from factory.config import FactoryConfig
from factory.inputs.planner import Batch, Task
from factory.inputs.prompts import load_templates
from factory.io.writer import atomic_write_bytes, png_bytes, safe_join
from factory.quality import checks
from factory.quality.gate import Assessment, Gate

log = logging.getLogger(__name__)


def split_batch(batch: Batch, at: int) -> tuple[Batch, Batch]:
    a, b = batch.tasks[:at], batch.tasks[at:]
    return dataclasses.replace(batch, batch_id=f"{batch.batch_id}a", tasks=a), dataclasses.replace(
        batch, batch_id=f"{batch.batch_id}b", tasks=b
    )


def inject_fault(spec: str, tasks: tuple[Task, ...], date_dir: Path) -> None:
    """Testing only (`run.fault_injection`): make a real failure happen when a given SKU is in the call.

    die_once:<sku>  the worker process exits hard the first time (a marker file records it): Ray restarts it
    raise:<sku>     every call containing the SKU raises (a poison SKU)
    oom:<sku>       a call containing the SKU with other images raises CUDA out-of-memory
    """
    if not spec:
        return
    kind, _, sku = spec.partition(":")
    if sku not in {t.sku_id for t in tasks}:
        return
    if kind == "die_once":
        marker = date_dir / f".fault-{hashlib.sha256(sku.encode()).hexdigest()[:12]}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            os._exit(17)
    elif kind == "raise":
        raise RuntimeError(f"injected fault for sku {sku!r}")
    elif kind == "oom" and len(tasks) > 1:
        import torch

        raise torch.cuda.OutOfMemoryError(f"injected CUDA out of memory for a batch of {len(tasks)}")


@dataclasses.dataclass
class BatchResult:
    batch_id: str
    rows: list[dict[str, Any]]  # one per task: task fields + clip_score + reasons + error
    timings: dict[str, float]


class Worker:
    def __init__(self, cfg: FactoryConfig, date_dir: str):
        import torch

        from factory.generation.models import load_clip, load_pipeline, resolve_device, resolve_dtype

        torch.set_num_threads(cfg.run.cpus_per_worker)
        self.cfg = cfg
        self.date_dir = Path(date_dir)
        self.device = resolve_device(cfg.model)
        self.dtype = resolve_dtype(cfg.model, self.device)
        self.batch_size = cfg.run.batch_size
        self.pipe = load_pipeline(cfg.model, self.device, self.dtype)  # LoRA is fused before quantizing
        self.quantization = self._quantize()
        self.accel = self._accelerate()
        self.clip = load_clip(cfg.model, self.device)
        padding = cfg.run.padding
        self.pad_in_count = padding in ("count", "size") or (padding == "auto" and self.device == "cuda")
        self.pixels_computed = 0  # all pipeline pixels, padding slots included (waste = computed / needed)
        mode = cfg.model.determinism
        self.batch_invariant = mode == "batch-invariant" or (mode == "auto" and self.device == "cpu")
        # In batch-invariant mode CLIP runs once per image: open_clip's fused, sequence-first attention kernels
        # give row results that depend on the batch size. Otherwise one CLIP forward scores the whole batch.
        templates = load_templates(cfg.paths.templates, {b.name for b in cfg.planner.buckets})
        self.gate = Gate(self.clip, cfg.quality, {c: t.quality for c, t in templates.items()}, self.batch_invariant)
        self.repairer = None
        if cfg.repair.mode == "inpaint" and cfg.repair.max_attempts > 0:
            from factory.quality.repair import Repairer

            # from_pipe: the inpaint pipeline shares the generation weights (no second copy in memory).
            self.repairer = Repairer(self.pipe, cfg.repair.inpaint_unet or None, self.batch_invariant)

    def _quantize(self) -> dict[str, Any]:
        from factory.generation.quantize import default_quantization, quantize_unet

        mode = self.cfg.model.quantization
        mode = default_quantization(self.device) if mode == "auto" else mode
        return quantize_unet(self.pipe.unet, mode)  # the VAE and text encoders stay in float

    def _accelerate(self) -> dict[str, Any]:
        """GPU path: channels_last, SDPA, optional torch.compile warmed up once per bucket at the fixed batch size."""
        if self.device != "cuda":
            return {}
        from factory.generation.accel import optimize_pipeline, warmup

        applied = optimize_pipeline(self.pipe, self.device, self.cfg.model.compile)
        if self.cfg.model.compile != "none":
            sizes = [(b.width, b.height, b.steps) for b in self.cfg.planner.buckets]
            applied["warmup_s"] = warmup(self.pipe, sizes, self.batch_size, self.cfg.model.guidance_scale)
        return applied

    def _numerics(self) -> contextlib.AbstractContextManager:
        from factory.generation.invariance import BatchInvariantMode

        return BatchInvariantMode() if self.batch_invariant else contextlib.nullcontext()

    def generate(self, batch: Batch) -> list[Any]:
        """PIL images for the batch's tasks. A CUDA out-of-memory error halves the batch and retries each half
        (adaptive micro-batching); per-sample seeds make the halves produce the same images."""
        import torch

        try:
            return self._generate(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch.tasks) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(batch.tasks) // 2
            log.warning("CUDA out of memory on %s (%d images): halving", batch.batch_id, len(batch.tasks))
            first, second = split_batch(batch, half)
            return self.generate(first) + self.generate(second)

    def _generate(self, batch: Batch) -> list[Any]:
        """One pipeline call; one seeded CPU generator per sample, so the noise is per-SKU."""
        import torch

        tasks = batch.tasks
        inject_fault(self.cfg.run.fault_injection, tasks, self.date_dir)
        # Padding slots keep the batch shape static (compile/CUDA-graph friendly); their images are dropped.
        pad = self.batch_size - len(tasks) if self.pad_in_count else 0
        seeds = [t.seed for t in tasks] + list(range(pad))
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.inference_mode(), self._numerics():
            out = self.pipe(
                prompt=[t.prompt for t in tasks] + [""] * pad,
                negative_prompt=[t.negative_prompt for t in tasks] + [""] * pad,
                width=batch.width,
                height=batch.height,
                num_inference_steps=batch.steps,
                guidance_scale=self.cfg.model.guidance_scale,
                generator=generators,
                output_type="pil",
            )
        self.pixels_computed += len(seeds) * batch.width * batch.height
        images = out.images[: len(tasks)]
        # Tasks promoted to a larger bucket (padding = "size") are resized down to their target size.
        return [
            im if im.size == (t.width, t.height) else im.resize((t.width, t.height), Image.Resampling.LANCZOS)
            for im, t in zip(images, tasks)
        ]

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        """Token counts (with BOS/EOS) under the pipeline's tokenizer, so truncation is reported, not silent."""
        return [len(ids) for ids in self.pipe.tokenizer(prompts, truncation=False).input_ids]

    def process(self, batch: Batch) -> BatchResult:
        timings: dict[str, float] = {}
        tasks = batch.tasks
        prompts = [t.prompt for t in tasks]

        # 1. generate
        t0 = time.perf_counter()
        computed_before = self.pixels_computed
        images = self.generate(batch)
        timings["generate_s"] = time.perf_counter() - t0
        timings["pixels_computed"] = self.pixels_computed - computed_before
        timings["pixels_needed"] = sum(t.width * t.height for t in tasks)

        # 2. score every check (one CLIP image forward per batch, or per image in batch-invariant mode)
        t0 = time.perf_counter()
        assessments = self.gate.assess(images, prompts, [t.category for t in tasks])
        timings["score_s"] = time.perf_counter() - t0

        # 3. repair what is repairable (inpaint the worst region, re-score, keep the better image)
        t0 = time.perf_counter()
        outcomes = [self.repair(t, im, a) for t, im, a in zip(tasks, images, assessments)]
        timings["repair_s"] = time.perf_counter() - t0

        # 4. write images and rows
        t0 = time.perf_counter()
        rows = []
        limit = self.pipe.tokenizer.model_max_length
        for task, (image, a, repair), n_tokens in zip(tasks, outcomes, self.prompt_tokens(prompts)):
            atomic_write_bytes(safe_join(self.date_dir, task.image_path), png_bytes(image), durable=False)
            rows.append(
                {
                    **dataclasses.asdict(task),
                    **a.columns(),
                    **repair,
                    "error": None,
                    "prompt_tokens": n_tokens,
                    "prompt_truncated": n_tokens > limit,  # CLIP text encoders see the first 77 tokens only
                }
            )
        timings["write_s"] = time.perf_counter() - t0
        return BatchResult(batch.batch_id, rows, timings)

    def repair(self, task: Task, image: Any, a: Assessment) -> tuple[Any, Assessment, dict[str, Any]]:
        """ADetailer-style: mask the worst region for the failing checks, inpaint it (same seed lineage, LCM,
        moderate strength), re-score, keep the better image; up to `repair.max_attempts` times."""
        info: dict[str, Any] = {"initial_reasons": a.reasons, "repaired": False, "attempts": 0, "repair_box": None}
        r = self.cfg.repair
        if self.repairer is None or not checks.is_repairable(a.reasons):
            return image, a, info
        box: tuple[int, int, int, int] | None = None
        for attempt in range(r.max_attempts):
            tile = r.tile or max(8, min(image.size) // 4)
            defect = checks.defect_mask(image, a.reasons, tile=tile, top_k=r.top_k, dilate=r.dilate, blur=r.blur)
            candidate = self.repairer.repair(
                image,
                task.prompt,
                task.negative_prompt,
                task.seed,
                defect.mask,
                strength=r.strength,
                steps=task.steps,
                padding=r.padding,
                guidance_scale=self.cfg.model.guidance_scale,
                attempt=attempt,
            )
            scored = self.gate.assess([candidate], [task.prompt], [task.category])[0]
            info["attempts"] = attempt + 1
            if scored.badness() < a.badness():
                image, a = candidate, scored
                box = _union(box, defect.changed)
                info.update(repaired=True, repair_box=list(box))
            if not a.reasons or not checks.is_repairable(a.reasons):
                break
        return image, a, info


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if a is None:
        return b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
