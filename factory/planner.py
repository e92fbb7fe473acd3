"""Planning: one Task per image (prompt, bucket, steps, seed, output path), grouped into resolution-homogeneous batches.

Bucket choice (documented in README):
  1. start from the template's `bucket` hint;
  2. a landscape keyword in the rendered prompt ("poster", "banner", ...) -> the landscape bucket;
  3. otherwise an upscale keyword ("detailed", "HD", ...) -> the next larger non-landscape bucket (capped).
Seeds come from sha256(sku_id, date, variant) (`seed_scope = "date"`, default) or sha256(sku_id, variant)
(`seed_scope = "sku"`, which lets unchanged SKUs hit the cross-day cache): stable across runs, machines, batch
sizes and worker counts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from itertools import groupby

from factory.config import Bucket, PlannerConfig
from factory.prompts import Template
from factory.skus import Sku
from factory.writer import image_relpath


@dataclass(frozen=True)
class Task:
    """One image to generate."""

    sku_id: str
    category: str
    variant: int
    prompt: str
    negative_prompt: str
    seed: int
    bucket: str
    width: int
    height: int
    steps: int
    image_path: str  # relative to the run's date directory
    template_version: str
    source_file: str
    source_row: int


@dataclass(frozen=True)
class Batch:
    batch_id: str
    width: int
    height: int
    steps: int
    tasks: tuple[Task, ...]


def derive_seed(sku_id: str, date: str, variant: int) -> int:
    digest = hashlib.sha256(f"{sku_id}\x00{date}\x00{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)  # fits int64 manifests and torch.Generator


def _keyword_pattern(keywords: list[str]) -> re.Pattern[str] | None:
    """ASCII keywords match whole words, case-insensitively; CJK keywords match as substrings."""
    if not keywords:
        return None
    alts = [rf"(?<![a-z0-9]){re.escape(k.lower())}(?![a-z0-9])" if k.isascii() else re.escape(k) for k in keywords]
    return re.compile("|".join(alts))


class Planner:
    def __init__(self, cfg: PlannerConfig, templates: dict[str, Template]):
        self.templates = templates
        self.seed_scope = cfg.seed_scope
        self.buckets: dict[str, Bucket] = {b.name: b for b in cfg.buckets}
        self.landscape = cfg.landscape_bucket
        # "Up" follows the configured order of the non-landscape buckets (list them small to large).
        self.ladder = [b.name for b in cfg.buckets if b.name != cfg.landscape_bucket]
        self.landscape_re = _keyword_pattern(cfg.landscape_keywords)
        self.upscale_re = _keyword_pattern(cfg.upscale_keywords)

    def choose_bucket(self, hint: str, prompt: str) -> Bucket:
        text = prompt.lower()
        if self.landscape_re is not None and self.landscape_re.search(text):
            return self.buckets[self.landscape]
        if hint in self.ladder and self.upscale_re is not None and self.upscale_re.search(text):
            return self.buckets[self.ladder[min(self.ladder.index(hint) + 1, len(self.ladder) - 1)]]
        return self.buckets[hint]

    def plan_tasks(self, skus: list[Sku], date: str) -> list[Task]:
        tasks = []
        for sku in skus:
            template = self.templates[sku.category]
            prompt, negative = template.render(sku.attrs)
            bucket = self.choose_bucket(template.bucket, prompt)
            for variant in range(sku.variants):
                tasks.append(
                    Task(
                        sku_id=sku.sku_id,
                        category=sku.category,
                        variant=variant,
                        prompt=prompt,
                        negative_prompt=negative,
                        seed=derive_seed(sku.sku_id, date if self.seed_scope == "date" else "", variant),
                        bucket=bucket.name,
                        width=bucket.width,
                        height=bucket.height,
                        steps=bucket.steps,
                        image_path=image_relpath(sku.category, sku.sku_id, variant),
                        template_version=template.version,
                        source_file=sku.source_file,
                        source_row=sku.source_row,
                    )
                )
        return tasks


def make_batches(tasks: list[Task], batch_size: int, bucket_order: list[str]) -> list[Batch]:
    """Group tasks by (width, height, steps) and cut each group into batches of at most `batch_size`.

    Input order is kept inside a group, so the plan is a pure function of the input and config.
    """
    rank = {name: i for i, name in enumerate(bucket_order)}

    def key(t: Task) -> tuple[int, int, int, int]:
        return (rank.get(t.bucket, len(rank)), t.width, t.height, t.steps)

    batches = []
    for (_, width, height, steps), group in groupby(sorted(tasks, key=key), key=key):
        items = list(group)
        bucket = items[0].bucket
        for start in range(0, len(items), batch_size):
            chunk = tuple(items[start : start + batch_size])
            batches.append(Batch(f"{bucket}-{width}x{height}-{start // batch_size:05d}", width, height, steps, chunk))
    return batches
