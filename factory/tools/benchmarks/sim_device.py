"""The simulated device (benchmark only): the real night with the pipeline call replaced by a GIL-free wait.

`SimulatedPipeline` stands in for the diffusers pipeline: each call sleeps for the time the measured generator
takes for that many images (`docs/bench-gpu-h200.json`, `final_run_compile_full`: 39.64 img/s at batch 16, 512²,
4 steps, fp16, compile full, padding slots included) and returns deterministic pseudo-images (noise drawn from
each sample's seed, so a re-run writes the same bytes). `time.sleep` releases the GIL, so the host threads run
while the "device" works, exactly as they could while a CUDA call is in flight. Everything else is the real
night: the local executor, the tiny CLIP gate, provenance stamping, PNG encoding and writes, manifests.

Repair (a benchmark model too): a deterministic share of the seeds (`defect_share`, default the demo night's share
of images that needed a repair) draws a smooth, blurred-looking image that the real gate's blur check sends to
repair; `SimulatedRepairer` stands in for the inpaint call: it waits `REPAIR_CALL_S + images x REPAIR_IMAGE_S`
without the GIL (the H200-derived device time of an inpaint at strength 0.4, below) and pastes deterministic noise
through the real defect mask, which the real gate then re-scores.

It is reachable only from here: `SimulatedDeviceWorker` is a Worker subclass the bench builds and hands to
`factory.job.run.run(worker=...)`; no config key selects it.

    python -m factory.tools.benchmarks.sim_device --config data/demo.toml --skus 96
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from factory.config import FactoryConfig, load_config
from factory.generation.frames import Frames
from factory.generation.worker import Worker
from factory.inputs.bucketing import make_batches
from factory.job.night_plan import batch_buckets

H200_IMAGES_PER_S = 39.64  # generator alone (C), batch 16, 512², 4 steps (docs/bench-gpu-h200.json)
SIM_SIZE, SIM_STEPS, SIM_BATCH = 512, 4, 16
# The demo night (`adfactory run --config data/demo.toml`, 2026-11-21): 6 of 53 images needed a repair.
DEMO_REPAIR_SHARE = 6 / 53
# Device time of one inpaint call of n images at 512², strength 0.4 (2 of 4 UNet steps, a VAE encode, a VAE
# decode), from the H200's compiled batch-16 breakdown (docs/bench-gpu-h200.json): UNet 0.19 s per 4 steps, VAE
# decode 0.10 s, the encode taken as 0.4 x the decode (not measured): (0.095 + 0.04 + 0.10) / 16 = 14.7 ms per
# image. The per-call part: the naive batch-1 loop against batch 16, uncompiled (6.3 against 18.3 img/s), fits
# t(n) = 0.111 s + n x 47.7 ms; scaled to compiled (0.404 / 0.874) and to a repair's share of a generation
# (0.58): ~30 ms per call. Both are estimates: the bench takes them as arguments.
REPAIR_IMAGE_S = 0.0147
REPAIR_CALL_S = 0.030


@dataclasses.dataclass
class _Output:
    images: list[Any]


class SimulatedPipeline:
    """A pipeline-shaped object: `__call__` waits `images / images_per_s` seconds without holding the GIL.
    `defect_share` of the seeds (`is_defective`) draw a smooth image the blur check fails."""

    def __init__(self, tokenizer: Any, images_per_s: float = H200_IMAGES_PER_S, defect_share: float = 0.0):
        self.tokenizer = tokenizer  # image_records counts prompt tokens with it
        self.unet = None  # nothing to quantize, compile or adapt
        self.images_per_s = images_per_s
        self.defect_share = defect_share
        self.busy_s = 0.0  # summed simulated device time (generation and repair)
        self.calls = 0
        self.repair = {"calls": 0, "images": 0, "busy_s": 0.0}  # the SimulatedRepairer's share of it
        self._lock = threading.Lock()

    def __call__(self, *, prompt: list[str], width: int, height: int, generator: list[Any], **kw: Any) -> _Output:
        t0 = time.perf_counter()
        seconds = len(prompt) / self.images_per_s
        seeds = [g.initial_seed() for g in generator]
        flags = [is_defective(s, self.defect_share) for s in seeds]
        images = _as_output(seeds, width, height, kw.get("output_type", "pil"), flags)
        self.wait(seconds, t0)  # the call lasts the device time, making the output included
        with self._lock:
            self.calls += 1
        return _Output(images)

    def wait(self, seconds: float, since: float, repaired: int = 0) -> None:
        """Sleep until `seconds` after `since` (the host waits on the device, GIL released) and count it as
        device time (`repaired` images: an inpaint call)."""
        time.sleep(max(seconds - (time.perf_counter() - since), 0.0))
        with self._lock:
            self.busy_s += seconds
            if repaired:
                self.repair["calls"] += 1
                self.repair["images"] += repaired
                self.repair["busy_s"] += seconds


def is_defective(seed: int, share: float) -> bool:
    """Whether `seed` draws a defective (smooth) image: a fixed hash of the seed below `share`."""
    return share > 0 and (seed * 2654435761 + 0x9E3779B9) % 2**32 < share * 2**32


class SimulatedRepairer:
    """Stands in for `Repairer.repair_batch`: one call waits `call_s + images x image_s` (GIL released) on the
    pipeline's device clock and returns, per item, deterministic noise (from the repair seed) pasted through its
    real defect mask, so the real gate re-scores a changed region."""

    def __init__(self, pipe: SimulatedPipeline, call_s: float = REPAIR_CALL_S, image_s: float = REPAIR_IMAGE_S):
        self.pipe, self.call_s, self.image_s = pipe, call_s, image_s

    def repair_batch(self, items: list[Any], strength: float, steps: int, *args: Any, **kw: Any) -> list[Any]:
        from factory.quality.repair import repair_seed

        t0 = time.perf_counter()
        out = []
        for it in items:
            w, h = it.image.size
            paint = Image.fromarray(pseudo_image(repair_seed(it.seed, it.attempt), w, h))
            out.append(Image.composite(paint, it.image.convert("RGB"), it.mask.convert("L")))
        self.pipe.wait(self.call_s + len(items) * self.image_s, t0, repaired=len(items))
        return out


def _as_output(seeds: list[int], width: int, height: int, output_type: str, defective: list[bool]) -> Any:
    """PIL images, or for `output_type="pt"` the pixels as the device holds them after the worker's uint8
    conversion: a (N, H, W, 3) uint8 tensor (`SimulatedDeviceWorker._frames` takes it from there; on a GPU that
    conversion is device work, so the simulation does not charge it to the host)."""
    arrays = [pseudo_image(s, width, height, d) for s, d in zip(seeds, defective)]
    if output_type == "pt":
        import torch

        return torch.from_numpy(np.stack(arrays))
    return [Image.fromarray(a) for a in arrays]


_POOL: dict[tuple[int, int, bool], np.ndarray] = {}


def pseudo_image(seed: int, width: int, height: int, smooth: bool = False) -> np.ndarray:
    """A deterministic noise-like uint8 (H, W, 3) image for `seed` (the random-weight SD1.5 of the GPU bench draws
    noise too, so PNG encoding and the pixel checks cost what they cost there). Cut from a per-size noise field at a
    seed-given offset: cheap enough (~0.1 ms) not to load the host the simulation measures. `smooth`: from a
    bicubically upsampled coarse field instead (variance of the Laplacian ~2, against ~4400: the gate's blur check
    fails it)."""
    field = _POOL.get((width, height, smooth))
    if field is None:
        rng = np.random.default_rng(0)
        if smooth:
            coarse = rng.integers(0, 256, (height // 64 + 1, 2 * width // 64 + 1, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((2 * width, height), Image.Resampling.BICUBIC))
        else:
            coarse = rng.integers(0, 256, (height // 8 + 1, 2 * width // 8 + 1, 3), dtype=np.uint8)
            smooth_part = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, : 2 * width].astype(np.int16)
            noise = rng.integers(-24, 25, (height, 2 * width, 3), dtype=np.int16)
            field = np.clip(smooth_part + noise, 0, 255).astype(np.uint8)
        _POOL[(width, height, smooth)] = field
    offset = seed % width
    return np.ascontiguousarray(field[:, offset : offset + width])


class SimulatedDeviceWorker(Worker):
    """A Worker whose pipeline is a `SimulatedPipeline` (the real CLIP and writer stay). Benchmarks only."""

    defect_share = DEMO_REPAIR_SHARE  # class-level: read while the models load, before any call

    def _load_models(self) -> None:
        super()._load_models()  # the real tiny pipeline's tokenizer and CLIP; the pipeline itself is replaced
        self.pipe = SimulatedPipeline(self.pipe.tokenizer, defect_share=self.defect_share)

    def _repairer(self) -> SimulatedRepairer:
        return SimulatedRepairer(self.pipe)

    def _frames(self, images: Any) -> Frames:
        """From the simulated device's uint8 pixels: the host images made from them (real host work) and the
        tensor the gate scores."""
        return Frames([Image.fromarray(a) for a in images.numpy()], images)


def sim_config(cfg: FactoryConfig, repair: bool = True) -> FactoryConfig:
    """`cfg` at the GPU bench's shape (512², 4 steps, batch 16, padding in count, batched "fast" numerics as on
    CUDA), local executor. The gate's thresholds are set so that only the simulated defect fails an image: blur
    at the factory default (100: a smooth image ~2, a noise-like one ~4400, one repainted tile ~300), the CLIP
    and IQA checks off (the tiny CLIP's scores of pseudo-images mean nothing). `repair`: inpaint (with `cfg`'s
    attempts) or off."""
    buckets = [dataclasses.replace(b, width=SIM_SIZE, height=SIM_SIZE, steps=SIM_STEPS) for b in cfg.planner.buckets]
    quality = dataclasses.replace(
        cfg.quality, clip_threshold=-1.0, iqa_threshold=0.0, blur_laplacian_var=100.0, categories={}
    )
    return dataclasses.replace(
        cfg,
        planner=dataclasses.replace(cfg.planner, buckets=buckets),
        model=dataclasses.replace(cfg.model, device="cpu", determinism="fast"),
        quality=quality,
        repair=dataclasses.replace(cfg.repair, mode="inpaint" if repair else "off"),
        run=dataclasses.replace(cfg.run, executor="local", batch_size=SIM_BATCH, padding="count"),
    )


PLACEMENTS = ("between-calls", "split")  # Worker.repair_placement values compared with repair on


@dataclasses.dataclass
class SimOptions:
    images_per_s: float = H200_IMAGES_PER_S
    defect_share: float = DEMO_REPAIR_SHARE
    repair_call_s: float = REPAIR_CALL_S
    repair_image_s: float = REPAIR_IMAGE_S
    placements: tuple[str, ...] = PLACEMENTS
    rounds: int = 1  # repair-on nights per placement, alternating


def simulated_night(
    cfg: FactoryConfig, n_skus: int, tmp: Path, images_per_s: float = H200_IMAGES_PER_S, opts: SimOptions | None = None
) -> dict:
    """C (generation alone through Worker.generate) and the whole night (`run()`) on the simulated device: repair
    off with one batch in flight per worker (serial) and with two (overlap); repair on (the demo's share) with two
    in flight, once per repair placement (`opts.rounds` times, alternating). All in the same process."""
    from factory.job.night_plan import local_worker, plan
    from factory.tools.ops.demo import write_demo_skus

    opts = opts or SimOptions(images_per_s=images_per_s)
    cfg, day = sim_config(cfg.absolute(Path.cwd())), "2026-01-01"
    skus = write_demo_skus(tmp / "sim-skus.parquet", n_skus, bad_rows=False)
    tasks = plan(cfg, day, skus).tasks
    cls = type("SimWorker", (SimulatedDeviceWorker,), {"defect_share": opts.defect_share})
    worker = local_worker(cfg, str(tmp / "sim-c"), cls=cls)
    worker.pipe.images_per_s = opts.images_per_s
    worker.retry.repairer.call_s, worker.retry.repairer.image_s = opts.repair_call_s, opts.repair_image_s
    batches = make_batches(tasks, cfg.run.batch_size, batch_buckets(cfg), worker.runtime.padding)
    t0 = time.perf_counter()
    for b in batches:
        worker.generate(b)
    c_s = time.perf_counter() - t0
    _night(worker, cfg, day, skus, tmp / "sim-warm", 2)  # warm: first CLIP calls, first writes, the label font
    nights = {f"batches_in_flight_{d}": _night(worker, cfg, day, skus, tmp / f"sim-d{d}", d, False) for d in (1, 2)}
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in opts.placements}
    for r in range(opts.rounds):
        for p in opts.placements:
            worker.repair_placement = p
            runs[p].append(_night(worker, cfg, day, skus, tmp / f"sim-r-{p}-{r}", 2))
    worker.repair_placement = Worker.repair_placement
    for r in [*nights.values(), *(x for v in runs.values() for x in v)]:
        r["night_over_generator"] = round(c_s / r.pop("seconds"), 3)
    return {
        "images": len(tasks),
        "batches": len(batches),
        "simulated_images_per_s": opts.images_per_s,
        "C_images_per_s": round(len(tasks) / c_s, 2),
        **nights,
        "repair_on": {p: _rounds(v) for p, v in runs.items()},
        "repair_model": {
            "defect_share": round(opts.defect_share, 4),
            "call_s": opts.repair_call_s,
            "image_s": opts.repair_image_s,
        },
    }


def _rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round's figures (by night / generator), with every round's ratio."""
    ratios = [r["night_over_generator"] for r in runs]
    median = sorted(runs, key=lambda r: r["night_over_generator"])[len(runs) // 2]
    return {**median, "rounds": ratios}


def _night(
    worker: Any, cfg: FactoryConfig, day: str, skus: Path, out: Path, depth: int, repair: bool = True
) -> dict[str, Any]:
    from factory.job.run import run

    cfg = dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, output=str(out)),
        repair=dataclasses.replace(cfg.repair, mode="inpaint" if repair else "off"),
        run=dataclasses.replace(cfg.run, batches_in_flight=depth),
    )
    pipe, retry = worker.pipe, worker.retry
    busy_before, repair_before = pipe.busy_s, dict(pipe.repair)
    worker.retry = retry if repair else None  # the same loaded worker, its repair switched off for this night
    t0 = time.perf_counter()
    try:
        summary = run(cfg, day, skus, force=True, worker=worker)
    finally:
        worker.retry = retry
    seconds = time.perf_counter() - t0
    t, n = summary.timings, summary.counts["images_generated"]
    out_r = {
        "seconds": seconds,
        "D_images_per_s": round(n / seconds, 2),
        "device_busy_fraction": round((pipe.busy_s - busy_before) / t["execute_s"], 3),
        # summed per stage (with overlap the stages run at the same time: these are host costs, not wall time)
        "host_ms_per_image": {
            stage: round(1000 * t[key] / n, 1)
            for stage, key in (("score", "score_s"), ("repair", "repair_s"), ("encode_write_wait", "write_images_s"))
        },
    }
    if repair:
        out_r["repair"] = {k: round(v - repair_before[k], 3) for k, v in pipe.repair.items()}
        out_r["repair"].update(_repaired(out, day))
    return out_r


def _repaired(out: Path, day: str) -> dict[str, int]:
    """From the night's manifests: images with a repair attempt, attempts, and images a repair improved."""
    import pyarrow.parquet as pq

    files = [f for t in ("approved", "review") for f in (out / "manifests" / t / f"run_date={day}").glob("*.parquet")]
    rows = [r for f in files for r in pq.read_table(f, columns=["attempts", "repaired"]).to_pylist()]
    return {
        "images_attempted": sum(r["attempts"] > 0 for r in rows),
        "attempts": sum(r["attempts"] for r in rows),
        "images_improved": sum(bool(r["repaired"]) for r in rows),
    }


def format_sim(r: dict[str, Any]) -> str:
    lines = [
        f"simulated device ({r['simulated_images_per_s']} img/s, {r['images']} images at {SIM_SIZE}², batch "
        f"{SIM_BATCH}; generator alone {r['C_images_per_s']} img/s):"
    ]
    nights = {k: v for k, v in r.items() if k.startswith("batches_in_flight_")}
    nights.update({f"repair on, {p}, 2 in flight": v for p, v in r.get("repair_on", {}).items()})
    for name, n in nights.items():
        ms = "  ".join(f"{k} {v} ms" for k, v in n["host_ms_per_image"].items())
        rep = n.get("repair")
        extra = f"; {rep['images']:.0f} repaired in {rep['calls']:.0f} inpaint calls" if rep else ""
        lines.append(
            f"  {name}: night / generator {n['night_over_generator']}, device busy "
            f"{n['device_busy_fraction']:.0%} of the night; host per image: {ms}{extra}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The night on the simulated device (a benchmark setting).")
    p.add_argument("--config", default="data/demo.toml")
    p.add_argument("--skus", type=int, default=96)
    p.add_argument("--images-per-s", type=float, default=H200_IMAGES_PER_S)
    p.add_argument("--defect-share", type=float, default=DEMO_REPAIR_SHARE, help="share of images needing repair")
    p.add_argument("--repair-call-s", type=float, default=REPAIR_CALL_S, help="device s per inpaint call")
    p.add_argument("--repair-image-s", type=float, default=REPAIR_IMAGE_S, help="device s per repaired image")
    p.add_argument("--placements", default=",".join(PLACEMENTS), help="repair placements compared (repair on)")
    p.add_argument("--rounds", type=int, default=1, help="repair-on nights per placement, alternating")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    opts = SimOptions(
        args.images_per_s,
        args.defect_share,
        args.repair_call_s,
        args.repair_image_s,
        tuple(x for x in args.placements.split(",") if x),
        args.rounds,
    )
    with tempfile.TemporaryDirectory() as tmp:
        r = simulated_night(load_config(args.config), args.skus, Path(tmp), opts=opts)
    print(format_sim(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
