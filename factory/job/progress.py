"""Progress lines for cron logs (no TTY, so no progress bars): one line at every ~10 % of the images."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("factory.job.run")


class Progress:
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
