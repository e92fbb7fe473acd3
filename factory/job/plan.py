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


@dataclass
class Plan:
    date: str
    input_path: Path
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


def plan(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> Plan:
    date = parse_date(date)
    timings = {}
    t0 = time.perf_counter()
    check_adapter_paths(cfg)
    templates = load_templates(cfg.paths.templates, {b.name for b in cfg.planner.buckets}, cfg.lora.adapters)
    thresholds = category_thresholds(cfg, templates)
    path = Path(skus_path) if skus_path else day_input_path(cfg.paths.skus, date)
    tables = read_tables(path)
    skus, rejected = validate_rows(tables, templates, cfg.planner.max_variants, cfg.lora.adapters)
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tasks = Planner(cfg.planner, templates, cfg.lora.adapters).plan_tasks(skus, date)
    timings["plan_s"] = time.perf_counter() - t0
    input_rows = sum(t.num_rows for _, t in tables)
    return Plan(date, path, input_rows, tasks, rejected, templates, thresholds, timings)
