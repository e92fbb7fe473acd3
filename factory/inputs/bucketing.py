"""Planning: one Task per image (prompt, bucket, steps, seed, output path), grouped into resolution-homogeneous batches.

Bucket choice (documented in docs/inputs.md):
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
from collections import Counter
from dataclasses import dataclass, replace

from factory.config import AdapterConfig, Bucket, PlacementsConfig, PlannerConfig
from factory.inputs.placements import PlacementBucket, generation_name, nearest_aspect
from factory.inputs.prompts import Template
from factory.inputs.skus import Sku
from factory.io.paths import image_relpath


@dataclass(frozen=True, slots=True)
class Task:
    """One image to generate (slots: a night holds one per image)."""

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
    adapters: tuple[str, ...] = ()  # style adapter set as "name@weight", sorted by name (the manifests' `adapters`)
    # an ad placement (factory.inputs.placements): its name ("" = none: width x height is the bucket's size), how
    # the generated image is fitted to width x height, and the size it is generated at (the batch's, unpromoted)
    placement: str = ""
    fit: str = ""
    render_width: int = 0
    render_height: int = 0
    cache_key: str = ""  # set by the driver before execution: stamped into the PNG, so a rerun can adopt the file

    @property
    def render_pixels(self) -> int:
        """Pixels the pipeline computes for this image at its planned size (a placement's generated size)."""
        return (self.render_width or self.width) * (self.render_height or self.height)


def adapter_entry(name: str, weight: float) -> str:
    """`name@weight`; repr() is the shortest text that reads back as the same float."""
    return f"{name}@{weight!r}"


def parse_adapter_entry(entry: str) -> tuple[str, float]:
    name, _, weight = entry.rpartition("@")
    return name, float(weight)


@dataclass(frozen=True)
class Batch:
    batch_id: str
    width: int  # render size: equal to the tasks' target size, or larger for tasks promoted by padding = "size"
    height: int
    steps: int
    tasks: tuple[Task, ...]
    adapters: tuple[str, ...] = ()  # every task's adapter set (a batch never mixes them)
    adopt: frozenset[str] = frozenset()  # image paths of tasks whose PNG an earlier attempt wrote: try them first

    def split(self, at: int) -> tuple[Batch, Batch]:
        """Two batches (ids suffixed a/b): bisection of a poison batch, or halving after CUDA out-of-memory."""
        first, second = self.tasks[:at], self.tasks[at:]
        return replace(self, batch_id=f"{self.batch_id}a", tasks=first), replace(
            self, batch_id=f"{self.batch_id}b", tasks=second
        )


def derive_seed(sku_id: str, date: str, variant: int, placement: str = "") -> int:
    """A placement's image has its own seed (its name joins the hash), whichever other placements a SKU asks for;
    without a placement the seed is the one from (sku_id, date, variant) alone."""
    text = f"{sku_id}\x00{date}\x00{variant}" + (f"\x00{placement}" if placement else "")
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)  # fits int64 manifests and torch.Generator


class _Keywords:
    """ASCII keywords match whole words, case-insensitively; CJK keywords match as substrings. `found(text)` takes
    lower-case text; a plain substring test rules most prompts out before the regex runs (same answer, faster)."""

    def __init__(self, keywords: list[str]):
        self.words = tuple(k.lower() for k in keywords)
        alts = [
            rf"(?<![a-z0-9]){re.escape(k.lower())}(?![a-z0-9])" if k.isascii() else re.escape(k.lower())
            for k in keywords
        ]
        self.pattern = re.compile("|".join(alts)) if alts else None

    def found(self, text: str) -> bool:
        return self.pattern is not None and any(k in text for k in self.words) and bool(self.pattern.search(text))


class Planner:
    def __init__(
        self,
        cfg: PlannerConfig,
        templates: dict[str, Template],
        adapters: dict[str, AdapterConfig] | None = None,
        placements: PlacementsConfig | None = None,
    ):
        self.templates = templates
        self.placements = placements or PlacementsConfig(sizes={})
        # each placement's aspect bucket, once: the nearest aspect ratio the model was trained at
        sizes = self.placements.sizes
        self.aspect = {n: nearest_aspect(p.width, p.height, cfg.aspect_buckets) for n, p in sizes.items()}
        self.adapters = adapters or {}
        self.seed_scope = cfg.seed_scope
        self.buckets: dict[str, Bucket] = {b.name: b for b in cfg.buckets}
        self.landscape = cfg.landscape_bucket
        # "Up" follows the configured order of the non-landscape buckets (list them small to large).
        self.ladder = [b.name for b in cfg.buckets if b.name != cfg.landscape_bucket]
        self.landscape_words = _Keywords(cfg.landscape_keywords)
        self.upscale_words = _Keywords(cfg.upscale_keywords)

    def choose_bucket(self, hint: str, prompt: str) -> Bucket:
        text = prompt.lower()
        if self.landscape_words.found(text):
            return self.buckets[self.landscape]
        if hint in self.ladder and self.upscale_words.found(text):
            return self.buckets[self.ladder[min(self.ladder.index(hint) + 1, len(self.ladder) - 1)]]
        return self.buckets[hint]

    def adapter_set(self, template: Template, sku: Sku) -> tuple[str, ...]:
        """The category's adapters plus the SKU's own, with their configured weights, sorted by name."""
        names = sorted(set(template.adapters) | set(sku.adapters))
        return tuple(adapter_entry(n, self.adapters[n].weight) for n in names)

    def with_trigger_words(self, prompt: str, adapters: tuple[str, ...]) -> str:
        """`prompt` with the trigger words of its adapters in front, adapter-name order, joined by ", " (literal
        text: trigger words are data, never template syntax)."""
        words = [w.strip() for e in adapters for w in self.adapters[parse_adapter_entry(e)[0]].trigger_words]
        return ", ".join([*dict.fromkeys(words), prompt]) if words else prompt

    def placements_of(self, sku: Sku) -> tuple[str, ...]:
        """The SKU's own `placements` cell if it names any, else its template's (config order)."""
        return sku.placements or self.templates[sku.category].placements

    def generation_bucket(self, placement: str, chosen: Bucket) -> Bucket:
        """Where a placement's image is generated: its aspect bucket's size, with the steps the rules chose."""
        a = self.aspect[placement]
        return PlacementBucket(generation_name(a, chosen.steps), a.width, a.height, chosen.steps)

    def buckets_of(self, sku: Sku) -> list[str]:
        """The bucket of each image of one variant: the chosen one, or one generation bucket per placement."""
        template = self.templates[sku.category]
        b = self.choose_bucket(template.bucket, template.render(sku.attrs)[0])
        names = self.placements_of(sku)
        return [self.generation_bucket(p, b).name for p in names] if names else [b.name]

    def bucket_counts(self, skus: list[Sku]) -> Counter[str]:
        """Images per bucket, as `plan_tasks` would plan them (for `validate`: no tasks, seeds or paths)."""
        counts: Counter[str] = Counter()
        for sku in skus:
            for name in self.buckets_of(sku):
                counts[name] += sku.variants
        return counts

    def group_counts(self, skus: list[Sku]) -> Counter[tuple[tuple[str, ...], str]]:
        """Images per (adapter set, bucket): the groups `make_batches` cuts separately."""
        counts: Counter[tuple[tuple[str, ...], str]] = Counter()
        for sku in skus:
            adapters = self.adapter_set(self.templates[sku.category], sku)
            for name in self.buckets_of(sku):
                counts[adapters, name] += sku.variants
        return counts

    def plan_tasks(self, skus: list[Sku], date: str) -> list[Task]:
        tasks = []
        seed_date = date if self.seed_scope == "date" else ""
        for sku in skus:
            template = self.templates[sku.category]
            prompt, negative = template.render(sku.attrs)
            b = self.choose_bucket(template.bucket, prompt)  # from the template's words, never the trigger words
            adapters = self.adapter_set(template, sku)
            prompt = self.with_trigger_words(prompt, adapters)
            placements = self.placements_of(sku)
            if placements:
                tasks += self._placement_tasks(sku, template, prompt, negative, b, adapters, seed_date, placements)
                continue
            for variant in range(sku.variants):
                tasks.append(
                    Task(
                        sku.sku_id,
                        sku.category,
                        variant,
                        prompt,
                        negative,
                        derive_seed(sku.sku_id, seed_date, variant),
                        b.name,
                        b.width,
                        b.height,
                        b.steps,
                        image_relpath(sku.category, sku.sku_id, variant),
                        template.version,
                        sku.source_file,
                        sku.source_row,
                        adapters,
                    )
                )
        return tasks

    def _placement_tasks(
        self,
        sku: Sku,
        template: Template,
        prompt: str,
        negative: str,
        chosen: Bucket,
        adapters: tuple[str, ...],
        seed_date: str,
        placements: tuple[str, ...],
    ) -> list[Task]:
        """One task per (variant, placement): delivered at the placement's pixels, generated at its bucket."""
        tasks = []
        for variant in range(sku.variants):
            for name in placements:
                size, g = self.placements.sizes[name], self.generation_bucket(name, chosen)
                tasks.append(
                    Task(
                        sku.sku_id,
                        sku.category,
                        variant,
                        prompt,
                        negative,
                        derive_seed(sku.sku_id, seed_date, variant, name),
                        g.name,
                        size.width,
                        size.height,
                        g.steps,
                        image_relpath(sku.category, sku.sku_id, variant, name),
                        template.version,
                        sku.source_file,
                        sku.source_row,
                        adapters,
                        placement=name,
                        fit=self.placements.fit,
                        render_width=g.width,
                        render_height=g.height,
                    )
                )
        return tasks


def promotions(sizes: dict[str, int], batch_size: int, buckets: list[Bucket]) -> list[tuple[str, str, int]]:
    """padding = "size": (from bucket, to bucket, tasks moved), in the order they apply, for groups of `sizes`."""
    order = {b.name: i for i, b in enumerate(buckets)}
    sizes = dict(sizes)
    moves = []
    by_pixels = sorted(buckets, key=lambda b: (b.width * b.height, order[b.name]))
    for i, small in enumerate(by_pixels):
        if isinstance(small, PlacementBucket):  # delivered at their own sizes: never moved, never a target
            continue
        rest = sizes[small.name] % batch_size
        bigger = next(
            (
                b
                for b in by_pixels[i + 1 :]
                if b.width * small.height == b.height * small.width
                and b.width * b.height > small.width * small.height  # same-size buckets (other steps): no gain
                and not isinstance(b, PlacementBucket)
            ),
            None,
        )
        if not rest or bigger is None:
            continue
        promote_cost = rest * (bigger.width * bigger.height - small.width * small.height)
        pad_cost = (batch_size - rest) * small.width * small.height
        if promote_cost < pad_cost:
            moves.append((small.name, bigger.name, rest))
            sizes[bigger.name] += rest
            sizes[small.name] -= rest
    return moves


def count_batches(sizes: dict[str, int], batch_size: int, buckets: list[Bucket], padding: str = "none") -> int:
    """How many batches `make_batches` cuts from groups of these sizes (per bucket name), without the tasks."""
    sizes = {b.name: sizes.get(b.name, 0) for b in buckets}
    if padding == "size":
        for small, bigger, rest in promotions(sizes, batch_size, buckets):
            sizes[small] -= rest
            sizes[bigger] += rest
    return sum(-(-n // batch_size) for n in sizes.values())


def count_grouped_batches(
    groups: Counter[tuple[tuple[str, ...], str]], batch_size: int, buckets: list[Bucket], padding: str = "none"
) -> int:
    """`count_batches` over the (adapter set, bucket) groups of `Planner.group_counts`: each set batches apart."""
    sizes: dict[tuple[str, ...], dict[str, int]] = {}
    for (adapters, bucket), n in groups.items():
        sizes.setdefault(adapters, {})[bucket] = n
    return sum(count_batches(per_set, batch_size, buckets, padding) for per_set in sizes.values())


def make_batches(tasks: list[Task], batch_size: int, buckets: list[Bucket], padding: str = "none") -> list[Batch]:
    """Group tasks by adapter set and bucket (same width, height, steps, adapters) and cut each group into batches
    of `batch_size`.

    Batches come out ordered by adapter set first (no adapters first), then bucket: the executors dispatch in list
    order, so a worker switches adapter sets as few times as possible. With padding = "size", a bucket's remainder
    (its last, partial batch) moves up into the next larger bucket of the same aspect ratio (and adapter set) when
    rendering it larger (then resizing down) wastes fewer pixels than padding the partial batch in count; the
    remainder that is left is padded in count by the worker. Input order is kept inside a group, so the plan is a
    pure function of the input and config.
    """
    by_set: dict[tuple[str, ...], list[Task]] = {}
    for t in tasks:
        by_set.setdefault(t.adapters, []).append(t)
    batches = []
    for adapters in sorted(by_set):
        batches += _bucket_batches(by_set[adapters], batch_size, buckets, padding, adapters)
    return batches


def batch_id(adapters: tuple[str, ...], bucket: Bucket, index: int) -> str:
    """`[<set tag>-]<bucket>-<w>x<h>-<index>`: the set tag is short and file-name-safe ("" for no adapters)."""
    tag = f"a{hashlib.sha256(chr(0).join(adapters).encode()).hexdigest()[:8]}-" if adapters else ""
    return f"{tag}{bucket.name}-{bucket.width}x{bucket.height}-{index:05d}"


def _bucket_batches(
    tasks: list[Task], batch_size: int, buckets: list[Bucket], padding: str, adapters: tuple[str, ...]
) -> list[Batch]:
    groups: dict[str, list[Task]] = {b.name: [] for b in buckets}
    for t in tasks:
        groups[t.bucket].append(t)
    render = {b.name: b for b in buckets}  # the size a group renders at (a promoted task keeps its target size)
    if padding == "size":
        for small, bigger, rest in promotions({k: len(v) for k, v in groups.items()}, batch_size, buckets):
            groups[bigger] += groups[small][-rest:]
            del groups[small][-rest:]
    batches = []
    for b in buckets:
        items = groups[b.name]
        for start in range(0, len(items), batch_size):
            chunk = tuple(items[start : start + batch_size])
            bid = batch_id(adapters, b, start // batch_size)
            batches.append(Batch(bid, render[b.name].width, render[b.name].height, b.steps, chunk, adapters))
    return batches
