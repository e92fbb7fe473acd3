"""Where a repair's time goes, stage by stage, next to the cost of generating one image in the same bucket.

`python -m factory.tools.benchmarks.profile_repair --config data/demo.toml [--batch 8] [--repairs 2] [--rounds 3]`: one
worker (gate and repair as configured), then per bucket: a batch of `--batch` images generated (seconds per image),
and `--repairs` of them repaired in one `repair_batch` call, as the night does (a blur defect mask per image), then
re-scored. Stages of both are timed by wrapping the pipeline modules' calls (text encoder, VAE encode, UNet, VAE
decode) and the Repairer's own steps (crop, paste-back); "other" is the rest of the repair's pipeline call (image
pre/post-processing, scheduler). Best of `--rounds` per stage (the machine is shared); seconds per repaired image.
A profiling tool: it wraps the worker's module objects for the duration of a measurement only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factory.config import FactoryConfig

PIPELINE_STAGES = {
    "text_encoder": ("text_encoder", "forward"),
    "vae_encode": ("vae", "encode"),
    "unet": ("unet", "forward"),
    "vae_decode": ("vae", "decode"),
}


@contextlib.contextmanager
def timed_calls(totals: dict[str, float], targets: dict[str, tuple[Any, str]]) -> Iterator[None]:
    """Add the wall time of every call of `obj.attr` to `totals[name]` while inside (instance attributes)."""
    for name, (obj, attr) in targets.items():
        setattr(obj, attr, _timed_fn(getattr(obj, attr), totals, name))
    try:
        yield
    finally:
        for obj, attr in targets.values():
            delattr(obj, attr)  # back to the class attribute


def _generate(worker: Any, width: int, height: int, steps: int, n: int) -> tuple[list[Any], dict[str, float]]:
    """n images in one call as the worker makes them; seconds per stage (totals)."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(1000 + i) for i in range(n)]
    totals: dict[str, float] = defaultdict(float)
    targets = {k: (getattr(worker.pipe, mod), attr) for k, (mod, attr) in PIPELINE_STAGES.items()}
    t0 = time.perf_counter()
    with torch.inference_mode(), worker._numerics(), timed_calls(totals, targets):
        images = worker.pipe(
            prompt=[f"a product photo, item {i}" for i in range(n)],
            negative_prompt=[""] * n,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=worker.cfg.model.guidance_scale,
            generator=generators,
        ).images
    totals["generate"] = time.perf_counter() - t0
    return images, totals


def profile_repair(worker: Any, images: list[Any], steps: int, category: str) -> dict[str, float]:
    """One `repair_batch` call over `images` plus their re-score, seconds per stage (totals, not per image)."""
    from factory.quality import defects, repair

    retry, r = worker.retry, worker.cfg.repair
    rep = retry.repairer
    totals: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    tile = r.tile or max(8, min(images[0].size) // 4)
    masks = [
        defects.defect_mask(im, ["blurry"], tile=tile, top_k=r.top_k, dilate=r.dilate, blur=r.blur) for im in images
    ]
    totals["mask"] = time.perf_counter() - t0
    items = [
        repair.RepairItem(im, m.mask, f"a product photo, item {i}", "", 1000 + i)
        for i, (im, m) in enumerate(zip(images, masks))
    ]
    targets = {k: (getattr(rep.pipe, mod), attr) for k, (mod, attr) in PIPELINE_STAGES.items()}
    targets.update({"pipeline": (rep, "_inpaint"), "crop": (rep, "_crop_box")})
    paste = repair._paste_back
    repair._paste_back = _timed_fn(paste, totals, "paste_back")
    try:
        t0 = time.perf_counter()
        with timed_calls(totals, targets):
            fixed = rep.repair_batch(items, r.strength, steps, r.padding, worker.cfg.model.guidance_scale)
        totals["repair_batch"] = time.perf_counter() - t0
    finally:
        repair._paste_back = paste
    t0 = time.perf_counter()
    retry.gate.assess(fixed, [it.prompt for it in items], [category] * len(items))
    totals["rescore"] = time.perf_counter() - t0
    inner = sum(totals[k] for k in PIPELINE_STAGES)
    totals["other_in_pipeline"] = totals["pipeline"] - inner
    return dict(totals)


def _timed_fn(fn: Any, totals: dict[str, float], name: str) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
            totals[f"{name}_calls"] += 1

    return timed


def run(cfg: FactoryConfig, batch: int = 8, repairs: int = 2, rounds: int = 3) -> dict[str, Any]:
    """Per bucket of `cfg`: generation and repair stages, seconds per image (best of `rounds`)."""
    from factory.job.night_plan import local_worker

    if cfg.repair.mode == "off" or cfg.repair.max_attempts == 0 or not 0 < repairs <= batch:
        raise ValueError("profile_repair needs repair on and 0 < repairs <= batch")
    with tempfile.TemporaryDirectory() as tmp:
        worker = local_worker(cfg, tmp)
        category = sorted(worker.gate.thresholds)[0]
        out: dict[str, Any] = {"batch": batch, "repairs": repairs, "rounds": rounds, "buckets": {}}
        for b in cfg.planner.buckets:
            best: dict[str, float] = {}
            for _ in range(rounds):
                images, gen = _generate(worker, b.width, b.height, b.steps, batch)
                prof = profile_repair(worker, images[:repairs], b.steps, category)
                prof.update({f"gen_{k}": v / (1 if k.endswith("_calls") else batch) for k, v in gen.items()})
                prof["generate_per_image"] = gen["generate"] / batch
                best = {k: min(v, best.get(k, v)) for k, v in prof.items()}
            out["buckets"][b.name] = _per_image(best, repairs, f"{b.width}x{b.height}, {b.steps} steps")
    return out


def _per_image(best: dict[str, float], repairs: int, label: str) -> dict[str, Any]:
    row: dict[str, Any] = {"bucket": label}
    for k, v in best.items():
        row[k] = round(v if k.endswith("_calls") or k.startswith("gen") else v / repairs, 4)
    total = row["mask"] + row["repair_batch"] + row["rescore"]
    row["repair_per_image"] = round(total, 4)
    row["repair_over_generate"] = round(total / row["generate_per_image"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m factory.tools.benchmarks.profile_repair")
    p.add_argument("--config", default="data/demo.toml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repairs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    from factory.config import load_config

    print(json.dumps(run(load_config(a.config), a.batch, a.repairs, a.rounds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
