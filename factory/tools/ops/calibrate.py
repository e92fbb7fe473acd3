"""Calibration: score a sample of a day's images and suggest quality thresholds from the score distributions.

CLIP scores are model-specific (the tiny embedded model's mean nothing; ViT-B-32's and ViT-L-14's differ), and
pixel heuristics depend on resolution and category, so thresholds must come from data. `calibrate` generates a
deterministic per-category sample with the configured model (no repair, nothing written to the day's outputs),
computes every check's score, and writes:
  <output>/calibration/<date>/report.md        distributions per category (min, p5, p25, median, p75, p95, max)
  <output>/calibration/<date>/thresholds.toml  a [quality] snippet to paste into the config
Each suggested threshold lets `percentile` % of the sample fail that check (a per-check review budget): lower
bounds (clip, IQA, blur, blank) sit at the `percentile`-th percentile, upper bounds (unsafe, clipped pixels,
saturation) at the (100 - `percentile`)-th.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory.config import FactoryConfig
from factory.errors import InputError
from factory.inputs.arguments import check_output_dir
from factory.inputs.bucketing import Batch, Task, make_batches
from factory.io.storage import open_store
from factory.job.night_plan import batch_buckets, plan

# metric -> (threshold key in [quality], "min" if the threshold is a lower bound else "max")
METRICS = {
    "clip_score": ("clip_threshold", "min"),
    "iqa_mean": ("iqa_threshold", "min"),
    "unsafe_score": ("unsafe_threshold", "max"),
    "laplacian_var": ("blur_laplacian_var", "min"),
    "pixel_std": ("blank_std", "min"),
    "overexposed_frac": ("overexposed_frac", "max"),
    "underexposed_frac": ("underexposed_frac", "max"),
    "saturation_mean": ("saturation_mean", "max"),
}
# A few clipped pixels are normal (specular highlights, white backgrounds): never suggest a stricter limit.
FLOORS = {"overexposed_frac": 0.05, "underexposed_frac": 0.05}
MIN_CATEGORY_SAMPLES = 8  # fewer images than this: no per-category suggestion (too noisy), the global one applies


@dataclass
class CalibrationReport:
    samples: int
    scores: dict[str, dict[str, list[float]]]  # category -> metric -> values
    thresholds: dict[str, dict[str, float]]  # "all" and categories -> [quality] key -> value
    toml_path: str  # a local path or a URI under the output root
    report_path: str


def sample_tasks(tasks: list[Task], n: int) -> list[Task]:
    """Round-robin over categories (in name order), each category's tasks in seed order: deterministic, balanced."""
    by_cat: dict[str, list[Task]] = defaultdict(list)
    for t in sorted(tasks, key=lambda t: t.seed):
        by_cat[t.category].append(t)
    picked: list[Task] = []
    queues = [by_cat[c] for c in sorted(by_cat)]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def suggest(values: list[float], kind: str, percentile: float) -> float:
    q = percentile if kind == "min" else 100.0 - percentile
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 4)


def check_arguments(sample: int, percentile: float) -> None:
    """`--sample` and `--percentile` in range (NaN included: it fails every comparison)."""
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise InputError(f"--sample must be a whole number of images >= 1, got {sample!r}")
    if not 0 < percentile < 50:
        raise InputError(f"--percentile must be above 0 and below 50 (a share of the sample in %), got {percentile!r}")


def calibrate(
    cfg: FactoryConfig, date: str, skus_path: str | Path | None = None, sample: int = 64, percentile: float = 5.0
) -> CalibrationReport:
    """Score a deterministic sample of the day's images; write report.md and thresholds.toml (see module doc)."""
    # arguments and input first: a bad one is exit 2 before a model loads or a file is written
    check_arguments(sample, percentile)
    cfg = cfg.absolute(Path.cwd())
    p = plan(cfg, date, skus_path)
    if not p.tasks:
        raise InputError(
            f"{p.input_path}: no valid rows to calibrate on ({p.input_rows} rows, {len(p.rejected)} rejected)"
        )
    store = open_store(cfg.paths.output, cfg.storage)
    out = f"calibration/{p.date}"
    if store.kind == "local":
        check_output_dir(store.root, Path(store.path(out)))
    tasks = sample_tasks(p.tasks, sample)
    scores = _score(cfg, tasks)

    thresholds: dict[str, dict[str, float]] = {}
    for cat, metrics in scores.items():
        if cat != "all" and len(metrics["clip_score"]) < MIN_CATEGORY_SAMPLES:
            continue
        thresholds[cat] = {
            key: max(suggest(metrics[m], kind, percentile), FLOORS.get(m, float("-inf")))
            for m, (key, kind) in METRICS.items()
        }

    toml_path, report_path = f"{out}/thresholds.toml", f"{out}/report.md"
    store.put_bytes(toml_path, _toml(thresholds, len(tasks), percentile, cfg).encode())
    store.put_bytes(report_path, _markdown(scores, thresholds, percentile, cfg).encode())
    return CalibrationReport(
        len(tasks), {k: dict(v) for k, v in scores.items()}, thresholds, store.url(toml_path), store.url(report_path)
    )


def _score(cfg: FactoryConfig, tasks: list[Task]) -> dict[str, dict[str, list[float]]]:
    """Generate and score `tasks` (no repair, nothing kept): category and "all" -> metric -> values."""
    from factory.job.night_plan import local_worker

    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory() as scratch:  # the worker writes nothing here: we only generate and score
        no_repair = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
        worker = local_worker(no_repair, scratch)
        # placements' generation buckets too: their images are scored as delivered, as a night scores them
        batches: list[Batch] = make_batches(tasks, cfg.run.batch_size, batch_buckets(cfg), worker.runtime.padding)
        for batch in batches:
            images = worker.generate(batch)
            for t, a in zip(
                batch.tasks,
                worker.gate.assess(images, [t.prompt for t in batch.tasks], [t.category for t in batch.tasks]),
            ):
                values = {
                    **a.pixels,
                    "clip_score": a.clip_score,
                    "iqa_mean": a.iqa_mean,
                    "unsafe_score": a.unsafe_score,
                }
                for metric in METRICS:
                    scores[t.category][metric].append(values[metric])
                    scores["all"][metric].append(values[metric])
    return scores


def _toml(thresholds: dict[str, dict[str, float]], n: int, percentile: float, cfg: FactoryConfig) -> str:
    lines = [
        f"# Suggested by `adfactory calibrate` from {n} images ({cfg.model.pipeline} + CLIP {cfg.model.clip_model}).",
        f"# Each threshold lets {percentile:g}% of the sample fail its check. Review report.md, then paste into",
        "# your config (replacing its [quality] values; keep iqa_pairs/unsafe_concepts as they are).",
        "[quality]",
    ]
    lines += [f"{k} = {v!r}" for k, v in thresholds.get("all", {}).items()]
    for cat, values in sorted(thresholds.items()):
        if cat != "all":
            lines += ["", f"[quality.categories.{cat}]"] + [f"{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _markdown(scores: dict, thresholds: dict, percentile: float, cfg: FactoryConfig) -> str:
    out = [
        "# Quality calibration report",
        "",
        f"Model `{cfg.model.pipeline}`, CLIP `{cfg.model.clip_model}`; suggested thresholds at the "
        f"{percentile:g}th / {100 - percentile:g}th percentile.",
    ]
    for cat in ["all"] + sorted(c for c in scores if c != "all"):
        out += [
            "",
            f"## {cat} ({len(scores[cat]['clip_score'])} images)",
            "",
            "| metric | min | p5 | p25 | median | p75 | p95 | max | suggested |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for metric, (key, _) in METRICS.items():
            v = np.asarray(scores[cat][metric])
            qs = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
            sug = thresholds.get(cat, {}).get(key)
            out.append(f"| {metric} | " + " | ".join(f"{q:.4g}" for q in qs) + f" | {'' if sug is None else sug} |")
    return "\n".join(out) + "\n"
