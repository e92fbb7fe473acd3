"""Read, validate and plan a day without generating anything (`adfactory validate` runs exactly this)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from factory.config import FactoryConfig, QualityConfig
from factory.errors import ConfigError, TemplateError
from factory.inputs.arguments import parse_date
from factory.inputs.planner import Planner, Task
from factory.inputs.prompts import Template, load_templates
from factory.inputs.skus import Rejected, day_input_path, read_tables, validate_rows
from factory.io.storage import looks_like_uri


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


def plan(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> Plan:
    date = parse_date(date)
    timings = {}
    t0 = time.perf_counter()
    templates = load_templates(cfg.paths.templates, {b.name for b in cfg.planner.buckets})
    thresholds = category_thresholds(cfg, templates)
    if skus_path:
        path: str | Path = str(skus_path) if looks_like_uri(str(skus_path)) else Path(skus_path)
    else:
        path = day_input_path(cfg.paths.skus, date, cfg.storage)
    tables = read_tables(path, cfg.storage)
    skus, rejected = validate_rows(tables, templates, cfg.planner.max_variants)
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tasks = Planner(cfg.planner, templates).plan_tasks(skus, date)
    timings["plan_s"] = time.perf_counter() - t0
    input_rows = sum(t.num_rows for _, t in tables)
    return Plan(date, path, input_rows, tasks, rejected, templates, thresholds, timings)
