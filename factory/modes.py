"""The string modes a config may name, beside the schema that validates them (factory.config).

A leaf: it imports nothing from factory, so config validation stays cheap (no torch, no Ray) and the modules that
implement a mode import its vocabulary from here rather than config importing back up into them.
"""

from __future__ import annotations

# run.executor: where pipeline workers run (factory.generation.executors).
EXECUTORS = ("local", "ray")
# run.fault_injection kinds, for reliability tests only (factory.generation.faults).
FAULT_KINDS = ("die_once", "raise", "oom")
# run.padding of partial batches (factory.inputs.bucketing): count = fill with padding slots up to batch_size (the
# worker drops their images); size = also promote a bucket's remainder to the next larger bucket when that wastes
# fewer pixels; none.
PADDING_MODES = ("count", "size", "none")
# placements.fit: how a generated image becomes a placement's exact pixels (factory.inputs.placements): crop =
# resize to cover, then centre crop (no distortion); stretch = resize to the exact size (distorts the aspect ratio).
PLACEMENT_FITS = ("crop", "stretch")
# run.batch_size_mode (factory.generation.batch_memory): fixed = run.batch_size; auto = the largest batch the
# workers' free device memory holds, capped where the GPU bench measured no gain (CPU: run.batch_size, said so).
BATCH_SIZE_MODES = ("fixed", "auto")
# planner.seed_scope: what a seed is derived from besides the SKU and variant: the date, or nothing.
SEED_SCOPES = ("date", "sku")

# `model.pipeline = "null"`: no model at all. Solid-colour images from each seed, no CLIP, a gate that passes every
# image: the same executor/worker/writer path with the model's cost taken out, to measure orchestration and storage
# alone (`adfactory dev scale-bench null-night`). Never a production setting. A directory named null is `./null`.
NULL_PIPELINE = "null"
# model.single_file_config: the shipped full-size config sets (factory/generation/single_file_configs/<family>/)
SINGLE_FILE_FAMILIES = ("sd15", "sdxl")
# model.device / model.dtype once "auto" is resolved (factory.generation.runtime).
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
# model.determinism: batch-invariant = factory.determinism.BatchInvariantMode (same pixels whatever the batch);
# fast = plain batched kernels (the CUDA default: GPU kernels may differ slightly across batch sizes).
DETERMINISM_MODES = ("batch-invariant", "fast")
# model.compile (factory.generation.accel) and model.quantization (factory.generation.quantize).
COMPILE_MODES = ("none", "regional", "full")
QUANT_MODES = ("none", "int8-weight", "int8-dynamic", "fp8")

# quality.preprocess: how CLIP's input is made from an image (factory.quality.clip_preprocess): torch = batched ops on
# the worker's uint8 tensor where the images are; pil = open_clip's own PIL transform, image by image.
PREPROCESS_MODES = ("torch", "pil")

# repair.mode (factory.quality.repair_loop).
REPAIR_MODES = ("inpaint", "off")

# provenance.visible_label_corner, provenance.c2pa_alg and the floor of provenance.visible_label_size
# (factory.io.provenance).
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
C2PA_ALGS = ("es256", "es384", "ps256")  # the key's type must match
MIN_LABEL_SIZE = 0.05  # GB 45438: explicit-label text at least 5 % of the image's shorter side

# lineage.transport (factory.ops.lineage): none, a JSON-lines file, or an OpenLineage HTTP endpoint.
LINEAGE_TRANSPORTS = ("none", "file", "http")
# provenance.watermark_strength bounds, in grey levels of luma change (factory.io.watermark): below, JPEG 75 erases
# the mark on photo-like images; above, the grain shows on flat areas (docs/watermark.md).
WATERMARK_STRENGTHS = (1.0, 6.0)
