"""`python -m factory.tools.benchmarks.bench_gpu`: the GPU proof — full-size SD1.5 architecture on one CUDA device.

Builds (once) a random-weight SD1.5 LCM pipeline (`build_random_sd15`, 859.6 M UNet parameters) and a random-weight
open_clip ViT-L-14 (the size of the scorer a production gate uses), then measures on one day of 512² SKUs:
  load      worker start (pipeline + CLIP load, channels_last, compile + per-bucket warm-up)
  C         bucketed batches through `Worker.generate` (generation only)
  D         the full path `factory.job.run.run()` with the loaded worker (gate, PNG writes, manifests; repair off)
  A         one pipeline call per image (the naive loop), no compile
  quant     each quantization mode vs float, no compile: Linear bytes, images/s
plus peak GPU memory per stage. Random weights time exactly like real ones (same shapes, same kernels); the images
are noise, so nothing here says anything about image quality. Each stage's result is written to the JSON file as
soon as it is measured, so a run cut short by its time limit still reports what it finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig, load_config
from factory.inputs.bucketing import make_batches
from factory.job.night_plan import batch_buckets
from factory.tools.benchmarks.gpu_models import Report, _free, _machine, _mem, _timed, build_models, gpu_config


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from factory.job.night_plan import local_worker, plan
    from factory.tools.ops.demo import write_demo_skus

    root, out = Path(args.models), Path(args.json)
    report = Report(out)
    report.stage("machine", lambda: _machine(torch))
    report.stage("build", lambda: build_models(root, args.clip_model))
    tmp = Path(tempfile.mkdtemp())
    base = load_config(args.config)
    day = "2026-01-01"
    skus = write_demo_skus(tmp / "skus.parquet", args.skus, bad_rows=False)
    cfg = gpu_config(base, root, args.clip_model, compile=args.compile, quantization="none")
    tasks = plan(cfg, day, skus).tasks
    state: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        nonlocal cfg
        failed = {}
        try:
            seconds, w = _timed(lambda: local_worker(cfg, str(tmp / "c")))
        except Exception as exc:  # a compile that fails on this torch/diffusers pair: measure uncompiled instead
            failed = {"compile_error": f"{type(exc).__name__}: {exc}"[:1500]}
            cfg = gpu_config(base, root, args.clip_model, compile="none", quantization="none")
            seconds, w = _timed(lambda: local_worker(cfg, str(tmp / "c")))
        state["worker"] = w
        return {"seconds": round(seconds, 1), "runtime": str(w.runtime), "accel": w.accel, **failed, **_mem()}

    if "main" in args.stages:
        report.stage("load", load)
        report.stage("C", lambda: _generation(state["worker"], tasks, cfg))
        report.stage("D", lambda: _full(state["worker"], cfg, day, skus, tmp, len(tasks)))
        _free(state.pop("worker", None))
    if "quant" in args.stages:
        report.stage("quant", lambda: _quantization(base, root, args, tasks[: args.quant_images], tmp))
    if "breakdown" in args.stages:
        report.stage("breakdown", lambda: _breakdown(base, root, args))
    if "compile" in args.stages:
        report.stage("compile", lambda: _compile_variants(base, root, args))
    return report.data


def _median_s(fn: Callable[[], Any], n: int = 3) -> float:
    fn()  # warm
    times = sorted(_timed(fn)[0] for _ in range(n))
    return times[n // 2]


def _breakdown(base: FactoryConfig, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Where one 512² batch's time goes: text encoding, the UNet steps, VAE decode, conversion to PIL."""
    from factory.job.night_plan import local_worker

    cfg = gpu_config(base, root, args.clip_model, compile="none", quantization="none")
    pipe = local_worker(cfg, "/tmp/breakdown").pipe
    out = {str(n): _breakdown_one(pipe, cfg.planner.buckets[0], n) for n in args.breakdown_batches}
    return out


def _compile_variants(base: FactoryConfig, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The batch-16 breakdown again with cuDNN autotuning, then with the whole UNet and the VAE decoder compiled."""
    import torch

    from factory.job.night_plan import local_worker

    cfg = gpu_config(base, root, args.clip_model, compile="none", quantization="none")
    pipe = local_worker(cfg, "/tmp/variants").pipe
    b, out = cfg.planner.buckets[0], {}
    torch.backends.cudnn.benchmark = True
    out["cudnn_benchmark"] = _breakdown_one(pipe, b, 16)
    t0 = time.perf_counter()
    pipe.unet.compile(fullgraph=True)
    pipe.vae.decoder.compile(fullgraph=True)
    _breakdown_one(pipe, b, 16)  # compiles
    out["compile_s"] = round(time.perf_counter() - t0, 1)
    out["cudnn_benchmark+compile_unet_and_vae_decoder"] = _breakdown_one(pipe, b, 16)
    return out


def _breakdown_one(pipe: Any, b: Any, n: int) -> dict[str, Any]:
    import torch

    prompts = [f"a product photo {i}" for i in range(n)]
    gens = [torch.Generator("cpu").manual_seed(i) for i in range(n)]

    def call(kind: str) -> Any:
        with torch.inference_mode():
            return pipe(
                prompt=prompts,
                width=b.width,
                height=b.height,
                num_inference_steps=b.steps,
                guidance_scale=1.0,
                generator=gens,
                output_type=kind,
            ).images

    latents = call("latent") / pipe.vae.config.scaling_factor
    with torch.inference_mode():
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
        r = {
            "full_pil_s": _median_s(lambda: call("pil")),
            "latent_only_s": _median_s(lambda: call("latent")),
            "text_encode_s": _median_s(lambda: pipe.encode_prompt(prompts, pipe.device, 1, False)),
            "vae_decode_s": _median_s(lambda: pipe.vae.decode(latents, return_dict=False)),
            "to_pil_s": _median_s(lambda: pipe.image_processor.postprocess(decoded, output_type="pil")),
        }
    r = {k: round(v, 4) for k, v in r.items()}
    r["images_per_s_full"] = round(n / r["full_pil_s"], 2)
    print("breakdown", n, r, flush=True)
    return r


def _generation(worker: Any, tasks: list, cfg: FactoryConfig) -> dict[str, Any]:
    batches = make_batches(tasks, cfg.run.batch_size, batch_buckets(cfg), worker.runtime.padding)
    worker.generate(batches[0])  # untimed: the last lazy allocations after warm-up
    _mem()
    seconds, _ = _timed(lambda: [worker.generate(b) for b in batches])
    return {
        "images": len(tasks),
        "batches": len(batches),
        "batch_size": cfg.run.batch_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(tasks) / seconds, 2),
        **_mem(),
    }


def _full(worker: Any, cfg: FactoryConfig, day: str, skus: Path, tmp: Path, n: int) -> dict[str, Any]:
    from factory.job.run import run

    out_cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(tmp / "d")))
    seconds, summary = _timed(lambda: run(out_cfg, day, skus, force=True, worker=worker))
    return {
        "images": n,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 2),
        "counts": summary.counts,
        "timings": getattr(summary, "timings", None),
        **_mem(),
    }


def _quantization(base: FactoryConfig, root: Path, args: argparse.Namespace, tasks: list, tmp: Path) -> dict:
    """Each mode without compile (compile time per mode would not fit one lease); float first as the baseline,
    and the naive one-call-per-image loop on the float worker."""
    from factory.job.night_plan import local_worker
    from factory.tools.benchmarks.bench import naive_images

    results: dict[str, Any] = {}
    for mode in ["none", *args.quant]:
        try:
            cfg = gpu_config(base, root, args.clip_model, compile="none", quantization=mode)
            load_s, w = _timed(lambda cfg=cfg, mode=mode: local_worker(cfg, str(tmp / f"q-{mode}")))
            r = _generation(w, tasks, cfg)
            r.update(load_s=round(load_s, 1), quantization={k: v for k, v in w.quantization.items() if k != "layers"})
            if mode == "none":
                naive = tasks[: args.naive_images]
                naive_images(w, naive[:1])  # untimed warm-up at batch 1
                s, _ = _timed(lambda w=w, naive=naive: naive_images(w, naive))
                r["naive_images_per_s"] = round(len(naive) / s, 2)
            results[mode] = r
            _free(w)
        except Exception as exc:
            results[mode] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print("quant", mode, json.dumps(results[mode])[:800], flush=True)
    return results


# Defaults per mode: the full bench | --quick on CUDA | --quick --device cpu (tiny models).
_DEFAULTS = {
    "config": ("data/gpu.toml", "data/gpu.toml", "data/demo.toml"),
    "skus": (160, 96, 12),
    "compile": ("regional", "full", "none"),
    "quant_images": (64, 32, 8),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the one-command device proof (make bench-gpu): gpu_proof.py")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="--quick: cpu = the tiny models at 64²")
    p.add_argument("--budget-s", type=float, default=420.0, help="--quick: no stage starts that would end after this")
    p.add_argument("--config", default=None, help="buckets, batch size, device (512², 4 steps, 16)")
    p.add_argument("--models", default="/tmp/adfactory-gpu-models", help="where the random models are built")
    p.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture of the (random) scorer")
    p.add_argument("--skus", type=int, default=None, help="SKUs in the generated day (160; --quick 96, cpu 12)")
    p.add_argument("--compile", default=None, help="compile mode (regional; --quick: full, cpu: none)")
    p.add_argument("--quant", default="int8-weight,fp8", help="modes compared with float (comma-separated)")
    p.add_argument("--quant-images", type=int, default=None, help="images per quantization mode (64; --quick 32)")
    p.add_argument("--naive-images", type=int, default=32, help="images of the naive loop (A)")
    p.add_argument("--stages", default="main,quant,breakdown", help="main (load, C, D), quant, breakdown")
    p.add_argument("--breakdown-batches", default="16,32,64", help="batch sizes of the breakdown stage")
    p.add_argument("--json", default=None, help="data/output/bench-gpu.json; --quick: docs/bench-gpu-<device>.json")
    args = p.parse_args(argv)
    mode = 0 if not args.quick else 2 if args.device == "cpu" else 1
    for key, values in _DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[mode])
    args.quant = [m for m in args.quant.split(",") if m]
    args.stages = set(args.stages.split(","))
    args.breakdown_batches = [int(n) for n in args.breakdown_batches.split(",")]
    if args.quick:
        from factory.tools.benchmarks import gpu_proof

        args.json = args.json or gpu_proof.default_json(gpu_proof.device_slug(_device_name(args.device)))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        data = gpu_proof.measure_quick(args)
        print(json.dumps(data.get("summary", {}), indent=2))
        print(f"written: {args.json}")
        return
    args.json = args.json or "data/output/bench-gpu.json"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    measure(args)


def _device_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
