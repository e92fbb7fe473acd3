"""`adfactory dev bench`: the factory's speed, waste, quantization and memory, measured side by side in one process.

On one generated mixed-bucket SKU day, with one loaded model and the same per-bucket steps:
  A  naive loop: one pipeline call per image (what a user writes first)
  B  seed 000's batching: input-order batches, each padded to its largest resolution (and step count)
  C  the factory's bucketed batches (generation only: Worker.generate, the factory's numerics)
  D  the full factory path on the same SKUs: read + validate + plan + generate + score + write + manifests,
     repair off (D/C shows what everything around generation costs), and again with repair on
Plus: pixels computed / pixels needed (B, C), the quantization effect (Linear weight bytes, PSNR of quantized vs
float images on the same seeds, speed), C with two style LoRAs switching every batch (and with one adapter always on,
to separate the LoRA's compute from the switching), peak RSS, and with `soak` the RSS drift over many batches in one
worker, without adapters and with adapters switching every batch (diffusers #8532 memory growth), and the night on the
simulated device (factory/tools/benchmarks/sim_device.py: the H200's measured generator time as a GIL-free wait at
512², the real gate and writes): night / generator, device busy fraction and host ms per image by stage.
Timings are best-of-`repeats` per configuration (machines are noisy; compare ratios from one run).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factory.config import FactoryConfig
from factory.inputs.bucketing import Batch, Task, make_batches
from factory.job.night_plan import batch_buckets


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_images(worker: Any, tasks: list[Task]) -> list[Any]:
    """A: one plain pipeline call per image."""
    import torch

    images = []
    for t in tasks:
        with torch.inference_mode():
            images += worker.pipe(
                prompt=t.prompt,
                negative_prompt=t.negative_prompt,
                width=t.width,
                height=t.height,
                num_inference_steps=t.steps,
                guidance_scale=worker.cfg.model.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(t.seed),
            ).images
    return images


def padded_to_largest(tasks: list[Task], batch_size: int) -> list[Batch]:
    """B: batches in input order, each rendered at its largest member's size and step count."""
    batches = []
    for i in range(0, len(tasks), batch_size):
        chunk = tuple(tasks[i : i + batch_size])
        w, h = max(t.width for t in chunk), max(t.height for t in chunk)
        batches.append(Batch(f"seed000-{i}", w, h, max(t.steps for t in chunk), chunk))
    return batches


@dataclass
class _Setup:
    cfg: FactoryConfig
    tmp: Path
    day: str
    skus: Path
    tasks: list[Task]
    worker: Any  # generation only (repair off), batch-invariant numerics on CPU
    buckets: list[Batch]
    seed000: list[Batch]


def bench(
    cfg: FactoryConfig, n_skus: int = 48, repeats: int = 1, soak: int = 0, quant_mode: str = "", sim_skus: int = 96
) -> dict:
    """A/B/C/D throughput, pixel waste, quantization and memory for one generated mixed-bucket day; the simulated
    device's night on `sim_skus` SKUs (0: skipped)."""
    from factory.tools.benchmarks.sim_device import simulated_night

    cfg = cfg.absolute(Path.cwd())
    result: dict[str, Any] = {"machine": _machine(), "skus": n_skus, "batch_size": cfg.run.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        s = _setup(cfg, Path(tmp), n_skus, result)
        result.update(_throughput(s, repeats))
        result["quantization"] = _quantization(s, quant_mode or "int8-dynamic", repeats)
        result["adapters"] = _adapters(s, repeats, soak, result)
        if soak:
            result["soak"] = soak_test(s.worker, s.buckets, soak)
        if sim_skus:
            result["simulated_device"] = simulated_night(cfg, sim_skus, Path(tmp))
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def _setup(cfg: FactoryConfig, tmp: Path, n_skus: int, result: dict[str, Any]) -> _Setup:
    from factory.job.night_plan import local_worker, plan
    from factory.tools.ops.demo import demo_rows, write_demo_skus

    day = "2026-01-01"
    skus = write_demo_skus(tmp / "skus.parquet", n_skus, bad_rows=False)
    result["input_rows"] = len(demo_rows(n_skus, bad_rows=False))
    tasks = plan(cfg, day, skus).tasks
    result["images"] = len(tasks)
    result["buckets"] = {b.name: sum(t.bucket == b.name for t in tasks) for b in cfg.planner.buckets}
    worker = local_worker(_with(cfg, repair={"mode": "off"}), str(tmp / "out"))
    buckets = make_batches(tasks, cfg.run.batch_size, batch_buckets(cfg), worker.runtime.padding)
    return _Setup(cfg, tmp, day, skus, tasks, worker, buckets, padded_to_largest(tasks, cfg.run.batch_size))


def _with(cfg: FactoryConfig, **sections: dict[str, Any]) -> FactoryConfig:
    """A copy of `cfg` with some keys of some sections replaced; the bench always runs the local executor."""
    sections = {"run": {"executor": "local"}, **sections}
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    )


def _warm(worker: Any, batches: list[Batch]) -> None:
    """One call per bucket shape, untimed (first calls allocate and pick kernels)."""
    for b in {(b.width, b.height, b.steps): b for b in batches}.values():
        worker.generate(dataclasses.replace(b, tasks=b.tasks[:1]))


def _throughput(s: _Setup, repeats: int) -> dict[str, Any]:
    from factory.job.night_plan import local_worker

    worker = s.worker
    _warm(worker, s.buckets + s.seed000)

    def run_batches(batches: list[Batch]) -> int:
        before = worker.pixels_computed
        for b in batches:
            worker.generate(b)
        return worker.pixels_computed - before

    needed = sum(t.width * t.height for t in s.tasks)
    t = {"A": _timed(lambda: naive_images(worker, s.tasks), repeats)[0]}
    t["B"], px_b = _timed(lambda: run_batches(s.seed000), repeats)
    t["C"], px_c = _timed(lambda: run_batches(s.buckets), repeats)
    t["D"] = _timed(lambda: _full(s, worker, "d"), repeats)[0]
    t["D_repair"] = _timed(lambda: _full(s, local_worker(_with(s.cfg), str(s.tmp / "dr")), "dr"), repeats)[0]
    # the same C and D with plain batched kernels ("fast": what CUDA uses), to show the price of CPU batch
    # invariance (per-sample convolutions and per-image CLIP scoring)
    fast = local_worker(_with(s.cfg, repair={"mode": "off"}, model={"determinism": "fast"}), str(s.tmp / "fast"))
    _warm(fast, s.buckets)
    t["C_fast"] = _timed(lambda: [fast.generate(b) for b in s.buckets], repeats)[0]
    t["D_fast"] = _timed(lambda: _full(s, fast, "df"), repeats)[0]
    return {
        **_rates(len(s.tasks), t),
        "seconds": t,
        "pixel_waste": {"B": round(px_b / needed, 3), "C": round(px_c / needed, 3)},
        "repair": {"images_repaired": _count_repaired(s.tmp / "dr", s.day)},
    }


def _full(s: _Setup, worker: Any, name: str) -> int:
    """D: `factory.job.run.run()` in-process (read, validate, plan, lock, generate, score, repair, write images,
    parts, manifests, run.json, _SUCCESS) with an already loaded worker."""
    from factory.job.run import run

    out_cfg = _with(worker.cfg, paths={"output": str(s.tmp / name)})
    return run(out_cfg, s.day, s.skus, force=True, worker=worker).counts["images_generated"]


def _rates(n: int, t: dict[str, float]) -> dict[str, Any]:
    ips = {
        "A_naive": n / t["A"],
        "B_seed000_padded": n / t["B"],
        "C_bucketed": n / t["C"],
        "D_full_no_repair": n / t["D"],
        "D_full_with_repair": n / t["D_repair"],
        "C_bucketed_fast_numerics": n / t["C_fast"],
        "D_full_no_repair_fast_numerics": n / t["D_fast"],
    }
    return {
        "images_per_s": {k: round(v, 3) for k, v in ips.items()},
        "ratios": {
            "C/A": round(ips["C_bucketed"] / ips["A_naive"], 3),
            "C/B": round(ips["C_bucketed"] / ips["B_seed000_padded"], 3),
            "D/C": round(ips["D_full_no_repair"] / ips["C_bucketed"], 3),
            "D_repair/C": round(ips["D_full_with_repair"] / ips["C_bucketed"], 3),
            "C_fast/A": round(ips["C_bucketed_fast_numerics"] / ips["A_naive"], 3),
            "D_fast/C_fast": round(ips["D_full_no_repair_fast_numerics"] / ips["C_bucketed_fast_numerics"], 3),
        },
    }


def _quantization(s: _Setup, mode: str, repeats: int) -> dict[str, Any]:
    """Same seeds, float vs quantized UNet: bytes, PSNR and speed."""
    from factory.generation.quantize import linear_weight_bytes, psnr
    from factory.job.night_plan import local_worker

    qworker = local_worker(_with(s.cfg, repair={"mode": "off"}, model={"quantization": mode}), str(s.tmp / "q"))
    _warm(qworker, s.buckets)
    t_q = _timed(lambda: [qworker.generate(b) for b in s.buckets], repeats)[0]
    t_c = _timed(lambda: [s.worker.generate(b) for b in s.buckets], repeats)[0]
    float_imgs = [np.asarray(im) for b in s.buckets for im in s.worker.generate(b)]
    quant_imgs = [np.asarray(im) for b in s.buckets for im in qworker.generate(b)]
    psnrs = [psnr(a, b) for a, b in zip(float_imgs, quant_imgs)]
    float_bytes = linear_weight_bytes(s.worker.pipe.unet)
    q = qworker.quantization
    return {
        "default_mode": s.worker.quantization["mode"],
        "compared_mode": mode,
        "linear_weight_bytes_float": float_bytes,
        "linear_weight_bytes_quantized": q["weight_bytes_after"],
        "bytes_ratio_all_linear": round(q["weight_bytes_after"] / float_bytes, 3),
        "bytes_ratio_quantized_layers": round(q["quantized_bytes_after"] / max(q["quantized_bytes_before"], 1), 3),
        "layers_quantized": q["quantized"],
        "layers_kept_float": q["skipped"],
        "psnr_db_mean": round(float(np.mean([min(x, 99.0) for x in psnrs])), 2),
        "psnr_db_min": round(float(min(psnrs)), 2),
        "speed_ratio_quantized_over_float": round(t_c / t_q, 3),
    }


def _adapters(s: _Setup, repeats: int, soak: int, result: dict[str, Any]) -> dict[str, Any]:
    """C's batches in one worker holding two tiny style LoRAs (factory/tools/builders/style_lora.py): without adapters,
    with one always on, and switching every batch, timed round-robin (best of `repeats` rounds) so that machine noise
    hits
    all three alike; adds the rows to `result`'s images/s and ratios. With `soak`, the soak switching every batch."""
    from factory.config import AdapterConfig, LoraSection
    from factory.inputs.bucketing import adapter_entry
    from factory.job.night_plan import local_worker
    from factory.tools.builders.style_lora import write_style_lora

    names = ("style_a", "style_b")
    configured = {n: AdapterConfig(str(write_style_lora(s.tmp / n, seed=i).parent)) for i, n in enumerate(names)}
    cfg = dataclasses.replace(_with(s.cfg, repair={"mode": "off"}), lora=LoraSection(configured))
    worker = local_worker(cfg, str(s.tmp / "adapters"))
    base = s.buckets if len(s.buckets) % 2 == 0 else s.buckets * 2  # even, so cycling keeps alternating
    runs = {
        "none": base,
        "always_on": [dataclasses.replace(b, adapters=(adapter_entry(names[0], 1.0),)) for b in base],
        "switching": [dataclasses.replace(b, adapters=(adapter_entry(names[i % 2], 1.0),)) for i, b in enumerate(base)],
    }
    for n in names:  # load both once, untimed (loading is once per worker, not per switch)
        worker.adapters.activate((adapter_entry(n, 1.0),))
    _warm(worker, runs["switching"])
    best, switches, switch_s = dict.fromkeys(runs, float("inf")), 0, 0.0
    for _ in range(max(repeats, 1)):
        for key, batches in runs.items():
            before = worker.adapters.stats()
            t0 = time.perf_counter()
            for b in batches:
                worker.generate(b)
            best[key] = min(best[key], time.perf_counter() - t0)
            if key == "switching":
                switches += worker.adapters.stats()["adapter_switches"] - before["adapter_switches"]
                switch_s += worker.adapters.stats()["adapter_switch_s"] - before["adapter_switch_s"]
    n_images = sum(len(b.tasks) for b in base)
    ips = {key: n_images / t for key, t in best.items()}
    result["images_per_s"]["C_adapters_switching_every_batch"] = round(ips["switching"], 3)
    result["images_per_s"]["C_adapter_always_on"] = round(ips["always_on"], 3)
    result["ratios"]["C_adapters_switching/C"] = round(ips["switching"] / ips["none"], 3)
    out = {
        "adapters": list(names),
        "images_per_s_same_worker": {k: round(v, 3) for k, v in ips.items()},
        "always_on/none": round(ips["always_on"] / ips["none"], 3),
        "switching/none": round(ips["switching"] / ips["none"], 3),
        "switches_timed": int(switches),
        "switch_ms_mean": round(1000 * switch_s / max(switches, 1), 3),
        "load_s_per_adapter": round(worker.adapters.load_s / len(names), 3),
    }
    if soak:
        out["soak"] = soak_test(worker, runs["switching"], soak)
        out["soak"]["switches"] = worker.adapters.switches
    return out


def _count_repaired(output: Path, day: str) -> int:
    from factory.io.layout import read_manifest
    from factory.io.storage import open_store

    return sum(read_manifest(open_store(str(output)), "approved", day).column("repaired").to_pylist())


def soak_test(worker: Any, batches: list[Batch], n: int) -> dict[str, float]:
    """Process `n` batches in one worker (cycling through the day) and compare RSS at 10 % and at 100 %."""
    import gc

    at_10 = 0.0
    for i in range(n):
        worker.process(batches[i % len(batches)])
        if i + 1 == max(1, n // 10):
            gc.collect()
            at_10 = rss_mb()
    gc.collect()
    at_end = rss_mb()
    return {
        "batches": n,
        "rss_mb_at_10pct": round(at_10, 1),
        "rss_mb_at_100pct": round(at_end, 1),
        "growth_pct": round(100 * (at_end - at_10) / at_10, 2),
    }


def _machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def format_table(r: dict[str, Any]) -> str:
    from factory.tools.benchmarks.sim_device import format_sim

    ips, ratios = r["images_per_s"], r["ratios"]
    q = r["quantization"]
    lines = [
        f"adfactory dev bench: {r['images']} images from {r['skus']} SKUs, batch size {r['batch_size']}, "
        f"buckets {r['buckets']}",
        "",
        "| configuration | images/s |",
        "| --- | --- |",
        *(f"| {k} | {v:.2f} |" for k, v in ips.items()),
        "",
        f"ratios: C/A {ratios['C/A']}  C/B {ratios['C/B']}  D/C {ratios['D/C']}  (D with repair)/C "
        f"{ratios['D_repair/C']}",
        f"fast numerics (batched kernels, as on CUDA): C/A {ratios['C_fast/A']}  D/C {ratios['D_fast/C_fast']}",
        f"pixels computed / needed: B {r['pixel_waste']['B']}  C {r['pixel_waste']['C']}",
        f"quantization {q['compared_mode']} vs float: Linear bytes x{q['bytes_ratio_all_linear']} (all UNet Linear), "
        f"x{q['bytes_ratio_quantized_layers']} (quantized layers), PSNR mean {q['psnr_db_mean']} dB / min "
        f"{q['psnr_db_min']} dB, speed x{q['speed_ratio_quantized_over_float']}",
        f"peak RSS {r['peak_rss_mb']} MB",
    ]
    a = r["adapters"]
    lines.append(
        f"adapters (same worker, round-robin): switching every batch x{a['switching/none']}, one always on "
        f"x{a['always_on/none']} of no adapters ({a['switches_timed']} switches, {a['switch_ms_mean']} ms each; "
        f"load {a['load_s_per_adapter']} s per adapter, once per worker)"
    )
    for label, soak in (("soak", r.get("soak")), ("soak, adapters switching every batch", a.get("soak"))):
        if soak:
            lines.append(
                f"{label}: {soak['batches']} batches, RSS {soak['rss_mb_at_10pct']} MB at 10% -> "
                f"{soak['rss_mb_at_100pct']} MB at 100% ({soak['growth_pct']:+.2f}%)"
            )
    if "simulated_device" in r:
        lines.append(format_sim(r["simulated_device"]))
    return "\n".join(lines)
