"""Testing only (`run.fault_injection`): a Worker that makes a real failure happen when a given SKU is in a call.

The executors build this class instead of `Worker` only when the setting is non-empty, so the production
generation path carries no test hooks.

    die_once:<sku>  the worker process exits hard the first time (a marker file records it): Ray restarts it
    raise:<sku>     every call containing the SKU raises (a poison SKU)
    oom:<sku>       a pipeline call containing the SKU and of more than one image (padding slots count) raises
                    CUDA out-of-memory
"""

from __future__ import annotations

import hashlib
import os

from factory.config import FactoryConfig
from factory.generation.frames import Frames
from factory.generation.worker import Worker
from factory.inputs.bucketing import Batch


def worker_class(cfg: FactoryConfig) -> type[Worker]:
    return FaultyWorker if cfg.run.fault_injection else Worker


class FaultyWorker(Worker):
    def _generate(self, batch: Batch, pad_to: int) -> Frames:
        kind, _, sku = self.cfg.run.fault_injection.partition(":")
        if sku in {t.sku_id for t in batch.tasks}:
            # the size of the pipeline call, padding slots included (what CUDA memory sees)
            calls = max(pad_to, len(batch.tasks)) if self.runtime.pad_in_count else len(batch.tasks)
            self._inject(kind, sku, calls)
        return super()._generate(batch, pad_to)

    def _inject(self, kind: str, sku: str, n: int) -> None:
        if kind == "die_once":
            marker = f"{self.date}/.fault-{hashlib.sha256(sku.encode()).hexdigest()[:12]}"
            if not self.store.exists(marker):
                self.store.put_bytes(marker, b"")
                os._exit(17)
        elif kind == "raise":
            raise RuntimeError(f"injected fault for sku {sku!r}")
        elif kind == "oom" and n > 1:
            import torch

            raise torch.cuda.OutOfMemoryError(f"injected CUDA out of memory for a batch of {n}")
