"""The simulated device (benchmark only): the real night with the pipeline call replaced by a GIL-free wait.

`SimulatedPipeline` stands in for the diffusers pipeline: each call sleeps for the time the measured generator
takes for that many images (`docs/bench-gpu-h200.json`, `final_run_compile_full`: 39.64 img/s at batch 16, 512²,
4 steps, fp16, compile full, padding slots included) and returns deterministic pseudo-images (noise drawn from
each sample's seed, so a re-run writes the same bytes). `time.sleep` releases the GIL, so the host threads run
while the "device" works, exactly as they could while a CUDA call is in flight. Everything else is the real
night: the local executor, the tiny CLIP gate, provenance stamping, PNG encoding and writes, manifests.

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


@dataclasses.dataclass
class _Output:
    images: list[Any]


class SimulatedPipeline:
    """A pipeline-shaped object: `__call__` waits `images / images_per_s` seconds without holding the GIL."""

    def __init__(self, tokenizer: Any, images_per_s: float = H200_IMAGES_PER_S):
        self.tokenizer = tokenizer  # image_records counts prompt tokens with it
        self.unet = None  # nothing to quantize, compile or adapt
        self.images_per_s = images_per_s
        self.busy_s = 0.0  # summed simulated device time
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *, prompt: list[str], width: int, height: int, generator: list[Any], **kw: Any) -> _Output:
        t0 = time.perf_counter()
        seconds = len(prompt) / self.images_per_s
        seeds = [g.initial_seed() for g in generator]
        images = _as_output(seeds, width, height, kw.get("output_type", "pil"))
        # the call lasts the device time, making the output included (on a GPU that is device work, not host work)
        time.sleep(max(seconds - (time.perf_counter() - t0), 0.0))  # the host waits on the device, GIL released
        with self._lock:
            self.busy_s += seconds
            self.calls += 1
        return _Output(images)


def _as_output(seeds: list[int], width: int, height: int, output_type: str) -> Any:
    """PIL images, or for `output_type="pt"` the pixels as the device holds them after the worker's uint8
    conversion: a (N, H, W, 3) uint8 tensor (`SimulatedDeviceWorker._frames` takes it from there; on a GPU that
    conversion is device work, so the simulation does not charge it to the host)."""
    arrays = [pseudo_image(s, width, height) for s in seeds]
    if output_type == "pt":
        import torch

        return torch.from_numpy(np.stack(arrays))
    from PIL import Image

    return [Image.fromarray(a) for a in arrays]


_POOL: dict[tuple[int, int], np.ndarray] = {}


def pseudo_image(seed: int, width: int, height: int) -> np.ndarray:
    """A deterministic noise-like uint8 (H, W, 3) image for `seed` (the random-weight SD1.5 of the GPU bench draws
    noise too, so PNG encoding and the pixel checks cost what they cost there). Cut from a per-size noise field at a
    seed-given offset: cheap enough (~0.1 ms) not to load the host the simulation measures."""
    field = _POOL.get((width, height))
    if field is None:
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (height // 8 + 1, 2 * width // 8 + 1, 3), dtype=np.uint8)
        smooth = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, : 2 * width].astype(np.int16)
        noise = rng.integers(-24, 25, (height, 2 * width, 3), dtype=np.int16)
        field = _POOL[(width, height)] = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    offset = seed % width
    return np.ascontiguousarray(field[:, offset : offset + width])


class SimulatedDeviceWorker(Worker):
    """A Worker whose pipeline is a `SimulatedPipeline` (the real CLIP and writer stay). Benchmarks only."""

    def _load_models(self) -> None:
        super()._load_models()  # the real tiny pipeline's tokenizer and CLIP; the pipeline itself is replaced
        self.pipe = SimulatedPipeline(self.pipe.tokenizer)

    def _frames(self, images: Any) -> Frames:
        """From the simulated device's uint8 pixels: the host images made from them (real host work) and the
        tensor the gate scores."""
        return Frames([Image.fromarray(a) for a in images.numpy()], images)


def sim_config(cfg: FactoryConfig) -> FactoryConfig:
    """`cfg` at the GPU bench's shape (512², 4 steps, batch 16, padding in count, batched "fast" numerics as on
    CUDA), local executor, repair off (the simulated pipeline has no inpainting components)."""
    buckets = [dataclasses.replace(b, width=SIM_SIZE, height=SIM_SIZE, steps=SIM_STEPS) for b in cfg.planner.buckets]
    return dataclasses.replace(
        cfg,
        planner=dataclasses.replace(cfg.planner, buckets=buckets),
        model=dataclasses.replace(cfg.model, device="cpu", determinism="fast"),
        repair=dataclasses.replace(cfg.repair, mode="off"),
        run=dataclasses.replace(cfg.run, executor="local", batch_size=SIM_BATCH, padding="count"),
    )


def simulated_night(cfg: FactoryConfig, n_skus: int, tmp: Path, images_per_s: float = H200_IMAGES_PER_S) -> dict:
    """C (generation alone through Worker.generate) and D (the whole night, `run()`) on the simulated device, D
    with one batch in flight per worker (serial) and with two (overlap), timed in the same process."""
    from factory.job.night_plan import local_worker, plan
    from factory.tools.ops.demo import write_demo_skus

    cfg, day = sim_config(cfg.absolute(Path.cwd())), "2026-01-01"
    skus = write_demo_skus(tmp / "sim-skus.parquet", n_skus, bad_rows=False)
    tasks = plan(cfg, day, skus).tasks
    worker = local_worker(cfg, str(tmp / "sim-c"), cls=SimulatedDeviceWorker)
    worker.pipe.images_per_s = images_per_s
    batches = make_batches(tasks, cfg.run.batch_size, batch_buckets(cfg), worker.runtime.padding)
    t0 = time.perf_counter()
    for b in batches:
        worker.generate(b)
    c_s = time.perf_counter() - t0
    _night(worker, cfg, day, skus, tmp / "sim-warm", 1)  # warm: first CLIP calls, first writes, the label font
    nights = {f"batches_in_flight_{d}": _night(worker, cfg, day, skus, tmp / f"sim-d{d}", d) for d in (1, 2)}
    for r in nights.values():
        r["night_over_generator"] = round(c_s / r.pop("seconds"), 3)
    return {
        "images": len(tasks),
        "batches": len(batches),
        "simulated_images_per_s": images_per_s,
        "C_images_per_s": round(len(tasks) / c_s, 2),
        **nights,
    }


def _night(worker: Any, cfg: FactoryConfig, day: str, skus: Path, out: Path, depth: int) -> dict[str, Any]:
    from factory.job.run import run

    cfg = dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, output=str(out)),
        run=dataclasses.replace(cfg.run, batches_in_flight=depth),
    )
    pipe, busy_before = worker.pipe, worker.pipe.busy_s
    t0 = time.perf_counter()
    summary = run(cfg, day, skus, force=True, worker=worker)
    seconds = time.perf_counter() - t0
    t, n = summary.timings, summary.counts["images_generated"]
    return {
        "seconds": seconds,
        "D_images_per_s": round(n / seconds, 2),
        "device_busy_fraction": round((pipe.busy_s - busy_before) / t["execute_s"], 3),
        # summed per stage (with overlap the stages run at the same time: these are host costs, not wall time)
        "host_ms_per_image": {
            stage: round(1000 * t[key] / n, 1)
            for stage, key in (("score", "score_s"), ("repair", "repair_s"), ("encode_write_wait", "write_images_s"))
        },
    }


def format_sim(r: dict[str, Any]) -> str:
    lines = [
        f"simulated device ({r['simulated_images_per_s']} img/s, {r['images']} images at {SIM_SIZE}², batch "
        f"{SIM_BATCH}; generator alone {r['C_images_per_s']} img/s):"
    ]
    for name, n in r.items():
        if name.startswith("batches_in_flight_"):
            ms = "  ".join(f"{k} {v} ms" for k, v in n["host_ms_per_image"].items())
            lines.append(
                f"  {name}: night / generator {n['night_over_generator']}, device busy "
                f"{n['device_busy_fraction']:.0%} of the night; host per image: {ms}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The night on the simulated device (a benchmark setting).")
    p.add_argument("--config", default="data/demo.toml")
    p.add_argument("--skus", type=int, default=96)
    p.add_argument("--images-per-s", type=float, default=H200_IMAGES_PER_S)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = simulated_night(load_config(args.config), args.skus, Path(tmp), args.images_per_s)
    print(format_sim(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
