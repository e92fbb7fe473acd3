"""The demo day's SKU file: a deterministic mix of categories, keyword-triggered buckets and a few bad rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_CHOICES: dict[str, dict[str, list[str]]] = {
    "shoes": {"brand": ["Stride", "Peak", "Aero"], "color": ["white", "black", "red"], "style": ["running", "court"]},
    "dress": {
        "style": ["floral", "evening", "linen"],
        "color": ["navy", "ivory", "emerald"],
        "scene": ["beach", "cafe"],
    },
    "electronics": {
        "product": ["wireless earbuds", "mechanical keyboard", "smartwatch"],
        "feature": ["RGB", "display"],
    },
    "bags": {"brand": ["Tote&Co", "Urban"], "color": ["tan", "black"], "material": ["leather", "canvas"]},
    "cosmetics": {"brand": ["Glow", "Velvet"], "product": ["lipstick", "serum", "cushion compact"]},
    "furniture": {"product": ["armchair", "bookshelf", "dining table"], "room": ["living room", "study"]},
    "food": {"product": ["mooncakes", "matcha latte", "dumplings"], "serving": ["gift box", "on a plate"]},
    "toys": {"product": ["building blocks", "plush bear", "race car"], "color": ["yellow", "blue"]},
    "jewelry": {"product": ["ring", "necklace", "earrings"], "metal": ["gold", "silver"], "stone": ["pearl", "ruby"]},
    "promo": {"event": ["Mid-Autumn festival", "Double 11 sale"], "product": ["gift sets", "sneakers"]},
}


def demo_rows(n: int = 48, seed: int = 7, bad_rows: bool = True) -> list[dict]:
    rng = random.Random(seed)
    categories = sorted(_CHOICES)
    rows = []
    for i in range(n):
        category = categories[i % len(categories)]
        attrs = {k: rng.choice(v) for k, v in _CHOICES[category].items()}
        extra = {}
        if i % 7 == 3:
            attrs["angle"] = "top-down HD detailed"  # upscale keyword -> one bucket up
        if category == "electronics" and i % 2:
            extra["background"] = "launch poster background"  # landscape keyword -> poster bucket
        rows.append(
            {
                "sku_id": f"SKU-{100000 + i}",
                "category": category,
                "attrs": json.dumps(attrs, ensure_ascii=False),
                "variants": 2 if i % 11 == 0 else 1,
                **{"background": None},
                **extra,
            }
        )
    if not bad_rows:
        return rows
    # A few rows a real feed contains, to show rejected.parquet in the demo:
    rows.append({"sku_id": None, "category": "shoes", "attrs": "{}", "variants": 1, "background": None})
    rows.append({"sku_id": "SKU-GARDEN-1", "category": "garden", "attrs": "{}", "variants": 1, "background": None})
    rows.append(
        {
            "sku_id": "SKU-SHOE-NOBRAND",
            "category": "shoes",
            "attrs": '{"color": "blue"}',
            "variants": 1,
            "background": None,
        }
    )
    rows.append(dict(rows[0]))  # duplicate sku_id: the first row wins
    return rows


SCHEMA = pa.schema(
    [
        ("sku_id", pa.string()),
        ("category", pa.string()),
        ("attrs", pa.string()),
        ("variants", pa.int32()),
        ("background", pa.string()),
    ]
)


def write_demo_skus(path: str | Path, n: int = 48, bad_rows: bool = True) -> Path:
    return write_rows(path, demo_rows(n, bad_rows=bad_rows))


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """Demo-shaped rows as a SKU parquet file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path
