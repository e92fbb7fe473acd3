"""`adfactory dev scale-bench`: the driver at scale, without a model: wall time and peak RSS of the driver process.

  validate     a synthetic day of N rows through `adfactory validate`'s code path (read, validate, plan, count)
  null-night   a synthetic day of N rows through `factory.job.run.run()` with `model.pipeline = "null"` (no model:
               solid-colour images from the seed, a gate that passes): orchestration and storage alone
  resume       the same night, first run by a child process SIGKILLed once its resume parts hold half the images,
               then resumed by this process (what is measured)
  cache-night  the same night run by a child process, then the next day's night (same SKUs, `seed_scope = "sku"`)
               by this process with the cross-day cache on (what is measured): every plan row finds its cache key
               and its source row is read; the null gate's images are unscored, so none passes today's thresholds
               and every image is generated again (the lookup at full size, not the copies)
  finalize     finalize alone over N images with 512-d clustered CLIP-like embeddings in ten categories (written as
               part files by a child process first): the range sort, the spilled similarity search, the manifests

The synthetic day is written once per (rows, seed) as one parquet file: ten categories, attribute columns plus a
JSON `attrs` column, a few variants, and ~0.5 % bad rows (duplicates, unknown categories, missing attributes).
Peak RSS is the driver's (`resource.getrusage(RUSAGE_SELF)`): Ray workers are other processes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.config import FactoryConfig
from factory.errors import ConfigError
from factory.modes import NULL_PIPELINE

SCALE_MODES = ("validate", "null-night", "resume", "cache-night", "finalize")
BENCH_DATE = "2026-01-01"

# (category, JSON attrs) pairs that satisfy each shipped template's required attributes.
_ATTRS = [
    ("shoes", '{"color": "white", "style": "runner"}'),
    ("bags", '{"color": "tan", "material": "leather"}'),
    ("cosmetics", '{"product": "lipstick", "shade": "coral"}'),
    ("dress", '{"style": "linen", "color": "navy"}'),
    ("electronics", '{"product": "earbuds", "feature": "charging case"}'),
    ("food", '{"product": "dumplings", "serving": "in a bamboo steamer"}'),
    ("furniture", '{"product": "armchair", "material": "oak"}'),
    ("jewelry", '{"product": "ring", "metal": "gold", "stone": "a sapphire"}'),
    ("promo", '{"event": "Double 11 sale", "product": "sneakers"}'),
    ("toys", '{"product": "building blocks", "age": "3+"}'),
]
_BRANDS = ["Peak", "Urban", "Lumen", "Nordic", "Aster", "Kite", "Moss", "Orbit"]


def synthetic_day(path: Path, rows: int, seed: int = 0, row_group_rows: int = 128 * 1024) -> Path:
    """Write a day of `rows` SKUs (deterministic for a seed) in row groups of `row_group_rows` (a reader holds one
    row group's column chunks); kept when it already exists with that many rows."""
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(_ATTRS), rows)
    ids = pc.binary_join_element_wise("SKU-", pc.cast(pa.array(np.arange(rows)), pa.string()), "")
    bad = rng.random(rows)
    dup = np.nonzero(bad < 0.002)[0]  # a later row repeating an earlier id
    ids = ids.to_numpy(zero_copy_only=False)
    ids[dup] = ids[np.maximum(dup - 1, 0)]
    category = np.array([c for c, _ in _ATTRS], dtype=object)[pick]
    category[(bad >= 0.002) & (bad < 0.003)] = "garden"  # no template
    attrs = np.array([a for _, a in _ATTRS], dtype=object)[pick]
    attrs[(bad >= 0.003) & (bad < 0.005)] = "{}"  # missing required attributes for most categories
    variants = pa.array(rng.choice([1, 1, 1, 2], rows), pa.int32(), mask=rng.random(rows) < 0.1)
    table = pa.table(
        {
            "sku_id": pa.array(ids, pa.string()),
            "category": pa.array(category, pa.string()),
            "brand": pa.array(np.array(_BRANDS, dtype=object)[rng.integers(0, len(_BRANDS), rows)], pa.string()),
            "attrs": pa.array(attrs, pa.string()),
            "variants": variants,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_rows)
    tmp.replace(path)
    return path


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _make_day(path: Path, rows: int) -> Path:
    """The synthetic day, written by a child process: its arrays must not count in this driver's peak RSS."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=synthetic_day, args=(path, rows))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"writing the synthetic day {path} failed (exit {proc.exitcode})")
    return path


def scale_bench(
    cfg: FactoryConfig, mode: str, rows: int, workdir: Path, output: str | None = None, date: str = BENCH_DATE
) -> dict[str, Any]:
    """Run `mode` on a synthetic day of `rows` rows; wall time, driver CPU time and peak RSS of this process."""
    if mode not in SCALE_MODES:
        raise ConfigError(f"scale-bench mode must be one of {', '.join(SCALE_MODES)}; got {mode!r}")
    if rows < 1:
        raise ConfigError(f"--rows must be at least 1, got {rows}")
    output = output or str(workdir / "out")
    if mode == "finalize":
        return _timed(mode, rows, lambda: _finalize_only(cfg, rows, output, date))
    skus = _make_day(workdir / f"skus-{rows}" / f"{date}.parquet", rows)
    if mode != "validate":
        cfg = _null_config(cfg, output, cache=mode == "cache-night")
        _clear_night(cfg, output, date)
    if mode == "resume":
        _killed_half_way(cfg, skus, date, output)
    elif mode == "cache-night":
        _child_night(cfg, skus, date)
        date = _next_day(date)
        _clear_night(cfg, output, date)
    if mode == "validate":
        return _timed(mode, rows, lambda: _validate(cfg, skus, date))
    return _timed(mode, rows, lambda: _null_night(cfg, skus, date, force=mode != "resume"))


def _timed(mode: str, rows: int, fn: Any) -> dict[str, Any]:
    cpu0, t0 = _cpu_s(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    images = result["images"]
    return {
        "mode": mode,
        "rows": rows,
        **result,
        "wall_s": round(wall, 2),
        "driver_cpu_s": round(cpu, 2),
        "driver_ms_per_image": round(1000 * cpu / images, 4) if images else None,
        "wall_ms_per_image": round(1000 * wall / images, 4) if images else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_average": load_average(),
        "cpus": os.cpu_count(),
    }


def _validate(cfg: FactoryConfig, skus: Path, date: str) -> dict[str, Any]:
    from factory.job.night_plan import summarize

    s = summarize(cfg, date, skus)
    return {"images": s.images, "batches": s.batches, "rejected_rows": len(s.rejected)}


def _clear_night(cfg: FactoryConfig, output: str, date: str) -> None:
    """An earlier bench night at `output`, removed before the clock starts: the figure is a fresh night's, not a
    fresh night plus deleting 100 k files of the last one (measured: 211 s of a 331 s local run under load)."""
    from factory.io import layout
    from factory.io.storage import open_store

    layout.clear_outputs(open_store(output, cfg.storage), date)


def _null_config(cfg: FactoryConfig, output: str, cache: bool) -> FactoryConfig:
    """The null pipeline writing under `output`; the cross-day cache on (with per-SKU seeds, one day back) or off."""
    return dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, output=output),
        model=dataclasses.replace(cfg.model, pipeline=NULL_PIPELINE, lora=""),
        cache=dataclasses.replace(cfg.cache, enabled=cache, lookback_days=1),
        planner=dataclasses.replace(cfg.planner, seed_scope="sku") if cache else cfg.planner,
    )


def _next_day(date: str) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(date) + dt.timedelta(days=1)).isoformat()


def _run_night(cfg: FactoryConfig, skus: Path, date: str) -> None:
    from factory import logs
    from factory.job.run import run

    logs.setup(False)
    run(cfg, date, skus, force=True)


def _child_night(cfg: FactoryConfig, skus: Path, date: str) -> multiprocessing.Process:
    """The night run by a child process (its memory is not this driver's), to its end."""
    proc = multiprocessing.get_context("spawn").Process(target=_run_night, args=(cfg, skus, date))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the first night in a child process failed (exit {proc.exitcode})")
    return proc


def _killed_half_way(cfg: FactoryConfig, skus: Path, date: str, output: str, share: float = 0.5) -> None:
    """The night started by a child process and SIGKILLed once its resume parts hold `share` of its images."""
    from factory.io import layout
    from factory.io.storage import open_store

    store = open_store(output, cfg.storage)
    proc = multiprocessing.get_context("spawn").Process(target=_run_night, args=(cfg, skus, date))
    proc.start()
    try:
        planned = None
        while proc.is_alive():
            time.sleep(0.5)
            if planned is None:
                with_plan = store.exists(f"{layout.plan_dir(date)}/{layout.PLAN_INFO}")
                planned = _planned(store, date) if with_plan else None
                continue
            if _part_rows(store, date) >= share * planned:
                break
        if not proc.is_alive():
            raise RuntimeError("the first night ended before it could be killed half way; use more --rows")
    finally:
        proc.kill()
        proc.join()


def _planned(store: Any, date: str) -> int:
    import json

    from factory.io import layout

    info = json.loads(store.get_bytes(f"{layout.plan_dir(date)}/{layout.PLAN_INFO}"))
    return sum(g["rows"] for g in info["groups"])


def _part_rows(store: Any, date: str) -> int:
    from factory.job.parts import part_files

    total = 0
    for f in part_files(store, date):
        with store.open_input_file(f) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def _null_night(cfg: FactoryConfig, skus: Path, date: str, force: bool = True) -> dict[str, Any]:
    from factory.job.run import run

    s = run(cfg, date, skus, force=force)
    c = s.counts
    return {
        "images": c["images_generated"] + c["images_resumed"] + c["cache_hits"] + c.get("images_adopted", 0),
        "images_generated": c["images_generated"],
        "images_resumed": c["images_resumed"],
        "images_adopted": c.get("images_adopted", 0),
        "batches": c["batches"],
        "rejected_rows": c["rejected_rows"],
        "output": cfg.paths.output,
        "executor": cfg.run.executor,
        "workers": cfg.run.workers,
        "batch_size": cfg.run.batch_size,
        "timings": {k: round(v, 2) for k, v in s.timings.items()},
    }


_EMB_DIM, _CATEGORIES = 512, 10


def _part_files(output: str, rows: int, date: str) -> None:
    """`rows` part rows with clustered, normalised 512-d embeddings, 2 000 a file (run in a child process)."""
    import datetime as dt

    from factory.io.records import PART_SCHEMA, ImageRecord
    from factory.io.storage import open_store
    from factory.job import parts

    store, rng, defaults = open_store(output), np.random.default_rng(0), ImageRecord().to_row()
    centres = rng.standard_normal((200, _EMB_DIM)).astype(np.float32)
    for start in range(0, rows, 2000):
        k = min(2000, rows - start)
        emb = centres[rng.integers(0, 200, k)] + 0.3 * rng.standard_normal((k, _EMB_DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        ids = rng.permutation(np.arange(start, start + k))
        cols = {
            "run_date": pa.array([dt.date.fromisoformat(date)] * k, pa.date32()),
            "sku_id": pa.array([f"SKU-{i:08d}" for i in ids]),
            "category": pa.array([f"c{i % _CATEGORIES}" for i in ids]),
            "image_path": pa.array([f"{date}/images/c/{i}.png" for i in ids]),
            "clip_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), _EMB_DIM).cast(
                pa.list_(pa.float32())
            ),
        }
        table = pa.table(
            {f.name: cols.get(f.name, pa.array([defaults[f.name]] * k, f.type)) for f in PART_SCHEMA},
            schema=PART_SCHEMA,
        )
        parts.write_part(store, date, f"bench-p{start // 2000:05d}", table)


def _finalize_only(cfg: FactoryConfig, rows: int, output: str, date: str) -> dict[str, Any]:
    from factory.config import QualityConfig
    from factory.io.storage import open_store
    from factory.job import finalize, parts

    store = open_store(output, cfg.storage)
    store.delete_tree(date)
    proc = multiprocessing.get_context("spawn").Process(target=_part_files, args=(output, rows, date))
    proc.start()
    proc.join()
    files = [parts.RowFile(f) for f in parts.part_files(store, date)]
    thresholds = {f"c{i}": QualityConfig(near_duplicate=0.9) for i in range(_CATEGORIES)}
    out = finalize.finalize_night(store, date, files, thresholds, None, [])
    return {
        "images": rows,
        "rejected_rows": 0,
        "near_duplicates": out.similarity["near_duplicates"],
        "method": out.similarity["method"],
        "similarity_s": round(out.similarity_s, 2),
    }


def format_result(r: dict[str, Any]) -> str:
    lines = [f"scale-bench {r['mode']}: {r['rows']} rows -> {r['images']} images, {r['rejected_rows']} rejected"]
    lines.append(f"  wall {r['wall_s']} s, driver CPU {r['driver_cpu_s']} s, driver peak RSS {r['peak_rss_mb']} MB")
    lines.append(f"  driver CPU per image {r['driver_ms_per_image']} ms, wall per image {r['wall_ms_per_image']} ms")
    if "images_generated" in r:
        lines.append(
            f"  {r['images_generated']} generated, {r['images_resumed']} resumed, {r['images_adopted']} adopted"
        )
    if "timings" in r:
        lines.append(f"  {r['executor']} x{r['workers']}, batch {r['batch_size']}: {r['timings']}")
    lines.append(f"  load average {r['load_average']} on {r['cpus']} CPUs (a shared machine inflates wall times)")
    return "\n".join(lines)
