"""Live progress of a night through Ray's metrics API, so a Ray cluster's Prometheus/Grafana sees it move.

Only on the ray executor with `metrics.live` (the default); Ray exports these from the driver's node with its
other metrics (Ray adds its `ray_` prefix). Anything Ray refuses is logged once and the night goes on.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class LiveProgress:
    def __init__(self, enabled: bool, planned: int):
        self.done: Any = None
        if not enabled:
            return
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return
            self.done = metrics.Counter("adfactory_live_images_done", "Images finished by the running night.")
            planned_gauge = metrics.Gauge("adfactory_live_images_planned", "Images the running night generates.")
            planned_gauge.set(planned)
        except Exception as exc:  # an old Ray, a driver without a metrics agent: progress stays in the log
            log.info("live Ray metrics off: %s: %s", type(exc).__name__, exc)
            self.done = None

    def update(self, n: int) -> None:
        if self.done is not None and n:
            self.done.inc(n)
