"""The nightly job as one typed function, `run()`, which the CLI, the cron job and the tests all call.

Stages: read + validate SKUs → plan (prompts, buckets, seeds, batches) → execute (generate → score → decide,
images written by the workers) → write manifests and run.json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.config import FactoryConfig
from factory.errors import ConfigError, InputError
from factory.executors import EXECUTORS
from factory.planner import Batch, Planner, Task, make_batches
from factory.prompts import load_templates
from factory.quality import SIBLING_IN_REVIEW
from factory.skus import Rejected, day_input_path, read_tables, validate_rows
from factory.worker import BatchResult
from factory.writer import MANIFEST_SCHEMAS, write_json, write_manifest

log = logging.getLogger(__name__)


@dataclass
class Plan:
    date: str
    input_path: Path
    input_rows: int
    tasks: list[Task]
    batches: list[Batch]
    rejected: list[Rejected]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RunSummary:
    run_id: str
    date: str
    date_dir: Path
    counts: dict[str, int]
    timings: dict[str, float]
    images_per_s: float
    by_category: dict[str, dict[str, int]]


def parse_date(value: str) -> str:
    """Strict YYYY-MM-DD (the date becomes a directory name)."""
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InputError(f"--date must be YYYY-MM-DD, got {value!r}") from None


def resolve_paths(cfg: FactoryConfig) -> FactoryConfig:
    """Absolute paths, so Ray workers (whose working directory differs) see the same files."""

    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    model = cfg.model
    return dataclasses.replace(
        cfg,
        paths=dataclasses.replace(
            cfg.paths,
            skus=absolute(cfg.paths.skus),
            output=absolute(cfg.paths.output),
            templates=absolute(cfg.paths.templates),
        ),
        model=dataclasses.replace(
            model,
            pipeline=absolute(model.pipeline),
            lora=absolute(model.lora),
            clip_pretrained=absolute(model.clip_pretrained),
            clip_config_dir=absolute(model.clip_config_dir),
        ),
    )


def plan(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> Plan:
    """Read, validate and plan a day without generating anything (also what `adfactory validate` runs)."""
    date = parse_date(date)
    timings = {}
    t0 = time.perf_counter()
    templates = load_templates(cfg.paths.templates, {b.name for b in cfg.planner.buckets})
    path = Path(skus_path) if skus_path else day_input_path(cfg.paths.skus, date)
    tables = read_tables(path)
    skus, rejected = validate_rows(tables, templates, cfg.planner.max_variants)
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tasks = Planner(cfg.planner, templates).plan_tasks(skus, date)
    batches = make_batches(tasks, cfg.run.batch_size, [b.name for b in cfg.planner.buckets])
    timings["plan_s"] = time.perf_counter() - t0
    input_rows = sum(t.num_rows for _, t in tables)
    return Plan(date, path, input_rows, tasks, batches, rejected, timings)


def run(cfg: FactoryConfig, date: str, skus_path: str | Path | None = None) -> RunSummary:
    """Run the nightly job for `date`; returns the summary also written to `<output>/<date>/run.json`."""
    cfg = resolve_paths(cfg)
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"

    # 1. read, validate, plan (fails here, before any output, on bad input)
    p = plan(cfg, date, skus_path)
    if cfg.run.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {cfg.run.executor!r} (choose: {', '.join(EXECUTORS)})")
    date_dir = Path(cfg.paths.output) / p.date
    date_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "run %s: %d input rows -> %d SKUs to generate (%d images in %d batches), %d rejected",
        run_id,
        p.input_rows,
        len({t.sku_id for t in p.tasks}),
        len(p.tasks),
        len(p.batches),
        len(p.rejected),
    )

    # 2. generate, score, decide (workers write the images)
    from factory.models import model_fingerprint

    model_id = f"{Path(cfg.model.pipeline).name}@{model_fingerprint(cfg.model)}"
    results: list[BatchResult] = []
    progress = _Progress(len(p.tasks))

    def on_result(result: BatchResult) -> None:
        results.append(result)
        progress.update(len(result.rows))

    t0 = time.perf_counter()
    executor_info = EXECUTORS[cfg.run.executor](p.batches, cfg, str(date_dir), on_result) if p.batches else {}
    execute_s = time.perf_counter() - t0

    # 3. manifests: one outcome per SKU, rows sorted so files are stable across executors and worker counts
    t0 = time.perf_counter()
    common = {"run_date": dt.date.fromisoformat(p.date), "run_id": run_id, "model": model_id}
    approved, review = _split_outcomes([row for r in results for row in r.rows], common)
    rejected = [{**dataclasses.asdict(r), **common} for r in p.rejected]
    manifests = date_dir / "manifests"
    for name, rows in (("approved", approved), ("review", review), ("rejected", rejected)):
        write_manifest(manifests / f"{name}.parquet", rows, MANIFEST_SCHEMAS[name])
    manifest_s = time.perf_counter() - t0

    # 4. run.json
    stage = Counter()
    for r in results:
        stage.update(r.timings)
    total_s = time.perf_counter() - started
    n_images = len(p.tasks)
    by_category: dict[str, dict[str, int]] = defaultdict(lambda: {"approved": 0, "review": 0, "rejected": 0})
    for name, rows in (("approved", approved), ("review", review)):
        for _, cat in {(r["sku_id"], r["category"]) for r in rows}:
            by_category[cat][name] += 1
    for r in p.rejected:
        by_category[r.category if isinstance(r.category, str) else "<none>"]["rejected"] += 1
    counts = {
        "input_rows": p.input_rows,
        "skus_planned": len({t.sku_id for t in p.tasks}),
        "images_planned": n_images,
        "batches": len(p.batches),
        "approved_skus": len({r["sku_id"] for r in approved}),
        "review_skus": len({r["sku_id"] for r in review}),
        "rejected_rows": len(rejected),
        "approved_images": len(approved),
        "review_images": len(review),
    }
    timings = {
        **p.timings,
        "execute_s": execute_s,  # wall time of the executor, model loading included
        "generate_s": stage["generate_s"],  # summed over workers
        "score_s": stage["score_s"],
        "write_images_s": stage["write_s"],
        "write_manifests_s": manifest_s,
        "total_s": total_s,
    }
    summary = RunSummary(
        run_id=run_id,
        date=p.date,
        date_dir=date_dir,
        counts=counts,
        timings=timings,
        images_per_s=n_images / total_s if total_s > 0 else 0.0,
        by_category=dict(by_category),
    )
    write_json(
        date_dir / "run.json",
        {
            "run_id": run_id,
            "run_date": p.date,
            "started_at": started_at.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "input": str(p.input_path),
            "model": model_id,
            "executor": executor_info,
            "counts": counts,
            "by_category": summary.by_category,
            "timings": timings,
            "images_per_s": summary.images_per_s,
            "config": cfg.to_dict(),
        },
    )
    return summary


def _split_outcomes(rows: list[dict[str, Any]], common: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """A SKU is approved only if all its variants pass; otherwise all its variants go to review together."""
    failing = {r["sku_id"] for r in rows if r["reasons"]}
    approved, review = [], []
    for r in sorted(rows, key=lambda r: (r["sku_id"], r["variant"])):
        row = {**r, **common}
        if r["sku_id"] not in failing:
            approved.append(row)
        else:
            row["reason"] = ",".join(r["reasons"]) or SIBLING_IN_REVIEW
            row["detail"] = r.get("error")
            if r.get("error"):
                row["image_path"] = None
            review.append(row)
    return approved, review


class _Progress:
    """Log lines at every ~10 % (cron logs have no TTY for progress bars)."""

    def __init__(self, total: int):
        self.total, self.done, self.next_mark = total, 0, 0.1
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        frac = self.done / self.total if self.total else 1.0
        if frac >= self.next_mark or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            log.info(
                "progress: %d/%d images (%.0f%%), %.2f img/s, eta %.0fs", self.done, self.total, 100 * frac, rate, eta
            )
            while self.next_mark <= frac:
                self.next_mark += 0.1
