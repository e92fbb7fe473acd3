"""`adfactory scale-bench`: the driver at scale, without a model: wall time and peak RSS of the driver process.

  validate     a synthetic day of N rows through `adfactory validate`'s code path (read, validate, plan, count)
  null-night   a synthetic day of N rows through `factory.job.run.run()` with `model.pipeline = "null"` (no model:
               solid-colour images from the seed, a gate that passes): orchestration and storage alone

The synthetic day is written once per (rows, seed) as one parquet file: ten categories, attribute columns plus a
JSON `attrs` column, a few variants, and ~0.5 % bad rows (duplicates, unknown categories, missing attributes).
Peak RSS is the driver's (`resource.getrusage(RUSAGE_SELF)`): Ray workers are other processes.
"""

from __future__ import annotations

import dataclasses
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

SCALE_MODES = ("validate", "null-night")

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


def synthetic_day(path: Path, rows: int, seed: int = 0) -> Path:
    """Write a day of `rows` SKUs (deterministic for a seed); kept when it already exists with that many rows."""
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
    pq.write_table(table, tmp, row_group_size=128 * 1024)
    tmp.replace(path)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_validate(cfg: FactoryConfig, skus: Path, date: str) -> dict[str, Any]:
    from factory.job.plan import summarize

    t0 = time.perf_counter()
    s = summarize(cfg, date, skus)
    return {"wall_s": time.perf_counter() - t0, "images_planned": s.images, "rejected_rows": s.rejected_rows}


def bench_null_night(cfg: FactoryConfig, skus: Path, date: str, output: str) -> dict[str, Any]:
    from factory.job.run import run

    cfg = dataclasses.replace(
        cfg,
        paths=dataclasses.replace(cfg.paths, output=output),
        model=dataclasses.replace(cfg.model, pipeline="null"),
        cache=dataclasses.replace(cfg.cache, enabled=False),
    )
    t0 = time.perf_counter()
    s = run(cfg, date, skus, force=True)
    wall = time.perf_counter() - t0
    images = s.counts["images_generated"]
    return {
        "wall_s": wall,
        "images_generated": images,
        "images_per_s": images / wall if wall else 0.0,
        "driver_ms_per_image": None,
        "timings": s.timings,
    }
