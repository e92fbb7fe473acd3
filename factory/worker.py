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

from factory.config import FactoryConfig
from factory.planner import Batch, Task
from factory.quality import clip_scores, decide
from factory.writer import atomic_write_bytes, png_bytes, safe_join

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

        from factory.models import load_clip, load_pipeline, resolve_device, resolve_dtype

        torch.set_num_threads(cfg.run.cpus_per_worker)
        self.cfg = cfg
        self.date_dir = Path(date_dir)
        self.device = resolve_device(cfg.model)
        self.dtype = resolve_dtype(cfg.model, self.device)
        self.pipe = load_pipeline(cfg.model, self.device, self.dtype)
        self.clip = load_clip(cfg.model, self.device)
        mode = cfg.model.determinism
        self.batch_invariant = mode == "batch-invariant" or (mode == "auto" and self.device == "cpu")

    def _numerics(self) -> contextlib.AbstractContextManager:
        from factory.invariance import BatchInvariantMode

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
        generators = [torch.Generator("cpu").manual_seed(t.seed) for t in tasks]
        with torch.inference_mode(), self._numerics():
            out = self.pipe(
                prompt=[t.prompt for t in tasks],
                negative_prompt=[t.negative_prompt for t in tasks],
                width=batch.width,
                height=batch.height,
                num_inference_steps=batch.steps,
                guidance_scale=self.cfg.model.guidance_scale,
                generator=generators,
                output_type="pil",
            )
        return out.images

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        """Token counts (with BOS/EOS) under the pipeline's tokenizer, so truncation is reported, not silent."""
        return [len(ids) for ids in self.pipe.tokenizer(prompts, truncation=False).input_ids]

    def process(self, batch: Batch) -> BatchResult:
        timings: dict[str, float] = {}

        # 1. generate
        t0 = time.perf_counter()
        images = self.generate(batch)
        timings["generate_s"] = time.perf_counter() - t0

        # 2. score: one CLIP forward for the batch; in batch-invariant mode one per image, because open_clip's
        #    attention runs fused/sequence-first kernels whose row results depend on the batch size.
        t0 = time.perf_counter()
        prompts = [t.prompt for t in batch.tasks]
        if self.batch_invariant:
            scores = [s for im, p in zip(images, prompts) for s in clip_scores(self.clip, [im], [p])]
        else:
            scores = clip_scores(self.clip, images, prompts)
        timings["score_s"] = time.perf_counter() - t0

        # 3. decide and write
        t0 = time.perf_counter()
        rows = []
        tokens = self.prompt_tokens(prompts)
        limit = self.pipe.tokenizer.model_max_length
        for task, image, score, n_tokens in zip(batch.tasks, images, scores, tokens):
            atomic_write_bytes(safe_join(self.date_dir, task.image_path), png_bytes(image))
            reasons = decide(score, self.cfg.quality.clip_threshold)
            rows.append(
                {
                    **dataclasses.asdict(task),
                    "clip_score": score,
                    "reasons": reasons,
                    "error": None,
                    "prompt_tokens": n_tokens,
                    "prompt_truncated": n_tokens > limit,  # CLIP text encoders see the first 77 tokens only
                }
            )
        timings["write_s"] = time.perf_counter() - t0
        return BatchResult(batch.batch_id, rows, timings)
