"""Read, validate and plan a day without generating anything (`adfactory validate` runs exactly this)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from factory.config import Bucket, FactoryConfig, QualityConfig
from factory.errors import ConfigError, TemplateError
from factory.inputs.arguments import parse_date
from factory.inputs.bucketing import Planner, Task, count_grouped_batches
from factory.inputs.placements import generation_buckets
from factory.inputs.prompts import Template, load_templates
from factory.inputs.skus import Rejected, RowValidator, Sku, day_input_path, iter_tables
from factory.io.paths import looks_like_uri
from factory.job.plan_table import PlanGroup, Spill

if TYPE_CHECKING:
    from factory.generation.worker import Worker


@dataclass
class Plan:
    date: str
    input_path: str | Path  # a local path or a URI
    input_rows: int
    tasks: list[Task]
    rejected: list[Rejected]
    templates: dict[str, Template]
    thresholds: dict[str, QualityConfig]  # effective quality config per category, built once
    timings: dict[str, float] = field(default_factory=dict)


def category_thresholds(cfg: FactoryConfig, templates: dict[str, Template]) -> dict[str, QualityConfig]:
    """Global thresholds, then each template's [quality], then [quality.categories.<name>]: once per night."""
    unknown = sorted(set(cfg.quality.categories) - set(templates))
    if unknown:
        raise ConfigError(
            f"[quality.categories.{unknown[0]}] names no category template (templates: {', '.join(sorted(templates))})"
        )
    thresholds = {}
    for t in templates.values():
        try:
            thresholds[t.category] = cfg.quality.for_category(t.category, t.quality)
        except ConfigError as exc:
            raise TemplateError(f"{t.path}: {exc}") from None
    return thresholds


def check_adapter_paths(cfg: FactoryConfig) -> None:
    """Every configured style adapter exists, before anything is written (a typo'd path is exit 2, not a night of
    generation errors)."""
    for name, a in cfg.lora.adapters.items():
        if not Path(a.path).exists():
            raise ConfigError(f"[lora.adapters.{name}] path {a.path}: no such LoRA file or directory")


def _stream(
    cfg: FactoryConfig, date: str, skus_path: str | Path | None, batch_rows: int = 65_536
) -> tuple[dict[str, Template], str | Path, Planner, Iterator[tuple[int, list[Sku], list[Rejected]]]]:
    """Templates, the input path, the planner, and the day as (rows, valid SKUs, rejected rows) per record batch:
    read and validated one batch at a time, so a caller that keeps no tasks holds one batch in memory."""
    check_adapter_paths(cfg)
    templates = config_templates(cfg)
    if skus_path:
        path: str | Path = str(skus_path) if looks_like_uri(str(skus_path)) else Path(skus_path)
    else:
        path = day_input_path(cfg.paths.skus, date, cfg.storage)
    validator = RowValidator(templates, cfg.planner.max_variants, cfg.lora.adapters, cfg.placements.sizes)

    def batches() -> Iterator[tuple[int, list[Sku], list[Rejected]]]:
        for source, offset, table in iter_tables(path, batch_rows, storage=cfg.storage):
            yield table.num_rows, *validator.validate(source, table, offset)

    return templates, path, Planner(cfg.planner, templates, cfg.lora.adapters, cfg.placements), batches()


def config_templates(cfg: FactoryConfig) -> dict[str, Template]:
    """The config's templates, checked against its buckets, style adapters and placements."""
    buckets = {b.name for b in cfg.planner.buckets}
    return load_templates(cfg.paths.templates, buckets, cfg.lora.adapters, cfg.placements.sizes)


def batch_buckets(cfg: FactoryConfig) -> list[Bucket]:
    """The buckets a night batches by (configured ones, then the placements' generation buckets), in plan order."""
    return generation_buckets(cfg.planner, cfg.placements)


@dataclass
class _Planned:
    """What planning the day's record batches leaves besides the tasks (which the caller's `add` took)."""

    path: str | Path
    input_rows: int
    skus: int
    rejected: list[Rejected]
    templates: dict[str, Template]
    thresholds: dict[str, QualityConfig]
    timings: dict[str, float]


def _plan_batches(
    cfg: FactoryConfig, date: str, skus_path: str | Path | None, add: Callable[[list[Task]], None], batch_rows: int
) -> _Planned:
    """Read, validate and plan the day one record batch at a time, handing each batch's tasks to `add`."""
    timings = {"read_s": 0.0, "plan_s": 0.0}  # reading + validating, and planning, summed over the batches
    templates, path, planner, batches = _stream(cfg, date, skus_path, batch_rows)
    thresholds = category_thresholds(cfg, templates)
    rejected: list[Rejected] = []
    input_rows = skus = 0
    t0 = time.perf_counter()
    for rows, valid, r in batches:
        t1 = time.perf_counter()
        add(planner.plan_tasks(valid, date))
        t2 = time.perf_counter()
        timings["read_s"] += t1 - t0
        timings["plan_s"] += t2 - t1
        input_rows, skus = input_rows + rows, skus + len(valid)
        rejected += r
        t0 = time.perf_counter()
    return _Planned(path, input_rows, skus, rejected, templates, thresholds, timings)


def plan(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> Plan:
    """The whole day's tasks and rejected rows as objects (tools and tests; a night streams: `plan_night`)."""
    date = parse_date(date)
    tasks: list[Task] = []
    d = _plan_batches(cfg, date, skus_path, tasks.extend, 65_536)
    return Plan(date, d.path, d.input_rows, tasks, d.rejected, d.templates, d.thresholds, d.timings)


@dataclass
class NightPlan:
    """What `run` executes: the plan as parquet (factory.job.plan_table), not a Task per image. `groups` are the
    local spill until `run` writes the keyed plan under the output root (then they name those files). A context
    manager: the spill is removed on exit."""

    date: str
    input_path: str | Path
    input_rows: int
    skus: int  # valid SKUs (each has at least one image)
    groups: list[PlanGroup]  # in dispatch order
    rejected: list[Rejected]
    templates: dict[str, Template]
    thresholds: dict[str, QualityConfig]
    spill: tempfile.TemporaryDirectory
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(g.rows for g in self.groups)

    def __enter__(self) -> NightPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.spill.cleanup()


PLAN_BATCH_ROWS = 8192  # input rows validated and planned at a time by a run: its Python objects, whatever the night


def plan_night(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> NightPlan:
    """The day planned into a local spill, one record batch of the input at a time: the driver holds one batch's
    tasks, whatever the size of the night (same tasks, in the same order per group, as `plan`)."""
    date = parse_date(date)
    spill_dir = tempfile.TemporaryDirectory(prefix="adfactory-plan-")
    try:
        spill = Spill(Path(spill_dir.name), [b.name for b in batch_buckets(cfg)])
        d = _plan_batches(cfg, date, skus_path, spill.add, PLAN_BATCH_ROWS)
        groups = spill.close()
    except BaseException:
        spill_dir.cleanup()
        raise
    return NightPlan(
        date, d.path, d.input_rows, d.skus, groups, d.rejected, d.templates, d.thresholds, spill_dir, d.timings
    )


@dataclass
class DaySummary:
    """What `adfactory validate` reports: counts, not tasks (a million-row day stays small in memory)."""

    input_path: str | Path
    input_rows: int
    images: int
    buckets: dict[str, int]  # images per (target) bucket
    batches: int
    rejected: list[Rejected]


def summarize(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> DaySummary:
    """Read, validate and plan the day batch by batch, keeping only counts and the rejected rows."""
    date = parse_date(date)
    templates, path, planner, batches = _stream(cfg, date, skus_path)
    category_thresholds(cfg, templates)  # the same config errors as a run
    groups: Counter[tuple[tuple[str, ...], str]] = Counter()  # (adapter set, bucket): batched apart
    rejected: list[Rejected] = []
    input_rows = 0
    for rows, skus, r in batches:
        input_rows += rows
        groups.update(planner.group_counts(skus))
        rejected += r
    buckets: Counter[str] = Counter()
    for (_, bucket), n in groups.items():
        buckets[bucket] += n
    n_batches = count_grouped_batches(groups, cfg.run.batch_size, batch_buckets(cfg), cfg.run.padding)
    return DaySummary(path, input_rows, sum(buckets.values()), dict(buckets), n_batches, rejected)


def local_worker(cfg: FactoryConfig, output: str, date: str = "", cls: type[Worker] | None = None) -> Worker:
    """A worker (`cls`, default Worker) for this process's device, with the thresholds of the config's templates
    (tools, tests), writing images under `output` (a directory or URI; `<output>/images/...` without a `date`)."""
    from factory.generation.runtime import local_device, resolve
    from factory.generation.worker import Worker

    cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, output=output))
    templates = config_templates(cfg)
    return (cls or Worker)(cfg, resolve(cfg, *local_device(cfg)), category_thresholds(cfg, templates), date)
