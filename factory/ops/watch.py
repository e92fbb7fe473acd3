"""What the night driver (factory/job/run.py) tells the monitoring side: started, succeeded or failed.

One `NightWatch` per `run()` call. It is inert unless `[metrics]` or `[lineage]` is configured (the defaults),
and nothing it does can fail a night: every sink logs its own errors. A night refused because another run holds
its lock, or one that had completed before (nothing done), reports nothing: the run that does the night reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from factory.config import FactoryConfig
from factory.errors import LockError
from factory.ops import metrics
from factory.ops.lineage import NightLineage

log = logging.getLogger(__name__)


class NightWatch:
    def __init__(self, cfg: FactoryConfig, date: str, run_id: str):
        self.cfg, self.t0 = cfg, time.perf_counter()
        self.output_root = cfg.paths.output
        self.lineage = None
        if cfg.lineage.transport != "none":
            self.lineage = NightLineage(cfg.lineage, run_id, date, self.output_root)

    def started(self, input_path: str) -> None:
        """The night is planned and holds its lock: START (with the SKU file as input)."""
        if self.lineage is not None:
            _guarded("lineage START", self.lineage.start, input_path)

    def succeeded(self, summary: Any) -> None:
        """`summary`: the night's factory.job.run.RunSummary."""
        if summary.already_done:
            return
        c = summary.counts
        if self.lineage is not None:
            rows = {"approved": c["approved_images"], "review": c["review_images"], "rejected": c["rejected_rows"]}
            _guarded("lineage COMPLETE", self.lineage.complete, rows)
        result = metrics.NightResult(True, time.time(), time.perf_counter() - self.t0, summary)
        _guarded("metrics", metrics.emit, self.cfg.metrics, result, self.output_root)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, LockError):
            return
        if self.lineage is not None:
            _guarded("lineage FAIL", self.lineage.fail, exc)
        result = metrics.NightResult(False, time.time(), time.perf_counter() - self.t0)
        _guarded("metrics", metrics.emit, self.cfg.metrics, result, self.output_root)


def _guarded(what: str, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # never the night's failure, and never hiding the exception that failed it
        log.warning("%s not emitted: %s: %s", what, type(exc).__name__, exc)
