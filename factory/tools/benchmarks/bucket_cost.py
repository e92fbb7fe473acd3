"""What each bucket of a config costs, and what a night of a day's SKUs costs at those sizes (`adfactory dev
bucket-cost`).

Every distinct (width, height, steps) a night may generate at (the configured buckets and the placements'
generation buckets, factory.inputs.placements) is generated with the tiny random-weight pipeline of the config's
family (`tiny-sdxl`: factory.tools.builders.tiny_models.build_tiny_sdxl; `tiny-sd`: the SD1.5 one) on this
machine's CPU, one image per call, the best of `repeats` after a warm-up. Costs are relative to the first
configured bucket. A night's cost is the sum over its planned images (the demo day's SKUs, optionally with
placements asked for every SKU) in units of that first bucket's image. The tiny models prove plumbing and how cost
grows with pixels and steps on a small network; a real SDXL UNet's cost per pixel differs (see docs/sdxl.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

from factory.config import FactoryConfig
from factory.inputs.bucketing import Planner
from factory.inputs.placements import generation_buckets
from factory.job.night_plan import config_templates

MODELS = ("tiny-sdxl", "tiny-sd")


def _pipeline(model: str) -> Any:
    from factory.tools.builders import tiny_models

    pipe = tiny_models.build_tiny_sdxl() if model == "tiny-sdxl" else tiny_models.build_tiny_sd()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_sizes(model: str, sizes: list[tuple[int, int, int]], repeats: int) -> dict[tuple[int, int, int], float]:
    """Seconds per image (best of `repeats`, after one warm-up call) for each (width, height, steps)."""
    import torch

    from factory.determinism import BatchInvariantMode

    torch.set_num_threads(1)  # one worker's share (run.cpus_per_worker = 1), and steadier on a shared machine
    pipe = _pipeline(model)
    out = {}
    for w, h, steps in sizes:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.inference_mode(), BatchInvariantMode():  # the CPU night's numerics
                pipe(
                    prompt=["product photography of red sneakers"],
                    width=w,
                    height=h,
                    num_inference_steps=steps,
                    guidance_scale=1.0,
                    generator=[torch.Generator("cpu").manual_seed(0)],
                )
            times.append(time.perf_counter() - t0)
        out[w, h, steps] = min(times[1:])
    return out


def night_images(cfg: FactoryConfig, placements: tuple[str, ...]) -> Counter[str]:
    """Images per bucket of the demo day (`adfactory demo-skus`: 52 rows, 48 valid) planned with `cfg`, every SKU
    asking for `placements` in its `placements` column (none: one image per variant at its bucket)."""
    import pyarrow as pa

    from factory.inputs.skus import RowValidator
    from factory.tools.ops.demo import SCHEMA, demo_rows

    rows = [{**r, "placements": ",".join(placements) or None} for r in demo_rows()]
    table = pa.Table.from_pylist(rows, SCHEMA.append(pa.field("placements", pa.string())))
    templates = config_templates(cfg)
    validator = RowValidator(templates, cfg.planner.max_variants, cfg.lora.adapters, cfg.placements.sizes)
    skus, _ = validator.validate("demo.parquet", table)
    planner = Planner(cfg.planner, templates, cfg.lora.adapters, cfg.placements)
    return Counter(t.bucket for t in planner.plan_tasks(skus, "2026-11-21"))


def bucket_costs(
    cfg: FactoryConfig, model: str = "tiny-sdxl", repeats: int = 2, placements: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Per bucket: size, steps, seconds per image, cost relative to the first bucket; and the demo night's cost
    without and with `placements` (default: every configured placement)."""
    placements = placements or tuple(cfg.placements.sizes)
    buckets = generation_buckets(cfg.planner, cfg.placements)
    sizes = list(dict.fromkeys((b.width, b.height, b.steps) for b in buckets))
    seconds = time_sizes(model, sizes, repeats)
    base = seconds[sizes[0]]
    rows = [
        {
            "bucket": b.name,
            "size": f"{b.width}x{b.height}",
            "steps": b.steps,
            "s_per_image": round(seconds[b.width, b.height, b.steps], 3),
            "relative": round(seconds[b.width, b.height, b.steps] / base, 2),
        }
        for b in buckets
    ]
    relative = {r["bucket"]: r["relative"] for r in rows}
    nights = {}
    for name, asked in (("no placements", ()), (f"placements {','.join(placements)}", placements)):
        images = night_images(cfg, asked)
        nights[name] = {
            "images": sum(images.values()),
            "cost": round(sum(n * relative[b] for b, n in images.items()), 1),
            "by_bucket": dict(sorted(images.items())),
        }
    return {"model": model, "unit": rows[0]["bucket"], "buckets": rows, "nights": nights}


def format_costs(result: dict[str, Any]) -> str:
    lines = [f"{'bucket':<16} {'size':>10} {'steps':>5} {'s/image':>9} {'relative':>9}"]
    for r in result["buckets"]:
        lines.append(
            f"{r['bucket']:<16} {r['size']:>10} {r['steps']:>5} {r['s_per_image']:>9.3f} {r['relative']:>9.2f}"
        )
    unit = result["unit"]
    for name, n in result["nights"].items():
        lines.append(f"demo day, {name}: {n['images']} images = {n['cost']} {unit}-image units")
    return "\n".join(lines)


def scaled(cfg: FactoryConfig, factor: int) -> FactoryConfig:
    """`cfg` with every bucket, aspect bucket and placement divided by `factor` (sides kept multiples of 8): the
    same plan at a size a test can afford."""

    def side(v: int) -> int:
        return max(8, v // factor // 8 * 8)

    p = cfg.planner
    planner = dataclasses.replace(
        p,
        buckets=[dataclasses.replace(b, width=side(b.width), height=side(b.height)) for b in p.buckets],
        aspect_buckets=[dataclasses.replace(a, width=side(a.width), height=side(a.height)) for a in p.aspect_buckets],
    )
    sizes = {
        n: dataclasses.replace(s, width=max(1, s.width // factor), height=max(1, s.height // factor))
        for n, s in cfg.placements.sizes.items()
    }
    return dataclasses.replace(cfg, planner=planner, placements=dataclasses.replace(cfg.placements, sizes=sizes))
