"""The worker: holds one pipeline and one CLIP model, and turns a planned Batch into images and ImageRecords.

The same class runs in-process (`--executor local`) and as a Ray actor (`--executor ray`). It opens its own Store
on the output root (`paths.output`: a directory or an object-store URI, `[storage]` settings) and writes each PNG
straight there, under `<date>/images/...` (factory.io.layout), so no image passes through the driver or a node's
disk. Writes are idempotent (deterministic bytes, atomic rename or a single PUT to a name derived from the task),
so a batch re-run by a restarted actor produces exactly the same files. Everything it decides from ("auto" values,
per-category thresholds) arrives resolved: a `Runtime` and the plan's thresholds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig, QualityConfig
from factory.errors import ModelError
from factory.generation.adapters import make_adapters
from factory.generation.adoption import adopt_or_generate
from factory.generation.frames import Frames
from factory.generation.image_writer import ImageWriter
from factory.generation.runtime import Runtime
from factory.generation.stages import StageLocks
from factory.inputs.bucketing import Batch, Task
from factory.inputs.placements import generation_buckets
from factory.io.provenance import Stamper
from factory.io.records import ImageRecord
from factory.io.storage import Store, open_store
from factory.quality.gate import Assessment, Gate, PassingGate
from factory.quality.reasons import is_repairable
from factory.quality.repair_loop import RepairOutcome, RepairRetry, no_repair

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    batch_id: str
    records: list[ImageRecord]  # one per task
    timings: dict[str, float]


class Worker:
    # Where repair takes the stage locks: "between-calls" (the whole repair inside the host stage, under the device
    # stage: between two generation calls) or "split" (each inpaint under the device stage, each re-scoring under the
    # host stage, neither held while waiting for the other). Compared by the simulated-device bench
    # (docs/performance-gpu-night.md, "Repair placement"); not a config key.
    repair_placement = "between-calls"

    def __init__(self, cfg: FactoryConfig, runtime: Runtime, thresholds: dict[str, QualityConfig], date: str):
        """`date`: the night whose images this worker writes (`<paths.output>/<date>/images/...`)."""
        t0 = time.perf_counter()
        import torch

        from factory.generation.models import import_libraries, model_fingerprint
        from factory.modes import NULL_PIPELINE

        # timed on its own: the heavy imports (torch, diffusers, open_clip) of a fresh process; the null pipeline
        # (orchestration benchmarks) needs torch's generators only
        if cfg.model.pipeline != NULL_PIPELINE:
            import_libraries(runtime.quantization)
        self.startup: dict[str, float] = {"imports_s": time.perf_counter() - t0}
        torch.set_num_threads(cfg.run.cpus_per_worker)
        _check_device(runtime)
        self.cfg, self.runtime = cfg, runtime
        m = cfg.model
        self.stamper = Stamper(cfg.provenance, model_fingerprint(m), Path(m.pipeline).name, m.guidance_scale)
        self.target(cfg, date)
        self.batch_size = runtime.batch_size  # run.batch_size, or chosen from free memory (runtime.resolve)
        self.pixels_computed = 0  # all pipeline pixels, padding slots included (waste = computed / needed)
        self.stages = StageLocks()  # generation of the next batch overlaps the host work of this one
        self._load_models()
        self._build_gate(thresholds)

    def _load_models(self) -> None:
        """The pipeline (LoRA fused, quantized, style adapters, GPU speed-ups) and CLIP, each load timed."""
        from factory.generation.models import load_pipeline
        from factory.quality.clip_model import load_clip

        cfg, runtime = self.cfg, self.runtime
        t0 = time.perf_counter()
        self.pipe = load_pipeline(cfg.model, runtime.device, runtime.torch_dtype)  # LoRA fused before quantizing
        self.quantization = self._quantize()
        # Style LoRAs (never unloaded): hotswapped into one slot when the UNet gets compiled, so before compiling.
        compiled = runtime.device == "cuda" and runtime.compile != "none"
        self.adapters = make_adapters(self.pipe, cfg.lora.adapters, hotswap=compiled)
        self.accel = accelerate(self.pipe, runtime, cfg, self.batch_size)
        self.startup["model_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.clip = load_clip(cfg.model, runtime.device, cfg.quality.preprocess)
        self.startup["clip_load_s"] = time.perf_counter() - t0

    def _build_gate(self, thresholds: dict[str, QualityConfig]) -> None:
        from factory.modes import NULL_PIPELINE

        if self.cfg.model.pipeline == NULL_PIPELINE:  # no model: nothing to score or repair (orchestration benchmarks)
            self.gate, self.retry = PassingGate(), None
            return
        # In batch-invariant mode CLIP runs once per image: open_clip's fused, sequence-first attention kernels
        # give row results that depend on the batch size. Otherwise one CLIP forward scores the whole batch.
        t0 = time.perf_counter()
        invariant = self.runtime.batch_invariant
        self.gate = Gate(self.clip, thresholds, invariant)
        repair, guidance = self.cfg.repair, self.cfg.model.guidance_scale
        self.retry = RepairRetry.build(self.pipe, self.gate, repair, guidance, invariant, self._repairer())
        self.startup["repair_build_s"] = time.perf_counter() - t0

    def _repairer(self) -> Any:
        """What inpaints for repair: None = a `Repairer` over the pipeline's modules (the simulated device's
        worker returns its own)."""
        return None

    def target(self, cfg: FactoryConfig, date: str) -> None:
        """Write the images of `date` under `cfg.paths.output` from now on (a preloaded worker reused by a run)."""
        self.store: Store = open_store(cfg.paths.output, cfg.storage)
        self.date = date
        # PNG stamping + writes, off this thread
        self.writer = ImageWriter(self.store, date, self.stamper, cfg.storage.writer_threads)

    @property
    def batch_invariant(self) -> bool:
        return self.runtime.batch_invariant

    def _quantize(self) -> dict[str, Any]:
        from factory.generation.quantize import quantize_unet

        if self.pipe.unet is None:  # the null pipeline
            return {}
        return quantize_unet(self.pipe.unet, self.runtime.quantization)  # the VAE and text encoders stay float

    def _numerics(self) -> contextlib.AbstractContextManager:
        from factory.determinism import BatchInvariantMode

        return BatchInvariantMode() if self.batch_invariant else contextlib.nullcontext()

    def generate(self, batch: Batch, pad_to: int | None = None) -> list[Any]:
        """PIL images for the batch's tasks (`generate_frames`' host images)."""
        return self.generate_frames(batch, pad_to).images

    def generate_frames(self, batch: Batch, pad_to: int | None = None) -> Frames:
        """The batch's images on the device and on the host. A CUDA out-of-memory error halves the batch and
        retries each half (adaptive micro-batching), padding the halves to half the size so the call really
        shrinks; per-sample seeds make the halves produce the same images."""
        import torch

        pad_to = self.batch_size if pad_to is None else pad_to
        self.adapters.activate(batch.adapters)  # a no-op unless the previous batch had another adapter set
        try:
            return self._generate(batch, pad_to)
        except torch.cuda.OutOfMemoryError:
            if len(batch.tasks) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("CUDA out of memory on %s (%d images): halving", batch.batch_id, len(batch.tasks))
            first, second = batch.split(len(batch.tasks) // 2)
            half = max(len(first.tasks), len(second.tasks), (pad_to + 1) // 2)
            return self.generate_frames(first, half) + self.generate_frames(second, half)

    def _generate(self, batch: Batch, pad_to: int) -> Frames:
        """One pipeline call; one seeded CPU generator per sample, so the noise is per-SKU. The images stay a
        tensor on the device (the gate scores them there) and reach the host as uint8 once."""
        import torch

        tasks = batch.tasks
        # Padding slots keep the batch shape static (compile/CUDA-graph friendly); their images are dropped.
        pad = max(pad_to - len(tasks), 0) if self.runtime.pad_in_count else 0
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
                output_type="pt",
            )
            frames = self._frames(out.images[: len(tasks)])
        self.pixels_computed += len(seeds) * batch.width * batch.height
        # Tasks promoted to a larger bucket (padding = "size") are resized down to their target size; an ad
        # placement's image is fitted to its placement's pixels, before the gate: what is scored is what is delivered
        return frames.fit([(t.width, t.height, t.fit or "stretch") for t in tasks])

    def _frames(self, images: Any) -> Frames:
        """The pipeline's `output_type="pt"` images as Frames (the simulated device's worker overrides it)."""
        return Frames.from_output(images)

    def process(self, batch: Batch) -> BatchResult:
        """Generate (the device stage), then score, repair and start the writes (the host stage), then wait for the
        writes outside both stages. With two callers the next batch generates while this one is scored, and is
        scored while this one's PNGs are still encoding (factory.generation.stages); the result is the same."""
        with self.stages.device:
            frames, timings = self._generate_timed(batch)
        if self.repair_placement == "split":  # a benchmark variant (sim_device): each step takes its own lock
            pending = self._finish(batch, frames, timings, locked=False)
        else:
            with self.stages.host:
                pending = self._finish(batch, frames, timings)
        return pending.result()  # the records only after this batch's own writes

    def _generate_timed(self, batch: Batch) -> tuple[Frames, dict[str, float]]:
        t0 = time.perf_counter()
        computed_before, adapters_before = self.pixels_computed, self.adapters.stats()
        frames, adopted = adopt_or_generate(batch, self.store, self.date, self.generate_frames)
        timings = {
            "generate_s": time.perf_counter() - t0,
            "images_adopted": adopted,
            "pixels_computed": self.pixels_computed - computed_before,
        }
        timings.update({k: v - adapters_before[k] for k, v in self.adapters.stats().items()})
        timings["pixels_needed"] = sum(t.render_pixels for t in batch.tasks)
        return frames, timings

    def _finish(self, batch: Batch, frames: Frames, timings: dict[str, float], locked: bool = True) -> _PendingWrites:
        """Score, repair, submit the writes. `locked`: the caller holds the host stage (repair then takes the device
        stage inside it); else scoring takes the host stage here and repair takes each stage per step."""
        tasks, images = batch.tasks, frames.images
        # 1. score every check on the device tensor (one CLIP image forward per batch, or per image in
        # batch-invariant mode); images that need no repair are already being encoded and written meanwhile
        with contextlib.nullcontext() if locked else self.stages.host:
            t0 = time.perf_counter()
            prompts, categories = [t.prompt for t in tasks], [t.category for t in tasks]
            assessments = self.gate.assess(images, prompts, categories, frames.pixels)
            timings["score_s"] = time.perf_counter() - t0
            writes = {
                i: self.writer.submit(tasks[i], images[i], generated=True)
                for i, a in enumerate(assessments)
                if not self._needs_repair(a)
            }

        # 2. repair what is repairable (inpaint the worst region, re-score, keep the better image)
        t0 = time.perf_counter()
        try:
            outcomes = self.repair(tasks, images, assessments, batch.adapters, split=not locked)
            for i, (task, outcome) in enumerate(zip(tasks, outcomes)):
                if i not in writes:
                    writes[i] = self.writer.submit(task, outcome.image, generated=outcome.image is images[i])
        except BaseException:
            wait(writes.values())  # drained before the batch raises: no write outlives its batch
            raise
        timings["repair_s"] = time.perf_counter() - t0
        tokens = prompt_tokens(self.pipe.tokenizer, tasks)
        return _PendingWrites(batch, outcomes, [writes[i] for i in range(len(tasks))], tokens, timings)

    def _needs_repair(self, a: Assessment) -> bool:
        return self.retry is not None and bool(a.reasons) and is_repairable(a.reasons)

    def repair(
        self,
        tasks: tuple[Task, ...],
        images: list[Any],
        assessments: list[Assessment],
        adapters: tuple = (),
        split: bool = False,
    ) -> list[RepairOutcome]:
        """Inpaint on the device between generation calls, with the batch's own adapters (the next batch's
        generation may have switched them meanwhile). `split` (the caller holds no stage): each attempt's inpaint
        takes the device stage and its re-scoring the host stage, one at a time; else the caller holds the host
        stage and the whole repair runs under the device stage too."""
        if self.retry is None or not any(self._needs_repair(a) for a in assessments):
            return [no_repair(im, a) for im, a in zip(images, assessments)]
        if split:
            device = functools.partial(self._on_device, adapters)
            return self.retry.run(list(tasks), images, assessments, device=device, host=lambda: self.stages.host)
        with self._on_device(adapters):
            return self.retry.run(list(tasks), images, assessments)

    @contextlib.contextmanager
    def _on_device(self, adapters: tuple) -> Iterator[None]:
        with self.stages.device:
            self.adapters.activate(adapters)
            yield


def _check_device(runtime: Runtime) -> None:
    """A worker placed where the driver's resolution does not hold (e.g. no GPU on its node) stops, loudly."""
    if runtime.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ModelError("the run was resolved for CUDA but this worker sees no CUDA device")


@dataclass
class _PendingWrites:
    """A batch between its host stage and its records: the writes are still encoding on the writer pool."""

    batch: Batch
    outcomes: list[RepairOutcome]
    writes: list[Future]  # in task order
    tokens: list[tuple[int, int]]  # (prompt tokens, the tokenizer's limit) per task
    timings: dict[str, float]

    def result(self) -> BatchResult:
        """Waits for every write (none outlives its batch); the first failed one (in task order) is raised."""
        t0 = time.perf_counter()
        wait(self.writes)
        written = [w.result() for w in self.writes]
        records = image_records(self.batch.tasks, self.outcomes, written, self.tokens)
        self.timings["write_s"] = time.perf_counter() - t0
        return BatchResult(self.batch.batch_id, records, self.timings)


def prompt_tokens(tokenizer: Any, tasks: tuple[Task, ...]) -> list[tuple[int, int]]:
    """Per task: its prompt's token count with BOS/EOS under the pipeline's tokenizer, and the tokenizer's limit, so
    truncation is reported, not silent."""
    counts = [len(ids) for ids in tokenizer([t.prompt for t in tasks], truncation=False).input_ids]
    return [(n, tokenizer.model_max_length) for n in counts]


def image_records(
    tasks: tuple[Task, ...],
    outcomes: list[RepairOutcome],
    written: list[tuple[str, Any]],
    tokens: list[tuple[int, int]],
) -> list[ImageRecord]:
    """One manifest record per task: its final assessment, repair outcome, written key and prompt token count."""
    return [
        ImageRecord.from_task(
            task,
            image_path=key,
            **outcome.assessment.columns(),
            **outcome.columns(),
            produce_id=produce_id,
            prompt_tokens=n_tokens,
            prompt_truncated=n_tokens > limit,  # CLIP text encoders see the first 77 tokens only
        )
        for task, outcome, (n_tokens, limit), (key, produce_id) in zip(tasks, outcomes, tokens, written)
    ]


def accelerate(pipe: Any, runtime: Runtime, cfg: FactoryConfig, batch_size: int) -> dict[str, Any]:
    """GPU path: channels_last, SDPA, optional torch.compile warmed up once per bucket at the fixed batch size."""
    if runtime.device != "cuda" or pipe.unet is None:
        return {}
    from factory.generation.accel import optimize_pipeline, warmup

    applied = optimize_pipeline(pipe, runtime.device, runtime.compile)
    if runtime.compile != "none":
        buckets = generation_buckets(cfg.planner, cfg.placements)  # placements' generation sizes too
        sizes = list(dict.fromkeys((b.width, b.height, b.steps) for b in buckets))
        applied["warmup_s"] = warmup(pipe, sizes, batch_size, cfg.model.guidance_scale)
    return applied
