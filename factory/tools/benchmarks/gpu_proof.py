"""`python -m factory.tools.benchmarks.bench_gpu --quick` (`make bench-gpu`): the one-command device proof.

On a CUDA machine: builds the random-weight full-size SD1.5 LCM pipeline and ViT-L-14 scorer (bench_gpu's
`build_models`), loads one worker (`model.compile` as given, `model.quantization = "auto"`), and measures, each stage
written to the JSON as soon as it is measured (a run cut short by `--budget-s` or a time limit still reports):
  machine   the device, its peak dense BF16/FP16 TFLOPS where known (`PEAK_TFLOPS`; an unknown device: null)
  load      worker start, compile warm-up included, and what `auto` resolved to
  C         the generator alone (`Worker.generate` over the night's bucketed batches)
  night_repair_off / night_repair_on   the whole night (`run()`: gate, provenance, PNG writes, manifests,
            run.json) with the same loaded worker; repair on at the demo's share (below); night ÷ C
  quant_<mode>  each quantization mode against "none", the same compile mode, fewer images
  summary   the headline figures in one place
Fraction of peak = images/s × `FLOP_PER_IMAGE` / peak. Peak GPU memory is read (and reset) per stage.

Repair share: the random models' images are noise, so the demo's thresholds mean nothing here. After C, the blur
threshold is set to the `DEMO_REPAIR_SHARE` quantile of C's own images' Laplacian variance, and the CLIP and IQA
checks are set off: about the demo's share of images then goes to a real inpaint repair (the night reports the
share it measured from its manifests).

`--device cpu` runs the same stages with the tiny models of `data/models/` at 64² (tests/tools/benchmarks/
test_gpu_proof.py runs it): compile does not apply on a CPU, fp8 is refused there (reported as unavailable), and
there is no peak (null).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig, load_config
from factory.errors import ConfigError
from factory.inputs.bucketing import make_batches
from factory.job.night_plan import batch_buckets
from factory.tools.benchmarks.gpu_models import Report, _free, _machine, _timed, build_models, gpu_config
from factory.tools.benchmarks.sim_device import DEMO_REPAIR_SHARE

# SD1.5 at 512², 4 LCM steps, per image (issue 19): UNet 0.80 TFLOP per step, VAE decoder 2.51 TFLOP, CLIP
# ViT-L/14 image tower 0.16 TFLOP -> 5.74 TFLOP.
FLOP_PER_IMAGE = 5.74e12
# Dense (no sparsity) BF16/FP16 tensor-core TFLOPS by device name, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
QUANT_MODES = ("none", "int8-weight", "fp8")
CPU_SIZE, CPU_STEPS, CPU_BATCH = 64, 4, 4
NIGHTS = ("night_repair_off", "night_repair_on")


def peak_tflops(device_name: str | None) -> float | None:
    """The device's peak dense BF16 TFLOPS, or None (a CPU, or a device not in `PEAK_TFLOPS`)."""
    for key, tflops in PEAK_TFLOPS if device_name else ():
        if key.lower() in device_name.lower():
            return tflops
    return None


def device_slug(device_name: str | None) -> str:
    """ "NVIDIA H200" -> "h200"; None (no GPU) -> "cpu": the `docs/bench-gpu-<device>.json` name."""
    if not device_name:
        return "cpu"
    name = re.sub(r"^nvidia\s+", "", device_name.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def fraction_of_peak(images_per_s: float, peak: float | None) -> float | None:
    return None if peak is None else round(images_per_s * FLOP_PER_IMAGE / (peak * 1e12), 4)


class BudgetReport(Report):
    """A Report that does not start a stage it expects to end after the wall budget (`need_s`: its estimate)."""

    def __init__(self, path: Path, budget_s: float):
        super().__init__(path)
        self.deadline = time.perf_counter() + budget_s

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], need_s: float = 0.0) -> None:
        left = self.deadline - time.perf_counter()
        if left < need_s:
            self.data[name] = {"skipped": f"wall budget: {left:.0f} s left, this stage needs ~{need_s:.0f} s"}
            self.path.write_text(json.dumps(self.data, indent=2) + "\n")
            print(name, json.dumps(self.data[name]), flush=True)
            return
        super().stage(name, fn)


def memory() -> dict[str, float | None]:
    """Peak GPU memory since the last call (then reset); None without CUDA. The process's peak RSS so far."""
    import torch

    out: dict[str, float | None] = {"max_allocated_gib": None, "max_reserved_gib": None}
    if torch.cuda.is_available():
        gib = 2**30
        out = {
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2),
        }
        torch.cuda.reset_peak_memory_stats()
    out["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def proof_config(base: FactoryConfig, args: argparse.Namespace, quantization: str = "auto") -> FactoryConfig:
    """The night's config: on CUDA bench_gpu's random full-size models (compile as given); on a CPU the tiny
    models at 64², 4 steps, batch 4, fast numerics (so int8-weight may run). Repair on (with `base`'s attempts)."""
    if args.device == "cpu":
        buckets = [
            dataclasses.replace(b, width=CPU_SIZE, height=CPU_SIZE, steps=CPU_STEPS) for b in base.planner.buckets
        ]
        cfg = dataclasses.replace(
            base,
            planner=dataclasses.replace(base.planner, buckets=buckets),
            model=dataclasses.replace(
                base.model, device="cpu", determinism="fast", compile=args.compile, quantization=quantization
            ),
            run=dataclasses.replace(base.run, executor="local", batch_size=CPU_BATCH),
        )
    else:
        cfg = gpu_config(base, Path(args.models), args.clip_model, compile=args.compile, quantization=quantization)
    return with_repair(cfg, cfg.quality.blur_laplacian_var, True)


def with_repair(cfg: FactoryConfig, blur: float, on: bool) -> FactoryConfig:
    """`cfg` with the blur threshold `blur`, the CLIP and IQA checks off, repair inpaint (`on`) or off."""
    quality = dataclasses.replace(cfg.quality, clip_threshold=-1.0, iqa_threshold=0.0, blur_laplacian_var=blur)
    repair = dataclasses.replace(cfg.repair, mode="inpaint" if on else "off", max_attempts=cfg.repair.max_attempts or 1)
    return dataclasses.replace(cfg, quality=quality, repair=repair)


@dataclasses.dataclass
class Proof:
    """What the stages share."""

    args: argparse.Namespace
    base: FactoryConfig
    cfg: FactoryConfig  # the loaded worker's (repair on; the blur threshold calibrated after C)
    skus: Path
    tmp: Path
    day: str = "2026-01-01"
    peak: float | None = None
    worker: Any = None
    tasks: list = dataclasses.field(default_factory=list)
    c_images_per_s: float = 0.0


def measure_quick(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage in order of importance, each written when measured; returns the report's data."""
    import torch

    report = BudgetReport(Path(args.json), args.budget_s)
    report.stage("machine", lambda: _machine_peak(torch))
    if args.device == "cpu":
        report.stage("build", lambda: {"models": "the tiny models of data/models (make models)"})
    else:
        report.stage("build", lambda: build_models(Path(args.models), args.clip_model))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        _stages(report, args, Path(tmp))
    return report.data


def _stages(report: BudgetReport, args: argparse.Namespace, tmp: Path) -> None:
    from factory.job.night_plan import plan
    from factory.tools.ops.demo import write_demo_skus

    name = report.data["machine"].get("gpu")
    base = load_config(args.config)
    skus = write_demo_skus(tmp / "skus.parquet", args.skus, bad_rows=False)
    proof = Proof(args, base, proof_config(base, args), skus, tmp, peak=peak_tflops(name))
    proof.tasks = plan(proof.cfg, proof.day, skus).tasks
    report.stage("load", lambda: _load(proof))
    if proof.worker is None:
        return
    report.stage("C", lambda: _generator(proof))
    report.stage("night_repair_off", lambda: _night(proof, repair=False))
    report.stage("night_repair_on", lambda: _night(proof, repair=True))
    load_s = report.data["load"].get("seconds", 0.0)
    mode_c, quant_c = proof.worker.runtime.quantization, proof.worker.quantization
    proof.worker = None
    _free(None)  # the night's worker's GPU memory back before the quantized workers load
    for mode in QUANT_MODES:
        if mode == mode_c:  # measured as C: the same worker, compile and batch size
            same = {"same_as": "C", "images_per_s": report.data["C"].get("images_per_s")}
            report.stage(f"quant_{mode}", lambda same=same: {**same, "quantization": _quant_info(quant_c)})
        else:
            report.stage(f"quant_{mode}", lambda mode=mode: _quant(proof, mode), need_s=load_s + 15)
    report.stage("summary", lambda: summary(report.data))


def _machine_peak(torch: Any) -> dict[str, Any]:
    m = _machine(torch)
    return {
        **m,
        "device": device_slug(m["gpu"]),
        "peak_tflops": peak_tflops(m["gpu"]),
        "flop_per_image": FLOP_PER_IMAGE,
    }


def _load(proof: Proof) -> dict[str, Any]:
    """The night's worker (compile warm-up included); a compile that fails here is retried uncompiled."""
    from factory.job.night_plan import local_worker

    failed = {}
    try:
        seconds, w = _timed(lambda: local_worker(proof.cfg, str(proof.tmp / "c")))
    except ConfigError:
        raise
    except Exception as exc:  # a compile that fails on this torch/diffusers pair: measure uncompiled instead
        failed = {"compile_error": f"{type(exc).__name__}: {exc}"[:1500]}
        proof.cfg = dataclasses.replace(proof.cfg, model=dataclasses.replace(proof.cfg.model, compile="none"))
        seconds, w = _timed(lambda: local_worker(proof.cfg, str(proof.tmp / "c")))
    proof.worker = w
    return {
        "seconds": round(seconds, 1),
        "runtime": w.runtime.to_dict(),
        "accel": w.accel,
        "startup": {k: round(v, 2) for k, v in w.startup.items()},
        **failed,
        **memory(),
    }


def _generator(proof: Proof) -> dict[str, Any]:
    """C over the night's batches; then the blur threshold at the demo's repair share of these images."""
    import numpy as np

    from factory.quality.pixels import pixel_metrics

    w, cfg = proof.worker, proof.cfg
    batches = make_batches(proof.tasks, w.batch_size, batch_buckets(cfg), w.runtime.padding)
    w.generate(batches[0])  # untimed: the last lazy allocations after warm-up
    memory()
    seconds, images = _timed(lambda: [im for b in batches for im in w.generate(b)])
    proof.c_images_per_s = len(proof.tasks) / seconds
    lap = np.array([pixel_metrics(im)["laplacian_var"] for im in images])
    blur = float(np.quantile(lap, DEMO_REPAIR_SHARE))
    proof.cfg = with_repair(cfg, blur, True)
    _rebuild_gate(w, proof.cfg)
    return {
        "images": len(proof.tasks),
        "batches": len(batches),
        "batch_size": w.batch_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(proof.c_images_per_s, 2),
        "fraction_of_peak": fraction_of_peak(proof.c_images_per_s, proof.peak),
        "blur_threshold": round(blur, 3),
        **memory(),
    }


def _rebuild_gate(worker: Any, cfg: FactoryConfig) -> None:
    """The worker's gate and repair with `cfg`'s thresholds (a loaded worker keeps those it was built with)."""
    from factory.job.night_plan import category_thresholds, config_templates

    worker.cfg = dataclasses.replace(worker.cfg, quality=cfg.quality, repair=cfg.repair)
    worker._build_gate(category_thresholds(cfg, config_templates(cfg)))


def _night(proof: Proof, repair: bool) -> dict[str, Any]:
    """The whole night with the loaded worker, repair on or off; night ÷ C; run.json's runtime (the auto pick)."""
    from factory.job.run import run
    from factory.tools.benchmarks.sim_device import _repaired

    out = proof.tmp / f"night-{'on' if repair else 'off'}"
    cfg = with_repair(proof.cfg, proof.cfg.quality.blur_laplacian_var, repair)
    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=str(out)))
    w, retry = proof.worker, proof.worker.retry
    w.retry = retry if repair else None
    try:
        seconds, summary = _timed(lambda: run(cfg, proof.day, proof.skus, force=True, worker=w))
    finally:
        w.retry = retry
    n = summary.counts["images_generated"]
    info = json.loads((out / proof.day / "run.json").read_text())
    r = {
        "images": n,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 2),
        "night_over_C": round((n / seconds) / proof.c_images_per_s, 3) if proof.c_images_per_s else None,
        "fraction_of_peak": fraction_of_peak(n / seconds, proof.peak),
        "counts": summary.counts,
        "timings": {k: round(v, 3) for k, v in summary.timings.items()},
        "run_json_runtime": {k: info["runtime"][k] for k in ("quantization", "compile", "batch_size", "why")},
        **memory(),
    }
    if repair:
        r["repair"] = {**_repaired(out, proof.day), "images": n}
        r["repair"]["attempted_share"] = round(r["repair"]["images_attempted"] / max(n, 1), 3)
    return r


def _quant(proof: Proof, mode: str) -> dict[str, Any]:
    """Generation alone with `mode` (the same compile mode, repair off), `quant_images` images."""
    from factory.job.night_plan import local_worker

    cfg = dataclasses.replace(
        proof.cfg, model=dataclasses.replace(proof.cfg.model, quantization=mode), repair=proof.cfg.repair
    )
    cfg = with_repair(cfg, cfg.quality.blur_laplacian_var, False)
    try:
        load_s, w = _timed(lambda: local_worker(cfg, str(proof.tmp / f"q-{mode}")))
    except ConfigError as exc:  # a mode this device cannot run (fp8 below compute capability 8.9, or on a CPU)
        return {"unavailable": str(exc)}
    tasks = proof.tasks[: proof.args.quant_images]
    batches = make_batches(tasks, w.batch_size, batch_buckets(cfg), w.runtime.padding)
    w.generate(batches[0])
    memory()
    seconds, _ = _timed(lambda: [w.generate(b) for b in batches])
    r = {
        "images": len(tasks),
        "load_s": round(load_s, 1),  # compile warm-up included
        "seconds": round(seconds, 2),
        "images_per_s": round(len(tasks) / seconds, 2),
        "runtime": w.runtime.to_dict(),
        "quantization": _quant_info(w.quantization),
        **memory(),
    }
    _free(w)
    return r


def _quant_info(q: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in q.items() if k != "layers"}


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The headline figures from the stages (None where a stage did not run)."""

    def get(stage: str, key: str) -> Any:
        return data.get(stage, {}).get(key)

    none = get("quant_none", "images_per_s")
    quant = {
        mode: {
            "images_per_s": get(f"quant_{mode}", "images_per_s"),
            "speedup_vs_none": _ratio(get(f"quant_{mode}", "images_per_s"), none),
            "saved_mib": (get(f"quant_{mode}", "quantization") or {}).get("saved_mib"),
            "status": next(
                (k for k in ("unavailable", "skipped", "error") if k in data.get(f"quant_{mode}", {})), "ok"
            ),
        }
        for mode in QUANT_MODES
    }
    runtime = get("night_repair_off", "run_json_runtime") or {}
    return {
        "device": get("machine", "device"),
        "peak_tflops": get("machine", "peak_tflops"),
        "C_images_per_s": get("C", "images_per_s"),
        "night_repair_off_images_per_s": get("night_repair_off", "images_per_s"),
        "night_repair_on_images_per_s": get("night_repair_on", "images_per_s"),
        "night_over_C_repair_off": get("night_repair_off", "night_over_C"),
        "night_over_C_repair_on": get("night_repair_on", "night_over_C"),
        "fraction_of_peak": {s: get(s, "fraction_of_peak") for s in ("C", *NIGHTS)},
        "repair_attempted_share": (get("night_repair_on", "repair") or {}).get("attempted_share"),
        "max_allocated_gib": {
            s: get(s, "max_allocated_gib") for s in ("load", "C", "night_repair_off", "night_repair_on")
        },
        "quantization": quant,
        "auto_pick": {
            "quantization": runtime.get("quantization"),
            "why": (runtime.get("why") or {}).get("quantization"),
        },
        "compile": runtime.get("compile"),
    }


def _status(stage: dict[str, Any]) -> str:
    return next((k for k in ("unavailable", "skipped", "error") if k in stage), "ok")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def default_json(device: str, docs: Path = Path("docs")) -> str:
    """`docs/bench-gpu-<device>.json`; where that file holds another bench's results (docs/bench-gpu-h200.json: the
    full bench the docs cite), `docs/bench-gpu-<device>-quick.json` instead, so no measured result is lost."""
    path = docs / f"bench-gpu-{device}.json"
    if path.is_file() and "summary" not in json.loads(path.read_text() or "{}"):
        path = docs / f"bench-gpu-{device}-quick.json"
    return str(path)
