"""`adfactory dev bench --e2e`: the whole night as whole processes, against a plain diffusers loop.

For each day size (default 48 and 200 images) on a held-out generated day (demo categories, another seed than the
calibration day):
  factory  `python -m factory.cli run --executor local` (gate and repair as configured: on in data/demo.toml),
           timed from process start to exit; its run.json gives startup and the stage times;
  plain    `python -m factory.tools.benchmarks.plain_loop`: the same prompts, sizes, steps and seeds, one pipeline
           call per image, PNGs written, nothing gated.
Both use the same torch thread count (`run.cpus_per_worker`, default: every core). Ratio = plain / factory wall
time. The machine's load average is recorded: on a shared machine compare only ratios from one run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig
from factory.inputs.bucketing import Task

DAY = "2026-02-02"
HELD_OUT_SEED = 11  # the demo/calibration day uses seed 7


def held_out_rows(images: int) -> list[dict[str, Any]]:
    """Demo rows (another seed) whose variants add up to exactly `images`."""
    from factory.tools.ops.demo import demo_rows

    rows = demo_rows(images, seed=HELD_OUT_SEED, bad_rows=False)
    out, total = [], 0
    for row in rows:
        take = min(row["variants"], images - total)
        if take <= 0:
            break
        out.append({**row, "variants": take})
        total += take
    return out


def write_config(cfg: FactoryConfig, path: Path) -> Path:
    """`cfg` as a TOML file the CLI loads (every key explicit; paths are absolute already)."""
    lines: list[str] = []
    _toml_table(cfg.to_dict(), [], lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_table(d: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_list(v)}
    if prefix and scalars:
        lines.append(f"[{'.'.join(prefix)}]")
    lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in scalars.items()]
    for k, v in d.items():
        if isinstance(v, dict):
            _toml_table(v, [*prefix, k], lines)
        elif _is_table_list(v):
            for item in v:
                lines.append(f"[[{'.'.join([*prefix, k])}]]")
                lines += [f"{ik} = {json.dumps(iv, ensure_ascii=False)}" for ik, iv in item.items()]


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _timed_process(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed (exit {res.returncode}): {res.stderr[-2000:]}")
    return wall, res.stdout


def _plain_spec(cfg: FactoryConfig, tasks: list[Task], threads: int) -> dict[str, Any]:
    return {
        "pipeline": cfg.model.pipeline,
        "guidance_scale": cfg.model.guidance_scale,
        "threads": threads,
        "tasks": [
            {
                "name": f"{i:05d}",
                "prompt": t.prompt,
                "negative_prompt": t.negative_prompt,
                "width": t.width,
                "height": t.height,
                "steps": t.steps,
                "seed": t.seed,
            }
            for i, t in enumerate(tasks)
        ],
    }


def e2e_day(cfg: FactoryConfig, images: int, tmp: Path, threads: int) -> dict[str, Any]:
    """One day size: the factory and the plain loop as processes, plain loop first."""
    from factory.job.night_plan import plan
    from factory.tools.ops.demo import write_rows

    root = tmp / f"day{images}"
    root.mkdir()
    skus = write_rows(root / "skus.parquet", held_out_rows(images))
    run_cfg = dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, output=str(root / "out")),
        run=dataclasses.replace(cfg.run, executor="local", workers=1, cpus_per_worker=threads),
    )
    config = write_config(run_cfg, root / "night.toml")
    tasks = plan(run_cfg, DAY, skus).tasks
    (root / "plain.json").write_text(json.dumps(_plain_spec(run_cfg, tasks, threads)))
    repo = Path(__file__).resolve().parents[3]  # the checkout holding factory/ (this file: factory/tools/benchmarks)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    plain_s, plain_out = _timed_process(
        [sys.executable, "-m", "factory.tools.benchmarks.plain_loop", str(root / "plain.json"), str(root / "plain")],
        repo,
        env,
    )
    factory_args = ["-m", "factory.cli", "run", "--config", str(config), "--date", DAY, "--skus", str(skus)]
    factory_s, _ = _timed_process([sys.executable, *factory_args], repo, env)
    date_dir = root / "out" / DAY
    info = json.loads((date_dir / "run.json").read_text())
    info["repair_attempts"] = _repair_attempts(date_dir)
    return _day_result(images, plain_s, json.loads(plain_out.strip().splitlines()[-1]), factory_s, info)


def _repair_attempts(date_dir: Path) -> int:
    """Repair attempts of the night, from its approved and review manifest partitions."""
    import pyarrow.parquet as pq

    manifests = date_dir.parent / "manifests"
    return sum(
        sum(a or 0 for a in pq.read_table(part, columns=["attempts"]).column(0).to_pylist())
        for kind in ("approved", "review")
        for part in sorted((manifests / kind / f"run_date={date_dir.name}").glob("*.parquet"))
    )


def _day_result(images: int, plain_s: float, plain: dict, factory_s: float, info: dict) -> dict[str, Any]:
    t, c = info["timings"], info["counts"]
    attempts = info["repair_attempts"]
    return {
        "images": images,
        "plain_s": round(plain_s, 2),
        "plain_startup_s": round(plain["startup_s"], 2),
        "factory_s": round(factory_s, 2),
        "ratio_plain_over_factory": round(plain_s / factory_s, 3),
        "factory_startup_s": info.get("startup", {}).get("startup_s"),
        "factory_startup": info.get("startup"),
        "stages_s": {k: round(v, 2) for k, v in t.items() if k.endswith("_s")},
        "approved_images": c["approved_images"],
        "review_images": c["review_images"],
        "repair_attempts": attempts,
        "repair_s_per_attempt": round(t["repair_s"] / attempts, 4) if attempts else None,
        "generate_s_per_image": round(t["generate_s"] / max(c["images_generated"], 1), 4),
    }


def bench_e2e(cfg: FactoryConfig, sizes: tuple[int, ...] = (48, 200), threads: int = 0) -> dict[str, Any]:
    """The e2e comparison for each day size; `threads` 0 = every core."""
    cfg = cfg.absolute(Path.cwd())
    threads = threads or os.cpu_count() or 1
    result: dict[str, Any] = {"threads": threads, "load_before": os.getloadavg(), "days": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            result["days"].append(e2e_day(cfg, n, Path(tmp), threads))
    result["load_after"] = os.getloadavg()
    return result


def format_e2e(r: dict[str, Any]) -> str:
    lines = [
        f"adfactory dev bench --e2e ({r['threads']} torch threads each; load average before "
        f"{r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f})",
        "",
        "| images | plain loop s | factory s | plain / factory | factory startup s | repair s per attempt "
        "| generate s per image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in r["days"]:
        lines.append(
            f"| {d['images']} | {d['plain_s']} | {d['factory_s']} | {d['ratio_plain_over_factory']} | "
            f"{d['factory_startup_s']} | {d['repair_s_per_attempt']} ({d['repair_attempts']} attempts) | "
            f"{d['generate_s_per_image']} |"
        )
    return "\n".join(lines)
